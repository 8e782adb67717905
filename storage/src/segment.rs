//! Segments: the files a partition log is made of.
//!
//! `<base offset, 20 digits>.log` holds batches back to back. The last segment is the
//! active one, appended to; the others are sealed and never change until retention
//! deletes them or truncation reopens one.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use event_listener::Event;

use crate::config::LogConfig;
use crate::index::{self, IndexFileHeader, IndexKind, SegmentIndex};
use crate::io::{self, Durability, SegmentFile};
use crate::scan::{self, Scan, ScanEnd, ScanSettings};
use crate::trash::Trash;
use crate::{Result, StorageError};

pub(crate) const LOG_EXTENSION: &str = "log";
pub(crate) const INDEX_EXTENSION: &str = "index";
pub(crate) const TIME_INDEX_EXTENSION: &str = "timeindex";
/// A deleted segment's file kept for reuse: `<offset, 20 digits>.recycled`, named for the
/// offset its batches end before.
pub(crate) const RECYCLED_EXTENSION: &str = "recycled";

/// The segment being appended to. Its indexes live in memory only.
#[derive(Debug, Clone)]
pub(crate) struct ActiveSegment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Rc<SegmentFile>,
    /// The exact end of the batches wholly written so far: readers may read up to here.
    pub data_bytes: u64,
    /// The end of the batches for which writes are planned (in flight or done).
    pub planned_bytes: u64,
    /// The bytes of the last, partly filled page of the planned data
    /// (`planned_bytes % PAGE_BYTES` of them): the next write starts at that page and
    /// rewrites it with more data behind.
    pub tail_page: Vec<u8>,
    /// Whether the tail page holds planned bytes no write has carried to disk yet.
    pub tail_unwritten: bool,
    pub index: SegmentIndex,
    /// The offset after the last batch written to the file.
    pub next_offset: i64,
    pub created_at: Instant,
    /// Whether the file is a recycled one: past `data_bytes` it holds an older segment's
    /// batches, not zeros, so it must be cut to its data before it is sealed.
    pub recycled: bool,
}

/// A sealed segment's file that left the log (retention) and waits to become the next
/// active segment. Writing over blocks a file already has changes no file metadata, so an
/// fdatasync is one device flush, not also a write of the inode's metadata blocks (a journal
/// commit on an ext4 with a journal; this machine's has none): measured here it
/// halves write+fdatasync latency (docs/BENCHMARKS.md).
///
/// The old batches left behind the new data must never be taken for new ones after a
/// crash. They all have offsets below `stale_below`, and the file is only reused for a
/// segment based at or after it: recovery's scan rejects a batch whose base offset does
/// not follow the one before, so it stops at the first old batch.
#[derive(Debug)]
pub(crate) struct SpareSegment {
    pub path: PathBuf,
    pub stale_below: i64,
    /// The file as readers that picked the old segment may still hold it (a read in
    /// flight, the read-ahead window): reusing it while they do would change bytes under
    /// their reads.
    pub readers: std::rc::Weak<SegmentFile>,
}

impl SpareSegment {
    pub fn path_for(dir: &Path, stale_below: i64) -> PathBuf {
        io::segment_path(dir, stale_below, RECYCLED_EXTENSION)
    }

    /// Whether the file can become the segment based at `base_offset` now.
    pub fn usable_for(&self, base_offset: i64) -> bool {
        base_offset >= self.stale_below && self.readers.upgrade().is_none()
    }
}

/// A segment that no longer changes. Its file and offset index are opened on demand and
/// closed again when the shard's open-segment budget needs the room.
#[derive(Debug, Clone)]
pub(crate) struct SealedSegment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub size_bytes: u64,
    pub path: PathBuf,
    pub open: Rc<OpenSlot>,
    pub life: Rc<SegmentLife>,
}

/// Whether a sealed segment is still part of its log, and who is opening its file.
///
/// Compaction replaces segments by renaming a new file over an old one's name. A reader
/// that picked the old segment and opens it by name could then get the new file with the
/// old one's facts; so compaction first marks the old segments replaced (no new opens
/// start), waits until opens in progress are done, and only then renames.
#[derive(Debug, Default)]
pub(crate) struct SegmentLife {
    replaced: Cell<bool>,
    opening: Cell<u32>,
    opened: Event,
    /// The file as last opened: alive while any reader holds it, open slot or not.
    file: RefCell<std::rc::Weak<SegmentFile>>,
}

