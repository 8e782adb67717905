//! What the logs of one shard share: the cache of recent batches and the budget of
//! sealed segments kept open.
//!
//! **Invariant:** a `ShardStorage` and its logs are used from one thread only (they are
//! `!Send`); other shards reach a log by asking its owner.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use crate::cache::{BatchCache, LogId};
use crate::config::ShardStorageConfig;
use crate::segment::OpenSlot;
use crate::throttle::IoThrottle;
use crate::trash::Trash;

#[derive(Debug)]
pub struct ShardStorage {
    config: ShardStorageConfig,
    pub(crate) cache: RefCell<BatchCache>,
    /// Sealed segments opened for reads, oldest first. Closing one drops its file and
    /// index; readers holding them finish with their own references.
    open_segments: RefCell<VecDeque<Weak<OpenSlot>>>,
    next_log_id: Cell<u64>,
    /// Read-ahead windows logs keep now (`readahead_windows_max`).
    readahead_windows: Rc<Cell<usize>>,
    /// Compaction's I/O rate limit, shared by the shard's logs (one compacts at a time).
    pub(crate) compaction_io: IoThrottle,
    /// Bytes compaction has read, counted as it reads (a pass's stats come at its end,
    /// and a pass under the I/O limit can take many seconds).
    pub(crate) compaction_read: Cell<u64>,
    /// Of those, bytes taken from the batch cache instead of segment files.
    pub(crate) compaction_cache_read: Cell<u64>,
    /// Files the shard's logs deleted, their blocks freed at a bounded rate.
    pub(crate) trash: Rc<Trash>,
}

/// One of the shard's read-ahead windows, counted while a log keeps it.
#[derive(Debug)]
pub(crate) struct WindowHold(Rc<Cell<usize>>);

impl Drop for WindowHold {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl ShardStorage {
    pub fn new(config: ShardStorageConfig) -> Rc<ShardStorage> {
        Rc::new(ShardStorage {
            cache: RefCell::new(BatchCache::new(config.cache_bytes)),
            open_segments: RefCell::new(VecDeque::new()),
            next_log_id: Cell::new(0),
            readahead_windows: Rc::new(Cell::new(0)),
            compaction_io: IoThrottle::new(config.compaction_io_bytes_per_second),
            compaction_read: Cell::new(0),
            compaction_cache_read: Cell::new(0),
            trash: Trash::new(
                config.delete_bytes_per_second,
                config.delete_backlog_bytes_max,
            ),
            config,
        })
    }

    pub fn config(&self) -> &ShardStorageConfig {
        &self.config
    }

    /// Bytes the batch cache holds now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.borrow().used_bytes()
    }

    /// Bytes of batches compaction has read on this shard (from segments or the cache),
    /// so far.
    pub fn compaction_bytes_read(&self) -> u64 {
        self.compaction_read.get()
    }

    /// Of [`ShardStorage::compaction_bytes_read`], the bytes the batch cache served.
    pub fn compaction_bytes_read_from_cache(&self) -> u64 {
        self.compaction_cache_read.get()
    }

    /// How long compaction has waited for its I/O limit on this shard, so far.
    pub fn compaction_throttled(&self) -> std::time::Duration {
        self.compaction_io.waited()
    }

    /// Bytes of deleted files the shard has yet to free.
    pub fn delete_backlog_bytes(&self) -> u64 {
        self.trash.backlog_bytes()
    }

    /// Bytes of deleted files the shard has freed, so far.
    pub fn deleted_bytes_freed(&self) -> u64 {
        self.trash.freed_bytes()
    }

    /// Frees the files of `dir`, a deleted partition's directory already renamed to a name
    /// no log uses, at the shard's delete rate, and then the directory itself.
    pub fn free_dir(&self, dir: std::path::PathBuf) {
        self.trash.adopt_dir(dir);
    }

    /// Returns once every file deleted so far is freed.
    pub async fn deletions_freed(&self) {
        self.trash.drained().await;
    }

    /// Read-ahead windows the shard's logs keep now.
    pub fn readahead_windows(&self) -> usize {
        self.readahead_windows.get()
    }

    /// A hold on one more kept read-ahead window, if the shard has room for it.
    pub(crate) fn hold_readahead(&self) -> Option<WindowHold> {
        let held = self.readahead_windows.get();
        (held < self.config.readahead_windows_max).then(|| {
            self.readahead_windows.set(held + 1);
            WindowHold(self.readahead_windows.clone())
        })
    }

    pub(crate) fn allocate_log_id(&self) -> LogId {
        let id = self.next_log_id.get();
        self.next_log_id.set(id + 1);
        LogId(id)
    }

    /// Counts a freshly opened sealed segment, closing the oldest ones beyond the budget.
    pub(crate) fn opened_segment(&self, slot: &Rc<OpenSlot>) {
        let mut open = self.open_segments.borrow_mut();
        open.retain(|weak| weak.upgrade().is_some_and(|slot| slot.borrow().is_some()));
        open.push_back(Rc::downgrade(slot));
        while open.len() > self.config.open_segments_max {
            if let Some(slot) = open.pop_front().and_then(|weak| weak.upgrade()) {
                slot.borrow_mut().take();
            }
        }
    }

    /// Sealed segments open now.
    pub fn open_segments(&self) -> usize {
        let open = self.open_segments.borrow();
        open.iter()
            .filter(|weak| weak.upgrade().is_some_and(|slot| slot.borrow().is_some()))
            .count()
    }
}
