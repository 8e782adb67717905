//! Records inside an uncompressed RecordBatch v2, and a builder for whole batches.
//!
//! Record layout (Kafka's "Record" specification), all integers zig-zag varints:
//!
//! ```text
//! length (varint, bytes after this field)
//! attributes (int8, unused)
//! timestampDelta (varlong), offsetDelta (varint)
//! keyLength (varint, -1 = null), key
//! valueLength (varint, -1 = null), value
//! headerCount (varint), then per header: keyLength, key, valueLength (-1 = null), value
//! ```

use bytes::{BufMut, BytesMut};

use crate::batch::{self, BATCH_HEADER_BYTES, BatchHeader, Compression};
use crate::compression;
use crate::varint::{
    decode_varint, decode_varlong, encode_varint, encode_varlong, varint_len, varlong_len,
};
use crate::{Attributes, WireError};

/// Checks what a client's batch says about its records, beyond the header and CRC that
/// `batch::validate` checks: at least one record, `lastOffsetDelta` = count - 1, and for
/// an uncompressed batch, records that are well formed, numbered 0, 1, 2, ... and fill the
/// batch exactly. (Compressed records are stored as sent; their count is checked.)
pub fn check_client_batch(batch: &[u8]) -> Result<(), WireError> {
    let header = BatchHeader::parse(batch)?;
    if header.records_count <= 0 {
        return Err(WireError::InvalidField {
            field: "records count",
            value: i64::from(header.records_count),
        });
    }
    if header.attributes.is_control() {
        // Transaction markers are written by the broker, never by a producer.
        return Err(WireError::InvalidField {
            field: "control attribute",
            value: i64::from(header.attributes.0),
        });
    }
    if header.last_offset_delta != header.records_count - 1 {
        return Err(WireError::InvalidField {
            field: "last offset delta",
            value: i64::from(header.last_offset_delta),
        });
    }
    if header.attributes.compression() != Some(Compression::None) {
        return Ok(());
    }
    let mut records = RecordIter::new(batch)?;
    for expected in 0..i64::from(header.records_count) {
        let record = records.next().ok_or(WireError::MalformedRecord {
            index: expected as usize,
            reason: "fewer records than the count",
        })??;
        if record.offset - header.base_offset != expected {
            return Err(WireError::MalformedRecord {
                index: expected as usize,
                reason: "offset delta out of sequence",
            });
        }
    }
    if !records.rest.is_empty() {
        return Err(WireError::MalformedRecord {
            index: header.records_count as usize,
            reason: "bytes after the last record",
        });
    }
    Ok(())
}

/// One record header: a string key and an optional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// One record, borrowed from its batch, with absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<Header<'a>>,
    /// The record exactly as encoded in its batch, length prefix included: what
    /// compaction copies into a rebuilt batch (offset and timestamp deltas stay relative
    /// to the same base offset and base timestamp).
    pub encoded: &'a [u8],
}

/// Iterates the records of one uncompressed batch. Stops at the first malformed record
/// with an error; never reads outside the batch.
#[derive(Debug)]
pub struct RecordIter<'a> {
    header: BatchHeader,
    rest: &'a [u8],
    index: usize,
}

impl<'a> RecordIter<'a> {
    /// `batch` is one whole batch (its CRC is not checked here; validate it first).
    pub fn new(batch: &'a [u8]) -> Result<RecordIter<'a>, WireError> {
        let header = BatchHeader::parse(batch)?;
        match header.attributes.compression() {
            Some(Compression::None) => {}
            codec => {
                let codec = codec.map_or("unknown", Compression::name);
                return Err(WireError::CompressedRecords { codec });
            }
        }
        let end = header.total_bytes().min(batch.len());
        Ok(RecordIter::over(header, &batch[BATCH_HEADER_BYTES..end]))
    }

    /// Iterates records encoded in `records` (the records section of the batch `header`
    /// describes, decompressed when the batch is compressed).
    pub fn over(header: BatchHeader, records: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            header,
            rest: records,
            index: 0,
        }
    }

