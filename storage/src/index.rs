//! Sparse offset and time indexes of a segment, in memory and as files.
//!
//! The indexes of the active segment live only in memory and are rebuilt by scanning after
//! a crash; a segment's index files are written once, when it is sealed or the log is
//! closed cleanly, and trusted only while their header matches the segment file.

use weir_wire::BatchHeader;

/// One offset index entry: a batch starts at `position` and its base offset is
/// `base_offset + relative_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry: the largest timestamp seen so far in the segment and the
/// relative base offset of the batch that carries it. Every batch before that batch has
/// a smaller or equal timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Both indexes of one segment, and the running facts needed to extend them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    bytes_since_entry: u64,
    /// Largest batch max timestamp in the segment, and the base offset of its batch.
    pub max_timestamp: i64,
    pub max_timestamp_offset: i64,
}

impl SegmentIndex {
    pub fn new() -> SegmentIndex {
        SegmentIndex {
            max_timestamp: -1,
            max_timestamp_offset: -1,
            ..SegmentIndex::default()
        }
    }

    /// Records a batch appended at `position` of a segment based at `base_offset`. Index
    /// entries are sparse: one every `interval_bytes`, plus the first batch.
    pub fn observe(
        &mut self,
        base_offset: i64,
        header: &BatchHeader,
        position: u64,
        interval_bytes: u32,
    ) {
        let relative = relative_offset(base_offset, header.base_offset);
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_offset = header.base_offset;
        }
        if self.offsets.is_empty() || self.bytes_since_entry >= u64::from(interval_bytes) {
            self.offsets.push(OffsetEntry {
                relative_offset: relative,
                position: position as u32,
            });
            let grew = self
                .times
                .last()
                .is_none_or(|last| self.max_timestamp > last.timestamp);
            if grew && self.max_timestamp >= 0 {
                let holder = relative_offset(base_offset, self.max_timestamp_offset);
                self.times.push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset: holder,
                });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes() as u64;
    }

    /// The position of the last indexed batch whose base offset is at most `offset`:
    /// scanning from there finds the batch holding `offset`.
    pub fn position_for(&self, base_offset: i64, offset: i64) -> u64 {
        lookup_position(&self.offsets, base_offset, offset)
    }

    /// A relative offset from which scanning finds the first batch with a timestamp at or
    /// after `timestamp`: batches before it all carry earlier timestamps.
    pub fn start_offset_for_timestamp(&self, base_offset: i64, timestamp: i64) -> i64 {
        lookup_time(&self.times, timestamp).map_or(base_offset, |r| base_offset + i64::from(r))
    }

    pub fn entry_count(&self) -> usize {
        self.offsets.len().max(self.times.len())
    }
}

pub(crate) fn relative_offset(base_offset: i64, offset: i64) -> u32 {
    let relative = offset - base_offset;
    assert!(
        (0..=i64::from(u32::MAX)).contains(&relative),
        "offset {offset} is not within u32 of segment base {base_offset}"
    );
    relative as u32
}

pub(crate) fn lookup_position(entries: &[OffsetEntry], base_offset: i64, offset: i64) -> u64 {
    let relative = offset - base_offset;
    let after = entries.partition_point(|e| i64::from(e.relative_offset) <= relative);
    after
        .checked_sub(1)
        .map_or(0, |i| u64::from(entries[i].position))
}

pub(crate) fn lookup_time(entries: &[TimeEntry], timestamp: i64) -> Option<u32> {
    let after = entries.partition_point(|e| e.timestamp < timestamp);
    after.checked_sub(1).map(|i| entries[i].relative_offset)
}

/// What an index file's header says about its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexFileHeader {
    pub kind: IndexKind,
    pub base_offset: i64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub max_timestamp_offset: i64,
    pub log_bytes: u64,
    pub entry_count: u32,
    pub entries_crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexKind {
    Offset,
    Time,
}

impl IndexKind {
    fn code(self) -> u16 {
        match self {
            IndexKind::Offset => 1,
            IndexKind::Time => 2,
        }
    }

    fn entry_bytes(self) -> usize {
        match self {
            IndexKind::Offset => 8,
            IndexKind::Time => 12,
        }
    }
}

const INDEX_MAGIC: &[u8; 8] = b"WEIRIDX\0";
const INDEX_VERSION: u16 = 1;
/// magic 8, version 2, kind 2, base 8, next 8, max timestamp 8, its offset 8, log bytes 8,
/// count 4, entries crc 4, header crc 4.
pub(crate) const INDEX_HEADER_BYTES: usize = 64;

