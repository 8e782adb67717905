//! Walking the batches of a segment file: recovery, index rebuilds, truncation and
//! verification all read a segment the same way, so they agree on where its data ends.

use std::path::Path;

use bytes::Bytes;
use weir_wire::batch::{self, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES};

use crate::Result;
use crate::index::SegmentIndex;
use crate::io::{self, SegmentFile};

/// Bytes read from a segment at once while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The end of the file, or zeroed space after the data (preallocated blocks and the
    /// padding of the last page both read as zeros).
    EndOfData,
    /// The bytes at the end position are not a valid batch.
    Invalid { reason: String },
    /// The next batch holds the offset the scan was asked to stop at, or a later one.
    ReachedOffset,
}

#[derive(Debug)]
pub(crate) struct Scan {
    /// Right after the last valid batch.
    pub end_position: u64,
    /// The offset after the last valid batch (the segment's base offset when empty).
    pub next_offset: i64,
    pub index: SegmentIndex,
    pub end: ScanEnd,
    /// `(leader epoch, base offset)` of every valid batch that raised the epoch.
    pub epoch_starts: Vec<(i32, i64)>,
    /// Valid batches found.
    pub batches: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanSettings {
    pub batch_bytes_max: usize,
    pub index_interval_bytes: u32,
    /// Stop before the first batch whose last offset is at or after this one.
    pub stop_at_offset: Option<i64>,
}

/// A window of a segment file held in memory while walking it.
pub(crate) struct Window<'a> {
    file: &'a SegmentFile,
    path: &'a Path,
    start: u64,
    bytes: Bytes,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a SegmentFile, path: &'a Path) -> Window<'a> {
        Window {
            file,
            path,
            start: 0,
            bytes: Bytes::new(),
        }
    }

    /// The whole batch at `position`, validated (length, magic, CRC), or `None` at the
    /// end of the data. Anything invalid before `data_bytes` is corruption.
    pub async fn batch_at(
        &mut self,
        position: u64,
        data_bytes: u64,
        batch_bytes_max: usize,
    ) -> Result<Option<(batch::BatchHeader, Bytes)>> {
        if position >= data_bytes {
            return Ok(None);
        }
        let remaining = data_bytes - position;
        let corrupt = |reason: String| crate::StorageError::Corrupt {
            path: self.path.to_path_buf(),
            position,
            reason,
        };
        let prefix = self
            .get(position, LOG_OVERHEAD_BYTES.min(remaining as usize))
            .await?;
        let total = batch_length(&prefix, remaining, batch_bytes_max).map_err(corrupt)?;
        let bytes = self.get(position, total).await?;
        let header =
            batch::validate(&bytes, batch_bytes_max).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some((header, bytes)))
    }

    /// The bytes `[position, position + len)`, reading from the file when the window does
    /// not cover them. Shorter only at the end of the file.
    async fn get(&mut self, position: u64, len: usize) -> Result<Bytes> {
        let end = self.start + self.bytes.len() as u64;
        if position < self.start || position + len as u64 > end {
            self.bytes =
                io::read_at(self.file, self.path, position, len.max(SCAN_CHUNK_BYTES)).await?;
            self.start = position;
        }
        let from = (position - self.start) as usize;
        let to = (from + len).min(self.bytes.len());
        Ok(self.bytes.slice(from..to))
    }
}

/// Walks the batches of the segment at `path`, based at `base_offset`, from its start up
/// to `file_bytes`, validating each one's length, magic, CRC and offsets.
pub(crate) async fn scan_segment(
    file: &SegmentFile,
    path: &Path,
    base_offset: i64,
    file_bytes: u64,
    settings: ScanSettings,
) -> Result<Scan> {
    let mut window = Window::new(file, path);
    let mut scan = Scan {
        end_position: 0,
        next_offset: base_offset,
        index: SegmentIndex::new(),
        end: ScanEnd::EndOfData,
        epoch_starts: Vec::new(),
        batches: 0,
    };
    let mut latest_epoch = -1;
    loop {
        let position = scan.end_position;
        if position >= file_bytes {
            scan.end = ScanEnd::EndOfData;
            return Ok(scan);
        }
        let remaining = file_bytes - position;
        let prefix = window
            .get(position, LOG_OVERHEAD_BYTES.min(remaining as usize))
            .await?;
        if prefix.iter().all(|b| *b == 0) {
            scan.end = ScanEnd::EndOfData;
            return Ok(scan);
        }
        let total = match batch_length(&prefix, remaining, settings.batch_bytes_max) {
            Ok(total) => total,
            Err(reason) => {
                scan.end = ScanEnd::Invalid { reason };
                return Ok(scan);
            }
        };
        let bytes = window.get(position, total).await?;
        let header = match batch::validate(&bytes, settings.batch_bytes_max) {
            Ok(header) => header,
            Err(error) => {
                scan.end = ScanEnd::Invalid {
                    reason: error.to_string(),
                };
                return Ok(scan);
            }
        };
        if header.base_offset < scan.next_offset
            || header.last_offset() - base_offset > i64::from(u32::MAX)
        {
            let reason = format!(
                "batch base offset {} does not follow offset {} in a segment based at {base_offset}",
                header.base_offset, scan.next_offset
            );
            scan.end = ScanEnd::Invalid { reason };
            return Ok(scan);
        }
        if settings
            .stop_at_offset
            .is_some_and(|stop| header.last_offset() >= stop)
        {
            scan.end = ScanEnd::ReachedOffset;
            return Ok(scan);
        }
        scan.index.observe(
            base_offset,
            &header,
            position,
            settings.index_interval_bytes,
        );
        if header.partition_leader_epoch > latest_epoch {
            latest_epoch = header.partition_leader_epoch;
            scan.epoch_starts.push((latest_epoch, header.base_offset));
        }
        scan.end_position = position + total as u64;
        scan.next_offset = header.next_offset();
        scan.batches += 1;
    }
}

/// The total size of the batch whose first bytes are `prefix`, if it is plausible.
fn batch_length(prefix: &[u8], remaining: u64, batch_bytes_max: usize) -> Result<usize, String> {
    let Some(total) = batch::peek_total_bytes(prefix) else {
        return Err(format!(
            "{} bytes at the end are too few for a batch",
            prefix.len()
        ));
    };
    if total < BATCH_HEADER_BYTES as i64 || total > batch_bytes_max as i64 {
        return Err(format!(
            "batch length {total} is outside [{BATCH_HEADER_BYTES}, {batch_bytes_max}]"
        ));
    }
    if total as u64 > remaining {
        return Err(format!(
            "batch of {total} bytes extends past the end of the file (torn write)"
        ));
    }
    Ok(total as usize)
}
