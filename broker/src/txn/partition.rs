//! What a partition's leader knows of the transactions in its log: the open ones (each
//! producer's first offset in its current transaction, which holds the last stable offset
//! back) and the aborted ones (which `read_committed` consumers are told to skip).
//!
//! The state is a function of the log: every batch, in offset order, goes through
//! [`PartitionTxns::observe`]. It is loaded when first needed, from the checkpoint file
//! `transactions.checkpoint` (the state up to some offset) and a scan of the log from
//! there; the leader rewrites the checkpoint when the state changed, so the scan stays
//! short. A checkpoint that is ahead of the log (the tail it saw was lost in a crash, or
//! truncated after this broker stopped leading) is deleted when the partition is opened or
//! changes role, before any append could refill those offsets; then the whole log is
//! scanned.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use rkyv::{Archive, Deserialize, Serialize};
use weir_storage::Log;
use weir_wire::{BatchHeader, ControlType};

use crate::error::{BrokerError, BrokerResult};

pub const CHECKPOINT_FILE: &str = "transactions.checkpoint";
const CHECKPOINT_MAGIC: [u8; 4] = *b"WTXN";
/// About 700,000 aborted transactions kept by retention; past this the checkpoint is not
/// written (loading then scans the log) and an error is logged.
const CHECKPOINT_BYTES_MAX: usize = 16 << 20;
/// Bytes read per step of a scan.
const SCAN_BYTES: usize = 1 << 20;

/// One aborted transaction of one producer: its records lie in `first_offset..last_offset`
/// (`last_offset` is the abort marker's offset), as Kafka's aborted-transactions list says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
struct Checkpoint {
    upto: i64,
    ongoing: Vec<(i64, i64, i16)>,
    aborted: Vec<AbortedTxn>,
    longest: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionTxns {
    /// Producer id → first offset and producer epoch of its open transaction.
    ongoing: BTreeMap<i64, (i64, i16)>,
    /// In marker order, so by `last_offset`.
    aborted: VecDeque<AbortedTxn>,
    /// The longest aborted transaction (marker offset - first offset): bounds the search
    /// for those overlapping a range.
    longest: i64,
    /// The next offset to observe.
    upto: i64,
    /// Whether the state changed since the checkpoint was written.
    dirty: bool,
}

impl PartitionTxns {
    /// The state before the log's first batch at `offset`.
    fn starting_at(offset: i64) -> PartitionTxns {
        PartitionTxns {
            upto: offset,
            ..PartitionTxns::default()
        }
    }

    /// Takes one batch (at its assigned offset) into the state.
    pub fn observe(&mut self, header: &BatchHeader, control: Option<ControlType>) {
        self.upto = self.upto.max(header.next_offset());
        if !header.attributes.is_transactional() || header.producer_id < 0 {
            return;
        }
        let producer = header.producer_id;
        if header.attributes.is_control() {
            // A marker of an older epoch than the open transaction's (a deposed
            // coordinator's, late) does not end it.
            let Some(&(first_offset, epoch)) = self.ongoing.get(&producer) else {
                return;
            };
            if epoch > header.producer_epoch {
                return;
            }
            self.ongoing.remove(&producer);
            self.dirty = true;
            if control == Some(ControlType::Abort) {
                let last_offset = header.base_offset;
                self.longest = self.longest.max(last_offset - first_offset);
                self.aborted.push_back(AbortedTxn {
                    producer_id: producer,
                    first_offset,
                    last_offset,
                });
            }
        } else {
            match self.ongoing.entry(producer) {
                std::collections::btree_map::Entry::Vacant(open) => {
                    open.insert((header.base_offset, header.producer_epoch));
                    self.dirty = true;
                }
                std::collections::btree_map::Entry::Occupied(mut open) => {
                    if open.get().1 < header.producer_epoch {
                        open.get_mut().1 = header.producer_epoch;
                        self.dirty = true;
                    }
                }
            }
        }
    }

