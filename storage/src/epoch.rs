//! The leader-epoch cache: at which offset each leader epoch began.
//!
//! Replication uses it to find where a follower's log diverges from the leader's after a
//! leader change (Kafka KIP-101 / KIP-279): the end offset of an epoch is the start of the
//! next one.

use rkyv::{Archive, Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` begins at `start_offset`. Only a newer epoch is recorded (a
    /// negative epoch means "no leader epoch", as producers send). Returns whether the
    /// cache changed.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| epoch <= latest) {
            return false;
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Forgets epochs that start at or after `end_offset` (the log was truncated there).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        self.entries.len() != before
    }

    /// The log now starts at `start_offset`: earlier epochs are forgotten, and the epoch
    /// in force at the new start is moved to begin there.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let in_force = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        let Some(keep_from) = in_force.checked_sub(1) else {
            return false;
        };
        let changed = keep_from > 0 || self.entries[keep_from].start_offset != start_offset;
        self.entries.drain(..keep_from);
        self.entries[0].start_offset = start_offset;
        changed
    }

    /// The end offset of `epoch` (exclusive): where the next larger epoch begins, or
    /// `log_end_offset` when `epoch` is the latest. `None` when `epoch` predates the cache.
    /// For an epoch the cache skipped, the answer is the start of the next larger one.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let larger = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = larger.checked_sub(1).map(|i| self.entries[i])?;
        let end = self
            .entries
            .get(larger)
            .map_or(log_end_offset, |next| next.start_offset);
        Some((found.epoch, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for (epoch, start) in entries {
            assert!(cache.assign(*epoch, *start));
        }
        cache
    }

    #[test]
    fn only_newer_epochs_are_assigned() {
        let mut c = cache(&[(0, 0), (2, 10)]);
        assert!(!c.assign(1, 20));
        assert!(!c.assign(2, 20));
        assert!(!c.assign(-1, 20));
        assert!(c.assign(3, 20));
        assert_eq!(c.latest_epoch(), Some(3));
    }

    #[test]
    fn end_offsets_follow_the_next_epoch() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        let cases = [
            (0, None),
            (1, Some((1, 10))),
            (2, Some((1, 10))),
            (3, Some((3, 25))),
            (9, Some((4, 40))),
        ];
        for (epoch, expected) in cases {
            assert_eq!(c.end_offset_for(epoch, 40), expected, "epoch {epoch}");
        }
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(c.truncate_from_end(25));
        assert_eq!(c.latest_epoch(), Some(3));
        assert!(c.truncate_from_start(12));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 12
            }]
        );
        assert!(!c.truncate_from_start(12));
    }
}
