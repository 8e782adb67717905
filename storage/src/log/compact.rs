//! Compaction: keeping at least the latest record of every key (Kafka's log cleaner).
//!
//! A pass works on the sealed segments below the *cleanable end*: the active segment,
//! records younger than `min.compaction.lag.ms` and anything at or above the caller's
//! stable offset (open transactions) are never touched. The log remembers where the last
//! pass ended (the *first dirty offset*, in `cleaner-offset-checkpoint`); a pass
//!
//! 1. reads the dirty records (from the first dirty offset up) into an [`OffsetMap`] of
//!    key → latest offset, as far as the map's fixed memory allows (that point is the
//!    pass's *end*);
//! 2. rewrites the segments below the end in groups (consecutive segments, as many as fit
//!    one segment judged by the group's output so far plus the next one's size, so
//!    superseded data shrinks away and small cleaned segments merge), keeping a record when
//!    it has a key, no later offset of its key is in the map, and it is not a tombstone
//!    older than `delete.retention.ms` (only tombstones below the end are dropped: for
//!    them every older record of the key is dropped in the same pass). Batches keep their
//!    offsets, producer fields and flags; a batch that lost records is rebuilt around the
//!    survivors (recompressed with its codec, new CRC); control batches stay;
//! 3. swaps each group's new segment in: written to `<base>.cleaned` and synced, renamed to
//!    `<base>.<end>.swap` (the commit point; a crash before leaves the old segments, and
//!    recovery deletes the `.cleaned` file), then the old segments of `[base, end)` are
//!    deleted and the swap file renamed to `<base>.log`; recovery finishes a swap it finds.
//!
//! In a log with transactions the caller says which batches belong to aborted
//! transactions: they are dropped, and never enter the map.
//!
//! Record bytes are read and written in the background task queue, yielding the shard
//! every [`SLICE`] and keeping to the shard's compaction I/O limit, if it has one
//! (`compaction_io_bytes_per_second`); the log's I/O lock (appends, syncs) is never
//! taken, and the layout lock (retention, truncation) only for the renames of a swap.

use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use weir_wire::batch::{self, BatchHeader};
use weir_wire::record::{self, RecordIter};

use super::Log;
use crate::config::PAGE_BYTES;
use crate::index::SegmentIndex;
use crate::io::{self, Durability, SegmentFile};
use crate::offset_map::OffsetMap;
use crate::scan::Window;
use crate::segment::{self, LOG_EXTENSION, OpenSegment, SealedSegment, SegmentLife};
use crate::trash::Trash;
use crate::{Result, StorageError};

pub(super) const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
const CLEANED_EXTENSION: &str = "cleaned";
const SWAP_EXTENSION: &str = "swap";
/// The longest a pass runs on the shard before letting other task queues run.
const SLICE: Duration = Duration::from_micros(200);
/// The most a compressed batch may decompress to for compaction to look inside it; a
/// batch beyond it is kept whole (never lost), and its keys do not enter the map.
pub(crate) const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;
/// Bytes of cleaned output gathered before they are written.
const WRITE_BYTES: usize = 1 << 20;

/// How much of a log compaction could work on now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionCandidate {
    /// Bytes of cleanable segments at or above the first dirty offset.
    pub dirty_bytes: u64,
    /// Bytes of all cleanable segments.
    pub cleanable_bytes: u64,
    /// Whether a dirty record is older than `max.compaction.lag.ms`: the log must be
    /// compacted whatever its dirty ratio.
    pub overdue: bool,
}

impl CompactionCandidate {
    pub fn dirty_ratio(&self) -> f64 {
        if self.cleanable_bytes == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / self.cleanable_bytes as f64
        }
    }
}

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_read: u64,
    pub segments_written: u64,
    /// Bytes of the batches the pass went through, from files or the cache.
    pub bytes_read: u64,
    /// Of those, bytes taken from the shard's cache.
    pub bytes_read_from_cache: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    /// Keys in the offset map.
    pub keys: u64,
    /// The first dirty offset after the pass.
    pub end_offset: i64,
    /// The longest the pass ran on the shard without yielding, in microseconds of wall
    /// time (the host taking the vCPU away included).
    pub longest_step_us: u64,
    /// The same step's longest in the thread's CPU time, in microseconds.
    pub longest_step_cpu_us: u64,
}

