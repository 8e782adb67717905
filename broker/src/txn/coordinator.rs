//! The transaction coordinator's state: one entry per transactional id, kept in the
//! internal topic `__transaction_state` (compacted, every write synced), on the partition
//! `crc32c(transactional id) % partitions`, and decided by the shard that leads it.
//!
//! A transaction goes Empty → Ongoing (partitions added) → PrepareCommit or PrepareAbort
//! (the decision, durable before any marker is written) → CompleteCommit or
//! CompleteAbort (every partition has its marker) → Ongoing again with the next
//! AddPartitionsToTxn. A coordinator that finds a Prepare state when it starts leading
//! writes the markers again: markers are idempotent for the partitions (a marker for a
//! producer without an open transaction changes nothing).
//!
//! The decisions are pure functions of the entry and the request ([`TxnMetadata`]'s
//! methods); the shard writes the entry they return, then acts on it.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use kafka_protocol::ResponseError;
use weir_storage::Log;
use weir_wire::{BatchBuilder, RecordIter};

use crate::error::{BrokerError, BrokerResult};
use crate::metadata::now_ms;
use crate::router::TopicPartition;

pub const TXN_TOPIC: &str = "__transaction_state";
const FORMAT_VERSION: u16 = 1;
/// Kafka's limit on a transactional id in practice (it is a string of the protocol).
pub const TXN_ID_BYTES_MAX: usize = 255;
/// Partitions one transaction may hold; more are refused (a bound on the entry's size).
pub const TXN_PARTITIONS_MAX: usize = 10_000;

/// The `__transaction_state` partition holding `transactional_id`.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::offsets::partition_for(transactional_id, partitions)
}

/// Transaction state is a table like committed offsets: compacted, kept forever, every
/// write durable.
pub fn topic_configs() -> Vec<(String, String)> {
    crate::offsets::topic_configs()
}

