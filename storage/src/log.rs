//! The partition log: appends, reads, durability, rolls, retention, truncation, recovery.
//!
//! **Invariant:** a log is mutated only by tasks of its owning shard, and no `RefCell`
//! borrow of its state is held across an `.await`: other tasks of the shard run there.
//!
//! Appending is split in two. The synchronous half validates the batch, assigns its
//! offsets, queues it as pending and puts it in the shard cache, so that readers see it
//! at once. The asynchronous half makes it reach the file: whoever holds the log's I/O
//! lock writes *every* pending batch and, when asked for durability, syncs once for all of
//! them. Appenders that find the lock taken queue on it and usually find, once they hold
//! it, that their batch was already written and synced by the one before: that is group
//! commit, with no thread and no timer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use glommio::GlommioError;
use glommio::sync::{Permit, Semaphore};
use weir_wire::RecordIter;
use weir_wire::batch::{self, BatchHeader, LOG_OVERHEAD_BYTES};

pub use self::compact::{CompactionCandidate, CompactionStats};
use crate::cache::{CacheRead, LogId, ReadLimit};
use crate::checkpoint::{self, CHECKPOINT_BYTES_MAX, PartitionMetadata};
use crate::config::{FlushPolicy, LogConfig, PAGE_BYTES};
use crate::epoch::LeaderEpochCache;
use crate::io::{self, Durability, SegmentFile};
use crate::scan::{self, ScanEnd};
use crate::segment::{
    self, ActiveSegment, LOG_EXTENSION, OpenSegment, RECYCLED_EXTENSION, SealedSegment,
    SpareSegment,
};
use crate::shard::ShardStorage;
use crate::trash::Trash;
use crate::{Result, StorageError};

const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// How often a read picks again after compaction replaced the segment it picked.
const REPLACED_RETRIES: u32 = 8;
const EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// Who a log directory belongs to; checked against the directory's metadata on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogIdentity {
    pub topic: String,
    pub partition: i32,
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// How many truncations the log had seen when the batch was appended: a truncation
    /// after it that cuts the batch fails its wait for durability (`Log::finish_append`)
    /// instead of answering for offsets that now hold nothing, or another batch.
    pub truncations: u64,
}

/// The first record at or after a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
}

/// How far an append must get before it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Written to the segment file (on the device, maybe only in its cache).
    Written,
    /// Written and covered by an fdatasync that started after the write completed.
    Durable,
}

/// A batch with assigned offsets that is not yet wholly written to its segment.
#[derive(Debug, Clone)]
struct PendingBatch {
    header: BatchHeader,
    bytes: Bytes,
    /// Where it goes in the active segment, once a write has been planned for it.
    position: u64,
}

/// Writes to a segment in flight at once (each up to `write_chunk_bytes`, 2 MiB by
/// default). More than one keeps the device busy while the next write's buffer is filled:
/// with one 1 MiB write, `never` with 1 MiB batches reached 0.64 of raw write bandwidth.
/// Four of 2 MiB measured best for both the storage benchmark (~1450 MB/s) and the
/// broker's never-flush produce path (~1100 MB/s), and fit glommio's 10 MiB of
/// registered I/O memory (4 MiB writes did not, and measured slower). docs/BENCHMARKS.md.
const WRITES_IN_FLIGHT_MAX: usize = 4;

/// A planned write, its buffer filled, not yet submitted.
struct PlannedWrite {
    file: Rc<SegmentFile>,
    path: PathBuf,
    pages: io::PageWrite,
    start: u64,
    /// Every byte before this position is on disk once the write completes.
    written_end: u64,
    /// The page-aligned end of the bytes it writes.
    range_end: u64,
}

struct InFlightWrite {
    task: glommio::Task<Result<()>>,
    written_end: u64,
    range_end: u64,
}

/// The window of a segment a sequential reader read last, kept for its next read.
#[derive(Debug)]
struct ReadAhead {
    file: Rc<SegmentFile>,
    start: u64,
    bytes: Bytes,
    /// Its place among the shard's kept windows, once a read left it to the log.
    hold: Option<crate::shard::WindowHold>,
}

#[derive(Debug)]
struct LogState {
    sealed: Vec<SealedSegment>,
    active: ActiveSegment,
    /// The offset the next appended batch gets: the log end offset.
    next_offset: i64,
    /// Every batch before this offset is durable.
    durable_offset: i64,
    pending: VecDeque<PendingBatch>,
    pending_bytes: u64,
    /// How many batches at the front of `pending` already have a write planned.
    planned_batches: usize,
    metadata: PartitionMetadata,
    epochs: LeaderEpochCache,
    epochs_dirty: bool,
    /// Set by the first failed write or sync. Nothing is appended after it: after a
    /// failed fsync the kernel may have dropped the dirty pages, so retrying could report
    /// lost data as durable.
    offline: Option<String>,
    closed: bool,
    truncating: bool,
    roll_requested: bool,
    write_behind_running: bool,
    last_sync_at: Instant,
    readahead: Option<ReadAhead>,
    stats: LogStats,
    /// Seals running in the background (see `roll_locked`). Dropping the log cancels them,
    /// as a crash would stop them.
    sealing: Vec<glommio::Task<()>>,
    /// Compaction has handled every record below this offset (`compact.rs`).
    first_dirty_offset: i64,
    /// The most recent truncations and resets, oldest first: (how many the log has seen
    /// since it was opened, counting this one; the offset it cut the log to, `i64::MIN`
    /// for a reset, which removes everything).
    cuts: VecDeque<(u64, i64)>,
    /// A deleted segment's file kept to become the next active segment.
    spare: Option<SpareSegment>,
    /// A segment was rolled since retention last ran: run it soon, so that the segment it
    /// deletes is there as the spare for the next roll.
    rolled_since_retention: bool,
}

/// Counters of the I/O a log did since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub batches_appended: u64,
    pub bytes_appended: u64,
    /// Page-aligned writes to segment files.
    pub writes: u64,
    /// fdatasync calls on segment files: with group commit, fewer than durable appends.
    pub syncs: u64,
    pub rolls: u64,
}

/// One partition's log. Open it with [`Log::open`]; share it within the shard as `Rc`.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: Cell<LogConfig>,
    shard: Rc<ShardStorage>,
    id: LogId,
    state: RefCell<LogState>,
    io: IoLock,
    /// Held by whatever removes or replaces sealed segments (retention, truncation,
    /// compaction's swaps, close), so that they never interleave. Taken before `io`.
    layout: Semaphore,
    /// Fired on every append and whenever the durable offset advances.
    changed: Event,
    /// Fired whenever the durable offset advances.
    durable_advanced: Event,
    /// Fired whenever a write completes (and when the background writer stops).
    written: Event,
    /// Set by a background seal that failed; the log is offline from then on.
    seal_failure: Rc<RefCell<Option<String>>>,
}

/// Held by whoever writes, syncs, rolls, truncates, deletes segments or closes. Every
/// release fires `released`, so appenders waiting for durability re-check whether the
/// holder already wrote and synced their batch, instead of queueing for the lock one by
/// one (a queue would let one writer re-take the lock for each of its own batches while
/// the others wait, and group commit would degrade to a sync per batch).
#[derive(Debug)]
struct IoLock {
    semaphore: Semaphore,
    released: Event,
}

struct IoGuard<'a> {
    _permit: Permit<'a>,
    released: &'a Event,
}

impl Drop for IoGuard<'_> {
    fn drop(&mut self) {
        // Woken tasks run only after this task yields, by when the permit is released.
        self.released.notify(usize::MAX);
    }
}

/// Where a read is served from, decided without awaiting.
enum ReadSource {
    Memory(Vec<Bytes>),
    Segment {
        file: Rc<SegmentFile>,
        path: PathBuf,
        position: u64,
        readable_bytes: u64,
    },
    Sealed(SealedSegment),
}

enum TimestampStart {
    Nowhere,
    Offset(i64),
    Sealed(SealedSegment),
}

/// One step of the writer, decided without awaiting.
enum WriteStep {
    Roll,
    Write(PlannedWrite),
    Done,
}