    /// The first offset a `read_committed` consumer may not read yet: the first offset of
    /// the oldest open transaction, or the high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.ongoing
            .values()
            .map(|(first, _)| *first)
            .min()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions with records in `from..to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        // Past `to + longest` every transaction starts at or after `to`.
        let stop = to.saturating_add(self.longest);
        self.aborted
            .range(start..)
            .take_while(|a| a.last_offset <= stop)
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below the log start offset.
    pub fn forget_before(&mut self, log_start_offset: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start_offset)
        {
            self.aborted.pop_front();
            self.dirty = true;
        }
    }

    fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            upto: self.upto,
            ongoing: self
                .ongoing
                .iter()
                .map(|(p, (f, e))| (*p, *f, *e))
                .collect(),
            aborted: self.aborted.iter().copied().collect(),
            longest: self.longest,
        }
    }

    fn from_checkpoint(checkpoint: Checkpoint) -> PartitionTxns {
        PartitionTxns {
            ongoing: checkpoint
                .ongoing
                .into_iter()
                .map(|(p, f, e)| (p, (f, e)))
                .collect(),
            aborted: checkpoint.aborted.into(),
            longest: checkpoint.longest,
            upto: checkpoint.upto,
            dirty: false,
        }
    }

    /// Loads the state of `log`: the checkpoint, then every batch after it. Returns once
    /// the state covers the whole log, with no await between that check and the return,
    /// so the caller can start observing appends from there.
    pub async fn load(log: &Log) -> BrokerResult<PartitionTxns> {
        let mut state = match read_checkpoint(log.dir()).await? {
            Some(checkpoint) if checkpoint.upto <= log.log_end_offset() => {
                PartitionTxns::from_checkpoint(checkpoint)
            }
            _ => PartitionTxns::starting_at(log.log_start_offset()),
        };
        state.catch_up(log).await?;
        state.dirty = true;
        Ok(state)
    }

    /// A state of the whole log, from a scan from its start (not the checkpoint): for a
    /// follower, whose checkpoint is gone.
    pub async fn scan(log: &Log) -> BrokerResult<PartitionTxns> {
        let mut state = PartitionTxns::starting_at(log.log_start_offset());
        state.catch_up(log).await?;
        Ok(state)
    }

    /// Observes the batches appended since the state's end.
    pub async fn catch_up(&mut self, log: &Log) -> BrokerResult<()> {
        let state = self;
        state.upto = state.upto.max(log.log_start_offset());
        loop {
            let batches = log.read(state.upto, SCAN_BYTES, i64::MAX).await?;
            for batch in &batches {
                let header = BatchHeader::parse(batch)?;
                let control = weir_wire::control_type(batch)?;
                state.observe(&header, control);
            }
            // Checked after the await: an append may have come in while this task waited.
            if state.upto >= log.log_end_offset() {
                break;
            }
            if batches.is_empty() {
                return Err(BrokerError::Internal(format!(
                    "{}: no batch at {} below the log end {}",
                    log.dir().display(),
                    state.upto,
                    log.log_end_offset()
                )));
            }
        }
        state.forget_before(log.log_start_offset());
        Ok(())
    }

    /// Whether a data batch belongs to an aborted transaction.
    pub fn is_aborted(&self, header: &BatchHeader) -> bool {
        if !header.attributes.is_transactional() || header.attributes.is_control() {
            return false;
        }
        let offset = header.base_offset;
        let start = self.aborted.partition_point(|a| a.last_offset <= offset);
        let stop = offset.saturating_add(self.longest);
        self.aborted
            .range(start..)
            .take_while(|a| a.last_offset <= stop.saturating_add(1))
            .any(|a| a.producer_id == header.producer_id && a.first_offset <= offset)
    }

    /// Writes the checkpoint if the state changed since the last one.
    pub async fn checkpoint_if_changed(
        state: &std::cell::RefCell<PartitionTxns>,
        dir: &Path,
    ) -> BrokerResult<()> {
        let checkpoint = {
            let mut state = state.borrow_mut();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            state.to_checkpoint()
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&checkpoint)
            .map_err(|e| BrokerError::Internal(format!("encoding a txn checkpoint: {e}")))?;
        if bytes.len() > CHECKPOINT_BYTES_MAX {
            return Err(BrokerError::Internal(format!(
                "{}: {} aborted transactions are over the checkpoint's bound",
                dir.display(),
                checkpoint.aborted.len()
            )));
        }
        if let Err(error) =
            weir_storage::write_checked_file(dir, CHECKPOINT_FILE, CHECKPOINT_MAGIC, &bytes).await
        {
            state.borrow_mut().dirty = true;
            return Err(error.into());
        }
        Ok(())
    }
}

async fn read_checkpoint(dir: &Path) -> BrokerResult<Option<Checkpoint>> {
    let bytes = match weir_storage::read_checked_file(
        dir,
        CHECKPOINT_FILE,
        CHECKPOINT_MAGIC,
        CHECKPOINT_BYTES_MAX,
    )
    .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(error) => {
            // The checkpoint only saves a scan: a damaged one is scanned around.
            tracing::warn!(dir = %dir.display(), %error, "ignoring a damaged txn checkpoint");
            return Ok(None);
        }
    };
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    match rkyv::from_bytes::<Checkpoint, rkyv::rancor::Error>(&aligned) {
        Ok(checkpoint) => Ok(Some(checkpoint)),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "ignoring an undecodable txn checkpoint");
            Ok(None)
        }
    }
}

/// Deletes the checkpoint if it saw offsets the log does not hold (see the module
/// comment). Called before anything is appended to a newly opened or re-led log.
pub async fn discard_checkpoint_beyond(log: &Log) -> BrokerResult<()> {
    let stale = match read_checkpoint(log.dir()).await? {
        Some(checkpoint) => checkpoint.upto > log.log_end_offset(),
        None => false,
    };
    if stale {
        discard_checkpoint(log.dir())?;
    }
    Ok(())
}

/// Deletes the checkpoint: the log is about to change under it (this broker follows).
pub fn discard_checkpoint(dir: &Path) -> BrokerResult<()> {
    match std::fs::remove_file(dir.join(CHECKPOINT_FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BrokerError::Internal(format!(
            "deleting {}: {e}",
            dir.join(CHECKPOINT_FILE).display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};
    use weir_wire::BatchBuilder;

    fn data(producer: i64, offset: i64, records: i32, transactional: bool) -> BatchHeader {
        let mut builder = BatchBuilder::new(0);
        builder.producer(producer, 0, 0);
        if transactional {
            builder.transactional();
        }
        for _ in 0..records {
            builder.append(0, None, Some(b"v"), &[]);
        }
        let mut header = BatchHeader::parse(&builder.build()).unwrap();
        header.base_offset = offset;
        header
    }

    fn marker(producer: i64, offset: i64, outcome: ControlType) -> (BatchHeader, ControlType) {
        let batch = weir_wire::control_batch(0, producer, 0, outcome, 0);
        let mut header = BatchHeader::parse(&batch).unwrap();
        header.base_offset = offset;
        (header, outcome)
    }

    /// One step of a log: a producer's batch (transactional or not) or its marker.
    #[derive(Debug, Clone)]
    enum Step {
        Data {
            producer: u8,
            records: u8,
            transactional: bool,
        },
        Marker {
            producer: u8,
            commit: bool,
        },
    }

    impl Arbitrary for Step {
        fn arbitrary(g: &mut Gen) -> Step {
            let producer = u8::arbitrary(g) % 4;
            if u8::arbitrary(g) % 3 == 0 {
                Step::Marker {
                    producer,
                    commit: bool::arbitrary(g),
                }
            } else {
                Step::Data {
                    producer,
                    records: u8::arbitrary(g) % 3 + 1,
                    transactional: u8::arbitrary(g) % 4 != 0,
                }
            }
        }
    }

    /// The model: per offset, who wrote it and in which transaction (numbered per
    /// producer), and how each transaction ended.
    #[test]
    fn the_state_matches_a_model_of_the_log() {
        fn property(steps: Vec<Step>, from: u8, len: u8) -> bool {
            let mut state = PartitionTxns::default();
            // offset → (producer, transaction number), for transactional records
            let mut records: Vec<Option<(i64, usize)>> = Vec::new();
            let mut current: BTreeMap<i64, (usize, bool)> = BTreeMap::new(); // open?
            let mut outcome: BTreeMap<(i64, usize), bool> = BTreeMap::new(); // committed?
            let mut next_txn: BTreeMap<i64, usize> = BTreeMap::new();
            let mut batches: Vec<(BatchHeader, Option<(i64, usize)>)> = Vec::new();
            for step in steps {
                let offset = records.len() as i64;
                match step {
                    Step::Data {
                        producer,
                        records: n,
                        transactional,
                    } => {
                        let producer = i64::from(producer);
                        let header = data(producer, offset, n.into(), transactional);
                        state.observe(&header, None);
                        let txn = transactional.then(|| {
                            let entry = current.entry(producer).or_insert_with(|| {
                                let n = next_txn.entry(producer).or_default();
                                *n += 1;
                                (*n, true)
                            });
                            if !entry.1 {
                                let n = next_txn.entry(producer).or_default();
                                *n += 1;
                                *entry = (*n, true);
                            }
                            (producer, entry.0)
                        });
                        records.extend((0..n).map(|_| txn));
                        batches.push((header, txn));
                    }
                    Step::Marker { producer, commit } => {
                        let producer = i64::from(producer);
                        let kind = if commit {
                            ControlType::Commit
                        } else {
                            ControlType::Abort
                        };
                        let (header, control) = marker(producer, offset, kind);
                        state.observe(&header, Some(control));
                        if let Some(entry) = current.get_mut(&producer)
                            && entry.1
                        {
                            entry.1 = false;
                            outcome.insert((producer, entry.0), commit);
                        }
                        records.push(None);
                    }
                }
            }
            let end = records.len() as i64;
            // Compaction's question: is this batch aborted?
            let batches_agree = batches.iter().all(|(header, txn)| {
                state.is_aborted(header) == txn.is_some_and(|t| outcome.get(&t) == Some(&false))
            });
            if !batches_agree {
                return false;
            }
            // The LSO is the first offset of an open transaction.
            let first_open = records
                .iter()
                .position(|r| r.is_some_and(|t| !outcome.contains_key(&t)))
                .map_or(end, |p| p as i64);
            if state.last_stable_offset(end) != first_open {
                return false;
            }
            // A read_committed reader filtering `from..to` with the aborted list (a
            // producer's records from an aborted entry's first offset up to its marker)
            // drops exactly the aborted records of the range.
            let from = i64::from(from) % (end + 1);
            let to = (from + i64::from(len)).min(end);
            let aborted = state.aborted_between(from, to);
            (from..to).all(|offset| {
                let record = records[offset as usize];
                let is_aborted = record.is_some_and(|t| outcome.get(&t) == Some(&false));
                let filtered = record.is_some_and(|(producer, _)| {
                    aborted.iter().any(|a| {
                        a.producer_id == producer
                            && a.first_offset <= offset
                            && offset < a.last_offset
                    })
                });
                is_aborted == filtered
            })
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(property as fn(Vec<Step>, u8, u8) -> bool);
    }

    #[test]
    fn checkpoints_round_trip_and_retention_forgets() {
        let mut state = PartitionTxns::default();
        state.observe(&data(1, 0, 2, true), None);
        let (header, control) = marker(1, 2, ControlType::Abort);
        state.observe(&header, Some(control));
        state.observe(&data(2, 3, 1, true), None);
        let back = PartitionTxns::from_checkpoint(state.to_checkpoint());
        assert_eq!(back.ongoing, state.ongoing);
        assert_eq!(back.aborted, state.aborted);
        assert_eq!(back.upto, 4);
        assert_eq!(back.last_stable_offset(10), 3);
        state.forget_before(3);
        assert!(state.aborted_between(0, 4).is_empty());
    }
}