/// Encodes an index file: header, then entries, all little-endian (docs/FORMAT.md).
pub(crate) fn encode_index_file(
    kind: IndexKind,
    index: &SegmentIndex,
    base_offset: i64,
    next_offset: i64,
    log_bytes: u64,
) -> Vec<u8> {
    let mut entries = Vec::with_capacity(index.entry_count() * kind.entry_bytes());
    match kind {
        IndexKind::Offset => {
            for entry in &index.offsets {
                entries.extend_from_slice(&entry.relative_offset.to_le_bytes());
                entries.extend_from_slice(&entry.position.to_le_bytes());
            }
        }
        IndexKind::Time => {
            for entry in &index.times {
                entries.extend_from_slice(&entry.timestamp.to_le_bytes());
                entries.extend_from_slice(&entry.relative_offset.to_le_bytes());
            }
        }
    }
    let count = entries.len() / kind.entry_bytes();
    let mut out = Vec::with_capacity(INDEX_HEADER_BYTES + entries.len());
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&kind.code().to_le_bytes());
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&index.max_timestamp.to_le_bytes());
    out.extend_from_slice(&index.max_timestamp_offset.to_le_bytes());
    out.extend_from_slice(&log_bytes.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&entries).to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(out.len(), INDEX_HEADER_BYTES);
    out.extend_from_slice(&entries);
    out
}

/// Decodes and checks an index file header. `Err` carries the reason it is not usable.
pub(crate) fn decode_index_header(bytes: &[u8]) -> Result<IndexFileHeader, &'static str> {
    let header = bytes
        .get(..INDEX_HEADER_BYTES)
        .ok_or("shorter than its header")?;
    if &header[..8] != INDEX_MAGIC {
        return Err("bad magic");
    }
    let stored_crc = le_u32(header, INDEX_HEADER_BYTES - 4);
    if crc32c::crc32c(&header[..INDEX_HEADER_BYTES - 4]) != stored_crc {
        return Err("header CRC mismatch");
    }
    if le_u16(header, 8) != INDEX_VERSION {
        return Err("unknown version");
    }
    let kind = match le_u16(header, 10) {
        1 => IndexKind::Offset,
        2 => IndexKind::Time,
        _ => return Err("unknown kind"),
    };
    Ok(IndexFileHeader {
        kind,
        base_offset: le_i64(header, 12),
        next_offset: le_i64(header, 20),
        max_timestamp: le_i64(header, 28),
        max_timestamp_offset: le_i64(header, 36),
        log_bytes: le_i64(header, 44) as u64,
        entry_count: le_u32(header, 52),
        entries_crc: le_u32(header, 56),
    })
}

