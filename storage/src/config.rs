//! The settings of one partition log and of a shard's shared storage resources.

use std::fmt;
use std::str::FromStr;

use crate::StorageError;

/// The size of a page as weir writes it: every write to a segment starts and ends on a
/// page boundary, which O_DIRECT requires (device blocks are 512 or 4096 bytes; 4 KiB
/// satisfies both).
pub const PAGE_BYTES: u64 = 4096;

/// When appended batches are made durable with fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// An append completes only after a sync that started after its write finished.
    EveryBatch,
    /// Batches are written at once and synced at most this many milliseconds later.
    Interval { interval_ms: u64 },
    /// Batches are written but never explicitly synced (the OS and device decide).
    Never,
}

impl fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushPolicy::EveryBatch => f.write_str("every-batch"),
            FlushPolicy::Interval { interval_ms } => write!(f, "interval({interval_ms})"),
            FlushPolicy::Never => f.write_str("never"),
        }
    }
}

impl FromStr for FlushPolicy {
    type Err = StorageError;

    /// Accepts `every-batch`, `never`, and `interval(MS)` (also `interval(MSms)`).
    fn from_str(text: &str) -> Result<FlushPolicy, StorageError> {
        let text = text.trim();
        match text {
            "every-batch" => return Ok(FlushPolicy::EveryBatch),
            "never" => return Ok(FlushPolicy::Never),
            _ => {}
        }
        let interval = text
            .strip_prefix("interval(")
            .and_then(|rest| rest.strip_suffix(')'))
            .map(|inner| inner.trim().trim_end_matches("ms"))
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0);
        interval.map(|interval_ms| FlushPolicy::Interval { interval_ms }).ok_or_else(|| {
            StorageError::InvalidConfig(format!(
                "flush policy {text:?}: expected every-batch, interval(MS) with MS > 0, or never"
            ))
        })
    }
}

/// What happens to old data (Kafka `cleanup.policy`): `delete` removes whole old segments
/// by time and size retention; `compact` keeps the latest record of every key; both can
/// be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.compact, self.delete) {
            (true, true) => f.write_str("compact,delete"),
            (true, false) => f.write_str("compact"),
            _ => f.write_str("delete"),
        }
    }
}

impl FromStr for CleanupPolicy {
    type Err = StorageError;

    /// Kafka's list syntax: `delete`, `compact`, `compact,delete` (either order, spaces
    /// allowed, each at most once).
    fn from_str(text: &str) -> Result<CleanupPolicy, StorageError> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in text.split(',').map(str::trim) {
            let flag = match part {
                "delete" => &mut policy.delete,
                "compact" => &mut policy.compact,
                _ => {
                    return Err(StorageError::InvalidConfig(format!(
                        "cleanup.policy {text:?}: expected delete, compact or compact,delete"
                    )));
                }
            };
            if std::mem::replace(flag, true) {
                return Err(StorageError::InvalidConfig(format!(
                    "cleanup.policy {text:?} names {part} twice"
                )));
            }
        }
        Ok(policy)
    }
}