impl Log {
    /// Opens the log in `dir`, creating it when missing, and recovers it: a torn tail is
    /// cut off, missing or stale indexes are rebuilt, leftovers of interrupted deletions
    /// are removed.
    pub async fn open(
        dir: &Path,
        identity: &LogIdentity,
        config: LogConfig,
        shard: Rc<ShardStorage>,
    ) -> Result<Rc<Log>> {
        config.validate()?;
        // glommio opens relative paths against no directory (EBADF): work with absolute ones.
        let dir = &std::path::absolute(dir).map_err(|source| StorageError::Io {
            operation: "resolving",
            path: dir.to_path_buf(),
            source,
        })?;
        io::ensure_dir(dir).await?;
        let metadata = load_or_create_metadata(dir, identity).await?;
        compact::recover_compaction(dir, &shard.trash).await?;
        let first_dirty_offset = compact::load_cleaner_checkpoint(dir).await?;
        let (bases, spare) =
            list_segments(dir, metadata.log_start_offset, &config, &shard.trash).await?;
        let mut epochs = load_epochs(dir).await?;
        let mut sealed = Vec::with_capacity(bases.len());
        for base in bases.iter().take(bases.len().saturating_sub(1)) {
            sealed.push(SealedSegment::recover(dir, *base, &config).await?);
        }
        let mut epochs_dirty = false;
        let active = match bases.last() {
            Some(base) => {
                let (active, scan) = ActiveSegment::recover(dir, *base, &config).await?;
                // A crash may have come before the checkpoint caught up with the tail.
                for (epoch, start) in scan.iter().flat_map(|scan| &scan.epoch_starts) {
                    epochs_dirty |= epochs.assign(*epoch, *start);
                }
                active
            }
            None => {
                let active = ActiveSegment::create(dir, metadata.log_start_offset, &config).await?;
                io::sync_dir(dir).await?;
                active
            }
        };
        check_continuity(dir, &sealed, &active)?;
        let next_offset = active.next_offset;
        epochs_dirty |= epochs.truncate_from_end(next_offset);
        let mut metadata = metadata;
        let first_base = sealed.first().map_or(active.base_offset, |s| s.base_offset);
        metadata.log_start_offset = metadata.log_start_offset.max(first_base).min(next_offset);
        let log = Rc::new(Log {
            dir: dir.to_path_buf(),
            id: shard.allocate_log_id(),
            shard,
            config: Cell::new(config),
            io: IoLock {
                semaphore: Semaphore::new(1),
                released: Event::new(),
            },
            layout: Semaphore::new(1),
            changed: Event::new(),
            durable_advanced: Event::new(),
            written: Event::new(),
            seal_failure: Rc::new(RefCell::new(None)),
            state: RefCell::new(LogState {
                sealed,
                active,
                next_offset,
                durable_offset: next_offset,
                pending: VecDeque::new(),
                pending_bytes: 0,
                planned_batches: 0,
                metadata,
                epochs,
                epochs_dirty,
                offline: None,
                closed: false,
                truncating: false,
                roll_requested: false,
                write_behind_running: false,
                last_sync_at: Instant::now(),
                readahead: None,
                stats: LogStats::default(),
                sealing: Vec::new(),
                first_dirty_offset,
                cuts: VecDeque::new(),
                spare,
                rolled_since_retention: false,
            }),
        });
        for segment in log
            .state
            .borrow()
            .sealed
            .iter()
            .filter(|s| s.open.borrow().is_some())
        {
            log.shard.opened_segment(&segment.open);
        }
        log.write_epochs_if_dirty().await?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's settings now (they may change while it is open: `set_config`).
    pub fn config(&self) -> LogConfig {
        self.config.get()
    }

    /// Changes the log's settings; each takes effect where it is next consulted (the next
    /// append, roll check, retention pass or read).
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config.set(config);
        self.changed.notify(usize::MAX);
        Ok(())
    }

