//! The one place where the storage engine touches glommio's file API.
//!
//! Segment data goes through `DmaFile` (O_DIRECT): every write starts on a page boundary
//! and covers whole pages, from a DMA buffer. Small files (indexes, checkpoints) use the
//! same path and are replaced atomically: write a temporary file, sync it, rename it over
//! the old one, sync the directory.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use glommio::io::{Directory, DmaFile, OpenOptions};

use crate::config::PAGE_BYTES;
use crate::{Result, StorageError};

pub(crate) type SegmentFile = DmaFile;

fn io_error(
    operation: &'static str,
    path: &Path,
    error: impl Into<std::io::Error>,
) -> StorageError {
    StorageError::Io {
        operation,
        path: path.to_path_buf(),
        source: error.into(),
    }
}

thread_local! {
    /// Devices whose I/O-polling support glommio has already probed on this thread.
    static PROBED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Makes glommio decide correctly whether `dir`'s device supports polled I/O.
///
/// glommio probes a device the first time a thread opens a `DmaFile` on it, by reading
/// from that file, and caches the answer for the thread. When that file is empty the
/// read succeeds trivially and the device is taken for pollable; every later read then
/// fails with EOPNOTSUPP on devices that are not (seen on virtio disks). Opening a file
/// with real data first makes the probe's read reach the device.
pub async fn probe_direct_io(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir)
        .map_err(|e| io_error("inspecting", dir, e))?
        .dev();
    if PROBED_DEVICES.with(|probed| probed.borrow().contains(&device)) {
        return Ok(());
    }
    // Each thread probes with its own file: shards probe the same directory at once.
    let path = dir.join(format!(
        ".weir-direct-io-probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, vec![0u8; PAGE_BYTES as usize])
        .map_err(|e| io_error("writing", &path, e))?;
    let opened = DmaFile::open(&path)
        .await
        .map_err(|e| io_error("opening", &path, e));
    if let Ok(file) = opened {
        file.close()
            .await
            .map_err(|e| io_error("closing", &path, e))?;
    }
    std::fs::remove_file(&path).map_err(|e| io_error("removing", &path, e))?;
    PROBED_DEVICES.with(|probed| probed.borrow_mut().insert(device));
    Ok(())
}

pub(crate) fn align_down(value: u64) -> u64 {
    value - value % PAGE_BYTES
}

pub(crate) fn align_up(value: u64) -> u64 {
    value.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// Creates `path` (and parents) if missing, syncing the parent so the new entry survives.
pub(crate) async fn ensure_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        return probe_direct_io(path).await;
    }
    std::fs::create_dir_all(path).map_err(|e| io_error("creating directory", path, e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).await?;
    }
    probe_direct_io(path).await
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) async fn sync_dir(path: &Path) -> Result<()> {
    let dir = Directory::open(path)
        .await
        .map_err(|e| io_error("opening directory", path, e))?;
    dir.sync()
        .await
        .map_err(|e| io_error("syncing directory", path, e))?;
    dir.close()
        .await
        .map_err(|e| io_error("closing directory", path, e))
}

/// Opens an existing segment for reading and writing.
pub(crate) async fn open_segment(path: &Path) -> Result<SegmentFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| io_error("opening segment", path, e))
}

/// Creates a new, empty segment, reserving `preallocate_bytes` on disk when given. The
/// caller syncs the directory.
pub(crate) async fn create_segment(
    path: &Path,
    preallocate_bytes: Option<u64>,
) -> Result<SegmentFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(|e| io_error("creating segment", path, e))?;
    if let Some(bytes) = preallocate_bytes {
        preallocate(&file, path, bytes).await?;
    }
    Ok(file)
}

/// Reserves blocks up to `bytes` without changing what reads return: unwritten blocks read
/// as zeros, which recovery takes for the end of the data.
pub(crate) async fn preallocate(file: &SegmentFile, path: &Path, bytes: u64) -> Result<()> {
    file.pre_allocate(bytes, false)
        .await
        .map_err(|e| io_error("preallocating segment", path, e))
}

