//! Committed consumer-group offsets, kept in the internal topic `__consumer_offsets`.
//!
//! A group's commits go to partition `crc32c(group) % partitions` of that topic, owned by
//! one shard, which appends them (synced before the commit is answered) and keeps the
//! latest per (group, topic, partition) in memory, rebuilt by replaying its partitions
//! at start. Record layouts are in `docs/FORMAT.md`.

use std::collections::BTreeMap;
use std::rc::Rc;

use weir_storage::Log;
use weir_wire::{BatchBuilder, BatchHeader, RecordIter};

use crate::error::{BrokerError, BrokerResult};
use crate::metadata::now_ms;
use crate::router::{Committed, OffsetCommit, TopicPartition};

const FORMAT_VERSION: u16 = 1;
/// Values carry the committed leader epoch since version 2.
const VALUE_VERSION: u16 = 2;
/// Kafka's limit on a group id is 255 bytes in practice; metadata is capped like Kafka's
/// `offset.metadata.max.bytes` (4096).
pub const GROUP_BYTES_MAX: usize = 255;
pub const METADATA_BYTES_MAX: usize = 4096;

/// The offsets partition holding `group`'s commits.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    (crc32c::crc32c(group.as_bytes()) % partitions.max(1) as u32) as i32
}

pub fn validate_group(group: &str) -> BrokerResult<()> {
    if group.is_empty() || group.len() > GROUP_BYTES_MAX {
        return Err(BrokerError::InvalidGroup(format!(
            "group id must be 1 to {GROUP_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

type Key = (String, String, i32);

/// Committed offsets are a table: compacted, kept forever, every commit durable.
pub fn topic_configs() -> Vec<(String, String)> {
    vec![
        ("cleanup.policy".into(), "compact".into()),
        // Kafka's offsets.topic.segment.bytes: only sealed segments are compacted.
        ("segment.bytes".into(), (100 << 20).to_string()),
        ("retention.ms".into(), "-1".into()),
        ("flush.policy".into(), "every-batch".into()),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Commit {
    offset: i64,
    leader_epoch: i32,
    metadata: String,
}

/// One offsets partition: its log, the latest commit per key, and the commits of open
/// transactions (TxnOffsetCommit), per producer, which take effect with its commit marker.
#[derive(Debug)]
pub struct OffsetsPartition {
    log: Rc<Log>,
    latest: BTreeMap<Key, Commit>,
    /// Producer id → its transaction's epoch and pending commits.
    pending: BTreeMap<i64, (i16, BTreeMap<Key, Commit>)>,
    /// The latest epoch seen of transactional producers (commits and markers): a
    /// TxnOffsetCommit of an older epoch comes from a fenced producer.
    epochs: BTreeMap<i64, i16>,
}

/// Transactional producers whose epoch an offsets partition remembers at most.
const EPOCHS_REMEMBERED: usize = crate::producers::PRODUCERS_MAX;

impl OffsetsPartition {
    /// Replays the partition's log into memory.
    pub async fn load(log: Rc<Log>) -> BrokerResult<OffsetsPartition> {
        let mut store = OffsetsPartition {
            log: log.clone(),
            latest: BTreeMap::new(),
            pending: BTreeMap::new(),
            epochs: BTreeMap::new(),
        };
        crate::replay::replay(&log, log.log_start_offset(), |batch, header| {
            if header.attributes.is_control() {
                let commit =
                    weir_wire::control_type(batch)? == Some(weir_wire::ControlType::Commit);
                store.end_txn(header.producer_id, header.producer_epoch, commit);
                return Ok(());
            }
            let latest = if header.attributes.is_transactional() {
                store.saw_epoch(header.producer_id, header.producer_epoch);
                let pending = store
                    .pending
                    .entry(header.producer_id)
                    .or_insert_with(|| (header.producer_epoch, BTreeMap::new()));
                pending.0 = pending.0.max(header.producer_epoch);
                &mut pending.1
            } else {
                &mut store.latest
            };
            for record in RecordIter::new(batch)? {
                let record = record?;
                let Some(key) = record.key else { continue };
                let undecodable = || {
                    BrokerError::Internal(format!(
                        "undecodable commit at offset {} of {}",
                        record.offset,
                        log.dir().display()
                    ))
                };
                let key = decode_key(key).ok_or_else(undecodable)?;
                match record.value {
                    Some(value) => {
                        latest.insert(key, decode_value(value).ok_or_else(undecodable)?);
                    }
                    // A tombstone: the group or partition's offsets were deleted.
                    None => {
                        latest.remove(&key);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(store)
    }

    /// A transaction marker of `producer_id` at `epoch`: its pending commits take
    /// effect, or go. A marker older than the pending transaction (late, from a deposed
    /// coordinator) changes nothing.
    pub fn end_txn(&mut self, producer_id: i64, epoch: i16, commit: bool) {
        self.saw_epoch(producer_id, epoch);
        if self
            .pending
            .get(&producer_id)
            .is_some_and(|(pending, _)| *pending > epoch)
        {
            return;
        }
        if let Some((_, pending)) = self.pending.remove(&producer_id)
            && commit
        {
            self.latest.extend(pending);
        }
    }

    fn saw_epoch(&mut self, producer_id: i64, epoch: i16) {
        let known = self.epochs.entry(producer_id).or_insert(epoch);
        *known = (*known).max(epoch);
        if self.epochs.len() > EPOCHS_REMEMBERED {
            let forgotten = self
                .epochs
                .keys()
                .find(|p| **p != producer_id && !self.pending.contains_key(p))
                .copied();
            if let Some(forgotten) = forgotten {
                self.epochs.remove(&forgotten);
            }
        }
    }

    /// TxnOffsetCommit: queues the commits as one transactional batch of the producer,
    /// kept pending until its marker. The caller awaits durability.
    /// Returns the batch's header too: the partition's transaction state takes it in.
    pub fn start_txn_commit(
        &mut self,
        group: &str,
        producer: (i64, i16),
        offsets: &[OffsetCommit],
        leader_epoch: i32,
    ) -> BrokerResult<Option<(weir_storage::AppendInfo, BatchHeader)>> {
        self.append_commits(group, Some(producer), offsets, leader_epoch)
    }

    /// One batch of commits, plain or (`producer`) of a transaction.
    fn append_commits(
        &mut self,
        group: &str,
        producer: Option<(i64, i16)>,
        offsets: &[OffsetCommit],
        leader_epoch: i32,
    ) -> BrokerResult<Option<(weir_storage::AppendInfo, BatchHeader)>> {
        if offsets.is_empty() {
            return Ok(None);
        }
        if let Some((id, epoch)) = producer
            && self.epochs.get(&id).is_some_and(|known| *known > epoch)
        {
            return Err(BrokerError::kafka(
                kafka_protocol::ResponseError::ProducerFenced,
                format!("producer {id} at epoch {epoch} is fenced"),
            ));
        }
        let timestamp = now_ms();
        let mut builder = BatchBuilder::new(timestamp);
        if let Some((id, epoch)) = producer {
            builder.producer(id, epoch, -1);
            builder.transactional();
        }
        let commits = self.encode_commits(&mut builder, group, offsets, timestamp)?;
        let batch = builder.build();
        let header = BatchHeader::parse(&batch)?;
        let info = self.log.start_append(batch, leader_epoch)?;
        let header = BatchHeader {
            base_offset: info.base_offset,
            ..header
        };
        match producer {
            Some((id, epoch)) => {
                self.saw_epoch(id, epoch);
                let pending = self
                    .pending
                    .entry(id)
                    .or_insert_with(|| (epoch, BTreeMap::new()));
                pending.0 = epoch;
                pending.1.extend(commits);
            }
            None => self.latest.extend(commits),
        }
        Ok(Some((info, header)))
    }

    fn encode_commits(
        &self,
        builder: &mut BatchBuilder,
        group: &str,
        offsets: &[OffsetCommit],
        timestamp: i64,
    ) -> BrokerResult<Vec<(Key, Commit)>> {
        let mut commits = Vec::with_capacity(offsets.len());
        for offset in offsets {
            if offset.metadata.len() > METADATA_BYTES_MAX {
                return Err(BrokerError::InvalidRequest(format!(
                    "offset metadata over {METADATA_BYTES_MAX} bytes"
                )));
            }
            let partition = &offset.partition;
            let commit = Commit {
                offset: offset.offset,
                leader_epoch: offset.leader_epoch,
                metadata: offset.metadata.clone(),
            };
            let (key, value) = encode(group, partition, &commit);
            builder.append(timestamp, Some(&key), Some(&value), &[]);
            let key = (
                group.to_string(),
                partition.topic.clone(),
                partition.partition,
            );
            commits.push((key, commit));
        }
        Ok(commits)
    }

    /// Queues the commits as one batch and makes them current at once, so that commits
    /// take effect in the order they are queued. The caller awaits durability with
    /// `Log::finish_append` before acknowledging.
    pub fn start_commit(
        &mut self,
        group: &str,
        offsets: &[OffsetCommit],
        leader_epoch: i32,
    ) -> BrokerResult<Option<weir_storage::AppendInfo>> {
        Ok(self
            .append_commits(group, None, offsets, leader_epoch)?
            .map(|(info, _)| info))
    }

    /// Queues tombstones for the group's commits (of `only` these partitions, if given)
    /// and forgets them at once. Returns the partitions whose commits are deleted.
    pub fn start_delete(
        &mut self,
        group: &str,
        only: Option<&[TopicPartition]>,
        leader_epoch: i32,
    ) -> BrokerResult<(Vec<TopicPartition>, Option<weir_storage::AppendInfo>)> {
        let deleted: Vec<TopicPartition> = self
            .committed(group)
            .into_iter()
            .map(|c| c.partition)
            .filter(|tp| only.is_none_or(|only| only.contains(tp)))
            .collect();
        if deleted.is_empty() {
            return Ok((deleted, None));
        }
        let timestamp = now_ms();
        let mut builder = BatchBuilder::new(timestamp);
        for partition in &deleted {
            builder.append(timestamp, Some(&encode_key(group, partition)), None, &[]);
        }
        let info = self.log.start_append(builder.build(), leader_epoch)?;
        for partition in &deleted {
            self.latest.remove(&(
                group.to_string(),
                partition.topic.clone(),
                partition.partition,
            ));
        }
        Ok((deleted, Some(info)))
    }

    pub fn committed(&self, group: &str) -> Vec<Committed> {
        let from = (group.to_string(), String::new(), i32::MIN);
        self.latest
            .range(from..)
            .take_while(|((g, _, _), _)| g == group)
            .map(|((_, topic, partition), commit)| Committed {
                partition: TopicPartition {
                    topic: topic.clone(),
                    partition: *partition,
                },
                offset: commit.offset,
                leader_epoch: commit.leader_epoch,
                metadata: commit.metadata.clone(),
            })
            .collect()
    }

    /// The group's partitions with commits of an open transaction pending.
    pub fn unstable(&self, group: &str) -> Vec<TopicPartition> {
        let mut partitions: Vec<TopicPartition> = self
            .pending
            .values()
            .flat_map(|(_, commits)| commits.keys())
            .filter(|(g, _, _)| g == group)
            .map(|(_, topic, partition)| TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            })
            .collect();
        partitions.sort();
        partitions.dedup();
        partitions
    }

    /// Every committed offset here: group, partition, offset.
    pub fn all(&self) -> Vec<(String, TopicPartition, i64)> {
        self.latest
            .iter()
            .map(|((group, topic, partition), commit)| {
                let tp = TopicPartition {
                    topic: topic.clone(),
                    partition: *partition,
                };
                (group.clone(), tp, commit.offset)
            })
            .collect()
    }

    pub fn groups(&self) -> impl Iterator<Item = &str> {
        let mut last: Option<&str> = None;
        self.latest.keys().filter_map(move |(group, _, _)| {
            let new = last != Some(group.as_str());
            last = Some(group.as_str());
            new.then_some(group.as_str())
        })
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn encode_key(group: &str, partition: &TopicPartition) -> Vec<u8> {
    let mut key = FORMAT_VERSION.to_be_bytes().to_vec();
    put_string(&mut key, group);
    put_string(&mut key, &partition.topic);
    key.extend_from_slice(&partition.partition.to_be_bytes());
    key
}

/// key: `version u16 (1) | group (u16 length, UTF-8) | topic (same) | partition i32`;
/// value: `version u16 (2) | offset i64 | commit timestamp i64 | leader epoch i32 |
/// metadata (u16 length, UTF-8)` (version 1, which weir wrote before, has no leader
/// epoch), or none: a tombstone.
fn encode(group: &str, partition: &TopicPartition, commit: &Commit) -> (Vec<u8>, Vec<u8>) {
    let key = encode_key(group, partition);
    let mut value = VALUE_VERSION.to_be_bytes().to_vec();
    value.extend_from_slice(&commit.offset.to_be_bytes());
    value.extend_from_slice(&now_ms().to_be_bytes());
    value.extend_from_slice(&commit.leader_epoch.to_be_bytes());
    put_string(&mut value, &commit.metadata);
    (key, value)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode_key(key: &[u8]) -> Option<Key> {
    let mut key = Reader(key);
    if key.u16()? != FORMAT_VERSION {
        return None;
    }
    Some((key.string()?, key.string()?, key.i32()?))
}

fn decode_value(value: &[u8]) -> Option<Commit> {
    let mut value = Reader(value);
    let version = value.u16()?;
    if version != FORMAT_VERSION && version != VALUE_VERSION {
        return None;
    }
    let offset = value.i64()?;
    let _timestamp = value.i64()?;
    let leader_epoch = if version == VALUE_VERSION {
        value.i32()?
    } else {
        -1
    };
    let metadata = value.string()?;
    Some(Commit {
        offset,
        leader_epoch,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    quickcheck! {
        fn commit_records_round_trip(group: String, topic: String, partition: i32, offset: i64, leader_epoch: i32, metadata: String) -> bool {
            let tp = TopicPartition { topic: topic.clone(), partition };
            let commit = Commit { offset, leader_epoch, metadata };
            let (key, value) = encode(&group, &tp, &commit);
            decode_key(&key) == Some((group, topic, partition)) && decode_value(&value) == Some(commit)
        }

        fn version_1_values_have_no_leader_epoch(offset: i64, metadata: String) -> bool {
            let mut value = 1u16.to_be_bytes().to_vec();
            value.extend_from_slice(&offset.to_be_bytes());
            value.extend_from_slice(&0i64.to_be_bytes());
            put_string(&mut value, &metadata);
            decode_value(&value) == Some(Commit { offset, leader_epoch: -1, metadata })
        }

        fn random_commit_bytes_never_panic(key: Vec<u8>, value: Vec<u8>) -> bool {
            let _ = (decode_key(&key), decode_value(&value));
            true
        }
    }

    #[test]
    fn groups_spread_over_partitions_stably() {
        assert_eq!(
            partition_for("orders-service", 8),
            partition_for("orders-service", 8)
        );
        let used: std::collections::HashSet<i32> = (0..100)
            .map(|i| partition_for(&format!("g{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
    }
}
