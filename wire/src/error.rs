use thiserror::Error;

/// Everything that can be wrong with bytes handed to a decoder in this crate.
///
/// Decoders treat input as hostile: every variant is an answer to bad input, never a
/// programming error, so callers turn them into error responses or a closed connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("truncated {what}: need {needed} bytes, have {available}")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },

    #[error("record batch magic {magic} is not supported (only magic 2, RecordBatch v2)")]
    UnsupportedMagic { magic: i8 },

    #[error("record batch length field {batch_length} is invalid: {reason}")]
    InvalidBatchLength {
        batch_length: i32,
        reason: &'static str,
    },

    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },

    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },

    #[error("record batch field {field} has invalid value {value}")]
    InvalidField { field: &'static str, value: i64 },

    #[error("malformed varint in {what}")]
    MalformedVarint { what: &'static str },

    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: usize, reason: &'static str },

    #[error("compressed record batches ({codec}) cannot be decoded here")]
    CompressedRecords { codec: &'static str },

    #[error("{codec} records: {reason}")]
    Codec { codec: &'static str, reason: String },

    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },

    #[error("invalid frame: {reason}")]
    InvalidFrame { reason: &'static str },

    #[error("invalid flatbuffer: {reason}")]
    InvalidFlatbuffer { reason: String },
}
