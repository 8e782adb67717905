//! Files the shard's logs are done with, freed at a bounded rate.
//!
//! On ext4 mounted with `discard` (as this machine's disk is, and as SSD guides advise),
//! freeing a file's blocks sends the device a discard for them from inside the unlink,
//! and appends waiting on their fdatasync queue behind it: one 1 MiB segment took
//! 0.5-1.3 ms here, and a compaction pass replacing twenty segments stalled durable
//! produce for tens of milliseconds (docs/BENCHMARKS.md). As RocksDB's delete scheduler
//! does, a file leaves its name at once (renamed into the trash, which is the delete as
//! far as the log and a crash are concerned) and its blocks go later: the trash cuts it
//! down a chunk at a time at a bounded byte rate, then unlinks what is left (nothing).
//!
//! A file is cut only once no reader holds it: truncating under a read in flight would
//! take bytes from it, where an unlink would not.
//!
//! **Invariant:** used from its shard's thread only.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::error::{Result, StorageError};
use crate::io::{self, SegmentFile};

/// What a trashed file's name ends with; nothing else in a log's directory does.
pub(crate) const TRASH_EXTENSION: &str = "deleted";

/// Bytes cut from a file at once: small enough that one cut's discard is short next to a
/// durable append (about 1 ms here), large enough that a 1 GiB segment takes 1,024 cuts.
const CUT_BYTES: u64 = 1 << 20;

/// How often a file still held by a reader is looked at again.
const HELD_RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug)]
enum Doomed {
    /// A file already renamed into the trash, freed once nothing in `held_by` is alive.
    File {
        path: PathBuf,
        held_by: Vec<Weak<SegmentFile>>,
        /// Its size when queued, counted in the backlog.
        bytes: u64,
    },
    /// A directory already renamed away: its files are freed, then it goes.
    Dir(PathBuf),
}

#[derive(Debug)]
pub(crate) struct Trash {
    bytes_per_second: u64,
    backlog_bytes_max: u64,
    queue: RefCell<VecDeque<Doomed>>,
    /// Bytes of the queued files, and of the one being cut (as known when queued).
    backlog_bytes: Cell<u64>,
    freed_bytes: Cell<u64>,
    draining: Cell<bool>,
    /// Makes trash names unique, also across restarts (a leftover keeps its name).
    next_name: Cell<u128>,
}