/// Yields the shard once a slice of work is used up, and keeps the longest synchronous
/// step (one batch's decompression, filtering and recompression), which no yield can
/// split: the shard runs at most a slice plus one step without yielding. Steps are kept
/// in wall time and in the thread's CPU time: on a virtual machine the host may take the
/// vCPU away in the middle of a step (measured here: 0.8-3.4 ms steps with no page fault
/// or context switch), which holds up the shard's other tasks no more than it holds up
/// compaction; the CPU time is what compaction itself kept the shard.
struct Slice {
    started: Instant,
    longest_step: Duration,
    longest_step_cpu: Duration,
}

/// When a step began, on both clocks.
#[derive(Clone, Copy)]
struct StepStart {
    wall: Instant,
    cpu: Duration,
}

impl StepStart {
    fn now() -> StepStart {
        StepStart {
            wall: Instant::now(),
            cpu: crate::io::thread_cpu_time(),
        }
    }
}

impl Slice {
    fn new() -> Slice {
        Slice {
            started: Instant::now(),
            longest_step: Duration::ZERO,
            longest_step_cpu: Duration::ZERO,
        }
    }

    /// Puts the longest steps so far into a pass's stats.
    fn report(&self, stats: &mut CompactionStats) {
        stats.longest_step_us = self.longest_step.as_micros() as u64;
        stats.longest_step_cpu_us = self.longest_step_cpu.as_micros() as u64;
    }

    fn step_done(&mut self, began: StepStart) {
        self.longest_step = self.longest_step.max(began.wall.elapsed());
        let cpu = crate::io::thread_cpu_time().saturating_sub(began.cpu);
        self.longest_step_cpu = self.longest_step_cpu.max(cpu);
    }

    async fn check(&mut self) {
        if self.started.elapsed() >= SLICE {
            // Not `yield_task_queue_now`: with this task still runnable the executor goes
            // from queue to queue without polling io_uring, so network input and I/O
            // completions would wait for the 1 ms preemption timer (measured: produce p99
            // doubled while compaction ran). A sleep leaves the queue idle, and the
            // executor polls the ring before coming back.
            glommio::timer::sleep(Duration::from_micros(1)).await;
            self.started = Instant::now();
        }
    }
}

/// Where a pass is in a segment.
struct Cursor {
    /// Where the next batch starts in the file.
    position: u64,
    /// The next batch's base offset, when known: only then may it come from the cache.
    next_offset: Option<i64>,
    /// The segment's end (the next segment's base offset).
    end_offset: i64,
    size_bytes: u64,
}

impl Cursor {
    fn at_start(segment: &SealedSegment, end_offset: i64) -> Cursor {
        Cursor {
            position: 0,
            next_offset: Some(segment.base_offset),
            end_offset,
            size_bytes: segment.size_bytes,
        }
    }
}

/// The sealed segments a pass may touch, and where they end.
struct Cleanable {
    segments: Vec<SealedSegment>,
    /// The base offset of the segment after each one (the next sealed or the active one).
    ends: Vec<i64>,
    first_dirty: i64,
}