    /// The offset the next batch will get (Kafka's log end offset).
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().next_offset
    }

    /// The largest record timestamp in the log (`None` when it holds no record with a
    /// timestamp); with [`Log::offset_for_timestamp`] it finds Kafka's max-timestamp
    /// record (ListOffsets -3): the first record carrying it.
    pub fn max_timestamp(&self) -> Option<i64> {
        let state = self.state.borrow();
        let sealed = state.sealed.iter().map(|s| s.max_timestamp);
        let pending = state.pending.iter().map(|p| p.header.max_timestamp);
        sealed
            .chain(std::iter::once(state.active.index.max_timestamp))
            .chain(pending)
            .filter(|t| *t >= 0)
            .max()
    }

    /// The first offset a reader may ask for.
    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().metadata.log_start_offset
    }

    /// Every batch before this offset survives a crash.
    pub fn durable_offset(&self) -> i64 {
        self.state.borrow().durable_offset
    }

    /// Bytes of batches in the log, written or pending.
    pub fn size_bytes(&self) -> u64 {
        let state = self.state.borrow();
        state.sealed.iter().map(|s| s.size_bytes).sum::<u64>()
            + state.active.data_bytes
            + state.pending_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().sealed.len() + 1
    }

    /// Base offsets of the segments, oldest first (the last is the active one).
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        let state = self.state.borrow();
        state
            .sealed
            .iter()
            .map(|s| s.base_offset)
            .chain([state.active.base_offset])
            .collect()
    }

    pub fn stats(&self) -> LogStats {
        self.state.borrow().stats
    }

    pub fn leader_epochs(&self) -> LeaderEpochCache {
        self.state.borrow().epochs.clone()
    }

    /// Appends one batch, assigning its base offset and writing `leader_epoch` into it.
    /// The CRC is checked, never recomputed. With `every-batch` this completes once the
    /// batch is durable; otherwise once it is queued (or written, when too much is queued).
    pub async fn append(self: &Rc<Self>, batch: BytesMut, leader_epoch: i32) -> Result<AppendInfo> {
        let info = self.start_append(batch, leader_epoch)?;
        self.finish_append(&info).await?;
        Ok(info)
    }

    /// The synchronous half of [`Log::append`]: validates the batch, assigns its offsets and
    /// makes it readable. Batches get offsets in the order of these calls, so a caller that
    /// must keep an order (one connection's produce requests) calls this in that order and
    /// awaits [`Log::finish_append`] afterwards.
    pub fn start_append(&self, batch: BytesMut, leader_epoch: i32) -> Result<AppendInfo> {
        let info = self.enqueue(batch, leader_epoch)?;
        self.changed.notify(usize::MAX);
        Ok(info)
    }

    /// The asynchronous half of [`Log::append`]: with `every-batch`, waits until the batch
    /// is durable; otherwise starts writing in the background once enough is pending.
    pub async fn finish_append(self: &Rc<Self>, info: &AppendInfo) -> Result<()> {
        let next_offset = info.last_offset + 1;
        match self.config().flush {
            FlushPolicy::EveryBatch => {
                self.wait_until(next_offset, Reach::Durable, info.truncations)
                    .await
            }
            FlushPolicy::Interval { .. } | FlushPolicy::Never => self.write_behind().await,
        }
    }

    /// Waits, without forcing a sync, until every batch before `offset` is durable (for
    /// the `interval` policy, until the next periodic sync).
    pub async fn wait_durable(&self, offset: i64) -> Result<()> {
        let truncations = self.state.borrow().truncations();
        loop {
            let changed = self.changed.listen();
            if self.reached(offset, Reach::Durable, truncations)? {
                return Ok(());
            }
            changed.await;
        }
    }

    /// Fires whenever a batch is appended or the durable offset advances, for readers that
    /// wait for new data (long-polling fetches). Listen, then check, then await.
    pub fn listen_changes(&self) -> event_listener::EventListener {
        self.changed.listen()
    }

    /// A failed background seal takes the log offline like any failed write.
    fn absorb_seal_failure(&self) {
        if let Some(reason) = self.seal_failure.borrow().as_ref() {
            self.state
                .borrow_mut()
                .offline
                .get_or_insert_with(|| reason.clone());
        }
    }

    /// A follower's append: the batch keeps the base offset and leader epoch its leader
    /// gave it, and must start where this log ends. Otherwise like `start_append` (the
    /// CRC is checked; await `finish_append` for durability).
    pub fn start_append_replica(&self, batch: BytesMut) -> Result<AppendInfo> {
        let header = weir_wire::BatchHeader::parse(&batch)?;
        let log_end_offset = self.log_end_offset();
        if header.base_offset != log_end_offset {
            return Err(StorageError::NotContiguous {
                path: self.dir.clone(),
                base_offset: header.base_offset,
                log_end_offset,
            });
        }
        self.start_append(batch, header.partition_leader_epoch)
    }

    /// The epoch of the newest batch's leader (per the leader-epoch cache), if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.state.borrow().epochs.latest_epoch()
    }

    /// The largest epoch at or below `epoch` and where it ends in this log (exclusive):
    /// what a leader answers a follower that last fetched in `epoch` (KIP-101).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let state = self.state.borrow();
        state.epochs.end_offset_for(epoch, state.next_offset)
    }

    /// Empties the log and starts it again at `offset`, for a follower whose leader no
    /// longer holds anything this log holds (its log start passed this log's end).
    pub async fn reset_to(&self, offset: i64) -> Result<()> {
        let _layout = self.lock_layout().await?;
        let _permit = self.lock().await?;
        self.flush_locked(Reach::Written, i64::MAX).await?;
        self.await_seals().await?;
        {
            let mut state = self.state.borrow_mut();
            state.check_writable(&self.dir)?;
            state.truncating = true;
            state.readahead = None;
        }
        self.finish_truncation(i64::MIN, self.restart_at(offset).await)
    }

    fn enqueue(&self, mut batch: BytesMut, leader_epoch: i32) -> Result<AppendInfo> {
        self.absorb_seal_failure();
        let mut header = batch::validate(&batch, self.config().batch_bytes_max as usize)?;
        let mut state = self.state.borrow_mut();
        state.check_writable(&self.dir)?;
        let base_offset = state.next_offset;
        batch::assign_offset_and_epoch(&mut batch, base_offset, leader_epoch);
        header.base_offset = base_offset;
        header.partition_leader_epoch = leader_epoch;
        let bytes = batch.freeze();
        if state.epochs.assign(leader_epoch, base_offset) {
            state.epochs_dirty = true;
        }
        state.next_offset = header.next_offset();
        state.pending_bytes += bytes.len() as u64;
        state.stats.batches_appended += 1;
        state.stats.bytes_appended += bytes.len() as u64;
        self.shard.cache.borrow_mut().insert(
            self.id,
            base_offset,
            header.next_offset(),
            bytes.clone(),
        );
        state.pending.push_back(PendingBatch {
            header,
            bytes,
            position: 0,
        });
        Ok(AppendInfo {
            base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            truncations: state.truncations(),
        })
    }

    /// For the policies that do not sync per batch: start writing in the background once a
    /// write's worth is pending, and make appenders wait once several are.
    async fn write_behind(self: &Rc<Self>) -> Result<()> {
        let chunk = u64::from(self.config().write_chunk_bytes);
        let pending = self.state.borrow().pending_bytes;
        if pending >= chunk {
            self.start_write_behind();
        }
        if pending < 4 * chunk {
            return Ok(());
        }
        // Backpressure: past four writes' worth pending, wait until the writer brought it
        // under two, not until everything is written: the writer then keeps the device
        // busy while this appender queues more (waiting for a full drain left the device
        // idle a third of the time).
        loop {
            let written = self.written.listen();
            {
                let state = self.state.borrow();
                if let Some(reason) = &state.offline {
                    return Err(StorageError::LogOffline {
                        path: self.dir.clone(),
                        reason: reason.clone(),
                    });
                }
                if state.pending_bytes < 2 * chunk {
                    return Ok(());
                }
            }
            self.start_write_behind();
            written.await;
        }
    }

    /// Starts the background writer unless it runs.
    fn start_write_behind(self: &Rc<Self>) {
        if std::mem::replace(&mut self.state.borrow_mut().write_behind_running, true) {
            return;
        }
        let log = self.clone();
        glommio::spawn_local(async move {
            let (target, truncations) = log.end_and_truncations();
            // A failure marks the log offline; appenders see it.
            let _ = log.wait_until(target, Reach::Written, truncations).await;
            log.state.borrow_mut().write_behind_running = false;
            log.written.notify(usize::MAX);
        })
        .detach();
    }

    /// Writes, and syncs, everything appended so far.
    pub async fn flush(&self) -> Result<()> {
        let (target, truncations) = self.end_and_truncations();
        self.wait_until(target, Reach::Durable, truncations).await
    }

    /// Truncations and resets since the log was opened: state derived from the log (a
    /// follower's view of its transactions) is stale once this changes.
    pub fn truncations(&self) -> u64 {
        self.state.borrow().truncations()
    }

    fn end_and_truncations(&self) -> (i64, u64) {
        let state = self.state.borrow();
        (state.next_offset, state.truncations())
    }

    /// Periodic work the owning shard calls every few milliseconds: writes what is pending
    /// for the write-behind policies, and syncs when an `interval` policy's time is up.
    pub async fn tick(&self) -> Result<()> {
        let (pending, unsynced, since_sync) = {
            let state = self.state.borrow();
            let unsynced = state.durable_offset < state.next_offset;
            (
                !state.pending.is_empty(),
                unsynced,
                state.last_sync_at.elapsed(),
            )
        };
        let (target, truncations) = self.end_and_truncations();
        match self.config().flush {
            FlushPolicy::EveryBatch => Ok(()),
            FlushPolicy::Interval { interval_ms }
                if unsynced && since_sync >= Duration::from_millis(interval_ms) =>
            {
                self.wait_until(target, Reach::Durable, truncations).await
            }
            FlushPolicy::Interval { .. } | FlushPolicy::Never if pending => {
                self.wait_until(target, Reach::Written, truncations).await
            }
            FlushPolicy::Interval { .. } | FlushPolicy::Never => Ok(()),
        }
    }

    /// Seals the active segment (if it holds anything) and starts a new one.
    pub async fn roll(&self) -> Result<()> {
        let _permit = self.lock().await?;
        self.state.borrow_mut().roll_requested = true;
        self.flush_locked(Reach::Written, i64::MAX).await
    }

    /// Waits until every batch before `target` has reached `reach`, doing the I/O itself
    /// when nobody else is. `truncations` is the log's count when the caller's batches
    /// were appended: a later truncation below `target` fails the wait.
    async fn wait_until(&self, target: i64, reach: Reach, truncations: u64) -> Result<()> {
        loop {
            if self.reached(target, reach, truncations)? {
                return Ok(());
            }
            // Listen before trying the lock, so a release in between is not missed.
            let released = self.io.released.listen();
            let durable = self.durable_advanced.listen();
            if let Some(_guard) = self.try_lock()? {
                // Let appenders that are ready to run (often the ones the last sync released)
                // queue their batches first, so that this write and sync carry them too.
                futures_lite::future::yield_now().await;
                self.flush_locked(reach, target).await?;
                continue;
            }
            // Whoever holds the lock may keep it for several syncs under load: wake for each.
            futures_lite::future::or(released, durable).await;
        }
    }

    fn reached(&self, target: i64, reach: Reach, truncations: u64) -> Result<bool> {
        self.absorb_seal_failure();
        let state = self.state.borrow();
        if let Some(reason) = &state.offline {
            return Err(StorageError::LogOffline {
                path: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        if let Some(cut) = state.cut_since(truncations)
            && cut < target
        {
            return Err(StorageError::Truncated {
                path: self.dir.clone(),
                offset: cut.max(0),
                target,
            });
        }
        let done = match reach {
            Reach::Written => state.active.next_offset,
            Reach::Durable => state.durable_offset,
        };
        Ok(done >= target || target > state.next_offset)
    }

    async fn lock(&self) -> Result<IoGuard<'_>> {
        let permit =
            self.io
                .semaphore
                .acquire_permit(1)
                .await
                .map_err(|_| StorageError::Closed {
                    path: self.dir.clone(),
                })?;
        Ok(IoGuard {
            _permit: permit,
            released: &self.io.released,
        })
    }

    async fn lock_layout(&self) -> Result<Permit<'_>> {
        self.layout
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed {
                path: self.dir.clone(),
            })
    }

    fn try_lock(&self) -> Result<Option<IoGuard<'_>>> {
        match self.io.semaphore.try_acquire_permit(1) {
            Ok(permit) => Ok(Some(IoGuard {
                _permit: permit,
                released: &self.io.released,
            })),
            Err(GlommioError::Closed(_)) => Err(StorageError::Closed {
                path: self.dir.clone(),
            }),
            Err(_) => Ok(None),
        }
    }

    /// Writes every pending batch (rolling where needed) and, for `Durable`, syncs them.
    /// The caller holds the I/O lock. A failure takes the log offline.
    async fn flush_locked(&self, reach: Reach, target: i64) -> Result<()> {
        let result = self.flush_locked_inner(reach, target).await;
        if let Err(error) = &result {
            let mut state = self.state.borrow_mut();
            if state.offline.is_none()
                && matches!(
                    error,
                    StorageError::Io { .. } | StorageError::Corrupt { .. }
                )
            {
                tracing::error!(log = %self.dir.display(), %error, "taking the log offline");
                state.offline = Some(error.to_string());
            }
        }
        result
    }

    /// Writes what is pending and syncs, until `target` (or, for `Written`, everything
    /// pending) is there. The holder stops once its own batch is durable: waiting appenders
    /// take over, so nobody's answer waits behind a busy stream of others'.
    ///
    /// Writes are not overlapped with the sync in flight: measured here, writing batches
    /// while an fdatasync ran made the syncs slower (the device flush waits for them too)
    /// and produce p50 at 200 MB/s of 16 KiB batches went from ~0.85 ms to ~4 ms.
    async fn flush_locked_inner(&self, reach: Reach, target: i64) -> Result<()> {
        loop {
            self.write_pending().await?;
            if reach == Reach::Written {
                return Ok(());
            }
            let (written, durable) = {
                let state = self.state.borrow();
                (state.active.next_offset, state.durable_offset)
            };
            if durable >= written || durable >= target {
                return Ok(());
            }
            self.sync_locked().await?;
        }
    }

    /// Writes every pending batch, rolling where needed.
    async fn write_pending(&self) -> Result<()> {
        let mut in_flight = VecDeque::new();
        loop {
            match self.next_write_step() {
                WriteStep::Roll => {
                    self.complete_writes(&mut in_flight, 0).await?;
                    self.roll_locked().await?;
                }
                WriteStep::Write(write) => {
                    // A write may rewrite the last page of the one before it (the tail page):
                    // those two must not be in flight together, or the device could apply
                    // the older one last.
                    if in_flight
                        .back()
                        .is_some_and(|w: &InFlightWrite| w.range_end > write.start)
                    {
                        self.complete_writes(&mut in_flight, 0).await?;
                    }
                    let PlannedWrite {
                        file,
                        path,
                        pages,
                        written_end,
                        range_end,
                        ..
                    } = write;
                    let task =
                        glommio::spawn_local(async move { pages.submit(&file, &path).await });
                    in_flight.push_back(InFlightWrite {
                        task,
                        written_end,
                        range_end,
                    });
                    self.complete_writes(&mut in_flight, WRITES_IN_FLIGHT_MAX - 1)
                        .await?;
                }
                WriteStep::Done => return self.complete_writes(&mut in_flight, 0).await,
            }
        }
    }

    fn mark_durable(&self, covered: i64) {
        let mut state = self.state.borrow_mut();
        state.durable_offset = state.durable_offset.max(covered);
        state.last_sync_at = Instant::now();
        state.stats.syncs += 1;
        self.changed.notify(usize::MAX);
        self.durable_advanced.notify(usize::MAX);
    }

    /// Plans the next write: takes unplanned pending batches (up to a write's worth, never
    /// across a roll) and copies them, behind the tail page, into a DMA buffer. While more
    /// batches for the same segment wait, the write covers whole pages only and the partial
    /// last page stays in memory, so consecutive writes touch disjoint pages and can be in
    /// flight together; the last write of a flush also writes the partial page.
    fn next_write_step(&self) -> WriteStep {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        if state.active.planned_bytes == 0 {
            // Nothing to seal: an explicit roll of an empty segment is a no-op.
            state.roll_requested = false;
        }
        let active = &state.active;
        let roll = match state.pending.get(state.planned_batches) {
            None => Some(state.roll_requested),
            Some(first) => (active.planned_bytes > 0
                && (state.roll_requested || self.needs_roll(active, 0, &first.header, true)))
            .then_some(true),
        };
        if let Some(roll) = roll {
            if active.tail_unwritten {
                // A whole-page write left the partial last page in memory, expecting more
                // batches behind it; none come for this segment, so write it out now.
                return WriteStep::Write(self.plan_tail_write(&mut state.active));
            }
            return if roll {
                WriteStep::Roll
            } else {
                WriteStep::Done
            };
        }
        let chunk = u64::from(self.config().write_chunk_bytes);
        let (mut planned, mut cut_by_chunk) = (0usize, false);
        let mut planned_bytes = 0u64;
        for pending in state.pending.range(state.planned_batches..) {
            let len = pending.bytes.len() as u64;
            if planned > 0 {
                if planned_bytes + len > chunk {
                    cut_by_chunk = true;
                    break;
                }
                if self.needs_roll(active, planned_bytes, &pending.header, false) {
                    break;
                }
            }
            planned_bytes += len;
            planned += 1;
        }
        let active = &mut state.active;
        let start = io::align_down(active.planned_bytes);
        let new_end = active.planned_bytes + planned_bytes;
        let written_end = if cut_by_chunk && io::align_down(new_end) > start {
            io::align_down(new_end)
        } else {
            new_end
        };
        let batches = state
            .pending
            .range_mut(state.planned_batches..state.planned_batches + planned);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(planned + 1);
        parts.push(&active.tail_page);
        let mut position = active.planned_bytes;
        let mut checks = Vec::with_capacity(planned);
        for batch in batches {
            batch.position = position;
            checks.push((
                position,
                &batch.bytes,
                batch.header.crc,
                batch.header.base_offset,
            ));
            position += batch.bytes.len() as u64;
            parts.push(&batch.bytes);
        }
        let pages = io::PageWrite::new(&active.file, start, &parts, (written_end - start) as usize);
        for (position, bytes, crc, base_offset) in checks {
            // Checked right before it is written, as it was on append: memory can rot too.
            // Where the whole batch is in the write, the check reads the very bytes about
            // to be written, while they are still in cache from the copy.
            let from = (position - start) as usize;
            let written = pages.bytes().get(from..from + bytes.len()).unwrap_or(bytes);
            assert_eq!(
                batch::compute_crc(written),
                crc,
                "batch at offset {base_offset} of {} changed in memory",
                active.path.display()
            );
        }
        let tail_page = tail_of(&parts, (new_end % PAGE_BYTES) as usize);
        active.tail_page = tail_page;
        active.planned_bytes = new_end;
        active.tail_unwritten = written_end < new_end;
        state.planned_batches += planned;
        WriteStep::Write(PlannedWrite {
            file: active.file.clone(),
            path: active.path.clone(),
            pages,
            start,
            written_end,
            range_end: io::align_up(written_end),
        })
    }

    /// A write of just the partial last page that a whole-page write left in memory.
    fn plan_tail_write(&self, active: &mut ActiveSegment) -> PlannedWrite {
        let start = io::align_down(active.planned_bytes);
        let pages = io::PageWrite::new(
            &active.file,
            start,
            &[&active.tail_page],
            active.tail_page.len(),
        );
        active.tail_unwritten = false;
        PlannedWrite {
            file: active.file.clone(),
            path: active.path.clone(),
            pages,
            start,
            written_end: active.planned_bytes,
            range_end: io::align_up(active.planned_bytes),
        }
    }

    /// Whether `header`'s batch must go to a new segment, given `planned_bytes` more headed
    /// for the active one. Age counts only for the first batch of a write.
    fn needs_roll(
        &self,
        active: &ActiveSegment,
        planned_bytes: u64,
        header: &BatchHeader,
        first: bool,
    ) -> bool {
        let size = active.planned_bytes + planned_bytes + header.total_bytes() as u64;
        let relative_last = header.last_offset() - active.base_offset;
        let config = self.config();
        // A compacted log rolls by max.compaction.lag.ms too: records in the active
        // segment cannot be compacted.
        let roll_ms = if config.cleanup.compact {
            config.segment_ms.min(config.max_compaction_lag_ms)
        } else {
            config.segment_ms
        };
        size > config.segment_bytes
            || active.index.entry_count() >= config.index_entries_max as usize
            || relative_last > i64::from(u32::MAX)
            || (first && active.created_at.elapsed() >= Duration::from_millis(roll_ms))
    }

    /// Awaits the oldest writes until at most `keep` are in flight, and applies each: the
    /// batches that now lie wholly on disk become readable from the segment and leave the
    /// pending queue.
    async fn complete_writes(
        &self,
        in_flight: &mut VecDeque<InFlightWrite>,
        keep: usize,
    ) -> Result<()> {
        while in_flight.len() > keep {
            let Some(write) = in_flight.pop_front() else {
                break;
            };
            write.task.await?;
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            while state.planned_batches > 0 {
                let Some(batch) = state.pending.front() else {
                    break;
                };
                let end = batch.position + batch.bytes.len() as u64;
                if end > write.written_end {
                    break;
                }
                let active = &mut state.active;
                assert!(
                    batch.position == active.data_bytes
                        && batch.header.base_offset >= active.next_offset,
                    "batch at offset {} (byte {}) does not follow offset {} (byte {}) in {}",
                    batch.header.base_offset,
                    batch.position,
                    active.next_offset,
                    active.data_bytes,
                    active.path.display()
                );
                active.index.observe(
                    active.base_offset,
                    &batch.header,
                    batch.position,
                    self.config().index_interval_bytes,
                );
                active.data_bytes = end;
                active.next_offset = batch.header.next_offset();
                state.pending_bytes -= batch.bytes.len() as u64;
                state.planned_batches -= 1;
                state.pending.pop_front();
            }
            state.stats.writes += 1;
            self.written.notify(usize::MAX);
        }
        Ok(())
    }

    async fn sync_locked(&self) -> Result<()> {
        self.write_epochs_if_dirty().await?;
        let (file, path, written) = {
            let state = self.state.borrow();
            if state.durable_offset >= state.active.next_offset {
                return Ok(());
            }
            (
                state.active.file.clone(),
                state.active.path.clone(),
                state.active.next_offset,
            )
        };
        io::fdatasync(&file, &path).await?;
        self.mark_durable(written);
        Ok(())
    }

    /// Seals the active segment and starts the next one where it ended.
    async fn roll_locked(&self) -> Result<()> {
        self.sync_locked().await?;
        // The old segment becomes sealed for readers at once; cutting its page padding and
        // writing its index files happens in the background, so appends to the new segment
        // do not wait for those syncs. A crash before that finishes leaves an index-less
        // segment ending in zeros, which recovery finishes sealing.
        let mut old = self.state.borrow().active.clone();
        old.cut_recycled_tail().await?;
        let sealed = old.sealed_view();
        let fresh = self.new_active_segment(old.next_offset).await?;
        io::sync_dir(&self.dir).await?;
        self.shard.opened_segment(&sealed.open);
        let (dir, failure) = (self.dir.clone(), self.seal_failure.clone());
        let sealing = glommio::spawn_local(async move {
            if let Err(error) = old.finish_seal(&dir).await {
                tracing::error!(segment = %old.path.display(), %error, "sealing failed");
                failure.borrow_mut().get_or_insert(error.to_string());
            }
        });
        let mut state = self.state.borrow_mut();
        state.active = fresh;
        state.sealed.push(sealed);
        state.sealing.push(sealing);
        state.roll_requested = false;
        state.readahead = None;
        state.stats.rolls += 1;
        state.rolled_since_retention = true;
        Ok(())
    }

    /// The empty segment based at `base_offset` to append to next: the spare file when
    /// there is one it can be, else a new file. The caller syncs the directory.
    async fn new_active_segment(&self, base_offset: i64) -> Result<ActiveSegment> {
        let spare = self.state.borrow_mut().spare.take();
        if let Some(spare) = spare {
            if self.config().recycle_segments && spare.usable_for(base_offset) {
                return ActiveSegment::adopt(&self.dir, base_offset, spare).await;
            }
            if base_offset < spare.stale_below || !self.config().recycle_segments {
                // It would never be usable: the log restarted below it.
                let held_by = vec![spare.readers.clone()];
                self.shard.trash.discard(&spare.path, held_by).await?;
            } else {
                // Readers of the segment it was still hold it: keep it for the next roll.
                self.state.borrow_mut().spare = Some(spare);
            }
        }
        ActiveSegment::create(&self.dir, base_offset, &self.config()).await
    }

    /// Whether a segment was rolled since retention last ran (the shard then runs it
    /// without waiting for its periodic check).
    pub fn rolled_since_retention(&self) -> bool {
        self.state.borrow().rolled_since_retention
    }

    /// Waits for background seals; operations that delete, cut or close segments need
    /// their files settled first.
    async fn await_seals(&self) -> Result<()> {
        let sealing = std::mem::take(&mut self.state.borrow_mut().sealing);
        for seal in sealing {
            seal.await;
        }
        match self.seal_failure.borrow().as_ref() {
            Some(reason) => Err(StorageError::LogOffline {
                path: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn write_epochs_if_dirty(&self) -> Result<()> {
        let contents = {
            let mut state = self.state.borrow_mut();
            if !state.epochs_dirty {
                return Ok(());
            }
            state.epochs_dirty = false;
            checkpoint::encode_epochs(&state.epochs)
        };
        io::write_file_atomically(
            &self.dir,
            EPOCH_CHECKPOINT_FILE,
            &contents,
            Durability::Synced,
        )
        .await
    }

    /// Reads whole batches from the one holding `offset`, up to `max_bytes` (at least one
    /// batch when there is one) and stopping before any batch that reaches `max_offset`
    /// (a high watermark). Recent batches come from the shard cache without a copy.
    pub async fn read(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<Vec<Bytes>> {
        self.read_within(offset, ReadLimit::at_least_one(max_bytes), max_offset)
            .await
    }

    /// As `read`, within `limit`: without `at_least_one`, nothing rather than more than
    /// its bytes, so what a read allocates is bounded before it reads.
    pub async fn read_within(
        &self,
        offset: i64,
        limit: ReadLimit,
        max_offset: i64,
    ) -> Result<Vec<Bytes>> {
        let mut attempts = 0;
        loop {
            match self.read_once(offset, limit, max_offset).await {
                // The segment picked was replaced by compaction while it was being opened:
                // pick again (the replacement holds the same offsets).
                Err(StorageError::SegmentReplaced { .. }) if attempts < REPLACED_RETRIES => {
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    async fn read_once(
        &self,
        offset: i64,
        limit: ReadLimit,
        max_offset: i64,
    ) -> Result<Vec<Bytes>> {
        let source = self.read_source(offset, limit, max_offset)?;
        match source {
            ReadSource::Memory(batches) => Ok(batches),
            ReadSource::Segment {
                file,
                path,
                position,
                readable_bytes,
            } => {
                self.read_segment(
                    &file,
                    &path,
                    position,
                    readable_bytes,
                    offset,
                    limit,
                    max_offset,
                )
                .await
            }
            ReadSource::Sealed(segment) => {
                let open = self.open_sealed(&segment).await?;
                let position = open.index.position_for(segment.base_offset, offset);
                let (path, size) = (&segment.path, segment.size_bytes);
                self.read_segment(&open.file, path, position, size, offset, limit, max_offset)
                    .await
            }
        }
    }

    fn read_source(&self, offset: i64, limit: ReadLimit, max_offset: i64) -> Result<ReadSource> {
        let state = self.state.borrow();
        if state.closed {
            return Err(StorageError::Closed {
                path: self.dir.clone(),
            });
        }
        let log_start_offset = state.metadata.log_start_offset;
        if offset < log_start_offset || offset > state.next_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset,
                log_end_offset: state.next_offset,
            });
        }
        // Nothing after the limit, or no room (a read for the offset check alone).
        if offset >= max_offset.min(state.next_offset) || limit == ReadLimit::at_most(0) {
            return Ok(ReadSource::Memory(Vec::new()));
        }
        if let CacheRead::Hit(batches) = self
            .shard
            .cache
            .borrow()
            .read(self.id, offset, limit, max_offset)
        {
            return Ok(ReadSource::Memory(batches));
        }
        if offset >= state.active.next_offset {
            return Ok(ReadSource::Memory(read_pending(
                &state.pending,
                offset,
                limit,
                max_offset,
            )));
        }
        if offset >= state.active.base_offset {
            let active = &state.active;
            return Ok(ReadSource::Segment {
                file: active.file.clone(),
                path: active.path.clone(),
                position: active.index.position_for(active.base_offset, offset),
                readable_bytes: active.data_bytes,
            });
        }
        // The first sealed segment that still has batches at or after the offset: offsets
        // may have gaps between segments.
        // Compaction can leave a segment empty (its next offset is then its base): skip it.
        let index = state.sealed.partition_point(|s| s.next_offset <= offset);
        let holding = state.sealed[index..].iter().find(|s| s.size_bytes > 0);
        if let Some(segment) = holding {
            return Ok(ReadSource::Sealed(segment.clone()));
        }
        let active = &state.active;
        Ok(ReadSource::Segment {
            file: active.file.clone(),
            path: active.path.clone(),
            position: 0,
            readable_bytes: active.data_bytes,
        })
    }

    /// A sealed segment's file and index, opened on demand. The segment may leave the log
    /// (retention) while this awaits; what it returns stays readable regardless.
    async fn open_sealed(&self, segment: &SealedSegment) -> Result<Rc<OpenSegment>> {
        let (open, newly) = segment.opened(&self.dir, &self.config()).await?;
        if newly {
            self.shard.opened_segment(&segment.open);
        }
        Ok(open)
    }

    /// Reads batches from a segment file starting at `position` (an index entry at or
    /// before the batch holding `offset`), through the read-ahead window.
    #[allow(clippy::too_many_arguments)]
    async fn read_segment(
        &self,
        file: &Rc<SegmentFile>,
        path: &Path,
        mut position: u64,
        readable_bytes: u64,
        offset: i64,
        limit: ReadLimit,
        max_offset: i64,
    ) -> Result<Vec<Bytes>> {
        let mut window = self.take_readahead(file, position);
        let mut found = Vec::new();
        let mut found_bytes = 0usize;
        let corrupt = |position: u64, reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            position,
            reason,
        };
        while position < readable_bytes {
            let remaining = readable_bytes - position;
            let prefix = self
                .window_slice(
                    &mut window,
                    file,
                    path,
                    position,
                    LOG_OVERHEAD_BYTES.min(remaining as usize),
                    readable_bytes,
                )
                .await?;
            let total = batch::peek_total_bytes(&prefix).unwrap_or(0);
            if total < batch::BATCH_HEADER_BYTES as i64
                || total > i64::from(self.config().batch_bytes_max)
                || total as u64 > remaining
            {
                return Err(corrupt(
                    position,
                    format!("batch length {total} is invalid with {remaining} bytes of data left"),
                ));
            }
            let total = total as usize;
            if !limit.fits(found_bytes, !found.is_empty(), total) {
                break;
            }
            let bytes = self
                .window_slice(&mut window, file, path, position, total, readable_bytes)
                .await?;
            let header = batch::validate(&bytes, self.config().batch_bytes_max as usize)
                .map_err(|e| corrupt(position, e.to_string()))?;
            if header.next_offset() > max_offset {
                break;
            }
            if header.next_offset() > offset {
                found_bytes += total;
                found.push(bytes);
            }
            position += total as u64;
        }
        // Kept for the next sequential read while the shard has room for another window:
        // each holds `readahead_bytes` and its segment file open.
        if let Some(mut window) = window {
            if window.hold.is_none() {
                window.hold = self.shard.hold_readahead();
            }
            if window.hold.is_some() {
                self.state.borrow_mut().readahead = Some(window);
            }
        }
        Ok(found)
    }

    fn take_readahead(&self, file: &Rc<SegmentFile>, position: u64) -> Option<ReadAhead> {
        let mut state = self.state.borrow_mut();
        let window = state.readahead.take()?;
        let covers = Rc::ptr_eq(&window.file, file)
            && window.start <= position
            && position < window.start + window.bytes.len() as u64;
        covers.then_some(window)
    }

    /// The bytes `[position, position + len)`, from the window when it covers them, else
    /// from a fresh read of `readahead_bytes` (or more) that becomes the window.
    async fn window_slice(
        &self,
        window: &mut Option<ReadAhead>,
        file: &Rc<SegmentFile>,
        path: &Path,
        position: u64,
        len: usize,
        readable_bytes: u64,
    ) -> Result<Bytes> {
        let covered = window.as_ref().is_some_and(|w| {
            w.start <= position && position + len as u64 <= w.start + w.bytes.len() as u64
        });
        if !covered {
            let want = (self.config().readahead_bytes as usize).max(len);
            let want = want.min((readable_bytes - position) as usize).max(len);
            let bytes = io::read_at(file, path, position, want).await?;
            if bytes.len() < len {
                let reason = format!("file ends after {} of {len} bytes", bytes.len());
                return Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    position,
                    reason,
                });
            }
            // A window it replaces gives up its hold (a new one is taken when kept).
            *window = Some(ReadAhead {
                file: file.clone(),
                start: position,
                bytes,
                hold: None,
            });
        }
        let Some(w) = window.as_ref() else {
            unreachable!("window was just filled")
        };
        let from = (position - w.start) as usize;
        Ok(w.bytes.slice(from..from + len))
    }

    /// The first record whose timestamp is at or after `timestamp` (Kafka ListOffsets by
    /// time), or `None` when every record is older.
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampOffset>> {
        let mut attempts = 0;
        let start = loop {
            match self.timestamp_search_start(timestamp)? {
                TimestampStart::Nowhere => return Ok(None),
                TimestampStart::Offset(offset) => break offset,
                TimestampStart::Sealed(segment) => match self.open_sealed(&segment).await {
                    Ok(open) => {
                        break open
                            .index
                            .start_offset_for_timestamp(segment.base_offset, timestamp);
                    }
                    Err(StorageError::SegmentReplaced { .. }) if attempts < REPLACED_RETRIES => {
                        attempts += 1;
                    }
                    Err(error) => return Err(error),
                },
            }
        };
        let mut offset = start.max(self.log_start_offset());
        loop {
            let batches = self
                .read(offset, self.config().readahead_bytes as usize, i64::MAX)
                .await?;
            if batches.is_empty() {
                return Ok(None);
            }
            for bytes in &batches {
                let header = BatchHeader::parse(bytes)?;
                let found = (header.max_timestamp >= timestamp)
                    .then(|| first_record_at_or_after(bytes, &header, timestamp, offset))
                    .flatten();
                if found.is_some() {
                    return Ok(found);
                }
                offset = header.next_offset();
            }
        }
    }

    /// Where to start looking for `timestamp`: every batch before it is older.
    fn timestamp_search_start(&self, timestamp: i64) -> Result<TimestampStart> {
        let state = self.state.borrow();
        if state.closed {
            return Err(StorageError::Closed {
                path: self.dir.clone(),
            });
        }
        if let Some(segment) = state.sealed.iter().find(|s| s.max_timestamp >= timestamp) {
            return Ok(TimestampStart::Sealed(segment.clone()));
        }
        let active = &state.active;
        if active.index.max_timestamp >= timestamp {
            let start = active
                .index
                .start_offset_for_timestamp(active.base_offset, timestamp);
            return Ok(TimestampStart::Offset(start));
        }
        let pending = state
            .pending
            .iter()
            .find(|p| p.header.max_timestamp >= timestamp);
        Ok(pending.map_or(TimestampStart::Nowhere, |p| {
            TimestampStart::Offset(p.header.base_offset)
        }))
    }

    /// Cuts the log so that it ends before `offset`: every batch holding `offset` or a
    /// later one is removed (a batch is never split, so the new end can be lower). At or
    /// below the log start, the log is emptied and restarts at `offset`. Replication needs
    /// this when a follower's tail diverges from its new leader's. Appends are refused
    /// while it runs.
    pub async fn truncate_to(&self, offset: i64) -> Result<()> {
        let _layout = self.lock_layout().await?;
        let _permit = self.lock().await?;
        self.flush_locked(Reach::Written, i64::MAX).await?;
        self.await_seals().await?;
        {
            let mut state = self.state.borrow_mut();
            state.check_writable(&self.dir)?;
            if offset >= state.next_offset {
                return Ok(());
            }
            assert!(
                state.pending.is_empty(),
                "pending batches survived a flush under the I/O lock"
            );
            state.truncating = true;
            state.readahead = None;
        }
        self.finish_truncation(offset, self.truncate_locked(offset).await)
    }

    /// Ends a truncation (or reset) begun under the locks: appends are taken again, and a
    /// failed one leaves the log offline, its files in an unknown state.
    fn finish_truncation(&self, cut: i64, result: Result<()>) -> Result<()> {
        let mut state = self.state.borrow_mut();
        state.truncating = false;
        let count = state.truncations() + 1;
        if state.cuts.len() == CUTS_REMEMBERED {
            state.cuts.pop_front();
        }
        state.cuts.push_back((count, cut));
        // Waiters for durability of what was cut learn it now.
        self.changed.notify(usize::MAX);
        self.durable_advanced.notify(usize::MAX);
        if let Err(error) = &result {
            state.offline.get_or_insert_with(|| error.to_string());
        }
        result
    }

    async fn truncate_locked(&self, offset: i64) -> Result<()> {
        let log_start_offset = self.log_start_offset();
        if offset <= log_start_offset {
            return self.restart_at(offset).await;
        }
        // Segments that begin at or after the offset go entirely; the one before it
        // becomes the active segment again, cut at the first batch reaching the offset.
        let (doomed, target, active_data_bytes) = {
            let state = self.state.borrow();
            let bases: Vec<i64> = state
                .sealed
                .iter()
                .map(|s| s.base_offset)
                .chain([state.active.base_offset])
                .collect();
            let keep = bases.partition_point(|base| *base < offset);
            let target = bases[keep - 1];
            let active = &state.active;
            (
                bases[keep..].to_vec(),
                target,
                (target == active.base_offset).then_some(active.data_bytes),
            )
        };
        let path = io::segment_path(&self.dir, target, LOG_EXTENSION);
        let file = io::open_segment(&path).await?;
        // The active segment's file may be a recycled one, longer than its data.
        let size = match active_data_bytes {
            Some(bytes) => bytes,
            None => io::file_size(&file, &path).await?,
        };
        let scan = scan::scan_segment(
            &file,
            &path,
            target,
            size,
            segment::scan_settings(&self.config(), Some(offset)),
        )
        .await?;
        if let ScanEnd::Invalid { reason } = &scan.end {
            return Err(StorageError::Corrupt {
                path,
                position: scan.end_position,
                reason: reason.clone(),
            });
        }
        if scan.next_offset < log_start_offset {
            // The cut batch also holds the log start (moved into it by record deletion):
            // nothing readable is left, and the log must not end before it starts.
            drop(file);
            return self.restart_at(log_start_offset).await;
        }
        io::truncate(&file, &path, scan.end_position).await?;
        io::fdatasync(&file, &path).await?;
        drop(file);
        for base in &doomed {
            self.discard_segment(*base).await?;
        }
        segment::discard_index_files(&self.dir, target, &self.shard.trash).await?;
        io::sync_dir(&self.dir).await?;
        let (active, _) = ActiveSegment::recover(&self.dir, target, &self.config()).await?;
        let new_end = active.next_offset;
        {
            let mut state = self.state.borrow_mut();
            state.sealed.retain(|s| s.base_offset < target);
            state.active = active;
            state.next_offset = new_end;
            state.durable_offset = new_end;
            if state.epochs.truncate_from_end(new_end) {
                state.epochs_dirty = true;
            }
        }
        self.shard.cache.borrow_mut().truncate(self.id, new_end);
        self.forget_compaction_from(new_end).await?;
        self.write_epochs_if_dirty().await
    }

    /// Records from `offset` on were cut off: what is appended there next is dirty.
    async fn forget_compaction_from(&self, offset: i64) -> Result<()> {
        if self.state.borrow().first_dirty_offset > offset {
            self.write_cleaner_checkpoint(offset).await?;
        }
        Ok(())
    }

    /// Empties the log and starts it again at `offset` (Kafka's truncate-fully-and-start-at).
    async fn restart_at(&self, offset: i64) -> Result<()> {
        let bases = self.segment_base_offsets();
        let mut metadata = self.state.borrow().metadata.clone();
        metadata.log_start_offset = offset;
        io::write_file_atomically(
            &self.dir,
            PARTITION_METADATA_FILE,
            &checkpoint::encode_partition_metadata(&metadata),
            Durability::Synced,
        )
        .await?;
        for base in bases {
            self.discard_segment(base).await?;
        }
        let active = self.new_active_segment(offset).await?;
        io::sync_dir(&self.dir).await?;
        {
            let mut state = self.state.borrow_mut();
            state.sealed.clear();
            state.active = active;
            state.next_offset = offset;
            state.durable_offset = offset;
            state.metadata = metadata;
            state.epochs = LeaderEpochCache::default();
            state.epochs_dirty = true;
        }
        self.shard.cache.borrow_mut().remove_log(self.id);
        self.forget_compaction_from(offset).await?;
        self.write_epochs_if_dirty().await
    }

    /// Deletes sealed segments that retention no longer keeps: older than `retention_ms`
    /// (by their newest timestamp, against `now_ms`), beyond `retention_bytes` (oldest
    /// first), or wholly before the log start offset. The active segment is never deleted.
    /// Returns the number of segments deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        self.delete_old_segments(Some(now_ms)).await
    }

    /// Deletes the oldest sealed segments: those wholly before the log start, and with
    /// `retention_now_ms`, those the retention settings no longer keep.
    ///
    /// Appends go on meanwhile: only the layout lock is held, and the I/O lock only while
    /// the epoch checkpoint is rewritten (its writes are serialized with the syncs').
    async fn delete_old_segments(&self, retention_now_ms: Option<i64>) -> Result<usize> {
        let _layout = self.lock_layout().await?;
        self.delete_old_segments_locked(retention_now_ms).await
    }

    /// [`Log::delete_old_segments`] for a caller holding the layout lock.
    async fn delete_old_segments_locked(&self, retention_now_ms: Option<i64>) -> Result<usize> {
        self.state.borrow_mut().rolled_since_retention = false;
        self.await_seals().await?;
        let doomed = {
            let state = self.state.borrow();
            state.check_writable(&self.dir)?;
            self.segments_to_delete(&state, retention_now_ms)
        };
        if doomed == 0 {
            return Ok(0);
        }
        let new_start = {
            let state = self.state.borrow();
            let next_base = state
                .sealed
                .get(doomed)
                .map_or(state.active.base_offset, |s| s.base_offset);
            state.metadata.log_start_offset.max(next_base)
        };
        self.move_log_start(new_start).await?;
        let removed: Vec<SealedSegment> = self.state.borrow_mut().sealed.drain(..doomed).collect();
        let recycle = self.config().recycle_segments && self.state.borrow().spare.is_none();
        // The newest of them is the one to keep: the largest, and its file is the least
        // likely still held by a reader.
        let keep = removed
            .iter()
            .rposition(|s| s.size_bytes > 0)
            .filter(|_| recycle);
        for (at, segment) in removed.iter().enumerate() {
            if Some(at) == keep {
                self.recycle(segment).await?;
            } else {
                let held_by = vec![segment.life.file_in_use()];
                segment::discard_segment_files(
                    &self.dir,
                    segment.base_offset,
                    &self.shard.trash,
                    held_by,
                )
                .await?;
            }
        }
        io::sync_dir(&self.dir).await?;
        Ok(removed.len())
    }

    /// Turns a segment that left the log into the spare. The caller syncs the directory.
    async fn recycle(&self, segment: &SealedSegment) -> Result<()> {
        // No open may start or be in progress once its file is renamed away: a reader
        // opening it by name would find something else (the same care as compaction's).
        segment.life.mark_replaced();
        segment.life.opens_finished().await;
        segment.open.borrow_mut().take();
        let readers = segment.life.file_in_use();
        {
            // The window's bytes are in memory already; only its hold on the file goes.
            let mut state = self.state.borrow_mut();
            let file = readers.upgrade();
            let windowed = state
                .readahead
                .as_ref()
                .is_some_and(|w| file.as_ref().is_some_and(|f| Rc::ptr_eq(&w.file, f)));
            if windowed {
                state.readahead = None;
            }
        }
        let path = SpareSegment::path_for(&self.dir, segment.next_offset);
        segment::discard_index_files(&self.dir, segment.base_offset, &self.shard.trash).await?;
        io::rename(&segment.path, &path).await?;
        self.state.borrow_mut().spare = Some(SpareSegment {
            path,
            stale_below: segment.next_offset,
            readers,
        });
        Ok(())
    }

    /// Deletes the files of the segment based at `base` (sealed or active) into the
    /// shard's trash, freed once no reader holds them.
    async fn discard_segment(&self, base: i64) -> Result<()> {
        let held_by = {
            let state = self.state.borrow();
            let active =
                (state.active.base_offset == base).then(|| Rc::downgrade(&state.active.file));
            let sealed = state.sealed.iter().filter(|s| s.base_offset == base);
            active
                .into_iter()
                .chain(sealed.map(|s| s.life.file_in_use()))
                .collect()
        };
        segment::discard_segment_files(&self.dir, base, &self.shard.trash, held_by).await
    }

    fn segments_to_delete(&self, state: &LogState, retention_now_ms: Option<i64>) -> usize {
        // Time and size retention are the `delete` policy; a compact-only log keeps its
        // segments (the log start still removes what lies before it).
        let retention_now_ms = retention_now_ms.filter(|_| self.config().cleanup.delete);
        let total: u64 =
            state.sealed.iter().map(|s| s.size_bytes).sum::<u64>() + state.active.data_bytes;
        let retention_bytes = self
            .config()
            .retention_bytes
            .filter(|_| retention_now_ms.is_some());
        let mut excess = retention_bytes.map_or(0, |limit| total.saturating_sub(limit));
        let expired_before = retention_now_ms.and_then(|now_ms| {
            self.config()
                .retention_ms
                .map(|ms| now_ms.saturating_sub(ms as i64))
        });
        let mut doomed = 0;
        for (at, segment) in state.sealed.iter().enumerate() {
            // A segment covers the offsets up to the next one's base, records or not: one
            // compaction emptied still holds its range, and the log start stays before it.
            let covered_to = state
                .sealed
                .get(at + 1)
                .map_or(state.active.base_offset, |s| s.base_offset);
            let below_start = covered_to <= state.metadata.log_start_offset;
            // An empty segment has no timestamp to age by: time retention takes it as soon
            // as it applies.
            let empty = segment.size_bytes == 0 && segment.max_timestamp < 0;
            let expired = expired_before.is_some_and(|limit| {
                (segment.max_timestamp >= 0 && segment.max_timestamp < limit) || empty
            });
            let too_big = excess >= segment.size_bytes && excess > 0;
            if !(below_start || expired || too_big) {
                break;
            }
            excess = excess.saturating_sub(segment.size_bytes);
            doomed += 1;
        }
        doomed
    }

    /// Moves the log start offset forward to `offset` (Kafka DeleteRecords): earlier
    /// offsets become unreadable at once, and whole segments before it are deleted.
    pub async fn advance_log_start_offset(&self, offset: i64) -> Result<()> {
        {
            let state = self.state.borrow();
            if offset > state.next_offset {
                let log_start_offset = state.metadata.log_start_offset;
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset,
                    log_end_offset: state.next_offset,
                });
            }
        }
        let _layout = self.lock_layout().await?;
        self.move_log_start(offset).await?;
        self.delete_old_segments_locked(None).await.map(|_| ())
    }

    /// Persists a new log start offset, then forgets what lies before it. The caller holds
    /// the layout lock (which every other writer of the partition metadata holds too).
    async fn move_log_start(&self, offset: i64) -> Result<()> {
        let mut metadata = self.state.borrow().metadata.clone();
        if offset <= metadata.log_start_offset {
            return Ok(());
        }
        metadata.log_start_offset = offset;
        let contents = checkpoint::encode_partition_metadata(&metadata);
        io::write_file_atomically(
            &self.dir,
            PARTITION_METADATA_FILE,
            &contents,
            Durability::Synced,
        )
        .await?;
        {
            let mut state = self.state.borrow_mut();
            state.metadata = metadata;
            if state.epochs.truncate_from_start(offset) {
                state.epochs_dirty = true;
            }
        }
        self.shard.cache.borrow_mut().remove_before(self.id, offset);
        if self.state.borrow().epochs_dirty {
            let _permit = self.lock().await?;
            self.write_epochs_if_dirty().await?;
        }
        Ok(())
    }

    /// Scans every segment completely, checking every batch's length, CRC and offsets.
    /// Returns the number of batches; corruption is an error naming the file and position.
    pub async fn verify(&self) -> Result<u64> {
        self.flush().await?;
        let _permit = self.lock().await?;
        self.await_seals().await?;
        let segments: Vec<(i64, u64)> = {
            let state = self.state.borrow();
            state
                .sealed
                .iter()
                .map(|s| (s.base_offset, s.size_bytes))
                .chain([(state.active.base_offset, state.active.data_bytes)])
                .collect()
        };
        let mut batches = 0;
        for (base, data_bytes) in segments {
            let path = io::segment_path(&self.dir, base, LOG_EXTENSION);
            let file = io::open_segment(&path).await?;
            let scan = scan::scan_segment(
                &file,
                &path,
                base,
                data_bytes,
                segment::scan_settings(&self.config(), None),
            )
            .await?;
            segment::check_scanned_to_end(&path, &scan, data_bytes)?;
            batches += scan.batches;
        }
        Ok(batches)
    }

    /// Whether [`Log::close`] has run: every later call answers `Closed`.
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Writes and syncs everything, then leaves the files so the next open needs no
    /// recovery scan. Every later call on this log answers `Closed`.
    pub async fn close(&self) -> Result<()> {
        let _layout = self.lock_layout().await?;
        let _permit = self.lock().await?;
        if self.state.borrow().closed {
            return Ok(());
        }
        self.flush_locked(Reach::Durable, i64::MAX).await?;
        self.await_seals().await?;
        let active = {
            let mut state = self.state.borrow_mut();
            state.closed = true;
            state.readahead = None;
            state.active.clone()
        };
        self.shard.cache.borrow_mut().remove_log(self.id);
        active.close_cleanly(&self.dir).await?;
        self.io.semaphore.close();
        self.layout.close();
        Ok(())
    }
}