impl Trash {
    /// A trash freeing at most `bytes_per_second` (0: as fast as the disk frees), unless
    /// more than `backlog_bytes_max` waits, when disk space comes first.
    pub(crate) fn new(bytes_per_second: u64, backlog_bytes_max: u64) -> Rc<Trash> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Rc::new(Trash {
            bytes_per_second,
            backlog_bytes_max,
            queue: RefCell::new(VecDeque::new()),
            backlog_bytes: Cell::new(0),
            freed_bytes: Cell::new(0),
            draining: Cell::new(false),
            next_name: Cell::new(now),
        })
    }

    /// Bytes waiting to be freed.
    pub(crate) fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes.get()
    }

    /// Bytes freed so far.
    pub(crate) fn freed_bytes(&self) -> u64 {
        self.freed_bytes.get()
    }

    /// Whether `name` is a trashed file's.
    pub(crate) fn is_trash_name(name: &str) -> bool {
        name.ends_with(TRASH_EXTENSION)
            && name.len() > TRASH_EXTENSION.len()
            && name.as_bytes()[name.len() - TRASH_EXTENSION.len() - 1] == b'.'
    }

    /// Deletes `path` as far as anyone looking at its directory can tell (the caller syncs
    /// the directory when that must survive a crash), and frees its blocks later, once
    /// none of `held_by` is alive. A missing file is not an error (removal is retried
    /// after a crash).
    pub(crate) async fn discard(
        self: &Rc<Self>,
        path: &Path,
        held_by: Vec<Weak<SegmentFile>>,
    ) -> Result<()> {
        let unique = self.next_name.get();
        self.next_name.set(unique + 1);
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{unique}.{TRASH_EXTENSION}"));
        let trashed = PathBuf::from(name);
        match io::rename(path, &trashed).await {
            Err(error) if is_missing(&error) => Ok(()),
            Err(error) => Err(error),
            Ok(()) => {
                self.adopt(trashed, held_by);
                Ok(())
            }
        }
    }

    /// Frees a file already given a trash name (a leftover found after a restart).
    pub(crate) fn adopt(self: &Rc<Self>, trashed: PathBuf, held_by: Vec<Weak<SegmentFile>>) {
        let bytes = self.count_in(&trashed);
        self.push(Doomed::File {
            path: trashed,
            held_by,
            bytes,
        });
    }

    /// Frees the files of a directory already renamed away, then removes it.
    pub(crate) fn adopt_dir(self: &Rc<Self>, dir: PathBuf) {
        self.push(Doomed::Dir(dir));
    }

    /// Returns once everything queued so far is freed.
    pub(crate) async fn drained(&self) {
        while self.draining.get() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Adds the file's size to the backlog, and returns it.
    fn count_in(&self, path: &Path) -> u64 {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        self.backlog_bytes.set(self.backlog_bytes.get() + bytes);
        bytes
    }

    fn count_out(&self, bytes: u64) {
        self.backlog_bytes
            .set(self.backlog_bytes.get().saturating_sub(bytes));
    }

    fn push(self: &Rc<Self>, doomed: Doomed) {
        self.queue.borrow_mut().push_back(doomed);
        if !self.draining.replace(true) {
            let trash = self.clone();
            // Into the queue of whoever trashed first (the background queue for
            // compaction and retention); the task sleeps most of the time anyway.
            glommio::spawn_local(async move { trash.drain().await }).detach();
        }
    }

    async fn drain(self: Rc<Self>) {
        let mut pace = Pace::new(self.bytes_per_second);
        loop {
            let next = self.queue.borrow_mut().pop_front();
            let Some(doomed) = next else {
                self.draining.set(false);
                return;
            };
            let result = match doomed {
                Doomed::File {
                    path,
                    held_by,
                    bytes,
                } => {
                    while held_by.iter().any(|file| file.strong_count() > 0) {
                        glommio::timer::sleep(HELD_RECHECK).await;
                    }
                    self.free_file(&path, bytes, &mut pace).await
                }
                Doomed::Dir(dir) => self.free_dir(&dir, &mut pace).await,
            };
            if let Err(error) = result {
                // The space stays taken until the next start finds the leftover again.
                tracing::warn!(%error, "freeing a deleted file failed");
            }
        }
    }

    async fn free_dir(&self, dir: &Path, pace: &mut Pace) -> Result<()> {
        let entries = io::dir_entries(dir)?;
        let counted: Vec<u64> = entries
            .iter()
            .map(|(_, path)| self.count_in(path))
            .collect();
        for ((_, path), bytes) in entries.into_iter().zip(counted) {
            if path.is_dir() {
                // weir's partition directories hold files only; anything else goes at once.
                self.count_out(bytes);
                off_shard(&path.clone(), move || std::fs::remove_dir_all(&path)).await?;
            } else {
                self.free_file(&path, bytes, pace).await?;
            }
        }
        let owned = dir.to_path_buf();
        off_shard(dir, move || std::fs::remove_dir(&owned)).await
    }

    /// Cuts the file down to nothing at the trash's pace, then unlinks it. Each cut runs on
    /// glommio's blocking pool: the discard inside it would otherwise hold the shard.
    async fn free_file(&self, path: &Path, counted: u64, pace: &mut Pace) -> Result<()> {
        let mut counted = counted;
        let result = self.cut_and_unlink(path, &mut counted, pace).await;
        // Whatever was not cut (the file went another way, or freeing failed) leaves the
        // backlog too: a failure is retried only by the next start.
        self.count_out(counted);
        result
    }

    async fn cut_and_unlink(&self, path: &Path, counted: &mut u64, pace: &mut Pace) -> Result<()> {
        let owned = path.to_path_buf();
        let opened = off_shard(path, move || {
            let file = std::fs::OpenOptions::new().write(true).open(&owned)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await;
        let (mut file, mut len) = match opened {
            Ok(opened) => opened,
            Err(error) if is_missing(&error) => return Ok(()),
            Err(error) => return Err(error),
        };
        while len > 0 {
            let cut = len.min(CUT_BYTES);
            if self.backlog_bytes.get() <= self.backlog_bytes_max {
                pace.wait(cut).await;
            }
            let to = len - cut;
            file = off_shard(path, move || file.set_len(to).map(|()| file)).await?;
            len = to;
            let counted_cut = cut.min(*counted);
            *counted -= counted_cut;
            self.count_out(counted_cut);
            self.freed_bytes.set(self.freed_bytes.get() + cut);
        }
        drop(file);
        let owned = path.to_path_buf();
        match off_shard(path, move || std::fs::remove_file(&owned)).await {
            Err(error) if is_missing(&error) => Ok(()),
            other => other,
        }
    }
}

/// Whether the file was already gone: removal is retried after a crash, and a deleted
/// partition's directory may have taken a queued file with it.
fn is_missing(error: &StorageError) -> bool {
    matches!(error, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Runs `op`, an operation on `path`, on glommio's blocking pool.
async fn off_shard<T: Send + 'static>(
    path: &Path,
    op: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    glommio::executor()
        .spawn_blocking(op)
        .await
        .map_err(|source| StorageError::Io {
            operation: "freeing deleted",
            path: path.to_path_buf(),
            source,
        })
}

/// A byte rate: the earliest moment the next bytes may go.
struct Pace {
    bytes_per_second: u64,
    next: Instant,
}

impl Pace {
    fn new(bytes_per_second: u64) -> Pace {
        Pace {
            bytes_per_second,
            next: Instant::now(),
        }
    }

    /// Waits until `bytes` more may go at the rate. Time the trash sat idle is not saved
    /// up: a burst after a quiet minute is paced like any other.
    async fn wait(&mut self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        let now = Instant::now();
        if self.next > now {
            glommio::timer::sleep(self.next - now).await;
        }
        let spacing = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        self.next = self.next.max(now) + spacing;
    }
}

#[cfg(test)]
mod tests;