pub(crate) async fn file_size(file: &SegmentFile, path: &Path) -> Result<u64> {
    file.file_size()
        .await
        .map_err(|e| io_error("reading size of", path, e))
}

pub(crate) async fn truncate(file: &SegmentFile, path: &Path, bytes: u64) -> Result<()> {
    file.truncate(bytes)
        .await
        .map_err(|e| io_error("truncating", path, e))
}

pub(crate) async fn fdatasync(file: &SegmentFile, path: &Path) -> Result<()> {
    file.fdatasync()
        .await
        .map_err(|e| io_error("syncing", path, e))
}

/// Reads `len` bytes at `position` (any alignment) into a fresh `Bytes`. Fewer bytes come
/// back only at the end of the file.
pub(crate) async fn read_at(
    file: &SegmentFile,
    path: &Path,
    position: u64,
    len: usize,
) -> Result<Bytes> {
    let start = align_down(position);
    let skip = (position - start) as usize;
    let aligned_len = align_up(skip as u64 + len as u64) as usize;
    let read = file
        .read_at_aligned(start, aligned_len)
        .await
        .map_err(|e| io_error("reading", path, e))?;
    let available = read.len().saturating_sub(skip).min(len);
    // One copy out of the DMA buffer: glommio's buffers cannot cross threads, and a
    // returned `Bytes` may be sent to another shard.
    let mut out = BytesMut::with_capacity(available);
    out.extend_from_slice(&read[skip..skip + available]);
    Ok(out.freeze())
}

/// A page-aligned write prepared in a DMA buffer, ready to be submitted.
pub(crate) struct PageWrite {
    buffer: glommio::io::DmaBuffer,
    position: u64,
    len: usize,
}

impl std::fmt::Debug for PageWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PageWrite {{ position: {}, bytes: {} }}",
            self.position,
            self.buffer.len()
        )
    }
}

impl PageWrite {
    /// Copies the first `len` bytes of `parts`, concatenated, into a DMA buffer for the
    /// page-aligned `position`, zero-padding the last page.
    pub fn new(file: &SegmentFile, position: u64, parts: &[&[u8]], len: usize) -> PageWrite {
        assert_eq!(
            position % PAGE_BYTES,
            0,
            "unaligned segment write at {position}"
        );
        let padded = align_up(len as u64) as usize;
        let mut buffer = file.alloc_dma_buffer(padded);
        let bytes = buffer.as_bytes_mut();
        let mut at = 0;
        for part in parts {
            let take = part.len().min(len - at);
            bytes[at..at + take].copy_from_slice(&part[..take]);
            at += take;
            if at == len {
                break;
            }
        }
        assert_eq!(at, len, "parts hold fewer than the {len} bytes to write");
        bytes[len..].fill(0);
        PageWrite {
            buffer,
            position,
            len,
        }
    }

    /// The bytes to write (without the zero padding).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_bytes()[..self.len]
    }

    /// Writes the pages. Returns once the write completed (not synced).
    pub async fn submit(self, file: &SegmentFile, path: &Path) -> Result<()> {
        let (position, padded) = (self.position, self.buffer.len());
        let written = file
            .write_at(self.buffer, position)
            .await
            .map_err(|e| io_error("writing", path, e))?;
        if written != padded {
            // O_DIRECT writes to a regular file are not expected to be short; if one is, the
            // page contents are unknown and the log must not continue as if they were written.
            let message = format!("short write: {written} of {padded} bytes at {position}");
            let error = std::io::Error::new(ErrorKind::WriteZero, message);
            return Err(io_error("writing", path, error));
        }
        Ok(())
    }
}

/// Writes `parts`, concatenated, at the page-aligned `position`, padding the last page
/// with zeros. Returns once the write completed (not synced).
pub(crate) async fn write_pages(
    file: &SegmentFile,
    path: &Path,
    position: u64,
    parts: &[&[u8]],
) -> Result<()> {
    let len = parts.iter().map(|p| p.len()).sum();
    PageWrite::new(file, position, parts, len)
        .submit(file, path)
        .await
}

