use std::path::PathBuf;

use thiserror::Error;
use weir_wire::WireError;

/// Everything a partition log can answer with instead of success.
///
/// Operating errors (bad batch from a client, disk error, corrupt file) are variants here;
/// programming errors are assertions. Every variant that concerns a file names it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("corrupt data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    #[error(
        "offset {offset} is out of range: the log holds [{log_start_offset}, {log_end_offset})"
    )]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },

    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] WireError),

    #[error("log {} is offline after an earlier I/O error: {reason}", path.display())]
    LogOffline { path: PathBuf, reason: String },

    #[error("log {} is being truncated; appends are refused until it is done", path.display())]
    Truncating { path: PathBuf },

    /// A truncation (replication following a new leader) cut batches an append or flush
    /// was waiting for: they are not in the log, durable or not.
    #[error("log {} was truncated to offset {offset} while batches before {target} were awaited", path.display())]
    Truncated {
        path: PathBuf,
        offset: i64,
        target: i64,
    },

    #[error("log {} is closed", path.display())]
    Closed { path: PathBuf },

    /// A reader picked a sealed segment that compaction replaced meanwhile; the log
    /// retries such reads itself, so callers see this only if that keeps happening.
    #[error("segment {} was replaced by compaction during the read", path.display())]
    SegmentReplaced { path: PathBuf },

    /// A replica's batch does not continue the log where it ends.
    #[error("log {} ends at offset {log_end_offset}; a replicated batch starts at {base_offset}", path.display())]
    NotContiguous {
        path: PathBuf,
        base_offset: i64,
        log_end_offset: i64,
    },

    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),

    #[error("log directory {} belongs to {found}, not {expected}", path.display())]
    WrongLog {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
