//! The Kafka RecordBatch v2 header.
//!
//! Layout (big-endian), from Kafka's "Record Batch" specification:
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset             assigned by the broker, outside the CRC
//!      8     4  batchLength            bytes after this field
//!     12     4  partitionLeaderEpoch   assigned by the broker, outside the CRC
//!     16     1  magic                  2
//!     17     4  crc                    CRC-32C of bytes 21..end
//!     21     2  attributes
//!     23     4  lastOffsetDelta
//!     27     8  baseTimestamp
//!     35     8  maxTimestamp
//!     43     8  producerId
//!     51     2  producerEpoch
//!     53     4  baseSequence
//!     57     4  recordsCount
//!     61     …  records
//! ```

use crate::WireError;

/// Bytes before the records: the fixed RecordBatch v2 header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `baseOffset` and `batchLength`: the part of a batch not counted by `batchLength`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: usize = BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES;
/// The only record format weir stores.
pub const MAGIC_V2: i8 = 2;

const _: () = assert!(BATCH_LENGTH_MIN == 49);

/// Byte positions of the header fields.
pub mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const BATCH_LENGTH: usize = 8;
    pub const PARTITION_LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORDS_COUNT: usize = 57;
    /// The CRC covers everything from the attributes to the end of the batch.
    pub const CRC_START: usize = ATTRIBUTES;
}

const _: () = assert!(field::RECORDS_COUNT + 4 == BATCH_HEADER_BYTES);

/// The codec of a batch's records, bits 0..=2 of the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// Every codec Kafka defines, in attribute-bit order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    fn from_bits(bits: i16) -> Option<Compression> {
        Some(match bits {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => return None,
        })
    }

    fn bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// Whether timestamps were set by the producer or by the broker, bit 3 of the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The batch attributes bit field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    const COMPRESSION_MASK: i16 = 0x07;
    const TIMESTAMP_TYPE: i16 = 0x08;
    const TRANSACTIONAL: i16 = 0x10;
    const CONTROL: i16 = 0x20;
    const DELETE_HORIZON: i16 = 0x40;

    /// `None` for codec bits 5..=7, which Kafka does not define.
    pub fn compression(self) -> Option<Compression> {
        Compression::from_bits(self.0 & Self::COMPRESSION_MASK)
    }

    pub fn with_compression(self, compression: Compression) -> Attributes {
        Attributes((self.0 & !Self::COMPRESSION_MASK) | compression.bits())
    }

    pub fn with_timestamp_type(self, timestamp_type: TimestampType) -> Attributes {
        match timestamp_type {
            TimestampType::CreateTime => Attributes(self.0 & !Self::TIMESTAMP_TYPE),
            TimestampType::LogAppendTime => Attributes(self.0 | Self::TIMESTAMP_TYPE),
        }
    }

    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE == 0 {
            TimestampType::CreateTime
        } else {
            TimestampType::LogAppendTime
        }
    }

    pub fn with_transactional(self) -> Attributes {
        Attributes(self.0 | Self::TRANSACTIONAL)
    }

    /// A control batch (a transaction marker) is always transactional too.
    pub fn with_control(self) -> Attributes {
        Attributes(self.0 | Self::TRANSACTIONAL | Self::CONTROL)
    }

    pub fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL != 0
    }

    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }

    pub fn has_delete_horizon(self) -> bool {
        self.0 & Self::DELETE_HORIZON != 0
    }
}

