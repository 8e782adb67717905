//! Zig-zag variable-length integers, as the Kafka record format (and protobuf) encode them.

use bytes::BufMut;

use crate::WireError;

/// The longest encoding of a 32-bit varint: ceil(32 / 7) bytes.
pub const VARINT_BYTES_MAX: usize = 5;
/// The longest encoding of a 64-bit varint: ceil(64 / 7) bytes.
pub const VARLONG_BYTES_MAX: usize = 10;

/// Decodes a zig-zag varint that must fit 32 bits. Returns the value and the bytes used.
pub fn decode_varint(bytes: &[u8], what: &'static str) -> Result<(i32, usize), WireError> {
    let (raw, used) = decode_unsigned(bytes, VARINT_BYTES_MAX, what)?;
    let raw = u32::try_from(raw).map_err(|_| WireError::MalformedVarint { what })?;
    Ok((((raw >> 1) as i32) ^ -((raw & 1) as i32), used))
}

/// Decodes a zig-zag varint of up to 64 bits. Returns the value and the bytes used.
pub fn decode_varlong(bytes: &[u8], what: &'static str) -> Result<(i64, usize), WireError> {
    let (raw, used) = decode_unsigned(bytes, VARLONG_BYTES_MAX, what)?;
    Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), used))
}

fn decode_unsigned(
    bytes: &[u8],
    bytes_max: usize,
    what: &'static str,
) -> Result<(u64, usize), WireError> {
    let mut value: u64 = 0;
    for (index, byte) in bytes.iter().take(bytes_max).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    if bytes.len() < bytes_max {
        Err(WireError::Truncated {
            what,
            needed: bytes.len() + 1,
            available: bytes.len(),
        })
    } else {
        Err(WireError::MalformedVarint { what })
    }
}

/// Appends the zig-zag encoding of `value` to `out`.
pub fn encode_varint(value: i32, out: &mut impl BufMut) {
    encode_unsigned(((value << 1) ^ (value >> 31)) as u32 as u64, out);
}

/// Appends the zig-zag encoding of `value` to `out`.
pub fn encode_varlong(value: i64, out: &mut impl BufMut) {
    encode_unsigned(((value << 1) ^ (value >> 63)) as u64, out);
}

/// The number of bytes [`encode_varint`] writes for `value`.
pub fn varint_len(value: i32) -> usize {
    unsigned_len(((value << 1) ^ (value >> 31)) as u32 as u64)
}

/// The number of bytes [`encode_varlong`] writes for `value`.
pub fn varlong_len(value: i64) -> usize {
    unsigned_len(((value << 1) ^ (value >> 63)) as u64)
}

fn encode_unsigned(mut value: u64, out: &mut impl BufMut) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn unsigned_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn known_encodings_match_kafka() {
        // Zig-zag: 0 -> 0, -1 -> 1, 1 -> 2, -64 -> 127, 64 -> 128 (two bytes).
        let cases: &[(i32, &[u8])] = &[
            (0, &[0]),
            (-1, &[1]),
            (1, &[2]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
        ];
        for (value, expected) in cases {
            let mut out = Vec::new();
            encode_varint(*value, &mut out);
            assert_eq!(out, *expected, "encoding {value}");
            assert_eq!(
                decode_varint(expected, "test").unwrap(),
                (*value, expected.len())
            );
        }
    }

    #[test]
    fn overlong_and_truncated_varints_are_errors() {
        assert!(matches!(
            decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], "t"),
            Err(WireError::MalformedVarint { .. })
        ));
        assert!(matches!(
            decode_varint(&[0x80], "t"),
            Err(WireError::Truncated { .. })
        ));
        // Five bytes whose value exceeds 32 bits.
        assert!(decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f], "t").is_err());
    }

    quickcheck! {
        fn varint_round_trips(value: i32) -> bool {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            out.len() == varint_len(value) && decode_varint(&out, "t") == Ok((value, out.len()))
        }

        fn varlong_round_trips(value: i64) -> bool {
            let mut out = Vec::new();
            encode_varlong(value, &mut out);
            decode_varlong(&out, "t") == Ok((value, out.len()))
        }

        fn random_bytes_never_panic(bytes: Vec<u8>) -> bool {
            let _ = decode_varint(&bytes, "t");
            let _ = decode_varlong(&bytes, "t");
            true
        }
    }
}