    /// What is left after the records iterated so far.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn next_record(&mut self) -> Result<Record<'a>, WireError> {
        let index = self.index;
        let malformed = |reason| WireError::MalformedRecord { index, reason };
        let (length, used) = decode_varint(self.rest, "record length")?;
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let encoded = self
            .rest
            .get(..used + length)
            .ok_or(malformed("extends past batch"))?;
        let body = &encoded[used..];
        self.rest = &self.rest[used + length..];
        let mut cursor = Cursor { bytes: body, index };
        let _attributes = cursor.take(1)?;
        let timestamp_delta = cursor.varlong("timestamp delta")?;
        let offset_delta = cursor.varint("offset delta")?;
        let key = cursor.nullable_bytes("key")?;
        let value = cursor.nullable_bytes("value")?;
        let header_count = cursor.varint("header count")?;
        let header_count = usize::try_from(header_count).map_err(|_| malformed("header count"))?;
        // Each header takes at least two bytes, so a larger count cannot be honest and
        // must not size an allocation.
        if header_count > cursor.bytes.len() / 2 {
            return Err(malformed("header count exceeds record"));
        }
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let key = cursor
                .nullable_bytes("header key")?
                .ok_or(malformed("null header key"))?;
            let value = cursor.nullable_bytes("header value")?;
            headers.push(Header { key, value });
        }
        if !cursor.bytes.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(Record {
            offset: self.header.base_offset + i64::from(offset_delta),
            timestamp: self.header.base_timestamp.wrapping_add(timestamp_delta),
            key,
            value,
            headers,
            encoded,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.header.records_count as usize {
            return None;
        }
        let record = self.next_record();
        self.index += 1;
        if record.is_err() {
            // One error ends the iteration: what follows a malformed record is unframed.
            self.index = usize::MAX;
        }
        Some(record)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    index: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        let index = self.index;
        let taken = self.bytes.get(..count).ok_or(WireError::MalformedRecord {
            index,
            reason: "short",
        })?;
        self.bytes = &self.bytes[count..];
        Ok(taken)
    }

    fn varint(&mut self, what: &'static str) -> Result<i32, WireError> {
        let (value, used) = decode_varint(self.bytes, what)?;
        self.bytes = &self.bytes[used..];
        Ok(value)
    }

    fn varlong(&mut self, what: &'static str) -> Result<i64, WireError> {
        let (value, used) = decode_varlong(self.bytes, what)?;
        self.bytes = &self.bytes[used..];
        Ok(value)
    }

    fn nullable_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        match self.varint(what)? {
            -1 => Ok(None),
            length if length < 0 => Err(WireError::MalformedRecord {
                index: self.index,
                reason: "negative length",
            }),
            length => self.take(length as usize).map(Some),
        }
    }
}

/// The records section of a stored batch, decompressed when it is compressed (at most
/// `max_bytes` of it). Borrowed when the batch is uncompressed.
pub fn records_section<'a>(
    batch: &'a [u8],
    max_bytes: usize,
) -> Result<(BatchHeader, std::borrow::Cow<'a, [u8]>), WireError> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_bytes().min(batch.len());
    let section = &batch[BATCH_HEADER_BYTES..end];
    let codec = header.codec()?;
    if codec == Compression::None {
        return Ok((header, std::borrow::Cow::Borrowed(section)));
    }
    let decompressed = compression::decompress(codec, section, max_bytes)?;
    Ok((header, std::borrow::Cow::Owned(decompressed)))
}

/// The indexes of a batch's records that have no key, which a compacted topic refuses.
/// Compressed batches are decompressed (at most `decompressed_max` bytes).
pub fn keyless_records(batch: &[u8], decompressed_max: usize) -> Result<Vec<i32>, WireError> {
    let (header, section) = records_section(batch, decompressed_max)?;
    let mut keyless = Vec::new();
    for (index, record) in RecordIter::over(header, &section).enumerate() {
        if record?.key.is_none() {
            keyless.push(index as i32);
        }
    }
    Ok(keyless)
}