impl SegmentLife {
    pub fn holding(file: &Rc<SegmentFile>) -> Rc<SegmentLife> {
        let life = SegmentLife::default();
        *life.file.borrow_mut() = Rc::downgrade(file);
        Rc::new(life)
    }

    /// The segment's file for as long as anyone holds it open.
    pub fn file_in_use(&self) -> std::rc::Weak<SegmentFile> {
        self.file.borrow().clone()
    }

    pub fn mark_replaced(&self) {
        self.replaced.set(true);
    }

    /// Returns once no open of the segment's file is in progress.
    pub async fn opens_finished(&self) {
        loop {
            let listener = self.opened.listen();
            if self.opening.get() == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// Counts an open in progress for as long as it lives (also when the reader is dropped).
struct Opening<'a>(&'a SegmentLife);

impl<'a> Opening<'a> {
    fn start(life: &'a SegmentLife) -> Opening<'a> {
        life.opening.set(life.opening.get() + 1);
        Opening(life)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.set(self.0.opening.get() - 1);
        self.0.opened.notify(usize::MAX);
    }
}

pub(crate) type OpenSlot = RefCell<Option<Rc<OpenSegment>>>;

/// An opened segment file with its offset index, ready for reads.
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub file: Rc<SegmentFile>,
    pub index: SegmentIndex,
}

pub(crate) fn scan_settings(config: &LogConfig, stop_at_offset: Option<i64>) -> ScanSettings {
    ScanSettings {
        batch_bytes_max: config.batch_bytes_max as usize,
        index_interval_bytes: config.index_interval_bytes,
        stop_at_offset,
    }
}

impl ActiveSegment {
    /// Creates an empty segment file based at `base_offset`. The caller syncs the directory.
    pub async fn create(dir: &Path, base_offset: i64, config: &LogConfig) -> Result<ActiveSegment> {
        let path = io::segment_path(dir, base_offset, LOG_EXTENSION);
        let preallocate = config.preallocate.then_some(config.segment_bytes);
        let file = io::create_segment(&path, preallocate).await?;
        // Index files left by an earlier segment of the same name must never be trusted.
        remove_index_files(dir, base_offset).await?;
        Ok(ActiveSegment::empty(base_offset, path, file))
    }

    /// Makes a spare segment's file the empty segment based at `base_offset` (which the
    /// spare must be usable for). The caller syncs the directory.
    pub async fn adopt(dir: &Path, base_offset: i64, spare: SpareSegment) -> Result<ActiveSegment> {
        debug_assert!(spare.usable_for(base_offset));
        let path = io::segment_path(dir, base_offset, LOG_EXTENSION);
        remove_index_files(dir, base_offset).await?;
        io::rename(&spare.path, &path).await?;
        let file = io::open_segment(&path).await?;
        Ok(ActiveSegment {
            recycled: true,
            ..ActiveSegment::empty(base_offset, path, file)
        })
    }

    fn empty(base_offset: i64, path: PathBuf, file: SegmentFile) -> ActiveSegment {
        ActiveSegment {
            base_offset,
            path,
            file: Rc::new(file),
            data_bytes: 0,
            planned_bytes: 0,
            tail_page: Vec::new(),
            tail_unwritten: false,
            index: SegmentIndex::new(),
            next_offset: base_offset,
            created_at: Instant::now(),
            recycled: false,
        }
    }

    /// Cuts a recycled file to its data, durably: a crash after the next segment exists
    /// must not find this one, sealed, followed by an older segment's batches.
    pub async fn cut_recycled_tail(&mut self) -> Result<()> {
        if self.recycled {
            io::truncate(&self.file, &self.path, self.data_bytes).await?;
            io::fdatasync(&self.file, &self.path).await?;
            self.recycled = false;
        }
        Ok(())
    }

    /// Opens the last segment of a log. After a clean close its index files describe it
    /// exactly and are trusted; otherwise it is scanned, and everything from the first
    /// batch that fails validation on is cut off (it was never acknowledged durable).
    /// Returns the segment and, when it was scanned, the scan.
    pub async fn recover(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
    ) -> Result<(ActiveSegment, Option<Scan>)> {
        let path = io::segment_path(dir, base_offset, LOG_EXTENSION);
        let file = io::open_segment(&path).await?;
        let file_bytes = io::file_size(&file, &path).await?;
        let (index, next_offset, data_bytes, scan) =
            match load_trusted_index(dir, base_offset, file_bytes, config).await? {
                Some((header, index)) => (index, header.next_offset, header.log_bytes, None),
                None => {
                    let scan = scan::scan_segment(
                        &file,
                        &path,
                        base_offset,
                        file_bytes,
                        scan_settings(config, None),
                    )
                    .await?;
                    if let ScanEnd::Invalid { reason } = &scan.end {
                        tracing::warn!(
                            segment = %path.display(),
                            position = scan.end_position,
                            reason = %reason,
                            "cutting off the segment's unacknowledged tail"
                        );
                    }
                    if scan.end_position < file_bytes {
                        io::truncate(&file, &path, scan.end_position).await?;
                        io::fdatasync(&file, &path).await?;
                    }
                    (
                        scan.index.clone(),
                        scan.next_offset,
                        scan.end_position,
                        Some(scan),
                    )
                }
            };
        // From here on the segment changes: its index files would become stale.
        remove_index_files(dir, base_offset).await?;
        if config.preallocate {
            io::preallocate(&file, &path, config.segment_bytes).await?;
        }
        let tail_page = read_tail_page(&file, &path, data_bytes).await?;
        let segment = ActiveSegment {
            base_offset,
            path,
            file: Rc::new(file),
            data_bytes,
            planned_bytes: data_bytes,
            tail_page,
            tail_unwritten: false,
            index,
            next_offset,
            created_at: Instant::now(),
            recycled: false,
        };
        Ok((segment, scan))
    }

    /// What this segment is once sealed, for reads: its facts and its open file and index.
    /// Nothing is written; [`ActiveSegment::finish_seal`] makes the files match.
    pub fn sealed_view(&self) -> SealedSegment {
        assert_eq!(
            self.planned_bytes,
            self.data_bytes,
            "sealing {} with writes outstanding",
            self.path.display()
        );
        let open = OpenSegment {
            file: self.file.clone(),
            index: self.index.clone(),
        };
        SealedSegment {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            max_timestamp: self.index.max_timestamp,
            size_bytes: self.data_bytes,
            path: self.path.clone(),
            open: Rc::new(RefCell::new(Some(Rc::new(open)))),
            life: SegmentLife::holding(&self.file),
        }
    }

    /// Makes the files of a segment that was sealed match: the padding of its last page
    /// cut off (and any preallocated space), the index files written. Until this is done a
    /// crash leaves the segment without index files and with a zero tail, which recovery
    /// recognizes and finishes the same way.
    pub async fn finish_seal(&self, dir: &Path) -> Result<()> {
        io::truncate(&self.file, &self.path, self.data_bytes).await?;
        io::fdatasync(&self.file, &self.path).await?;
        write_index_files(
            dir,
            self.base_offset,
            self.next_offset,
            self.data_bytes,
            &self.index,
            Durability::Synced,
        )
        .await
    }

    /// Cuts the file to its data and writes the index files, so the next open trusts them
    /// instead of scanning (a clean close).
    pub async fn close_cleanly(self, dir: &Path) -> Result<()> {
        io::truncate(&self.file, &self.path, self.data_bytes).await?;
        io::fdatasync(&self.file, &self.path).await?;
        write_index_files(
            dir,
            self.base_offset,
            self.next_offset,
            self.data_bytes,
            &self.index,
            Durability::Synced,
        )
        .await
    }
}

impl SealedSegment {
    /// Opens a sealed segment of a log being opened: its facts come from the header of its
    /// offset index, or, when that is missing or does not match the file, from a scan that
    /// also rebuilds the index files. A sealed segment that does not scan cleanly to its end
    /// is corrupt: that is reported, never skipped.
    pub async fn recover(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
    ) -> Result<SealedSegment> {
        let path = io::segment_path(dir, base_offset, LOG_EXTENSION);
        let file_bytes = std::fs::metadata(&path)
            .map_err(|source| StorageError::Io {
                operation: "reading size of",
                path: path.clone(),
                source,
            })?
            .len();
        let index_path = io::segment_path(dir, base_offset, INDEX_EXTENSION);
        let header = io::read_small_file(&index_path, index_file_bytes_max(config))
            .await?
            .and_then(|bytes| index::decode_index_header(&bytes).ok())
            .filter(|h| {
                h.kind == IndexKind::Offset
                    && h.base_offset == base_offset
                    && h.log_bytes == file_bytes
            });
        let (next_offset, max_timestamp, size_bytes, open) = match header {
            Some(header) => (header.next_offset, header.max_timestamp, file_bytes, None),
            None => {
                tracing::warn!(segment = %path.display(), "rebuilding missing or stale index");
                let (file, scan) =
                    rebuild_sealed(dir, &path, base_offset, file_bytes, config).await?;
                let open = OpenSegment {
                    file: Rc::new(file),
                    index: scan.index.clone(),
                };
                let max_timestamp = scan.index.max_timestamp;
                (
                    scan.next_offset,
                    max_timestamp,
                    scan.end_position,
                    Some(Rc::new(open)),
                )
            }
        };
        let life = match &open {
            Some(open) => SegmentLife::holding(&open.file),
            None => Rc::default(),
        };
        Ok(SealedSegment {
            base_offset,
            next_offset,
            max_timestamp,
            size_bytes,
            path,
            open: Rc::new(RefCell::new(open)),
            life,
        })
    }

    /// The opened file and offset index, opening them when closed. Returns whether it had
    /// to open them (the caller then counts it against the open-segment budget).
    pub async fn opened(&self, dir: &Path, config: &LogConfig) -> Result<(Rc<OpenSegment>, bool)> {
        if let Some(open) = self.open.borrow().as_ref() {
            return Ok((open.clone(), false));
        }
        if self.life.replaced.get() {
            return Err(StorageError::SegmentReplaced {
                path: self.path.clone(),
            });
        }
        let _opening = Opening::start(&self.life);
        let loaded = load_trusted_index(dir, self.base_offset, self.size_bytes, config).await?;
        let open = match loaded {
            Some((_, index)) => OpenSegment {
                file: Rc::new(io::open_segment(&self.path).await?),
                index,
            },
            None => {
                tracing::warn!(segment = %self.path.display(), "rebuilding damaged index");
                let (file, scan) =
                    rebuild_sealed(dir, &self.path, self.base_offset, self.size_bytes, config)
                        .await?;
                OpenSegment {
                    file: Rc::new(file),
                    index: scan.index,
                }
            }
        };
        let open = Rc::new(open);
        *self.life.file.borrow_mut() = Rc::downgrade(&open.file);
        *self.open.borrow_mut() = Some(open.clone());
        Ok((open, true))
    }
}

/// Scans a sealed segment completely and rewrites its index files. The scan must reach the
/// end of the file: anything else is corruption inside data that was sealed.
async fn rebuild_sealed(
    dir: &Path,
    path: &Path,
    base_offset: i64,
    file_bytes: u64,
    config: &LogConfig,
) -> Result<(SegmentFile, Scan)> {
    let file = io::open_segment(path).await?;
    let scan = scan::scan_segment(
        &file,
        path,
        base_offset,
        file_bytes,
        scan_settings(config, None),
    )
    .await?;
    if scan.end == ScanEnd::EndOfData && scan.end_position < file_bytes {
        // A seal cut short by a crash: the data is whole and only zeros (page padding,
        // preallocation) follow. Anything else there is corruption.
        finish_interrupted_seal(&file, path, &scan, file_bytes).await?;
    } else {
        check_scanned_to_end(path, &scan, file_bytes)?;
    }
    write_index_files(
        dir,
        base_offset,
        scan.next_offset,
        scan.end_position,
        &scan.index,
        Durability::Synced,
    )
    .await?;
    Ok((file, scan))
}

/// Checks that everything after the scanned data is zero, then cuts it off.
async fn finish_interrupted_seal(
    file: &SegmentFile,
    path: &Path,
    scan: &Scan,
    file_bytes: u64,
) -> Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let mut position = scan.end_position;
    while position < file_bytes {
        let len = CHUNK_BYTES.min(file_bytes - position) as usize;
        let bytes = io::read_at(file, path, position, len).await?;
        if let Some(at) = bytes.iter().position(|b| *b != 0) {
            let reason = "bytes after the last valid batch of a sealed segment".to_string();
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                position: position + at as u64,
                reason,
            });
        }
        position += len as u64;
    }
    tracing::warn!(segment = %path.display(), "finishing a seal interrupted by a crash");
    io::truncate(file, path, scan.end_position).await?;
    io::fdatasync(file, path).await
}

