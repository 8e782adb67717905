//! Idempotent producers: per partition, each producer's epoch and its last five batches'
//! sequence numbers, so that a retried batch is recognised and answered with the offset
//! it already has instead of being appended twice, and a gap in sequence numbers is
//! refused (`OUT_OF_ORDER_SEQUENCE_NUMBER`) instead of silently losing a batch.
//!
//! Kafka clients keep at most five requests in flight per partition with idempotence
//! on, which is why five batches are remembered.

use std::collections::{HashMap, VecDeque};

use kafka_protocol::ResponseError;
use weir_wire::BatchHeader;

/// Batches remembered per producer (Kafka's `max.in.flight.requests.per.connection` limit
/// for idempotent producers).
pub const BATCHES_REMEMBERED: usize = 5;

/// Producers remembered per partition; the least recently active is forgotten first.
/// A forgotten producer is treated as new (its next batch is accepted whatever its
/// sequence), as Kafka treats one whose state expired.
pub const PRODUCERS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSeen {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSeen>,
    last_active: u64,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// Already appended at this base offset: answer with it, append nothing.
    Duplicate { base_offset: i64 },
}

/// The producers of one partition.
#[derive(Debug, Default, Clone)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
    clock: u64,
    /// Per producer, the epoch and first sequence of a batch this leader refused with a
    /// retriable error before appending it (too few in-sync replicas), until the producer
    /// appends again. Its pipelined successors then find a gap that this leader made:
    /// they get the same retriable error instead of OUT_OF_ORDER_SEQUENCE_NUMBER, which
    /// librdkafka answers with an epoch bump that resends messages under new sequences
    /// (duplicating any that were persisted but not acknowledged).
    refused: HashMap<i64, (i16, i32)>,
}