/// A stored batch rebuilt around a subset of its records (compaction): `records` are
/// encoded records taken from it, in order. Base offset, last offset delta, base
/// timestamp, attributes (codec, transactional and control flags), producer id, epoch,
/// base sequence and leader epoch are kept, so offsets and idempotence state read the
/// same; the count, max timestamp, length and CRC are new, and the records are
/// recompressed with the batch's codec.
pub fn rebuild_batch(
    original: &BatchHeader,
    records: &[&[u8]],
    max_timestamp: i64,
) -> Result<BytesMut, WireError> {
    rebuild_with_codec(original, records, max_timestamp, original.codec()?)
}

/// Rewrites a produced batch in `codec` (Kafka's topic `compression.type` other than
/// `producer`): the same records and header fields, recompressed, with a new CRC. The
/// records are checked on the way (at most `decompressed_max` bytes of them).
pub fn recompress(
    batch: &[u8],
    codec: Compression,
    decompressed_max: usize,
) -> Result<BytesMut, WireError> {
    let (header, section) = records_section(batch, decompressed_max)?;
    let mut records = Vec::with_capacity(header.records_count.max(0) as usize);
    let mut iter = RecordIter::over(header, &section);
    for record in iter.by_ref() {
        records.push(record?.encoded);
    }
    if !iter.rest().is_empty() {
        return Err(WireError::MalformedRecord {
            index: records.len(),
            reason: "bytes after the last record",
        });
    }
    rebuild_with_codec(&header, &records, header.max_timestamp, codec)
}