/// Decodes the entries of an index file whose header was already decoded, into `index`.
/// Entries must match the header's count and CRC, stay inside the segment and increase.
pub(crate) fn decode_index_entries(
    bytes: &[u8],
    header: &IndexFileHeader,
    index: &mut SegmentIndex,
) -> Result<(), &'static str> {
    let entry_bytes = header.kind.entry_bytes();
    let expected_len = INDEX_HEADER_BYTES + header.entry_count as usize * entry_bytes;
    if bytes.len() != expected_len {
        return Err("length does not match the entry count");
    }
    let entries = &bytes[INDEX_HEADER_BYTES..];
    if crc32c::crc32c(entries) != header.entries_crc {
        return Err("entries CRC mismatch");
    }
    let span = header.next_offset - header.base_offset;
    for chunk in entries.chunks_exact(entry_bytes) {
        match header.kind {
            IndexKind::Offset => {
                let entry = OffsetEntry {
                    relative_offset: le_u32(chunk, 0),
                    position: le_u32(chunk, 4),
                };
                let increasing = index.offsets.last().is_none_or(|last| {
                    entry.relative_offset > last.relative_offset && entry.position > last.position
                });
                if !increasing || u64::from(entry.position) >= header.log_bytes.max(1) {
                    return Err("offset entries out of order or outside the segment");
                }
                index.offsets.push(entry);
            }
            IndexKind::Time => {
                let entry = TimeEntry {
                    timestamp: le_i64(chunk, 0),
                    relative_offset: le_u32(chunk, 8),
                };
                let increasing = index
                    .times
                    .last()
                    .is_none_or(|last| entry.timestamp > last.timestamp);
                if !increasing {
                    return Err("time entries out of order");
                }
                index.times.push(entry);
            }
        }
        let relative = match header.kind {
            IndexKind::Offset => index.offsets.last().map(|e| e.relative_offset),
            IndexKind::Time => index.times.last().map(|e| e.relative_offset),
        };
        if relative.is_some_and(|r| i64::from(r) >= span.max(1)) {
            return Err("entry offset beyond the segment");
        }
    }
    if header.max_timestamp >= 0
        && !(header.base_offset..header.next_offset.max(header.base_offset + 1))
            .contains(&header.max_timestamp_offset)
    {
        return Err("max timestamp offset outside the segment");
    }
    index.max_timestamp = header.max_timestamp;
    index.max_timestamp_offset = header.max_timestamp_offset;
    Ok(())
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use weir_wire::BatchBuilder;

    /// Builds an index over batches of the given (records, timestamp) shapes, returning
    /// it with each batch's (base offset, position, max timestamp).
    fn indexed(shapes: &[(u8, i64)], interval: u32) -> (SegmentIndex, Vec<(i64, u64, i64)>) {
        let mut index = SegmentIndex::new();
        let (mut offset, mut position, mut batches) = (100i64, 0u64, Vec::new());
        for (records, timestamp) in shapes {
            let mut builder = BatchBuilder::new(*timestamp);
            for _ in 0..=*records % 4 {
                builder.append(*timestamp, None, Some(b"value"), &[]);
            }
            let mut bytes = builder.build();
            weir_wire::batch::assign_offset_and_epoch(&mut bytes, offset, 0);
            let header = BatchHeader::parse(&bytes).unwrap();
            index.observe(100, &header, position, interval);
            batches.push((offset, position, header.max_timestamp));
            position += header.total_bytes() as u64;
            offset = header.next_offset();
        }
        (index, batches)
    }

    quickcheck! {
        fn offset_lookup_never_passes_the_batch_holding_the_offset(
            shapes: Vec<(u8, i64)>, interval: u16, probe: u16
        ) -> bool {
            let (index, batches) = indexed(&shapes, u32::from(interval));
            let Some(last) = batches.last() else { return true };
            let target = 100 + i64::from(probe) % (last.0 - 100 + 1);
            let holder = batches.iter().rev().find(|(base, _, _)| *base <= target).unwrap();
            index.position_for(100, target) <= holder.1
        }

        fn time_lookup_never_skips_an_earlier_match(
            shapes: Vec<(u8, i64)>, interval: u16, probe: i64
        ) -> bool {
            let (index, batches) = indexed(&shapes, u32::from(interval));
            let start = index.start_offset_for_timestamp(100, probe);
            // No batch before the start may carry a timestamp at or after the probe.
            batches.iter().filter(|(base, _, _)| *base < start).all(|(_, _, ts)| *ts < probe)
        }

        fn index_files_round_trip(shapes: Vec<(u8, i64)>, interval: u16) -> bool {
            let (index, batches) = indexed(&shapes, u32::from(interval));
            let log_bytes = batches.last().map_or(0, |b| b.1 + 100);
            let next = batches.last().map_or(100, |b| b.0 + 4);
            [IndexKind::Offset, IndexKind::Time].iter().all(|kind| {
                let bytes = encode_index_file(*kind, &index, 100, next, log_bytes);
                let header = decode_index_header(&bytes).unwrap();
                let mut decoded = SegmentIndex::new();
                decode_index_entries(&bytes, &header, &mut decoded).unwrap();
                header.log_bytes == log_bytes
                    && match kind {
                        IndexKind::Offset => decoded.offsets == index.offsets,
                        IndexKind::Time => decoded.times == index.times,
                    }
            })
        }

        fn damaged_index_files_are_refused_not_trusted(
            shapes: Vec<(u8, i64)>, position: usize, bit: u8
        ) -> bool {
            let (index, batches) = indexed(&shapes, 1);
            let log_bytes = batches.last().map_or(0, |b| b.1 + 100);
            let next = batches.last().map_or(100, |b| b.0 + 4);
            let mut bytes = encode_index_file(IndexKind::Offset, &index, 100, next, log_bytes);
            let at = position % bytes.len();
            bytes[at] ^= 1 << (bit % 8);
            match decode_index_header(&bytes) {
                Err(_) => true,
                Ok(header) => {
                    decode_index_entries(&bytes, &header, &mut SegmentIndex::new()).is_err()
                }
            }
        }
    }
}
