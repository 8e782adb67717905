//! The shard's cache of recently appended batches.
//!
//! Tail readers (consumers keeping up, followers) ask for what was just appended; the
//! cache answers them with the very `Bytes` the producer sent, so a tail read neither
//! touches the disk nor copies a byte. All logs of a shard share one byte budget; the
//! oldest insertions are evicted first. For every log, what is cached is a contiguous run
//! of batches ending at the log's end, because batches enter in offset order and leave
//! from the front (eviction, retention) or the back (truncation).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// Identifies a log within its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogId(pub u64);

/// How much a read may return. Whole batches up to `max_bytes`, except that with
/// `at_least_one` the first batch comes whole however large, so a reader whose limit is
/// below a batch still progresses (Kafka's rule for the first partition of a fetch).
/// Without it, a read returns nothing rather than more than `max_bytes`: what bounds a
/// fetch of many partitions by its response limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    pub max_bytes: usize,
    pub at_least_one: bool,
}

impl ReadLimit {
    pub fn at_least_one(max_bytes: usize) -> ReadLimit {
        ReadLimit {
            max_bytes,
            at_least_one: true,
        }
    }

    pub fn at_most(max_bytes: usize) -> ReadLimit {
        ReadLimit {
            max_bytes,
            at_least_one: false,
        }
    }

    /// Whether a batch of `bytes` may follow `taken` bytes (`any` batches) already read.
    pub fn fits(self, taken: usize, any: bool, bytes: usize) -> bool {
        (self.at_least_one && !any) || taken + bytes <= self.max_bytes
    }
}

#[derive(Debug, Clone)]
struct CachedBatch {
    base_offset: i64,
    next_offset: i64,
    bytes: Bytes,
}

/// The answer to a cache lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CacheRead {
    /// The offset is older than anything cached for the log.
    Miss,
    /// Whole batches starting with the one that holds the offset (possibly none, when
    /// the offset is at the end of what is cached).
    Hit(Vec<Bytes>),
}

#[derive(Debug)]
pub(crate) struct BatchCache {
    budget_bytes: u64,
    used_bytes: u64,
    logs: HashMap<LogId, VecDeque<CachedBatch>>,
    /// Insertion order across logs, for eviction. Entries whose batch already left (by
    /// truncation or retention) are skipped when they reach the front, and compacted away
    /// when they outnumber live entries.
    order: VecDeque<(LogId, i64)>,
    live_batches: usize,
}

/// Compaction of `order` starts when it holds this many more entries than live batches.
const STALE_ORDER_ENTRIES_MAX: usize = 4096;