fn rebuild_with_codec(
    original: &BatchHeader,
    records: &[&[u8]],
    max_timestamp: i64,
    codec: Compression,
) -> Result<BytesMut, WireError> {
    let plain: Vec<u8> = records.concat();
    let section = match codec {
        Compression::None => plain,
        codec => compression::compress(codec, &plain)?,
    };
    let total = BATCH_HEADER_BYTES + section.len();
    let mut out = BytesMut::with_capacity(total);
    out.put_i64(original.base_offset);
    out.put_i32((total - batch::LOG_OVERHEAD_BYTES) as i32);
    out.put_i32(original.partition_leader_epoch);
    out.put_i8(batch::MAGIC_V2);
    out.put_u32(0);
    out.put_i16(original.attributes.with_compression(codec).0);
    out.put_i32(original.last_offset_delta);
    out.put_i64(original.base_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(original.producer_id);
    out.put_i16(original.producer_epoch);
    out.put_i32(original.base_sequence);
    out.put_i32(records.len() as i32);
    out.extend_from_slice(&section);
    batch::write_crc(&mut out);
    Ok(out)
}

/// Builds one RecordBatch v2, as a producer would send it: base offset 0, partition leader
/// epoch -1, CRC computed over the result.
///
/// Records are encoded straight into the buffer the batch is sent from, behind room for
/// the header: an uncompressed batch is built without copying its records again (in
/// loadgen at full speed those copies, and an allocation per record, were ~13% of its
/// CPU; docs/BENCHMARKS.md).
#[derive(Debug)]
pub struct BatchBuilder {
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: Attributes,
    records_count: i32,
    /// `BATCH_HEADER_BYTES` of room for the header, then the records.
    buffer: BytesMut,
}

impl BatchBuilder {
    pub fn new(base_timestamp: i64) -> BatchBuilder {
        BatchBuilder::with_capacity(base_timestamp, 0)
    }

    /// A builder whose buffer holds `records_bytes` of records before it must grow: a
    /// producer that sends batches of a known size gives that size.
    pub fn with_capacity(base_timestamp: i64, records_bytes: usize) -> BatchBuilder {
        let mut buffer = BytesMut::with_capacity(BATCH_HEADER_BYTES + records_bytes);
        buffer.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            base_timestamp,
            max_timestamp: base_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: Attributes::default(),
            records_count: 0,
            buffer,
        }
    }

    /// Marks the batch as an idempotent producer's: id, epoch and first sequence number.
    pub fn producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    /// Marks the batch as part of its producer's open transaction.
    pub fn transactional(&mut self) {
        self.attributes = self.attributes.with_transactional();
    }

    /// Compresses the records with `codec` when built.
    pub fn compression(&mut self, codec: Compression) {
        self.attributes = self.attributes.with_compression(codec);
    }

    pub fn records_count(&self) -> i32 {
        self.records_count
    }

    /// The size of an uncompressed batch of the records so far (what
    /// [`BatchBuilder::build`] produces without compression).
    pub fn size_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) {
        let timestamp_delta = timestamp - self.base_timestamp;
        let body_bytes = 1
            + varlong_len(timestamp_delta)
            + varint_len(self.records_count)
            + nullable_len(key)
            + nullable_len(value)
            + varint_len(headers.len() as i32)
            + headers
                .iter()
                .map(|h| nullable_len(Some(h.key)) + nullable_len(h.value))
                .sum::<usize>();
        let out = &mut self.buffer;
        out.reserve(varint_len(body_bytes as i32) + body_bytes);
        let start = out.len();
        encode_varint(body_bytes as i32, out);
        let body_start = out.len();
        out.put_u8(0); // record attributes: unused in v2
        encode_varlong(timestamp_delta, out);
        encode_varint(self.records_count, out);
        encode_nullable(key, out);
        encode_nullable(value, out);
        encode_varint(headers.len() as i32, out);
        for header in headers {
            encode_nullable(Some(header.key), out);
            encode_nullable(header.value, out);
        }
        debug_assert_eq!(out.len() - body_start, body_bytes, "record at {start}");
        self.records_count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    pub fn build(self) -> BytesMut {
        // Uncompressed, and not claiming a codec it does not use.
        let plain_attributes = self.attributes.with_compression(Compression::None);
        // Compressing in memory fails only if the codec library does: then send plain.
        let compressed = match self.attributes.compression() {
            None | Some(Compression::None) => None,
            Some(codec) => compression::compress(codec, &self.buffer[BATCH_HEADER_BYTES..]).ok(),
        };
        let (mut out, attributes) = match compressed {
            None => (self.buffer, plain_attributes),
            Some(section) => {
                let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + section.len());
                out.put_bytes(0, BATCH_HEADER_BYTES);
                out.extend_from_slice(&section);
                (out, self.attributes)
            }
        };
        let total = out.len();
        // The header is written into its room; `&mut [u8]` as a `BufMut` advances as it
        // writes and panics rather than run past the room.
        let mut header = &mut out[..BATCH_HEADER_BYTES];
        header.put_i64(0); // base offset: assigned by the broker
        header.put_i32((total - batch::LOG_OVERHEAD_BYTES) as i32);
        header.put_i32(-1); // partition leader epoch: assigned by the broker
        header.put_i8(batch::MAGIC_V2);
        header.put_u32(0); // CRC, written below
        header.put_i16(attributes.0);
        header.put_i32((self.records_count - 1).max(0));
        header.put_i64(self.base_timestamp);
        header.put_i64(self.max_timestamp);
        header.put_i64(self.producer_id);
        header.put_i16(self.producer_epoch);
        header.put_i32(self.base_sequence);
        header.put_i32(self.records_count);
        debug_assert!(header.is_empty(), "the header fills its room exactly");
        batch::write_crc(&mut out);
        out
    }
}

/// What a transaction marker says: the transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

impl ControlType {
    fn code(self) -> i16 {
        match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        }
    }
}

/// A transaction marker: a control batch of one record whose key is `version i16 (0) |
/// type i16` and whose value is `version i16 (0) | coordinator epoch i32`, as Kafka
/// writes them and its clients read them.
pub fn control_batch(
    timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    outcome: ControlType,
    coordinator_epoch: i32,
) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp);
    builder.producer(producer_id, producer_epoch, -1);
    builder.attributes = builder.attributes.with_control();
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&outcome.code().to_be_bytes());
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    builder.append(timestamp, Some(&key), Some(&value), &[]);
    builder.build()
}