impl Log {
    /// The log's sealed segments below the cleanable end (see the module docs).
    fn cleanable(&self, now_ms: i64, stable_offset: i64) -> Cleanable {
        let config = self.config();
        let state = self.state.borrow();
        let young_after = now_ms.saturating_sub(config.min_compaction_lag_ms as i64);
        let mut segments = Vec::new();
        let mut ends = Vec::new();
        for (at, segment) in state.sealed.iter().enumerate() {
            let end = state
                .sealed
                .get(at + 1)
                .map_or(state.active.base_offset, |s| s.base_offset);
            // Without a lag there is nothing to wait for: a producer's clock running
            // ahead must not hold compaction back.
            let young = config.min_compaction_lag_ms > 0 && segment.max_timestamp > young_after;
            if end > stable_offset || young {
                break;
            }
            segments.push(segment.clone());
            ends.push(end);
        }
        Cleanable {
            segments,
            ends,
            first_dirty: state
                .first_dirty_offset
                .max(state.metadata.log_start_offset),
        }
    }

    /// What a compaction pass could work on now, or `None` when the log is not compacted
    /// or nothing below the cleanable end is dirty. `stable_offset` is the first offset
    /// that must not be compacted yet (the last stable offset; the log end without
    /// transactions).
    pub fn compaction_candidate(
        &self,
        now_ms: i64,
        stable_offset: i64,
    ) -> Option<CompactionCandidate> {
        let config = self.config();
        if !config.cleanup.compact {
            return None;
        }
        let cleanable = self.cleanable(now_ms, stable_offset);
        let mut candidate = CompactionCandidate {
            dirty_bytes: 0,
            cleanable_bytes: 0,
            overdue: false,
        };
        let overdue_before = now_ms.saturating_sub(config.max_compaction_lag_ms as i64);
        for (segment, end) in cleanable.segments.iter().zip(&cleanable.ends) {
            candidate.cleanable_bytes += segment.size_bytes;
            if *end > cleanable.first_dirty {
                candidate.dirty_bytes += segment.size_bytes;
                candidate.overdue |= segment.max_timestamp < overdue_before;
            }
        }
        (candidate.dirty_bytes > 0).then_some(candidate)
    }

    /// Runs one compaction pass (see the module docs) with an offset map of at most
    /// `map_bytes`. Tombstones whose batch is older than `delete.retention.ms` before
    /// `now_ms` are dropped.
    pub async fn compact(
        &self,
        now_ms: i64,
        stable_offset: i64,
        map_bytes: u64,
    ) -> Result<CompactionStats> {
        self.compact_transactional(now_ms, stable_offset, map_bytes, &|_| false)
            .await
    }

    /// [`Log::compact`] in a log with transactions: `aborted` says whether a data batch
    /// belongs to an aborted transaction. Such batches are removed, and their keys do
    /// not enter the map, so an aborted record never shadows the committed value of its
    /// key (read_committed consumers would find the key gone).
    pub async fn compact_transactional(
        &self,
        now_ms: i64,
        stable_offset: i64,
        map_bytes: u64,
        aborted: &dyn Fn(&BatchHeader) -> bool,
    ) -> Result<CompactionStats> {
        let config = self.config();
        let mut stats = CompactionStats::default();
        if !config.cleanup.compact {
            return Ok(stats);
        }
        let mut slice = Slice::new();
        if !self.state.borrow().sealing.is_empty() {
            // A segment whose seal is still running gets its index files written by the
            // seal: let it finish first (it takes milliseconds).
            let _io = self.lock().await?;
            self.await_seals().await?;
        }
        let cleanable = self.cleanable(now_ms, stable_offset);
        let first_dirty = cleanable.first_dirty;
        let dirty: Vec<usize> = (0..cleanable.segments.len())
            .filter(|at| cleanable.ends[*at] > first_dirty)
            .collect();
        let Some(first_dirty_segment) = dirty.first().copied() else {
            return Ok(stats);
        };
        let mut map = OffsetMap::new(map_bytes);

        // 1. The map of latest offsets, as far as it has room.
        let mut end = first_dirty;
        'segments: for at in first_dirty_segment..cleanable.segments.len() {
            let segment = &cleanable.segments[at];
            let open = self.open_sealed(segment).await?;
            let mut window = Window::new(&open.file, &segment.path);
            let mut cursor = if first_dirty <= segment.base_offset {
                Cursor::at_start(segment, cleanable.ends[at])
            } else {
                // Where a pass that filled its map stopped: the batch there is found by
                // the index, in the file.
                Cursor {
                    position: open.index.position_for(segment.base_offset, first_dirty),
                    next_offset: None,
                    end_offset: cleanable.ends[at],
                    size_bytes: segment.size_bytes,
                }
            };
            stats.segments_read += 1;
            while let Some((header, bytes)) = self
                .next_batch(&mut window, &mut cursor, &mut stats)
                .await?
            {
                if header.next_offset() <= first_dirty
                    || header.attributes.is_control()
                    || aborted(&header)
                {
                    continue;
                }
                let records = header.records_count.max(0) as usize;
                if map.room_at_most() < records {
                    break 'segments;
                }
                while map.room() < records {
                    grow(&mut map, &mut slice).await;
                }
                let began = StepStart::now();
                if let Ok((header, section)) =
                    record::records_section(&bytes, DECOMPRESSED_BATCH_BYTES_MAX)
                {
                    for record in RecordIter::over(header, &section).flatten() {
                        if let Some(key) = record.key {
                            map.put(key, record.offset);
                        }
                    }
                }
                slice.step_done(began);
                end = header.next_offset();
                slice.check().await;
            }
            end = cleanable.ends[at];
        }
        stats.keys = map.len() as u64;
        slice.report(&mut stats);
        if end <= first_dirty {
            tracing::warn!(
                log = %self.dir.display(),
                map_bytes,
                "compaction's offset map cannot hold the first dirty batch; raise compaction_map_bytes"
            );
            return Ok(stats);
        }