/// Whether a replaced file must survive a crash once the replacement returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced: after a crash the new contents are there.
    Synced,
    /// Not synced: after a crash the file may hold the old contents, nothing, or a torn
    /// write. Only for files whose readers detect all three (CRC-checked, matched to
    /// what they describe) and can do without them.
    Lazy,
}

/// Replaces `dir/name` with `contents` so that readers never see a mix of old and new;
/// with `Durability::Synced`, also after a crash.
pub(crate) async fn write_file_atomically(
    dir: &Path,
    name: &str,
    contents: &[u8],
    durability: Durability,
) -> Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&temporary)
        .await
        .map_err(|e| io_error("creating", &temporary, e))?;
    write_pages(&file, &temporary, 0, &[contents]).await?;
    truncate(&file, &temporary, contents.len() as u64).await?;
    if durability == Durability::Synced {
        fdatasync(&file, &temporary).await?;
    }
    file.close()
        .await
        .map_err(|e| io_error("closing", &temporary, e))?;
    rename(&temporary, &path).await?;
    match durability {
        Durability::Synced => sync_dir(dir).await,
        Durability::Lazy => Ok(()),
    }
}

/// Reads a whole small file, or `None` when it does not exist. Larger than `bytes_max` is
/// reported as corruption: weir never writes such a file.
pub(crate) async fn read_small_file(path: &Path, bytes_max: usize) -> Result<Option<Vec<u8>>> {
    let file = match DmaFile::open(path).await {
        Ok(file) => file,
        Err(error) => {
            let error: std::io::Error = error.into();
            if error.kind() == ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(io_error("opening", path, error));
        }
    };
    let size = file_size(&file, path).await?;
    if size > bytes_max as u64 {
        let reason = format!("file of {size} bytes exceeds the {bytes_max} bytes weir writes");
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason,
        });
    }
    let contents = read_at(&file, path, 0, size as usize).await?;
    file.close()
        .await
        .map_err(|e| io_error("closing", path, e))?;
    Ok(Some(contents.to_vec()))
}

pub(crate) async fn rename(from: &Path, to: &Path) -> Result<()> {
    glommio::io::rename(from, to)
        .await
        .map_err(|e| io_error("renaming", from, e))
}

/// Removes a file; one that is already gone is not an error (removal is retried after a
/// crash).
pub(crate) async fn remove_file(path: &Path) -> Result<()> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let error: std::io::Error = error.into();
            if error.kind() == ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io_error("removing", path, error))
            }
        }
    }
}

/// The names of a directory's entries, with their paths.
pub(crate) fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let listing_error = |source| StorageError::Io {
        operation: "listing",
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing_error)? {
        let entry = entry.map_err(listing_error)?;
        entries.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    Ok(entries)
}

pub(crate) fn segment_path(dir: &Path, base_offset: i64, extension: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{extension}"))
}

/// The calling thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`, the scheduler's
/// runtime of the thread: not its sleeps, nor the time other threads ran on its CPU).
/// Zero if the clock fails.
#[allow(unsafe_code)]
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration, and the clock
    // id is a constant the kernel knows; nothing else is read or written.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if done != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod cpu_time_tests {
    use super::thread_cpu_time;

    /// The clock counts this thread's work and not its sleep.
    #[test]
    fn thread_cpu_time_counts_work_not_sleep() {
        let before_sleep = thread_cpu_time();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu_time() - before_sleep;
        let began = std::time::Instant::now();
        let mut sum = 0u64;
        while began.elapsed() < std::time::Duration::from_millis(50) {
            sum = sum.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(sum);
        let worked = thread_cpu_time() - before_sleep - slept;
        assert!(
            worked > slept,
            "working {worked:?} counted no more than sleeping {slept:?}"
        );
        assert!(
            slept < std::time::Duration::from_millis(25),
            "a sleep counted {slept:?}"
        );
    }
}