/// The outcome a control batch records, or `None` for a data batch or a control record
/// of a type weir does not know (which Kafka clients skip as well).
pub fn control_type(batch: &[u8]) -> Result<Option<ControlType>, WireError> {
    let header = BatchHeader::parse(batch)?;
    if !header.attributes.is_control() {
        return Ok(None);
    }
    let Some(record) = RecordIter::new(batch)?.next() else {
        return Ok(None);
    };
    let record = record?;
    Ok(match record.key {
        Some([0, 0, 0, 0]) => Some(ControlType::Abort),
        Some([0, 0, 0, 1]) => Some(ControlType::Commit),
        _ => None,
    })
}

fn encode_nullable(bytes: Option<&[u8]>, out: &mut impl BufMut) {
    match bytes {
        None => encode_varint(-1, out),
        Some(bytes) => {
            encode_varint(bytes.len() as i32, out);
            out.put_slice(bytes);
        }
    }
}

/// The bytes [`encode_nullable`] writes.
fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(bytes) => varint_len(bytes.len() as i32) + bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{TestResult, quickcheck};

    #[test]
    fn markers_say_their_outcome_and_are_refused_from_producers() {
        for outcome in [ControlType::Abort, ControlType::Commit] {
            let marker = control_batch(5, 42, 7, outcome, 3);
            let header = BatchHeader::parse(&marker).unwrap();
            assert!(header.attributes.is_control() && header.attributes.is_transactional());
            assert_eq!((header.producer_id, header.producer_epoch), (42, 7));
            assert_eq!(crate::batch::validate(&marker, 1 << 20).unwrap(), header);
            assert_eq!(control_type(&marker).unwrap(), Some(outcome));
            assert!(check_client_batch(&marker).is_err());
        }
        let mut data = BatchBuilder::new(5);
        data.transactional();
        data.append(5, None, Some(b"v"), &[]);
        let data = data.build();
        assert!(
            BatchHeader::parse(&data)
                .unwrap()
                .attributes
                .is_transactional()
        );
        assert_eq!(control_type(&data).unwrap(), None);
        assert!(check_client_batch(&data).is_ok());
    }

    quickcheck! {
        /// Any subset of a batch's records, rebuilt with the batch's codec, is a valid
        /// batch holding exactly that subset at the same offsets.
        fn rebuilt_batches_hold_the_kept_records(values: Vec<Vec<u8>>, keep: Vec<bool>, codec: u8) -> TestResult {
            if values.is_empty() {
                return TestResult::discard();
            }
            let codec = Compression::ALL[codec as usize % Compression::ALL.len()];
            let mut builder = BatchBuilder::new(1000);
            builder.compression(codec);
            // An idempotent, transactional producer's batch: compaction must keep what
            // idempotence and transactions read from its header.
            builder.producer(77, 3, 1234);
            for (i, value) in values.iter().enumerate() {
                builder.append(1000 + i as i64, Some(&i.to_be_bytes()), Some(value), &[]);
            }
            let mut bytes = builder.build();
            bytes[22] |= 0x10; // attributes (big-endian i16 at 21..23): transactional
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            batch::assign_offset_and_epoch(&mut bytes, 500, 3);
            let (header, section) = records_section(&bytes, 1 << 24).unwrap();
            let records: Vec<Record> = RecordIter::over(header, &section).collect::<Result<_, _>>().unwrap();
            let kept: Vec<&Record> = records.iter().enumerate()
                .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
                .map(|(_, r)| r).collect();
            let encoded: Vec<&[u8]> = kept.iter().map(|r| r.encoded).collect();
            let max_ts = kept.iter().map(|r| r.timestamp).max().unwrap_or(1000);
            let rebuilt = rebuild_batch(&header, &encoded, max_ts).unwrap();
            let rebuilt_header = batch::validate(&rebuilt, 1 << 24).unwrap();
            let (_, section) = records_section(&rebuilt, 1 << 24).unwrap();
            let again: Vec<Record> = RecordIter::over(rebuilt_header, &section).collect::<Result<_, _>>().unwrap();
            let same = again.len() == kept.len()
                && again.iter().zip(&kept).all(|(a, b)| a.offset == b.offset && a.value == b.value && a.timestamp == b.timestamp);
            TestResult::from_bool(same
                && rebuilt_header.base_offset == 500
                && rebuilt_header.last_offset() == header.last_offset()
                && rebuilt_header.partition_leader_epoch == 3
                && rebuilt_header.attributes.compression() == Some(codec)
                && rebuilt_header.attributes.is_transactional()
                && !rebuilt_header.attributes.is_control()
                && (rebuilt_header.producer_id, rebuilt_header.producer_epoch, rebuilt_header.base_sequence) == (77, 3, 1234)
                && rebuilt_header.base_timestamp == header.base_timestamp
                && rebuilt_header.max_timestamp == max_ts)
        }
    }

    /// One record a producer might append: keys and values absent or not, header values
    /// absent or not, timestamps far from the base (multi-byte deltas).
    #[derive(Debug, Clone)]
    struct AnyRecord {
        timestamp_delta: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    }

    impl quickcheck::Arbitrary for AnyRecord {
        fn arbitrary(g: &mut quickcheck::Gen) -> AnyRecord {
            AnyRecord {
                timestamp_delta: i64::from(i32::arbitrary(g)) * 1000,
                key: Option::arbitrary(g),
                value: Option::arbitrary(g),
                headers: Vec::arbitrary(g),
            }
        }
    }

    quickcheck! {
        /// Whatever is appended, in whichever codec, the built batch validates (CRC,
        /// sizes) and reads back as exactly the records appended; the buffer may start
        /// too small and grow.
        fn built_batches_read_back_as_appended(records: Vec<AnyRecord>, codec: u8, capacity: u16) -> bool {
            let codec = Compression::ALL[codec as usize % Compression::ALL.len()];
            let base = 1_700_000_000_000;
            let mut builder = BatchBuilder::with_capacity(base, usize::from(capacity));
            builder.compression(codec);
            for r in &records {
                let headers: Vec<Header<'_>> = r.headers.iter()
                    .map(|(k, v)| Header { key: k, value: v.as_deref() })
                    .collect();
                builder.append(base + r.timestamp_delta, r.key.as_deref(), r.value.as_deref(), &headers);
            }
            let plain_size = builder.size_bytes();
            let bytes = builder.build();
            batch::validate(&bytes, 1 << 24).unwrap();
            if codec == Compression::None && bytes.len() != plain_size {
                return false;
            }
            let (header, section) = records_section(&bytes, 1 << 24).unwrap();
            let read: Vec<Record> = RecordIter::over(header, &section).collect::<Result<_, _>>().unwrap();
            read.len() == records.len()
                && read.iter().zip(&records).enumerate().all(|(i, (got, want))| {
                    got.offset == i as i64
                        && got.timestamp == base + want.timestamp_delta
                        && got.key == want.key.as_deref()
                        && got.value == want.value.as_deref()
                        && got.headers.len() == want.headers.len()
                        && got.headers.iter().zip(&want.headers).all(|(h, (k, v))| h.key == &k[..] && h.value == v.as_deref())
                })
        }
    }

    #[test]
    fn records_round_trip_with_keys_values_and_headers() {
        let mut builder = BatchBuilder::new(1000);
        let headers = [
            Header {
                key: b"h",
                value: Some(b"x"),
            },
            Header {
                key: b"n",
                value: None,
            },
        ];
        builder.append(1000, Some(b"key"), Some(b"value"), &headers);
        builder.append(999, None, None, &[]);
        let mut batch = builder.build();
        batch::assign_offset_and_epoch(&mut batch, 100, 3);
        let records: Vec<_> = RecordIter::new(&batch)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].offset, 100);
        assert_eq!(records[0].key, Some(&b"key"[..]));
        assert_eq!(records[0].headers, headers);
        assert_eq!((records[1].offset, records[1].timestamp), (101, 999));
        assert_eq!((records[1].key, records[1].value), (None, None));
    }

    #[test]
    fn client_batches_must_number_their_records() {
        let mut builder = BatchBuilder::new(0);
        builder.append(0, Some(b"a"), Some(b"1"), &[]);
        builder.append(0, Some(b"b"), Some(b"2"), &[]);
        let good = builder.build();
        assert_eq!(check_client_batch(&good), Ok(()));
        // A lastOffsetDelta that disagrees with the count.
        let mut bad = good.clone();
        bad[23..27].copy_from_slice(&5i32.to_be_bytes());
        assert!(matches!(
            check_client_batch(&bad),
            Err(WireError::InvalidField {
                field: "last offset delta",
                ..
            })
        ));
        // A count of zero.
        let mut empty = good.clone();
        empty[57..61].copy_from_slice(&0i32.to_be_bytes());
        assert!(check_client_batch(&empty).is_err());
        // The second record's offset delta (its 3rd byte: length, attributes, timestamp
        // delta, offset delta) claims 0 again.
        let mut renumbered = good.clone();
        let first_len = usize::from(renumbered[BATCH_HEADER_BYTES]) / 2;
        let second = BATCH_HEADER_BYTES + 1 + first_len;
        assert_eq!(renumbered[second + 3], 2, "zig-zag 1");
        renumbered[second + 3] = 0;
        assert_eq!(
            check_client_batch(&renumbered),
            Err(WireError::MalformedRecord {
                index: 1,
                reason: "offset delta out of sequence"
            })
        );
    }

    quickcheck! {
        fn client_batch_check_never_panics(position: usize, byte: u8) -> bool {
            let mut builder = BatchBuilder::new(0);
            builder.append(0, Some(b"a"), Some(b"bb"), &[]);
            builder.append(1, None, Some(b"ccc"), &[]);
            let mut batch = builder.build();
            let at = position % batch.len();
            batch[at] = byte;
            let _ = check_client_batch(&batch);
            true
        }

        fn builder_and_iterator_agree(values: Vec<(Option<Vec<u8>>, Vec<u8>, u16)>) -> TestResult {
            if values.is_empty() {
                return TestResult::discard();
            }
            let mut builder = BatchBuilder::new(5_000);
            for (key, value, delta) in &values {
                builder.append(5_000 + i64::from(*delta), key.as_deref(), Some(value), &[]);
            }
            let batch = builder.build();
            let header = batch::validate(&batch, usize::MAX).unwrap();
            let decoded: Vec<_> = RecordIter::new(&batch).unwrap().collect::<Result<_, _>>().unwrap();
            let agrees = decoded.iter().zip(&values).enumerate().all(|(i, (record, (k, v, d)))| {
                record.offset == i as i64
                    && record.key == k.as_deref()
                    && record.value == Some(v.as_slice())
                    && record.timestamp == 5_000 + i64::from(*d)
            });
            TestResult::from_bool(
                agrees
                    && decoded.len() == values.len()
                    && header.last_offset_delta as usize == values.len() - 1,
            )
        }

        fn mutated_records_never_panic(position: usize, byte: u8) -> bool {
            let mut builder = BatchBuilder::new(0);
            builder.append(0, Some(b"a"), Some(b"bb"), &[Header { key: b"h", value: None }]);
            builder.append(1, None, Some(b"ccc"), &[]);
            let mut batch = builder.build();
            let at = BATCH_HEADER_BYTES + position % (batch.len() - BATCH_HEADER_BYTES);
            batch[at] = byte;
            if let Ok(iter) = RecordIter::new(&batch) {
                for _ in iter {}
            }
            true
        }
    }
}