        // 2. and 3. Rewrite the segments below the end, group by group, and swap them in.
        let expire_before = now_ms.saturating_sub(config.delete_retention_ms as i64);
        let filter = Filter {
            map: &map,
            end,
            expire_before,
            aborted,
        };
        let below_end = cleanable
            .segments
            .iter()
            .take_while(|s| s.base_offset < end)
            .count();
        let segments = &cleanable.segments[..below_end];
        let mut start = 0;
        while start < segments.len() {
            self.ensure_open()?;
            // A group grows while its output so far plus the next segment's size fit a
            // segment: superseded data shrinks to nothing, so groups of cleaned
            // segments merge.
            let base_offset = segments[start].base_offset;
            let mut out = CleanedSegment::create(&self.dir, base_offset).await?;
            let mut next = start;
            while next < segments.len()
                && (next == start
                    || (out.size_bytes + segments[next].size_bytes <= config.segment_bytes
                        && cleanable.ends[next] - 1 - base_offset <= i64::from(u32::MAX)))
            {
                let segment_end = cleanable.ends[next];
                self.clean_segment(
                    &segments[next],
                    segment_end,
                    &mut out,
                    &filter,
                    &mut slice,
                    &mut stats,
                )
                .await?;
                next += 1;
            }
            out.finish().await?;
            stats.bytes_written += out.size_bytes;
            if !self
                .swap_in(&segments[start..next], cleanable.ends[next - 1], out)
                .await?
            {
                // Retention or truncation changed the segments meanwhile: try again later.
                slice.report(&mut stats);
                return Ok(stats);
            }
            stats.segments_written += 1;
            start = next;
        }
        self.write_cleaner_checkpoint(end).await?;
        stats.end_offset = end;
        slice.report(&mut stats);
        Ok(stats)
    }

    /// The next batch of a segment for a pass, from the shard's cache while it holds it,
    /// else from the file under the compaction I/O limit. A busy compacted log's dirty
    /// segments were appended seconds ago, and reading them again from the device queues
    /// the reads ahead of the durable writes of every log on it.
    async fn next_batch(
        &self,
        window: &mut Window<'_>,
        cursor: &mut Cursor,
        stats: &mut CompactionStats,
    ) -> Result<Option<(BatchHeader, Bytes)>> {
        if cursor.position >= cursor.size_bytes {
            return Ok(None);
        }
        let batch_bytes_max = self.config().batch_bytes_max as usize;
        // Everything cached lies above the last pass's end, where offsets have no gaps:
        // the cached batch based at the offset after the last one is the file's next.
        let cached = cursor
            .next_offset
            .filter(|offset| *offset < cursor.end_offset)
            .and_then(|offset| self.shard.cache.borrow().batch_based_at(self.id, offset))
            .and_then(|bytes| {
                let header = batch::validate(&bytes, batch_bytes_max).ok()?;
                Some((header, bytes))
            });
        let (header, bytes) = match cached {
            Some(found) => {
                let len = found.1.len() as u64;
                stats.bytes_read_from_cache += len;
                let from_cache = &self.shard.compaction_cache_read;
                from_cache.set(from_cache.get() + len);
                found
            }
            None => {
                let Some(found) = window
                    .batch_at(cursor.position, cursor.size_bytes, batch_bytes_max)
                    .await?
                else {
                    return Ok(None);
                };
                self.shard.compaction_io.pace(found.1.len() as u64).await;
                found
            }
        };
        cursor.position += bytes.len() as u64;
        cursor.next_offset = Some(header.next_offset());
        stats.bytes_read += bytes.len() as u64;
        let read = &self.shard.compaction_read;
        read.set(read.get() + bytes.len() as u64);
        self.ensure_open()?;
        Ok(Some((header, bytes)))
    }

    /// `Closed` once the log is closed (its partition deleted or moved): a pass stops at
    /// its next batch instead of reading, for seconds under the I/O limit, files that
    /// are going away.
    fn ensure_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(StorageError::Closed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Appends the records of `segment` that `filter` keeps to `out`.
    async fn clean_segment(
        &self,
        segment: &SealedSegment,
        end_offset: i64,
        out: &mut CleanedSegment,
        filter: &Filter<'_>,
        slice: &mut Slice,
        stats: &mut CompactionStats,
    ) -> Result<()> {
        let config = self.config();
        let open = self.open_sealed(segment).await?;
        let mut window = Window::new(&open.file, &segment.path);
        let mut cursor = Cursor::at_start(segment, end_offset);
        while let Some((header, bytes)) = self.next_batch(&mut window, &mut cursor, stats).await? {
            let began = StepStart::now();
            let kept = match filter.apply(&header, &bytes) {
                Kept::All => Some(bytes),
                Kept::Nothing { removed } => {
                    stats.records_removed += removed;
                    None
                }
                Kept::Some { batch, removed } => {
                    stats.records_removed += removed;
                    Some(batch.freeze())
                }
            };
            slice.step_done(began);
            if let Some(batch) = kept {
                out.push(&batch, config.index_interval_bytes).await?;
                self.shard.compaction_io.pace(batch.len() as u64).await;
            }
            slice.check().await;
        }
        Ok(())
    }

    /// Replaces `group` (ending where the segment at `end` begins) with `cleaned`.
    /// Returns false, deleting the cleaned file, when the group is no longer in the log.
    async fn swap_in(
        &self,
        group: &[SealedSegment],
        end: i64,
        cleaned: CleanedSegment,
    ) -> Result<bool> {
        let _layout = self.lock_layout().await?;
        let at = {
            let state = self.state.borrow();
            let at = state
                .sealed
                .iter()
                .position(|s| Rc::ptr_eq(&s.open, &group[0].open));
            at.filter(|at| {
                let run = state.sealed.get(*at..*at + group.len());
                let same = run.is_some_and(|run| {
                    run.iter()
                        .zip(group)
                        .all(|(a, b)| Rc::ptr_eq(&a.open, &b.open))
                });
                let next = state
                    .sealed
                    .get(at + group.len())
                    .map_or(state.active.base_offset, |s| s.base_offset);
                same && next == end && !state.closed && state.offline.is_none()
            })
        };
        let Some(at) = at else {
            let held_by = vec![Rc::downgrade(&cleaned.file)];
            self.shard.trash.discard(&cleaned.path, held_by).await?;
            return Ok(false);
        };
        let base = cleaned.base_offset;
        let swap_path = self.dir.join(swap_name(base, end));
        io::rename(&cleaned.path, &swap_path).await?;
        io::sync_dir(&self.dir).await?;
        // Committed: from here a crash ends with the new segment (recovery finishes it).
        let replacement = SealedSegment {
            base_offset: base,
            next_offset: cleaned.next_offset,
            max_timestamp: cleaned.index.max_timestamp,
            size_bytes: cleaned.size_bytes,
            path: io::segment_path(&self.dir, base, LOG_EXTENSION),
            open: Rc::new(std::cell::RefCell::new(Some(Rc::new(OpenSegment {
                file: cleaned.file.clone(),
                index: cleaned.index.clone(),
            })))),
            life: SegmentLife::holding(&cleaned.file),
        };
        {
            let mut state = self.state.borrow_mut();
            for old in group {
                old.life.mark_replaced();
            }
            state
                .sealed
                .splice(at..at + group.len(), [replacement.clone()]);
            state.readahead = None;
        }
        // The cache holds batches as appended: readers must see the compacted ones.
        self.shard.cache.borrow_mut().remove_before(self.id, end);
        for old in group {
            old.life.opens_finished().await;
        }
        let held_by: Vec<_> = group.iter().map(|old| old.life.file_in_use()).collect();
        let result = finish_swap(&self.dir, base, end, &cleaned, &self.shard.trash, held_by).await;
        if let Err(error) = &result {
            self.state
                .borrow_mut()
                .offline
                .get_or_insert_with(|| error.to_string());
        }
        result?;
        // Only now may the shard close it: reopening by name finds the new file.
        self.shard.opened_segment(&replacement.open);
        Ok(true)
    }

    pub(super) async fn write_cleaner_checkpoint(&self, first_dirty: i64) -> Result<()> {
        let contents = format!("{first_dirty}\n");
        // Lost or torn in a crash, it reads as 0 or an older value: a pass then looks at
        // more than it must, nothing worse.
        io::write_file_atomically(
            &self.dir,
            CLEANER_CHECKPOINT_FILE,
            contents.as_bytes(),
            Durability::Lazy,
        )
        .await?;
        self.state.borrow_mut().first_dirty_offset = first_dirty;
        Ok(())
    }
}