/// The decoded fixed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: Attributes,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `bytes` without checking the CRC.
    ///
    /// Checks what can be checked from the header alone: the magic, a `batchLength` that
    /// covers at least a header, non-negative counts and a known codec.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, WireError> {
        let header: &[u8; BATCH_HEADER_BYTES] = bytes
            .get(..BATCH_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Truncated {
                what: "record batch header",
                needed: BATCH_HEADER_BYTES,
                available: bytes.len(),
            })?;
        let magic = header[field::MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(WireError::UnsupportedMagic { magic });
        }
        let parsed = BatchHeader {
            base_offset: read_i64(header, field::BASE_OFFSET),
            batch_length: read_i32(header, field::BATCH_LENGTH),
            partition_leader_epoch: read_i32(header, field::PARTITION_LEADER_EPOCH),
            magic,
            crc: read_i32(header, field::CRC) as u32,
            attributes: Attributes(read_i16(header, field::ATTRIBUTES)),
            last_offset_delta: read_i32(header, field::LAST_OFFSET_DELTA),
            base_timestamp: read_i64(header, field::BASE_TIMESTAMP),
            max_timestamp: read_i64(header, field::MAX_TIMESTAMP),
            producer_id: read_i64(header, field::PRODUCER_ID),
            producer_epoch: read_i16(header, field::PRODUCER_EPOCH),
            base_sequence: read_i32(header, field::BASE_SEQUENCE),
            records_count: read_i32(header, field::RECORDS_COUNT),
        };
        parsed.check_fields()?;
        Ok(parsed)
    }

    fn check_fields(&self) -> Result<(), WireError> {
        if self.batch_length < BATCH_LENGTH_MIN as i32 {
            return Err(WireError::InvalidBatchLength {
                batch_length: self.batch_length,
                reason: "shorter than a record batch header",
            });
        }
        if self.last_offset_delta < 0 {
            let value = i64::from(self.last_offset_delta);
            return Err(WireError::InvalidField {
                field: "lastOffsetDelta",
                value,
            });
        }
        if self.records_count < 0 {
            let value = i64::from(self.records_count);
            return Err(WireError::InvalidField {
                field: "recordsCount",
                value,
            });
        }
        if self.attributes.compression().is_none() {
            let value = i64::from(self.attributes.0);
            return Err(WireError::InvalidField {
                field: "attributes (codec)",
                value,
            });
        }
        Ok(())
    }

    /// The batch's codec (`parse` has checked that the attributes name one).
    pub fn codec(&self) -> Result<Compression, WireError> {
        self.attributes
            .compression()
            .ok_or(WireError::InvalidField {
                field: "attributes (codec)",
                value: i64::from(self.attributes.0),
            })
    }

    /// The whole batch's size in bytes, `baseOffset` and `batchLength` included.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset right after this batch: where the next batch starts.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
}

/// The total size of the batch starting at `bytes`, read from its first 12 bytes, or
/// `None` when fewer than 12 bytes are there. The length field is not validated.
pub fn peek_total_bytes(bytes: &[u8]) -> Option<i64> {
    let length: &[u8; 4] = bytes
        .get(field::BATCH_LENGTH..LOG_OVERHEAD_BYTES)?
        .try_into()
        .ok()?;
    Some(LOG_OVERHEAD_BYTES as i64 + i64::from(i32::from_be_bytes(*length)))
}

