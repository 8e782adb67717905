//! weir's partition log.
//!
//! A partition is a directory of segments holding Kafka RecordBatch v2 batches back to
//! back, written with O_DIRECT through glommio, with sparse offset and time indexes, a
//! leader-epoch checkpoint and partition metadata. See `docs/FORMAT.md` for the bytes and
//! `docs/ARCHITECTURE.md` for how it fits.
//!
//! **Invariant:** storage knows files and glommio; it knows nothing of sockets or
//! protocols. **Invariant:** a log and its shard's resources are used from one thread.

#![deny(clippy::unwrap_used)]

mod cache;
mod checkpoint;
mod config;
mod epoch;
mod error;
mod index;
mod io;
mod log;
mod offset_map;
mod scan;
mod segment;
mod shard;
mod throttle;
mod trash;

pub use cache::{LogId, ReadLimit};
pub use checkpoint::{PartitionMetadata, read_checked_file, write_checked_file};
pub use config::{
    CleanupPolicy, FlushPolicy, LogConfig, PAGE_BYTES, SEGMENT_BYTES_MAX, ShardStorageConfig,
};
pub use epoch::{EpochEntry, LeaderEpochCache};
pub use error::{Result, StorageError};
pub use io::probe_direct_io;
pub use log::{
    AppendInfo, CompactionCandidate, CompactionStats, Log, LogIdentity, LogStats, TimestampOffset,
};
pub use shard::ShardStorage;