/// Doubles the map, rehashing in slices.
async fn grow(map: &mut OffsetMap, slice: &mut Slice) {
    /// Slots moved per step: about 100 us of work.
    const REHASH_STEP: usize = 16_384;
    let Some(mut growing) = map.start_growing() else {
        return;
    };
    loop {
        let began = StepStart::now();
        let done = map.rehash(&mut growing, REHASH_STEP);
        slice.step_done(began);
        if done {
            return;
        }
        slice.check().await;
    }
}

/// Reads the first dirty offset a past pass left; 0 (everything is dirty) when missing
/// or unreadable, which only costs a pass.
pub(super) async fn load_cleaner_checkpoint(dir: &std::path::Path) -> Result<i64> {
    let contents = io::read_small_file(&dir.join(CLEANER_CHECKPOINT_FILE), 64).await?;
    Ok(contents
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.trim().parse::<i64>().ok())
        .unwrap_or(0))
}

fn swap_name(base: i64, end: i64) -> String {
    format!("{base:020}.{end:020}.{SWAP_EXTENSION}")
}

/// `(base, end)` of a swap file's name.
fn parse_swap_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(SWAP_EXTENSION)?.strip_suffix('.')?;
    let (base, end) = stem.split_once('.')?;
    let number = |text: &str| {
        (text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<i64>().ok())
            .flatten()
    };
    Some((number(base)?, number(end)?))
}