impl BatchCache {
    pub fn new(budget_bytes: u64) -> BatchCache {
        BatchCache {
            budget_bytes,
            used_bytes: 0,
            logs: HashMap::new(),
            order: VecDeque::new(),
            live_batches: 0,
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Adds a batch at the end of a log's cached run. A batch larger than the whole budget
    /// is not cached at all.
    pub fn insert(&mut self, log: LogId, base_offset: i64, next_offset: i64, bytes: Bytes) {
        let size = bytes.len() as u64;
        if size > self.budget_bytes {
            // The cached run must end at the log's end; a batch that cannot join it ends it.
            self.remove_log(log);
            return;
        }
        let batches = self.logs.entry(log).or_default();
        if let Some(last) = batches.back() {
            assert!(
                base_offset >= last.next_offset,
                "cache insert for {log:?} at {base_offset} precedes cached end {}",
                last.next_offset
            );
        }
        batches.push_back(CachedBatch {
            base_offset,
            next_offset,
            bytes,
        });
        self.order.push_back((log, base_offset));
        self.used_bytes += size;
        self.live_batches += 1;
        self.evict_to_budget();
    }

    fn evict_to_budget(&mut self) {
        while self.used_bytes > self.budget_bytes {
            let Some((log, base_offset)) = self.order.pop_front() else {
                break;
            };
            let Some(batches) = self.logs.get_mut(&log) else {
                continue;
            };
            let is_front = batches
                .front()
                .is_some_and(|b| b.base_offset == base_offset);
            if let Some(evicted) = is_front.then(|| batches.pop_front()).flatten() {
                self.used_bytes -= evicted.bytes.len() as u64;
                self.live_batches -= 1;
            }
        }
        if self.order.len() > self.live_batches + STALE_ORDER_ENTRIES_MAX {
            let logs = &self.logs;
            self.order.retain(|(log, base)| {
                logs.get(log).is_some_and(|batches| {
                    batches
                        .binary_search_by_key(base, |b| b.base_offset)
                        .is_ok()
                })
            });
        }
    }

    /// Whole batches from the one holding `offset`, stopping before `max_offset` and
    /// within `limit`.
    pub fn read(&self, log: LogId, offset: i64, limit: ReadLimit, max_offset: i64) -> CacheRead {
        let Some(batches) = self.logs.get(&log) else {
            return CacheRead::Miss;
        };
        match batches.front() {
            Some(first) if first.base_offset <= offset => {}
            _ => return CacheRead::Miss,
        }
        let start = batches.partition_point(|b| b.next_offset <= offset);
        let mut found = Vec::new();
        let mut total = 0usize;
        for batch in batches.range(start..) {
            let fits = limit.fits(total, !found.is_empty(), batch.bytes.len());
            if batch.next_offset > max_offset || !fits {
                break;
            }
            total += batch.bytes.len();
            found.push(batch.bytes.clone());
        }
        CacheRead::Hit(found)
    }

    /// The cached batch of `log` whose base offset is `offset`, if there is one.
    pub fn batch_based_at(&self, log: LogId, offset: i64) -> Option<Bytes> {
        let batches = self.logs.get(&log)?;
        let at = batches.partition_point(|b| b.base_offset < offset);
        batches
            .get(at)
            .filter(|b| b.base_offset == offset)
            .map(|b| b.bytes.clone())
    }

    /// Drops a log's batches that hold any offset at or after `offset`.
    pub fn truncate(&mut self, log: LogId, offset: i64) {
        let Some(batches) = self.logs.get_mut(&log) else {
            return;
        };
        while batches.back().is_some_and(|b| b.next_offset > offset) {
            if let Some(dropped) = batches.pop_back() {
                self.used_bytes -= dropped.bytes.len() as u64;
                self.live_batches -= 1;
            }
        }
    }

    /// Drops a log's batches that lie wholly before `offset`.
    pub fn remove_before(&mut self, log: LogId, offset: i64) {
        let Some(batches) = self.logs.get_mut(&log) else {
            return;
        };
        while batches.front().is_some_and(|b| b.next_offset <= offset) {
            if let Some(dropped) = batches.pop_front() {
                self.used_bytes -= dropped.bytes.len() as u64;
                self.live_batches -= 1;
            }
        }
    }

    pub fn remove_log(&mut self, log: LogId) {
        if let Some(batches) = self.logs.remove(&log) {
            self.used_bytes -= batches.iter().map(|b| b.bytes.len() as u64).sum::<u64>();
            self.live_batches -= batches.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            log: u8,
            records: u8,
            size: u8,
        },
        Truncate {
            log: u8,
            back: u8,
        },
        RemoveBefore {
            log: u8,
            forward: u8,
        },
        Read {
            log: u8,
            back: u8,
            max_bytes: u8,
            at_least_one: bool,
        },
    }

    impl quickcheck::Arbitrary for Op {
        fn arbitrary(g: &mut quickcheck::Gen) -> Op {
            let log = u8::arbitrary(g) % 3;
            match u8::arbitrary(g) % 6 {
                0 => Op::Truncate {
                    log,
                    back: u8::arbitrary(g) % 8,
                },
                1 => Op::RemoveBefore {
                    log,
                    forward: u8::arbitrary(g) % 8,
                },
                2 | 3 => Op::Read {
                    log,
                    back: u8::arbitrary(g) % 16,
                    max_bytes: u8::arbitrary(g),
                    at_least_one: bool::arbitrary(g),
                },
                _ => Op::Insert {
                    log,
                    records: u8::arbitrary(g) % 4 + 1,
                    size: u8::arbitrary(g),
                },
            }
        }
    }

    quickcheck! {
        /// Whatever is cached is a contiguous run ending at the log's end, byte-identical
        /// to what was inserted, and the budget is never exceeded.
        fn cache_agrees_with_model(ops: Vec<Op>, budget: u16) -> bool {
            let budget = u64::from(budget) + 1;
            let mut cache = BatchCache::new(budget);
            // Model: per log, every batch still in the log (cached or not).
            let mut model: HashMap<u8, Vec<(i64, i64, Bytes)>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert { log, records, size } => {
                        let batches = model.entry(log).or_default();
                        let base = batches.last().map_or(0, |b| b.1);
                        let bytes = Bytes::from(vec![base as u8; usize::from(size) + 1]);
                        let next = base + i64::from(records);
                        cache.insert(LogId(u64::from(log)), base, next, bytes.clone());
                        batches.push((base, next, bytes));
                    }
                    Op::Truncate { log, back } => {
                        let batches = model.entry(log).or_default();
                        let end = batches.last().map_or(0, |b| b.1);
                        let offset = (end - i64::from(back)).max(0);
                        cache.truncate(LogId(u64::from(log)), offset);
                        batches.retain(|b| b.1 <= offset);
                    }
                    Op::RemoveBefore { log, forward } => {
                        let batches = model.entry(log).or_default();
                        let start = batches.first().map_or(0, |b| b.0);
                        let offset = start + i64::from(forward);
                        cache.remove_before(LogId(u64::from(log)), offset);
                        batches.retain(|b| b.1 > offset);
                    }
                    Op::Read {
                        log,
                        back,
                        max_bytes,
                        at_least_one,
                    } => {
                        let batches = model.entry(log).or_default();
                        let end = batches.last().map_or(0, |b| b.1);
                        let offset = (end - i64::from(back)).max(0);
                        let max_bytes = usize::from(max_bytes);
                        let limit = ReadLimit {
                            max_bytes,
                            at_least_one,
                        };
                        // A batch found by its base offset is the log's batch there.
                        if let Some(bytes) = cache.batch_based_at(LogId(u64::from(log)), offset)
                            && !batches.iter().any(|b| b.0 == offset && b.2 == bytes)
                        {
                            return false;
                        }
                        if let CacheRead::Hit(found) =
                            cache.read(LogId(u64::from(log)), offset, limit, i64::MAX)
                        {
                            let start = batches.iter().position(|b| b.1 > offset);
                            let expected: Vec<Bytes> = start
                                .map(|s| batches[s..].iter().map(|b| b.2.clone()).collect())
                                .unwrap_or_default();
                            // The hit is a prefix of what the log holds from the offset.
                            if found.len() > expected.len() || found[..] != expected[..found.len()] {
                                return false;
                            }
                            // Over the limit only with one batch, and only if allowed.
                            let total: usize = found.iter().map(Bytes::len).sum();
                            if total > max_bytes && (found.len() > 1 || !at_least_one) {
                                return false;
                            }
                            // It stops early only for the byte limit.
                            if found.len() < expected.len()
                                && limit.fits(total, !found.is_empty(), expected[found.len()].len())
                            {
                                return false;
                            }
                        }
                    }
                }
                if cache.used_bytes() > budget {
                    return false;
                }
            }
            true
        }
    }
}