/// A sealed segment's scan must end exactly at its size with nothing invalid before.
pub(crate) fn check_scanned_to_end(path: &Path, scan: &Scan, data_bytes: u64) -> Result<()> {
    let reason = match &scan.end {
        ScanEnd::Invalid { reason } => reason.clone(),
        _ if scan.end_position != data_bytes => "zeroed bytes inside sealed data".to_string(),
        _ => return Ok(()),
    };
    Err(StorageError::Corrupt {
        path: path.to_path_buf(),
        position: scan.end_position,
        reason,
    })
}

/// An index file holds at most `index_entries_max` entries of at most 12 bytes.
fn index_file_bytes_max(config: &LogConfig) -> usize {
    index::INDEX_HEADER_BYTES + config.index_entries_max as usize * 12 + (1 << 16)
}

/// The index of a segment closed cleanly, if its files are there and match it exactly.
async fn load_trusted_index(
    dir: &Path,
    base_offset: i64,
    file_bytes: u64,
    config: &LogConfig,
) -> Result<Option<(IndexFileHeader, SegmentIndex)>> {
    let mut index = SegmentIndex::new();
    let mut offset_header = None;
    for kind in [IndexKind::Offset, IndexKind::Time] {
        let extension = if kind == IndexKind::Offset {
            INDEX_EXTENSION
        } else {
            TIME_INDEX_EXTENSION
        };
        let path = io::segment_path(dir, base_offset, extension);
        let Some(bytes) = io::read_small_file(&path, index_file_bytes_max(config)).await? else {
            return Ok(None);
        };
        let Ok(header) = index::decode_index_header(&bytes) else {
            return Ok(None);
        };
        let matches = header.kind == kind
            && header.base_offset == base_offset
            && header.log_bytes == file_bytes;
        if !matches || index::decode_index_entries(&bytes, &header, &mut index).is_err() {
            return Ok(None);
        }
        offset_header.get_or_insert(header);
    }
    Ok(offset_header.map(|header| (header, index)))
}