/// After the commit point: deletes the replaced segments and puts the new one in place.
/// Recovery runs the same steps for a swap file it finds, so each step may already be
/// done.
async fn finish_swap(
    dir: &std::path::Path,
    base: i64,
    end: i64,
    cleaned: &CleanedSegment,
    trash: &Rc<Trash>,
    held_by: Vec<Weak<SegmentFile>>,
) -> Result<()> {
    replace_with_swap(dir, base, end, trash, held_by).await?;
    // Index files are CRC-checked and matched to the segment's size: one lost in a crash
    // is rebuilt by a scan, so they are not synced (each sync is an ext4 journal commit
    // that appends waiting on their own fdatasync would queue behind).
    segment::write_index_files(
        dir,
        base,
        cleaned.next_offset,
        cleaned.size_bytes,
        &cleaned.index,
        Durability::Lazy,
    )
    .await
}

/// Deletes the segments in `[base, end)` into the trash (freed once no reader holds any
/// of `held_by`), then renames the swap file to `<base>.log`.
async fn replace_with_swap(
    dir: &std::path::Path,
    base: i64,
    end: i64,
    trash: &Rc<Trash>,
    held_by: Vec<Weak<SegmentFile>>,
) -> Result<()> {
    let doomed: Vec<i64> = io::dir_entries(dir)?
        .iter()
        .filter_map(|(name, _)| super::parse_segment_name(name, LOG_EXTENSION))
        .filter(|segment| *segment > base && *segment < end)
        .collect();
    for segment in doomed {
        segment::discard_segment_files(dir, segment, trash, held_by.clone()).await?;
    }
    // Renaming the swap file over `<base>.log` would free the old file's blocks at once;
    // moved into the trash first, they go at its pace. A crash between the two leaves no
    // `<base>.log` but the swap file, which recovery renames.
    segment::discard_segment_files(dir, base, trash, held_by).await?;
    let swap_path = dir.join(swap_name(base, end));
    let log_path = io::segment_path(dir, base, LOG_EXTENSION);
    io::rename(&swap_path, &log_path).await?;
    io::sync_dir(dir).await
}