/// Truncations remembered for the waiters that began before them; a waiter older than all
/// of them is failed as if cut.
const CUTS_REMEMBERED: usize = 16;

impl LogState {
    /// Truncations and resets since the log was opened.
    fn truncations(&self) -> u64 {
        self.cuts.back().map_or(0, |(count, _)| *count)
    }

    /// The lowest offset a truncation or reset after the `truncations`-th cut the log to.
    fn cut_since(&self, truncations: u64) -> Option<i64> {
        if truncations >= self.truncations() {
            return None;
        }
        let oldest_remembered = self.cuts.front().map_or(u64::MAX, |(count, _)| *count);
        if truncations + 1 < oldest_remembered {
            return Some(i64::MIN);
        }
        self.cuts
            .iter()
            .filter(|(count, _)| *count > truncations)
            .map(|(_, offset)| *offset)
            .min()
    }

    fn check_writable(&self, dir: &Path) -> Result<()> {
        if let Some(reason) = &self.offline {
            return Err(StorageError::LogOffline {
                path: dir.to_path_buf(),
                reason: reason.clone(),
            });
        }
        if self.closed {
            return Err(StorageError::Closed {
                path: dir.to_path_buf(),
            });
        }
        if self.truncating {
            return Err(StorageError::Truncating {
                path: dir.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// Pending batches from the one holding `offset`, within the read limits.
fn read_pending(
    pending: &VecDeque<PendingBatch>,
    offset: i64,
    limit: ReadLimit,
    max_offset: i64,
) -> Vec<Bytes> {
    let start = pending.partition_point(|p| p.header.next_offset() <= offset);
    let mut found: Vec<Bytes> = Vec::new();
    let mut total = 0;
    for batch in pending.range(start..) {
        let fits = limit.fits(total, !found.is_empty(), batch.bytes.len());
        if batch.header.next_offset() > max_offset || !fits {
            break;
        }
        total += batch.bytes.len();
        found.push(batch.bytes.clone());
    }
    found
}

/// The last `len` bytes of the concatenation of `parts`.
fn tail_of(parts: &[&[u8]], len: usize) -> Vec<u8> {
    let mut tail = Vec::with_capacity(len);
    let mut needed = len;
    for part in parts.iter().rev() {
        if needed == 0 {
            break;
        }
        let take = needed.min(part.len());
        tail.splice(0..0, part[part.len() - take..].iter().copied());
        needed -= take;
    }
    tail
}

/// Within a batch whose max timestamp reaches `timestamp`, the first record at or after
/// `from_offset` that does; compressed batches are decompressed to find it.
fn first_record_at_or_after(
    bytes: &[u8],
    header: &BatchHeader,
    timestamp: i64,
    from_offset: i64,
) -> Option<TimestampOffset> {
    // A batch that will not decompress (bounded as compaction bounds it) answers with its
    // first offset: never later than the true answer.
    let Ok((_, section)) =
        weir_wire::record::records_section(bytes, compact::DECOMPRESSED_BATCH_BYTES_MAX)
    else {
        return Some(TimestampOffset {
            offset: header.base_offset.max(from_offset),
            timestamp: header.max_timestamp,
        });
    };
    RecordIter::over(*header, &section)
        .map_while(|record| record.ok())
        .find(|record| record.timestamp >= timestamp && record.offset >= from_offset)
        .map(|record| TimestampOffset {
            offset: record.offset,
            timestamp: record.timestamp,
        })
}

async fn load_or_create_metadata(dir: &Path, identity: &LogIdentity) -> Result<PartitionMetadata> {
    let path = dir.join(PARTITION_METADATA_FILE);
    let Some(bytes) = io::read_small_file(&path, CHECKPOINT_BYTES_MAX).await? else {
        let metadata = PartitionMetadata {
            topic: identity.topic.clone(),
            partition: identity.partition,
            log_start_offset: 0,
        };
        io::write_file_atomically(
            dir,
            PARTITION_METADATA_FILE,
            &checkpoint::encode_partition_metadata(&metadata),
            Durability::Synced,
        )
        .await?;
        return Ok(metadata);
    };
    let metadata =
        checkpoint::decode_partition_metadata(&bytes).map_err(|reason| StorageError::Corrupt {
            path: path.clone(),
            position: 0,
            reason,
        })?;
    if metadata.topic != identity.topic || metadata.partition != identity.partition {
        return Err(StorageError::WrongLog {
            path: dir.to_path_buf(),
            expected: format!("{}-{}", identity.topic, identity.partition),
            found: format!("{}-{}", metadata.topic, metadata.partition),
        });
    }
    Ok(metadata)
}

async fn load_epochs(dir: &Path) -> Result<LeaderEpochCache> {
    let path = dir.join(EPOCH_CHECKPOINT_FILE);
    match io::read_small_file(&path, CHECKPOINT_BYTES_MAX).await? {
        None => Ok(LeaderEpochCache::default()),
        Some(bytes) => checkpoint::decode_epochs(&bytes).map_err(|reason| StorageError::Corrupt {
            path,
            position: 0,
            reason,
        }),
    }
}

/// The base offsets of the directory's segments, oldest first, after removing what an
/// interrupted operation left: temporary files, index files without a segment, and
/// segments wholly before the log start offset.
/// The base offsets of the log's segments, oldest first, and its spare segment file.
/// Leftovers of interrupted work go, and so do spares beyond the one kept.
async fn list_segments(
    dir: &Path,
    log_start_offset: i64,
    config: &LogConfig,
    trash: &Rc<Trash>,
) -> Result<(Vec<i64>, Option<SpareSegment>)> {
    let entries = io::dir_entries(dir)?;
    let mut bases = Vec::new();
    let mut leftovers = Vec::new();
    let mut spare: Option<SpareSegment> = None;
    for (name, path) in &entries {
        if Trash::is_trash_name(name) {
            // Deleted before a restart, not yet freed.
            trash.adopt(path.clone(), Vec::new());
        } else if name.ends_with(".tmp") {
            leftovers.push(path.clone());
        } else if let Some(base) = parse_segment_name(name, LOG_EXTENSION) {
            bases.push(base);
        } else if let Some(stale_below) = parse_segment_name(name, RECYCLED_EXTENSION) {
            let found = SpareSegment {
                path: path.clone(),
                stale_below,
                readers: std::rc::Weak::new(),
            };
            let keep_found = config.recycle_segments
                && spare.as_ref().is_none_or(|s| s.stale_below < stale_below);
            let dropped = if keep_found {
                spare.replace(found)
            } else {
                Some(found)
            };
            leftovers.extend(dropped.map(|s| s.path));
        }
    }
    bases.sort_unstable();
    for (name, path) in &entries {
        let orphan = [segment::INDEX_EXTENSION, segment::TIME_INDEX_EXTENSION]
            .iter()
            .filter_map(|extension| parse_segment_name(name, extension))
            .any(|base| bases.binary_search(&base).is_err());
        if orphan {
            leftovers.push(path.clone());
        }
    }
    // A segment is wholly before the log start when the next one starts at or before it.
    let below_start = bases
        .windows(2)
        .take_while(|pair| pair[1] <= log_start_offset)
        .count();
    for base in bases.drain(..below_start) {
        segment::discard_segment_files(dir, base, trash, Vec::new()).await?;
    }
    for path in &leftovers {
        trash.discard(path, Vec::new()).await?;
    }
    if below_start > 0 || !leftovers.is_empty() {
        io::sync_dir(dir).await?;
    }
    Ok((bases, spare))
}

fn parse_segment_name(name: &str, extension: &str) -> Option<i64> {
    let stem = name.strip_suffix(extension)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

/// Segments must not overlap: each ends at or before the next begins.
fn check_continuity(dir: &Path, sealed: &[SealedSegment], active: &ActiveSegment) -> Result<()> {
    let ends = sealed
        .iter()
        .map(|s| (s.base_offset, s.next_offset, s.size_bytes));
    let starts = sealed
        .iter()
        .skip(1)
        .map(|s| s.base_offset)
        .chain([active.base_offset]);
    for ((base, next, size), next_base) in ends.zip(starts) {
        if next > next_base {
            return Err(StorageError::Corrupt {
                path: dir.join(format!("{base:020}.{LOG_EXTENSION}")),
                position: size,
                reason: format!(
                    "segment ends at offset {next} after the next begins at {next_base}"
                ),
            });
        }
    }
    Ok(())
}

mod compact;
#[cfg(test)]
mod tests;
