//! What consumers received, against what producers had acknowledged: lost, duplicated,
//! reordered and corrupt messages.

use std::collections::HashMap;

use serde::Serialize;

/// Receipts of one consumer: per producer, how often each sequence arrived; per
/// (partition, producer), the last sequence, to see reordering.
#[derive(Debug, Default, Clone)]
pub struct Receipts {
    counts: HashMap<u32, Vec<u8>>,
    last: HashMap<(i32, u32), u64>,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub received: u64,
}

impl Receipts {
    pub fn record(&mut self, partition: i32, producer: u32, sequence: u64) {
        let counts = self.counts.entry(producer).or_default();
        let index = sequence as usize;
        if counts.len() <= index {
            counts.resize(index + 1, 0);
        }
        counts[index] = counts[index].saturating_add(1);
        self.received += 1;
        let previous = self.last.insert((partition, producer), sequence);
        if previous.is_some_and(|last| last > sequence) {
            self.out_of_order += 1;
        }
    }

    pub fn merge(&mut self, other: Receipts) {
        for (producer, counts) in other.counts {
            let mine = self.counts.entry(producer).or_default();
            if mine.len() < counts.len() {
                mine.resize(counts.len(), 0);
            }
            for (mine, theirs) in mine.iter_mut().zip(counts) {
                *mine = mine.saturating_add(theirs);
            }
        }
        self.out_of_order += other.out_of_order;
        self.corrupt += other.corrupt;
        self.received += other.received;
    }
}

/// The verdict on a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Acknowledged (or, without acks, sent) messages never received.
    pub lost: u64,
    /// Extra copies of messages received more than once.
    pub duplicates: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        *self == Verdict::default()
    }
}

/// Compares receipts with what each producer expects to be delivered (`expected[p][s]`).
pub fn verdict(receipts: &Receipts, expected: &HashMap<u32, Vec<bool>>) -> Verdict {
    let mut verdict = Verdict {
        out_of_order: receipts.out_of_order,
        corrupt: receipts.corrupt,
        ..Verdict::default()
    };
    let empty = Vec::new();
    for (producer, wanted) in expected {
        let counts = receipts.counts.get(producer).unwrap_or(&empty);
        for (sequence, wanted) in wanted.iter().enumerate() {
            let count = counts.get(sequence).copied().unwrap_or(0);
            if *wanted && count == 0 {
                verdict.lost += 1;
            }
        }
    }
    for counts in receipts.counts.values() {
        verdict.duplicates += counts
            .iter()
            .map(|c| u64::from(c.saturating_sub(1)))
            .sum::<u64>();
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(n: usize) -> HashMap<u32, Vec<bool>> {
        [(0, vec![true; n])].into()
    }

    #[test]
    fn a_clean_run_passes() {
        let mut receipts = Receipts::default();
        for s in 0..10 {
            receipts.record(0, 0, s);
        }
        assert!(verdict(&receipts, &expected(10)).ok());
    }

    #[test]
    fn loss_duplication_and_reordering_are_each_reported() {
        let mut receipts = Receipts::default();
        for s in [0, 1, 3, 2, 4, 4, 5, 6, 7, 8] {
            receipts.record(0, 0, s);
        }
        let verdict = verdict(&receipts, &expected(10));
        assert_eq!(
            verdict,
            Verdict {
                lost: 1,
                duplicates: 1,
                out_of_order: 1,
                corrupt: 0
            }
        );
        assert!(!verdict.ok());
    }

    #[test]
    fn receipts_of_several_consumers_merge() {
        let (mut a, mut b) = (Receipts::default(), Receipts::default());
        a.record(0, 0, 0);
        b.record(1, 0, 1);
        b.record(1, 0, 1);
        a.merge(b);
        assert_eq!(
            verdict(&a, &expected(2)),
            Verdict {
                duplicates: 1,
                ..Verdict::default()
            }
        );
    }
}