/// Recovery: removes unfinished cleaned files and finishes committed swaps. Returns
/// whether it changed anything.
pub(super) async fn recover_compaction(dir: &std::path::Path, trash: &Rc<Trash>) -> Result<bool> {
    let mut cleaned = Vec::new();
    let mut swaps = Vec::new();
    for (name, path) in io::dir_entries(dir)? {
        if super::parse_segment_name(&name, CLEANED_EXTENSION).is_some() {
            cleaned.push(path);
        } else if let Some(swap) = parse_swap_name(&name) {
            swaps.push(swap);
        }
    }
    for path in &cleaned {
        tracing::warn!(file = %path.display(), "removing the output of an interrupted compaction");
        trash.discard(path, Vec::new()).await?;
    }
    swaps.sort_unstable();
    for (base, end) in &swaps {
        tracing::warn!(log = %dir.display(), base, end, "finishing a compaction swap interrupted by a crash");
        replace_with_swap(dir, *base, *end, trash, Vec::new()).await?;
    }
    if !cleaned.is_empty() {
        io::sync_dir(dir).await?;
    }
    Ok(!cleaned.is_empty() || !swaps.is_empty())
}

/// Which records of a batch a pass keeps.
struct Filter<'a> {
    map: &'a OffsetMap,
    /// The pass's end: the map covers every dirty record below it.
    end: i64,
    /// Tombstones in batches whose newest timestamp is before this are dropped.
    expire_before: i64,
    /// Batches of aborted transactions are dropped whole.
    aborted: &'a dyn Fn(&BatchHeader) -> bool,
}

enum Kept {
    All,
    Nothing { removed: u64 },
    Some { batch: BytesMut, removed: u64 },
}

