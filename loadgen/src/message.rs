//! What a loadgen message carries, so that a consumer can verify it and time it:
//!
//! ```text
//! producer u32 | sequence u64 | intended send time u64 (ns since the run's epoch) |
//! checksum u32 (CRC-32C of every other byte) | filler up to the message size
//! ```
//!
//! All little-endian. The filler is derived from the sequence, so a corrupted byte
//! anywhere changes the checksum.

pub const MESSAGE_HEADER_BYTES: usize = 24;

thread_local! {
    /// 0, 1, ..., 255, 0, 1, ... long enough for the largest filler seen.
    static PATTERN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
const CHECKSUM_AT: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub producer: u32,
    pub sequence: u64,
    pub sent_ns: u64,
}

/// Writes a message of `size` bytes (at least the header) into `out`.
pub fn encode(out: &mut Vec<u8>, message: Message, size: usize) {
    let size = size.max(MESSAGE_HEADER_BYTES);
    out.clear();
    out.extend_from_slice(&message.producer.to_le_bytes());
    out.extend_from_slice(&message.sequence.to_le_bytes());
    out.extend_from_slice(&message.sent_ns.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let seed = usize::from(message.sequence as u8);
    let filler = size - MESSAGE_HEADER_BYTES;
    // Byte i of the filler is (seed + i) mod 256: a slice of a repeating 0..=255 pattern,
    // copied instead of computed byte by byte (which capped loadgen near 1 M messages/s).
    PATTERN.with(|pattern| {
        let mut pattern = pattern.borrow_mut();
        if pattern.len() < 256 + filler {
            *pattern = (0..256 + filler).map(|i| i as u8).collect();
        }
        out.extend_from_slice(&pattern[seed..seed + filler]);
    });
    let checksum = checksum(out);
    out[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&checksum.to_le_bytes());
}

fn checksum(bytes: &[u8]) -> u32 {
    let head = crc32c::crc32c(&bytes[..CHECKSUM_AT]);
    crc32c::crc32c_append(head, &bytes[CHECKSUM_AT + 4..])
}

/// Decodes and verifies a message; `None` when it is not one or its checksum fails.
pub fn decode(bytes: &[u8]) -> Option<Message> {
    if bytes.len() < MESSAGE_HEADER_BYTES {
        return None;
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    if checksum(bytes) != u32_at(CHECKSUM_AT) {
        return None;
    }
    Some(Message {
        producer: u32_at(0),
        sequence: u64_at(4),
        sent_ns: u64_at(12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_damage_is_detected() {
        let message = Message {
            producer: 3,
            sequence: 12345,
            sent_ns: 987_654_321,
        };
        let mut bytes = Vec::new();
        encode(&mut bytes, message, 1024);
        assert_eq!(bytes.len(), 1024);
        assert_eq!(decode(&bytes), Some(message));
        for at in [0, 5, 21, 500, 1023] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(decode(&bytes[..10]), None);
    }
}