pub fn validate_id(transactional_id: &str) -> BrokerResult<()> {
    if transactional_id.is_empty() || transactional_id.len() > TXN_ID_BYTES_MAX {
        return Err(BrokerError::kafka(
            ResponseError::InvalidRequest,
            format!("transactional id must be 1 to {TXN_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<TxnStatus> {
        use TxnStatus::*;
        [
            Empty,
            Ongoing,
            PrepareCommit,
            PrepareAbort,
            CompleteCommit,
            CompleteAbort,
        ]
        .get(usize::from(code))
        .copied()
    }

    /// Kafka's names (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<TopicPartition>,
    /// When the transaction became Ongoing (its timeout counts from there).
    pub started_ms: i64,
}

/// What a request may change, after its checks.
pub type Decision = Result<TxnMetadata, ResponseError>;

impl TxnMetadata {
    pub fn new(producer_id: i64, timeout_ms: i32) -> TxnMetadata {
        TxnMetadata {
            producer_id,
            producer_epoch: 0,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            started_ms: -1,
        }
    }

    fn in_prepare(&self) -> bool {
        matches!(
            self.status,
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
        )
    }

    /// A request of the producer `producer_id` at `epoch`: it must be this entry's
    /// current producer.
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if self.in_prepare() {
            // The markers of the last decision are being written; the client retries.
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(())
    }

    /// InitProducerId once no transaction is open (an open one is aborted first, by the
    /// caller, with [`TxnMetadata::fence_and_abort`]): the epoch is bumped, fencing every
    /// older producer of the id. `expected` is what a producer that had an id says it
    /// had (KIP-360): a producer that is not the current one gets PRODUCER_FENCED.
    /// `None` when the epoch is exhausted: the caller allocates a new producer id.
    pub fn init(&self, timeout_ms: i32, expected: Option<(i64, i16)>) -> Option<Decision> {
        if self.in_prepare() || self.status == TxnStatus::Ongoing {
            return Some(Err(ResponseError::ConcurrentTransactions));
        }
        if let Some((id, epoch)) = expected
            && (id != self.producer_id || epoch != self.producer_epoch)
        {
            return Some(Err(ResponseError::ProducerFenced));
        }
        if self.producer_epoch >= i16::MAX - 1 {
            return None;
        }
        Some(Ok(TxnMetadata {
            producer_epoch: self.producer_epoch + 1,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            started_ms: -1,
            ..self.clone()
        }))
    }

    /// AddPartitionsToTxn and AddOffsetsToTxn: the partitions join the transaction,
    /// which is Ongoing from the first of them.
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        partitions: &[TopicPartition],
        now_ms: i64,
    ) -> Decision {
        self.check_producer(producer_id, epoch)?;
        let mut next = self.clone();
        if self.status != TxnStatus::Ongoing {
            next.status = TxnStatus::Ongoing;
            next.partitions.clear();
            next.started_ms = now_ms;
        }
        next.partitions.extend(partitions.iter().cloned());
        if next.partitions.len() > TXN_PARTITIONS_MAX {
            return Err(ResponseError::InvalidRequest);
        }
        Ok(next)
    }

    /// EndTxn: the decision to commit or abort. A retry of the decision already complete
    /// succeeds without changing anything (`Ok` of the same entry).
    pub fn end(&self, producer_id: i64, epoch: i16, commit: bool) -> Decision {
        self.check_producer(producer_id, epoch)?;
        match (self.status, commit) {
            (TxnStatus::Ongoing, true) => Ok(self.preparing(TxnStatus::PrepareCommit)),
            (TxnStatus::Ongoing, false) => Ok(self.preparing(TxnStatus::PrepareAbort)),
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                Ok(self.clone())
            }
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Aborts the open transaction with the epoch bumped, so the producer that opened it
    /// can write nothing more (a timeout, or a new producer of the same id).
    pub fn fence_and_abort(&self) -> TxnMetadata {
        let mut next = self.preparing(TxnStatus::PrepareAbort);
        next.producer_epoch = self.producer_epoch.saturating_add(1);
        next
    }

    fn preparing(&self, status: TxnStatus) -> TxnMetadata {
        TxnMetadata {
            status,
            ..self.clone()
        }
    }

    /// Every marker is written: the transaction is complete.
    pub fn completed(&self) -> TxnMetadata {
        let status = match self.status {
            TxnStatus::PrepareCommit => TxnStatus::CompleteCommit,
            TxnStatus::PrepareAbort => TxnStatus::CompleteAbort,
            other => other,
        };
        TxnMetadata {
            status,
            ..self.clone()
        }
    }

    pub fn is_committing(&self) -> bool {
        self.status == TxnStatus::PrepareCommit
    }

    pub fn is_preparing(&self) -> bool {
        self.in_prepare()
    }

    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.status == TxnStatus::Ongoing
            && now_ms.saturating_sub(self.started_ms) > i64::from(self.timeout_ms)
    }
}

/// One `__transaction_state` partition: its log and the latest entry per transactional
/// id.
#[derive(Debug)]
pub struct TxnStore {
    log: Rc<Log>,
    entries: BTreeMap<String, TxnMetadata>,
}

impl TxnStore {
    /// Replays the partition's log into memory.
    pub async fn load(log: Rc<Log>) -> BrokerResult<TxnStore> {
        let mut entries = BTreeMap::new();
        crate::replay::replay(&log, log.log_start_offset(), |batch, header| {
            // Only this broker writes entries; anything else (a marker sent by a client
            // with WriteTxnMarkers) is skipped rather than stopping the load.
            if header.attributes.is_control() {
                return Ok(());
            }
            for record in RecordIter::new(batch)? {
                let record = record?;
                let Some(id) = record.key.and_then(decode_key) else {
                    tracing::warn!(offset = record.offset, log = %log.dir().display(), "skipping an undecodable transaction state key");
                    continue;
                };
                match record.value.map(decode_value) {
                    Some(Some(entry)) => {
                        entries.insert(id, entry);
                    }
                    Some(None) => {
                        tracing::warn!(offset = record.offset, log = %log.dir().display(), "skipping an undecodable transaction state entry");
                    }
                    None => {
                        entries.remove(&id);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(TxnStore { log, entries })
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.entries.get(transactional_id)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &TxnMetadata)> {
        self.entries.iter()
    }

    pub fn log(&self) -> &Rc<Log> {
        &self.log
    }

    /// Puts back, in memory only, the entry a write that did not become durable replaced.
    pub fn restore(&mut self, transactional_id: &str, previous: Option<TxnMetadata>) {
        match previous {
            Some(entry) => {
                self.entries.insert(transactional_id.to_string(), entry);
            }
            None => {
                self.entries.remove(transactional_id);
            }
        }
    }

    /// Queues the entry and makes it current at once; the caller makes it durable
    /// (`Log::finish_append`, replication) before acting on it.
    pub fn start_write(
        &mut self,
        transactional_id: &str,
        entry: TxnMetadata,
        leader_epoch: i32,
    ) -> BrokerResult<weir_storage::AppendInfo> {
        let timestamp = now_ms();
        let mut builder = BatchBuilder::new(timestamp);
        builder.append(
            timestamp,
            Some(&encode_key(transactional_id)),
            Some(&encode_value(&entry)),
            &[],
        );
        let info = self.log.start_append(builder.build(), leader_epoch)?;
        self.entries.insert(transactional_id.to_string(), entry);
        Ok(info)
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// key: `version u16 | transactional id (u16 length, UTF-8)`.
fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut key = FORMAT_VERSION.to_be_bytes().to_vec();
    put_string(&mut key, transactional_id);
    key
}

/// value: `version u16 | producer id i64 | epoch i16 | timeout ms i32 | status u8 |
/// started ms i64 | partition count u32 | (topic (u16 length, UTF-8) | partition i32)*`.
fn encode_value(entry: &TxnMetadata) -> Vec<u8> {
    let mut value = FORMAT_VERSION.to_be_bytes().to_vec();
    value.extend_from_slice(&entry.producer_id.to_be_bytes());
    value.extend_from_slice(&entry.producer_epoch.to_be_bytes());
    value.extend_from_slice(&entry.timeout_ms.to_be_bytes());
    value.push(entry.status.code());
    value.extend_from_slice(&entry.started_ms.to_be_bytes());
    value.extend_from_slice(&(entry.partitions.len() as u32).to_be_bytes());
    for partition in &entry.partitions {
        put_string(&mut value, &partition.topic);
        value.extend_from_slice(&partition.partition.to_be_bytes());
    }
    value
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let head = self.0.get(..N)?.try_into().ok()?;
        self.0 = &self.0[N..];
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::from(u16::from_be_bytes(self.take()?));
        let text = self.0.get(..len)?;
        self.0 = &self.0[len..];
        String::from_utf8(text.to_vec()).ok()
    }
}

fn decode_key(key: &[u8]) -> Option<String> {
    let mut key = Reader(key);
    if u16::from_be_bytes(key.take()?) != FORMAT_VERSION {
        return None;
    }
    key.string()
}

fn decode_value(value: &[u8]) -> Option<TxnMetadata> {
    let mut value = Reader(value);
    if u16::from_be_bytes(value.take()?) != FORMAT_VERSION {
        return None;
    }
    let producer_id = i64::from_be_bytes(value.take()?);
    let producer_epoch = i16::from_be_bytes(value.take()?);
    let timeout_ms = i32::from_be_bytes(value.take()?);
    let status = TxnStatus::from_code(value.take::<1>()?[0])?;
    let started_ms = i64::from_be_bytes(value.take()?);
    let count = u32::from_be_bytes(value.take()?) as usize;
    // Each partition takes at least 6 bytes: a count beyond that is corrupt, and is
    // refused before anything is allocated for it.
    if count > value.0.len() / 6 {
        return None;
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..count {
        let topic = value.string()?;
        let partition = i32::from_be_bytes(value.take()?);
        partitions.insert(TopicPartition { topic, partition });
    }
    Some(TxnMetadata {
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        started_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    quickcheck! {
        fn entries_round_trip(id: String, producer_id: i64, epoch: i16, timeout: i32, status: u8, started: i64, partitions: Vec<(String, i32)>) -> bool {
            let entry = TxnMetadata {
                producer_id,
                producer_epoch: epoch,
                timeout_ms: timeout,
                status: TxnStatus::from_code(status % 6).unwrap(),
                partitions: partitions.into_iter().map(|(t, p)| TopicPartition { topic: t, partition: p }).collect(),
                started_ms: started,
            };
            decode_key(&encode_key(&id)) == Some(id) && decode_value(&encode_value(&entry)) == Some(entry)
        }

        fn random_state_bytes_never_panic(key: Vec<u8>, value: Vec<u8>) -> bool {
            let _ = (decode_key(&key), decode_value(&value));
            true
        }
    }

    #[test]
    fn a_transaction_runs_its_course_and_fences_old_producers() {
        let fresh = TxnMetadata::new(7, 60_000);
        let ready = fresh.init(60_000, None).unwrap().unwrap();
        assert_eq!(ready.producer_epoch, 1);
        let ongoing = ready.add_partitions(7, 1, &[tp("a", 0)], 100).unwrap();
        assert_eq!(
            (ongoing.status, ongoing.started_ms),
            (TxnStatus::Ongoing, 100)
        );
        let more = ongoing.add_partitions(7, 1, &[tp("a", 1)], 200).unwrap();
        assert_eq!((more.partitions.len(), more.started_ms), (2, 100));
        assert_eq!(
            more.add_partitions(7, 0, &[], 0),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            more.add_partitions(8, 1, &[], 0),
            Err(ResponseError::InvalidProducerIdMapping)
        );
        assert!(more.timed_out(100 + 60_001) && !more.timed_out(100 + 60_000));
        let prepare = more.end(7, 1, true).unwrap();
        assert!(prepare.is_committing());
        assert_eq!(
            prepare.end(7, 1, true),
            Err(ResponseError::ConcurrentTransactions)
        );
        let done = prepare.completed();
        assert_eq!(done.status, TxnStatus::CompleteCommit);
        assert_eq!(done.end(7, 1, true), Ok(done.clone()));
        assert_eq!(done.end(7, 1, false), Err(ResponseError::InvalidTxnState));
        // A second producer of the id: the open transaction is aborted at a bumped epoch.
        let open = done.add_partitions(7, 1, &[tp("b", 0)], 300).unwrap();
        assert_eq!(
            open.init(60_000, None),
            Some(Err(ResponseError::ConcurrentTransactions))
        );
        let fenced = open.fence_and_abort();
        assert_eq!(
            (fenced.status, fenced.producer_epoch),
            (TxnStatus::PrepareAbort, 2)
        );
        let next = fenced.completed().init(60_000, None).unwrap().unwrap();
        assert_eq!(next.producer_epoch, 3);
        assert_eq!(
            next.add_partitions(7, 1, &[tp("b", 0)], 0),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            next.init(60_000, Some((7, 1))),
            Some(Err(ResponseError::ProducerFenced))
        );
        let exhausted = TxnMetadata {
            producer_epoch: i16::MAX - 1,
            ..next
        };
        assert_eq!(exhausted.init(60_000, None), None);
    }
}