impl Filter<'_> {
    fn keeps(&self, header: &BatchHeader, record: &record::Record<'_>) -> bool {
        let Some(key) = record.key else {
            // A compacted log has no use for records without keys (Kafka drops them too).
            return false;
        };
        let latest = self
            .map
            .get(key)
            .is_none_or(|latest| record.offset >= latest);
        let expired_tombstone = record.value.is_none()
            && record.offset < self.end
            && header.max_timestamp < self.expire_before;
        latest && !expired_tombstone
    }

    fn apply(&self, header: &BatchHeader, bytes: &Bytes) -> Kept {
        if header.attributes.is_control() {
            return Kept::All;
        }
        if (self.aborted)(header) {
            return Kept::Nothing {
                removed: header.records_count.max(0) as u64,
            };
        }
        let Ok((_, section)) = record::records_section(bytes, DECOMPRESSED_BATCH_BYTES_MAX) else {
            return Kept::All;
        };
        let mut kept = Vec::new();
        let mut removed = 0u64;
        let mut max_timestamp = -1i64;
        let mut iter = RecordIter::over(*header, &section);
        for record in iter.by_ref() {
            let Ok(record) = record else {
                // Undecodable records are never dropped: keep the batch as it is.
                return Kept::All;
            };
            if self.keeps(header, &record) {
                max_timestamp = max_timestamp.max(record.timestamp);
                kept.push(record.encoded);
            } else {
                removed += 1;
            }
        }
        if removed == 0 {
            return Kept::All;
        }
        if kept.is_empty() {
            return Kept::Nothing { removed };
        }
        match record::rebuild_batch(header, &kept, max_timestamp) {
            Ok(batch) => Kept::Some { batch, removed },
            Err(_) => Kept::All,
        }
    }
}

/// A segment being written by compaction.
struct CleanedSegment {
    base_offset: i64,
    path: PathBuf,
    file: Rc<SegmentFile>,
    /// Bytes not yet written, starting at the page-aligned `buffer_start`.
    buffer: Vec<u8>,
    buffer_start: u64,
    size_bytes: u64,
    next_offset: i64,
    index: SegmentIndex,
}

impl CleanedSegment {
    async fn create(dir: &std::path::Path, base_offset: i64) -> Result<CleanedSegment> {
        let path = io::segment_path(dir, base_offset, CLEANED_EXTENSION);
        let file = io::create_segment(&path, None).await?;
        Ok(CleanedSegment {
            base_offset,
            path,
            file: Rc::new(file),
            buffer: Vec::with_capacity(WRITE_BYTES + PAGE_BYTES as usize),
            buffer_start: 0,
            size_bytes: 0,
            next_offset: base_offset,
            index: SegmentIndex::new(),
        })
    }

    async fn push(&mut self, batch: &Bytes, index_interval_bytes: u32) -> Result<()> {
        let Ok(header) = BatchHeader::parse(batch) else {
            unreachable!("batches were validated when read")
        };
        self.index.observe(
            self.base_offset,
            &header,
            self.size_bytes,
            index_interval_bytes,
        );
        self.buffer.extend_from_slice(batch);
        self.size_bytes += batch.len() as u64;
        self.next_offset = header.next_offset();
        if self.buffer.len() >= WRITE_BYTES {
            let whole = io::align_down(self.buffer.len() as u64) as usize;
            io::write_pages(
                &self.file,
                &self.path,
                self.buffer_start,
                &[&self.buffer[..whole]],
            )
            .await?;
            self.buffer.drain(..whole);
            self.buffer_start += whole as u64;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if !self.buffer.is_empty() {
            io::write_pages(&self.file, &self.path, self.buffer_start, &[&self.buffer]).await?;
        }
        io::truncate(&self.file, &self.path, self.size_bytes).await?;
        io::fdatasync(&self.file, &self.path).await
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod names {
    use super::*;

    #[test]
    fn swap_names_round_trip() {
        assert_eq!(parse_swap_name(&swap_name(0, 1234)), Some((0, 1234)));
        assert_eq!(parse_swap_name("00000000000000000001.log"), None);
        assert_eq!(parse_swap_name("1.2.swap"), None);
    }
}