/// The settings of one partition log. Defaults follow Kafka's where Kafka has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// A segment is rolled before a batch would make it larger than this
    /// (Kafka `segment.bytes`, default 1 GiB).
    pub segment_bytes: u64,
    /// A segment older than this is rolled at the next append (Kafka `segment.ms`, 7 days).
    pub segment_ms: u64,
    /// Sealed segments whose newest timestamp is older than this are deleted
    /// (Kafka `retention.ms`, 7 days); `None` keeps them forever.
    pub retention_ms: Option<u64>,
    /// Oldest sealed segments are deleted while the log is larger than this
    /// (Kafka `retention.bytes`, unlimited by default).
    pub retention_bytes: Option<u64>,
    pub flush: FlushPolicy,
    /// Bytes between sparse index entries (Kafka `index.interval.bytes`, 4096).
    pub index_interval_bytes: u32,
    /// Entries an index may hold before the segment is rolled (Kafka's default
    /// `segment.index.bytes` of 10 MiB at 8 bytes an entry).
    pub index_entries_max: u32,
    /// The largest batch accepted (Kafka `message.max.bytes`, 1 MiB + 12 bytes overhead).
    pub batch_bytes_max: u32,
    /// Reserve `segment_bytes` on disk when a segment is created (fallocate). Off by
    /// default: on ext4, writing into preallocated (unwritten) extents made write+fdatasync
    /// slower (p50 ~450 us against ~330 us appending, docs/BENCHMARKS.md), because each
    /// write converts extents and the sync journals that.
    pub preallocate: bool,
    /// Keep the file of a segment retention deletes and make it the next active segment
    /// (as databases recycle WAL files). Writes into blocks a file already has change no
    /// file metadata, so each fdatasync is one device flush, not also a synchronous write
    /// of the inode's blocks (or a journal commit): half the write+fdatasync latency
    /// measured here (docs/BENCHMARKS.md). A log keeps at most one such spare file.
    pub recycle_segments: bool,
    /// The most bytes one write to a segment carries. Appends under a write-behind policy
    /// wait once four writes' worth is pending (backpressure).
    pub write_chunk_bytes: u32,
    /// Bytes read at once from a segment for a reader, kept for its next sequential read.
    pub readahead_bytes: u32,
    /// Kafka `cleanup.policy` (default `delete`): retention applies only with `delete`,
    /// compaction only with `compact`.
    pub cleanup: CleanupPolicy,
    /// A tombstone (a keyed record with a null value) that is the latest of its key is
    /// removed by compaction once its batch's newest timestamp is older than this
    /// (Kafka `delete.retention.ms`, 1 day).
    pub delete_retention_ms: u64,
    /// Records younger than this are never compacted (Kafka `min.compaction.lag.ms`, 0).
    pub min_compaction_lag_ms: u64,
    /// A log whose oldest uncompacted record is older than this is compacted whatever its
    /// dirty ratio, and its active segment is rolled for it (Kafka
    /// `max.compaction.lag.ms`, unlimited).
    pub max_compaction_lag_ms: u64,
    /// A log is compacted once its uncompacted bytes are at least this share of the
    /// compactable bytes (Kafka `min.cleanable.dirty.ratio`, 0.5).
    pub min_cleanable_dirty_ratio: f64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::EveryBatch,
            index_interval_bytes: 4096,
            index_entries_max: (10 << 20) / 8,
            batch_bytes_max: (1 << 20) + 12,
            preallocate: false,
            recycle_segments: true,
            write_chunk_bytes: 2 << 20,
            readahead_bytes: 1 << 20,
            cleanup: CleanupPolicy::DELETE,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX as u64,
            min_cleanable_dirty_ratio: 0.5,
        }
    }
}

/// Segment positions are stored as u32 in the index, as in Kafka.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

