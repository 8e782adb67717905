//! The compacted log the compaction crash test writes, and how to read it back.

use std::collections::HashMap;

use bytes::BytesMut;
use weir_storage::{CleanupPolicy, FlushPolicy, Log, LogConfig, LogIdentity};
use weir_wire::batch::BatchHeader;
use weir_wire::record::{self, RecordIter};
use weir_wire::{BatchBuilder, Compression};

/// Keys updated by every batch.
pub const KEYS: usize = 400;
const VALUE_BYTES: usize = 200;
/// A small offset map, so that some passes cannot hold every dirty key and end early.
pub const COMPACTION_MAP_BYTES: u64 = 1 << 20;

pub fn log_identity() -> LogIdentity {
    LogIdentity {
        topic: "compacted".into(),
        partition: 0,
    }
}

pub fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        batch_bytes_max: 128 * 1024,
        flush: FlushPolicy::EveryBatch,
        retention_ms: None,
        cleanup: CleanupPolicy::COMPACT,
        ..LogConfig::default()
    }
}

pub fn key(index: usize) -> Vec<u8> {
    format!("key-{index:05}").into_bytes()
}

/// One update of every key, whose values carry `sequence`; the codec rotates with the
/// sequence so that compaction rewrites compressed batches too.
pub fn update_batch(sequence: u64) -> BytesMut {
    let codecs = Compression::ALL;
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.compression(codecs[sequence as usize % codecs.len()]);
    for index in 0..KEYS {
        let mut value = sequence.to_be_bytes().to_vec();
        value.extend((0..VALUE_BYTES).map(|i| (i as u64 * 7 + sequence + index as u64) as u8));
        builder.append(1_700_000_000_000, Some(&key(index)), Some(&value), &[]);
    }
    builder.build()
}

/// Every key's value in the log, as the last record of the key carries it:
/// key → sequence. Panics on a record that is not one `update_batch` wrote.
pub async fn latest_sequences(log: &Log) -> anyhow::Result<HashMap<Vec<u8>, u64>> {
    let mut latest = HashMap::new();
    let mut offset = log.log_start_offset();
    loop {
        let batches = log.read(offset, 1 << 20, i64::MAX).await?;
        let Some(last) = batches.last() else {
            return Ok(latest);
        };
        offset = BatchHeader::parse(last)?.next_offset();
        for batch in &batches {
            let (header, section) = record::records_section(batch, 64 << 20)?;
            for record in RecordIter::over(header, &section) {
                let record = record?;
                let (Some(key), Some(value)) = (record.key, record.value) else {
                    anyhow::bail!("record at {} has no key or no value", record.offset);
                };
                let sequence = u64::from_be_bytes(value[..8].try_into()?);
                latest.insert(key.to_vec(), sequence);
            }
        }
    }
}

/// The highest sequence in the log, or 0 when it is empty.
pub async fn latest_sequence(log: &Log) -> anyhow::Result<u64> {
    Ok(latest_sequences(log)
        .await?
        .into_values()
        .max()
        .unwrap_or(0))
}