/// Validates one complete batch: `bytes` must hold exactly one batch, at most `max_bytes`
/// long, with magic 2 and a CRC that matches its contents.
pub fn validate(bytes: &[u8], max_bytes: usize) -> Result<BatchHeader, WireError> {
    if bytes.len() > max_bytes {
        return Err(WireError::BatchTooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    let header = BatchHeader::parse(bytes)?;
    if header.total_bytes() != bytes.len() {
        return Err(WireError::InvalidBatchLength {
            batch_length: header.batch_length,
            reason: "does not match the size of the batch received",
        });
    }
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(WireError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// The byte ranges of the batches in `bytes`, which must hold whole batches back to back,
/// each at most `batch_bytes_max` long. Only the length fields are checked here; validate
/// each batch before trusting it.
pub fn split_batches(
    bytes: &[u8],
    batch_bytes_max: usize,
) -> Result<Vec<std::ops::Range<usize>>, WireError> {
    let mut ranges = Vec::with_capacity(bytes.len() / BATCH_HEADER_BYTES + 1);
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let total = peek_total_bytes(rest).ok_or(WireError::Truncated {
            what: "record batch length",
            needed: LOG_OVERHEAD_BYTES,
            available: rest.len(),
        })?;
        if total < BATCH_HEADER_BYTES as i64 {
            let batch_length = (total - LOG_OVERHEAD_BYTES as i64) as i32;
            return Err(WireError::InvalidBatchLength {
                batch_length,
                reason: "shorter than a record batch header",
            });
        }
        if total > batch_bytes_max as i64 {
            return Err(WireError::BatchTooLarge {
                size: total as usize,
                max: batch_bytes_max,
            });
        }
        let total = total as usize;
        if total > rest.len() {
            return Err(WireError::Truncated {
                what: "record batch",
                needed: total,
                available: rest.len(),
            });
        }
        ranges.push(at..at + total);
        at += total;
    }
    Ok(ranges)
}

/// The CRC-32C of a whole batch's covered bytes (attributes to end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(field::CRC_START..).unwrap_or_default())
}

/// Writes a freshly computed CRC into a batch under construction. Only builders use this:
/// appending never recomputes a CRC.
pub fn write_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Stamps a batch with the broker's time (Kafka `message.timestamp.type=LogAppendTime`):
/// the timestamp-type attribute and the max timestamp, which readers then take as every
/// record's timestamp. Both lie inside the CRC, which is recomputed: the one place a
/// produced batch is changed inside its CRC.
pub fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) -> Result<(), WireError> {
    let header = BatchHeader::parse(batch)?;
    let attributes = header
        .attributes
        .with_timestamp_type(TimestampType::LogAppendTime);
    batch[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attributes.0.to_be_bytes());
    batch[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    write_crc(batch);
    Ok(())
}

/// Assigns the two broker-owned fields. Both lie outside the CRC, so the batch stays valid.
pub fn assign_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

fn read_i64(bytes: &[u8; BATCH_HEADER_BYTES], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

fn read_i32(bytes: &[u8; BATCH_HEADER_BYTES], at: usize) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(raw)
}

fn read_i16(bytes: &[u8; BATCH_HEADER_BYTES], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchBuilder;
    use quickcheck::quickcheck;

    fn sample() -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        builder.append(1_700_000_000_000, Some(b"k1"), Some(b"v1"), &[]);
        builder.append(1_700_000_000_005, None, Some(b"v2"), &[]);
        builder.build().to_vec()
    }

    #[test]
    fn built_batch_validates_and_reports_its_fields() {
        let batch = sample();
        let header = validate(&batch, 1 << 20).unwrap();
        assert_eq!(header.base_offset, 0);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.records_count, 2);
        assert_eq!(header.max_timestamp, 1_700_000_000_005);
        assert_eq!(header.total_bytes(), batch.len());
        assert_eq!(header.attributes.compression(), Some(Compression::None));
        assert_eq!(peek_total_bytes(&batch), Some(batch.len() as i64));
    }

    #[test]
    fn assigning_offset_and_epoch_keeps_the_crc_valid() {
        let mut batch = sample();
        assign_offset_and_epoch(&mut batch, 42, 7);
        let header = validate(&batch, 1 << 20).unwrap();
        assert_eq!((header.base_offset, header.partition_leader_epoch), (42, 7));
        assert_eq!(header.next_offset(), 44);
    }

    #[test]
    fn each_kind_of_damage_has_its_own_error() {
        let batch = sample();
        let check = |mutate: &dyn Fn(&mut Vec<u8>), max: usize| {
            let mut damaged = batch.clone();
            mutate(&mut damaged);
            validate(&damaged, max).unwrap_err()
        };
        assert!(matches!(
            check(&|b| b[70] ^= 1, 1 << 20),
            WireError::CrcMismatch { .. }
        ));
        assert!(matches!(
            check(&|b| b[16] = 1, 1 << 20),
            WireError::UnsupportedMagic { magic: 1 }
        ));
        assert!(matches!(
            check(&|b| b.truncate(30), 1 << 20),
            WireError::Truncated { .. }
        ));
        assert!(matches!(
            check(&|b| b.push(0), 1 << 20),
            WireError::InvalidBatchLength { .. }
        ));
        assert!(matches!(
            check(&|_| {}, 10),
            WireError::BatchTooLarge { size: _, max: 10 }
        ));
        assert!(matches!(
            check(&|b| b[8..12].copy_from_slice(&3i32.to_be_bytes()), 1 << 20),
            WireError::InvalidBatchLength { .. }
        ));
        assert!(matches!(
            check(&|b| b[22] |= 0x07, 1 << 20),
            WireError::InvalidField {
                field: "attributes (codec)",
                ..
            }
        ));
    }

    #[test]
    fn concatenated_batches_split_at_their_boundaries() {
        let (a, b) = (sample(), sample());
        let mut both = a.clone();
        both.extend_from_slice(&b);
        assert_eq!(
            split_batches(&both, 1 << 20).unwrap(),
            vec![0..a.len(), a.len()..a.len() + b.len()]
        );
        assert!(split_batches(&both[..both.len() - 1], 1 << 20).is_err());
        assert!(split_batches(&both, 10).is_err());
        assert!(split_batches(&[], 10).unwrap().is_empty());
    }

    quickcheck! {
        fn random_bytes_never_panic(bytes: Vec<u8>) -> bool {
            let _ = validate(&bytes, 1 << 16);
            let _ = split_batches(&bytes, 1 << 16);
            let _ = BatchHeader::parse(&bytes);
            let _ = peek_total_bytes(&bytes);
            true
        }

        fn single_byte_flips_in_covered_bytes_are_caught(position: usize, bit: u8) -> bool {
            let mut batch = sample();
            let at = field::CRC_START + position % (batch.len() - field::CRC_START);
            batch[at] ^= 1 << (bit % 8);
            validate(&batch, 1 << 20).is_err()
        }
    }
}