impl LogConfig {
    /// Checks the relations between settings; called before a log is opened with them.
    pub fn validate(&self) -> Result<(), StorageError> {
        let fail = |message: String| Err(StorageError::InvalidConfig(message));
        if self.segment_bytes > SEGMENT_BYTES_MAX {
            return fail(format!(
                "segment_bytes {} exceeds {SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        if self.segment_bytes < u64::from(self.batch_bytes_max) {
            return fail(format!(
                "segment_bytes {} is smaller than batch_bytes_max {}: a batch must fit a segment",
                self.segment_bytes, self.batch_bytes_max
            ));
        }
        if (self.batch_bytes_max as usize) < weir_wire::batch::BATCH_HEADER_BYTES {
            return fail(format!(
                "batch_bytes_max {} is below a batch header",
                self.batch_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 || self.index_entries_max == 0 {
            return fail("index_interval_bytes and index_entries_max must be positive".into());
        }
        if u64::from(self.write_chunk_bytes) < PAGE_BYTES
            || u64::from(self.readahead_bytes) < PAGE_BYTES
        {
            return fail(format!(
                "write_chunk_bytes and readahead_bytes must be at least {PAGE_BYTES}"
            ));
        }
        if self.segment_ms == 0 {
            return fail("segment_ms must be positive".into());
        }
        if !self.cleanup.delete && !self.cleanup.compact {
            return fail("cleanup policy must delete, compact, or both".into());
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return fail(format!(
                "min_cleanable_dirty_ratio {} is outside [0, 1]",
                self.min_cleanable_dirty_ratio
            ));
        }
        if self.max_compaction_lag_ms == 0
            || self.min_compaction_lag_ms > self.max_compaction_lag_ms
        {
            return fail(format!(
                "max_compaction_lag_ms {} must be positive and at least min_compaction_lag_ms {}",
                self.max_compaction_lag_ms, self.min_compaction_lag_ms
            ));
        }
        Ok(())
    }
}

/// Resources shared by every log on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStorageConfig {
    /// Byte budget of the cache of recently appended batches, shared by the shard's logs.
    pub cache_bytes: u64,
    /// Sealed segments kept open (file and loaded index) at once on the shard.
    pub open_segments_max: usize,
    /// Logs of the shard that keep a read-ahead window (`LogConfig::readahead_bytes`, and
    /// its segment file open) between reads; beyond it a read lets its window go.
    pub readahead_windows_max: usize,
    /// Memory for compaction's key-to-latest-offset map (Kafka
    /// `log.cleaner.dedupe.buffer.size`); the shard compacts one log at a time with it.
    pub compaction_map_bytes: u64,
    /// The most bytes a second compaction reads and writes on the shard (Kafka
    /// `log.cleaner.io.max.bytes.per.second`); 0 is no limit, as Kafka's default.
    pub compaction_io_bytes_per_second: u64,
    /// The most bytes a second the shard frees of files its logs deleted (retention,
    /// compaction, deleted partitions); 0 frees them as fast as the disk does. A deleted
    /// file leaves its name at once; only its blocks wait.
    pub delete_bytes_per_second: u64,
    /// Past this many bytes waiting to be freed, the shard frees as fast as the disk does:
    /// disk space comes before smooth latency.
    pub delete_backlog_bytes_max: u64,
}

impl Default for ShardStorageConfig {
    fn default() -> ShardStorageConfig {
        ShardStorageConfig {
            cache_bytes: 256 << 20,
            open_segments_max: 256,
            readahead_windows_max: 64,
            compaction_map_bytes: 32 << 20,
            compaction_io_bytes_per_second: 0,
            delete_bytes_per_second: 64 << 20,
            delete_backlog_bytes_max: 8 << 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policies_parse_and_print() {
        let cases = [
            ("every-batch", Some(FlushPolicy::EveryBatch)),
            ("never", Some(FlushPolicy::Never)),
            (
                "interval(50)",
                Some(FlushPolicy::Interval { interval_ms: 50 }),
            ),
            (
                "interval(50ms)",
                Some(FlushPolicy::Interval { interval_ms: 50 }),
            ),
            ("interval(0)", None),
            ("interval", None),
            ("always", None),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<FlushPolicy>().ok(), expected, "{text}");
            if let Some(policy) = expected {
                assert_eq!(policy.to_string().parse::<FlushPolicy>().unwrap(), policy);
            }
        }
    }

    #[test]
    fn invalid_relations_are_refused() {
        assert!(LogConfig::default().validate().is_ok());
        let small_segment = LogConfig {
            segment_bytes: 1000,
            ..LogConfig::default()
        };
        assert!(small_segment.validate().is_err());
        let huge_segment = LogConfig {
            segment_bytes: 1 << 32,
            ..LogConfig::default()
        };
        assert!(huge_segment.validate().is_err());
    }
}
