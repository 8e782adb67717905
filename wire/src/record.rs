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

use crate::batch::{self, BATCH_HEADER_BYTES, BatchHeader, Compression, field};
use crate::varint::{decode_varint, decode_varlong, encode_varint, encode_varlong, varint_len};
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
        Ok(RecordIter {
            header,
            rest: &batch[BATCH_HEADER_BYTES..end],
            index: 0,
        })
    }

    fn next_record(&mut self) -> Result<Record<'a>, WireError> {
        let index = self.index;
        let malformed = |reason| WireError::MalformedRecord { index, reason };
        let (length, used) = decode_varint(self.rest, "record length")?;
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let body = self
            .rest
            .get(used..used + length)
            .ok_or(malformed("extends past batch"))?;
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

/// Builds one uncompressed RecordBatch v2, as a producer would send it: base offset 0,
/// partition leader epoch -1, CRC computed over the result.
#[derive(Debug)]
pub struct BatchBuilder {
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: Attributes,
    records_count: i32,
    records: Vec<u8>,
}

impl BatchBuilder {
    pub fn new(base_timestamp: i64) -> BatchBuilder {
        BatchBuilder {
            base_timestamp,
            max_timestamp: base_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: Attributes::default(),
            records_count: 0,
            records: Vec::new(),
        }
    }

    /// Marks the batch as an idempotent producer's: id, epoch and first sequence number.
    pub fn producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    pub fn records_count(&self) -> i32 {
        self.records_count
    }

    /// The size [`BatchBuilder::build`] would produce now.
    pub fn size_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.records.len()
    }

    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) {
        let mut body =
            Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        body.push(0); // record attributes: unused in v2
        encode_varlong(timestamp - self.base_timestamp, &mut body);
        encode_varint(self.records_count, &mut body);
        encode_nullable(key, &mut body);
        encode_nullable(value, &mut body);
        encode_varint(headers.len() as i32, &mut body);
        for header in headers {
            encode_nullable(Some(header.key), &mut body);
            encode_nullable(header.value, &mut body);
        }
        self.records
            .reserve(varint_len(body.len() as i32) + body.len());
        encode_varint(body.len() as i32, &mut self.records);
        self.records.extend_from_slice(&body);
        self.records_count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    pub fn build(&self) -> BytesMut {
        let total = self.size_bytes();
        let mut out = BytesMut::with_capacity(total);
        out.put_i64(0); // base offset: assigned by the broker
        out.put_i32((total - batch::LOG_OVERHEAD_BYTES) as i32);
        out.put_i32(-1); // partition leader epoch: assigned by the broker
        out.put_i8(batch::MAGIC_V2);
        out.put_u32(0); // CRC, written below
        out.put_i16(self.attributes.0);
        out.put_i32((self.records_count - 1).max(0));
        out.put_i64(self.base_timestamp);
        out.put_i64(self.max_timestamp);
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.base_sequence);
        out.put_i32(self.records_count);
        debug_assert_eq!(out.len(), field::RECORDS_COUNT + 4);
        out.extend_from_slice(&self.records);
        batch::write_crc(&mut out);
        out
    }
}

fn encode_nullable(bytes: Option<&[u8]>, out: &mut Vec<u8>) {
    match bytes {
        None => encode_varint(-1, out),
        Some(bytes) => {
            encode_varint(bytes.len() as i32, out);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{TestResult, quickcheck};

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
