//! weir's wire formats, as pure functions over bytes.
//!
//! **Invariant:** this crate never does I/O and knows no runtime. Both front doors (the
//! native protocol and the Kafka gateway) and the storage engine share it, so the record
//! batch is parsed the same way wherever it enters or leaves weir.
//!
//! What is here today:
//! - [`batch`]: the Kafka RecordBatch v2 header (61 bytes), its validation and the two
//!   fields the broker assigns (base offset, partition leader epoch), which lie outside the
//!   CRC so that appending never recomputes it.
//! - [`record`]: the records inside an uncompressed batch, and a builder for batches.
//! - [`compression`]: the codecs of compressed batches, with Kafka's framings.
//! - [`varint`]: the zig-zag varints the record format uses.
//! - [`native`]: frames of weir's native protocol and its flatbuffers schema.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod batch;
pub mod compression;
mod error;
pub mod native;
pub mod record;
pub mod varint;

pub use batch::{Attributes, BatchHeader, Compression, TimestampType};
pub use error::WireError;
pub use record::{
    BatchBuilder, ControlType, Header, Record, RecordIter, check_client_batch, control_batch,
    control_type,
};