pub(crate) async fn write_index_files(
    dir: &Path,
    base_offset: i64,
    next_offset: i64,
    log_bytes: u64,
    index: &SegmentIndex,
    durability: Durability,
) -> Result<()> {
    for (kind, extension) in [
        (IndexKind::Offset, INDEX_EXTENSION),
        (IndexKind::Time, TIME_INDEX_EXTENSION),
    ] {
        let contents = index::encode_index_file(kind, index, base_offset, next_offset, log_bytes);
        let name = format!("{base_offset:020}.{extension}");
        io::write_file_atomically(dir, &name, &contents, durability).await?;
    }
    Ok(())
}

pub(crate) async fn remove_index_files(dir: &Path, base_offset: i64) -> Result<()> {
    for extension in [INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
        io::remove_file(&io::segment_path(dir, base_offset, extension)).await?;
    }
    Ok(())
}

/// Deletes a segment's index files into the shard's trash.
pub(crate) async fn discard_index_files(
    dir: &Path,
    base_offset: i64,
    trash: &Rc<Trash>,
) -> Result<()> {
    for extension in [INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
        let path = io::segment_path(dir, base_offset, extension);
        trash.discard(&path, Vec::new()).await?;
    }
    Ok(())
}

/// Deletes every file of a segment into the shard's trash; its blocks are freed once no
/// reader holds any of `held_by`.
pub(crate) async fn discard_segment_files(
    dir: &Path,
    base_offset: i64,
    trash: &Rc<Trash>,
    held_by: Vec<std::rc::Weak<SegmentFile>>,
) -> Result<()> {
    let path = io::segment_path(dir, base_offset, LOG_EXTENSION);
    trash.discard(&path, held_by).await?;
    discard_index_files(dir, base_offset, trash).await
}

/// The bytes of the last, partly filled page before `data_bytes`.
pub(crate) async fn read_tail_page(
    file: &SegmentFile,
    path: &Path,
    data_bytes: u64,
) -> Result<Vec<u8>> {
    let start = io::align_down(data_bytes);
    if start == data_bytes {
        return Ok(Vec::new());
    }
    let page: Bytes = io::read_at(file, path, start, (data_bytes - start) as usize).await?;
    if page.len() as u64 != data_bytes - start {
        let reason = format!(
            "last page holds {} bytes, expected {}",
            page.len(),
            data_bytes - start
        );
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: start,
            reason,
        });
    }
    Ok(page.to_vec())
}