fn next_sequence(sequence: i32) -> i32 {
    // Sequences wrap from i32::MAX to 0, as Kafka's do.
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

fn last_sequence(header: &BatchHeader) -> i32 {
    let last = i64::from(header.base_sequence) + i64::from(header.last_offset_delta);
    (last % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerTable {
    /// Decides what to do with a batch of a producer (`producer_id >= 0`).
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, ResponseError> {
        if header.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        if header.base_sequence < 0 {
            return Err(ResponseError::InvalidRecord);
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if header.producer_epoch < entry.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if header.producer_epoch > entry.epoch {
            // A new epoch starts its sequences again.
            return if header.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(ResponseError::OutOfOrderSequenceNumber)
            };
        }
        let last = last_sequence(header);
        if let Some(seen) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == header.base_sequence && b.last_sequence == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: seen.base_offset,
            });
        }
        match entry.batches.back() {
            Some(previous) if header.base_sequence != next_sequence(previous.last_sequence) => {
                let expected = next_sequence(previous.last_sequence);
                if self.refused.get(&header.producer_id) == Some(&(entry.epoch, expected)) {
                    Err(ResponseError::NotEnoughReplicas)
                } else {
                    Err(ResponseError::OutOfOrderSequenceNumber)
                }
            }
            _ => Ok(SequenceCheck::Append),
        }
    }

    /// Notes that a batch that would have been appended was refused with a retriable
    /// error (see `refused`).
    pub fn refused(&mut self, header: &BatchHeader) {
        if header.producer_id >= 0 {
            self.refused.insert(
                header.producer_id,
                (header.producer_epoch, header.base_sequence),
            );
        }
    }

    /// What is known of a producer, for logs: its epoch, then each remembered batch as
    /// `first..=last sequence @ base offset`.
    pub fn describe(&self, producer_id: i64) -> Option<String> {
        self.producers.get(&producer_id).map(|e| {
            let batches: Vec<String> = e
                .batches
                .iter()
                .map(|b| {
                    format!(
                        "{}..={}@{}",
                        b.first_sequence, b.last_sequence, b.base_offset
                    )
                })
                .collect();
            format!("epoch {}: {}", e.epoch, batches.join(", "))
        })
    }

    /// Records an appended batch (its header as sent, and the base offset it was given),
    /// or a transaction marker. A marker at a newer epoch fences the producer's older
    /// epochs; one at an older epoch than known (a late marker) changes nothing.
    pub fn record(&mut self, header: &BatchHeader, base_offset: i64) {
        if header.producer_id < 0 {
            return;
        }
        self.refused.remove(&header.producer_id);
        self.clock += 1;
        let clock = self.clock;
        if !self.producers.contains_key(&header.producer_id)
            && self.producers.len() >= PRODUCERS_MAX
        {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, e)| e.last_active)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_REMEMBERED),
                last_active: clock,
            });
        if header.attributes.is_control() && header.producer_epoch < entry.epoch {
            return;
        }
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.last_active = clock;
        if header.attributes.is_control() {
            // A transaction marker carries no sequence; its epoch (bumped when the
            // coordinator fenced the producer) is what it changes.
            return;
        }
        if entry.batches.len() == BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchSeen {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
        });
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};
    use weir_wire::BatchBuilder;

    fn header(producer: i64, epoch: i16, sequence: i32, records: usize) -> BatchHeader {
        let mut builder = BatchBuilder::new(0);
        builder.producer(producer, epoch, sequence);
        for _ in 0..records {
            builder.append(0, None, Some(b"v"), &[]);
        }
        BatchHeader::parse(&builder.build()).unwrap()
    }

    #[test]
    fn retries_are_recognised_and_gaps_refused() {
        let mut table = ProducerTable::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(table.check(&first), Ok(SequenceCheck::Append));
        table.record(&first, 100);
        assert_eq!(
            table.check(&first),
            Ok(SequenceCheck::Duplicate { base_offset: 100 })
        );
        let gap = header(7, 0, 5, 1);
        assert_eq!(
            table.check(&gap),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        let next = header(7, 0, 3, 2);
        assert_eq!(table.check(&next), Ok(SequenceCheck::Append));
        table.record(&next, 103);
        let bumped = header(7, 1, 0, 1);
        assert_eq!(table.check(&bumped), Ok(SequenceCheck::Append));
        table.record(&bumped, 105);
        assert_eq!(
            table.check(&header(7, 0, 5, 1)),
            Err(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(
            table.check(&header(-1, -1, -1, 1)),
            Ok(SequenceCheck::Append)
        );
        // A marker at the same epoch keeps the sequence going; one at a bumped epoch
        // (the coordinator fenced the producer) refuses the old epoch.
        let marker = |epoch| {
            let batch = weir_wire::control_batch(0, 7, epoch, weir_wire::ControlType::Abort, 0);
            BatchHeader::parse(&batch).unwrap()
        };
        table.record(&marker(1), 106);
        let after = header(7, 1, 1, 1);
        assert_eq!(table.check(&after), Ok(SequenceCheck::Append));
        table.record(&marker(2), 107);
        assert_eq!(
            table.check(&after),
            Err(ResponseError::InvalidProducerEpoch)
        );
        table.record(&marker(0), 108);
        assert_eq!(table.check(&header(7, 2, 0, 1)), Ok(SequenceCheck::Append));
    }

    /// A producer sends batches in order, each possibly retried later (within the five
    /// in flight); the table must append every batch exactly once.
    #[derive(Debug, Clone)]
    struct Sends(Vec<(u8, u8)>);

    impl Arbitrary for Sends {
        fn arbitrary(g: &mut Gen) -> Sends {
            let n = usize::arbitrary(g) % 40;
            Sends(
                (0..n)
                    .map(|_| (u8::arbitrary(g) % 4 + 1, u8::arbitrary(g) % 5))
                    .collect(),
            )
        }
    }

    #[test]
    fn each_batch_is_appended_once_whatever_the_retries() {
        fn property(sends: Sends) -> bool {
            let mut table = ProducerTable::default();
            let mut sent: Vec<BatchHeader> = Vec::new();
            let mut appended = 0usize;
            let mut sequence = 0;
            let mut offset = 0i64;
            for (records, retry_back) in sends.0 {
                let batch = header(1, 0, sequence, records.into());
                sequence += i32::from(records);
                sent.push(batch);
                for candidate in [
                    Some(batch),
                    sent.iter().rev().nth(retry_back.into()).cloned(),
                ]
                .into_iter()
                .flatten()
                {
                    match table.check(&candidate) {
                        Ok(SequenceCheck::Append) => {
                            table.record(&candidate, offset);
                            offset += i64::from(candidate.records_count);
                            appended += 1;
                        }
                        Ok(SequenceCheck::Duplicate { .. }) => {}
                        Err(_) => return false,
                    }
                }
            }
            appended == sent.len()
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(property as fn(Sends) -> bool);
    }
}
