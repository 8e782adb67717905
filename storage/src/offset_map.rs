//! Compaction's map from each key to the offset of its latest record, in bounded memory
//! (Kafka's `SkimpyOffsetMap`): keys are not stored, only a 128-bit hash of each, so the
//! map's size does not depend on key sizes. Two keys whose hashes collide would share an
//! entry; at 128 bits that is not expected to happen in the life of the universe's disks.
//!
//! The map starts small and doubles up to its memory limit, so a log with a thousand keys
//! costs kilobytes, not the limit. Its memory comes zeroed from the allocator (calloc:
//! pages are zeroed by the kernel when first touched), so allocating even the largest
//! table is not a long step for the shard; rehashing into it is done in slices by the
//! caller ([`OffsetMap::start_growing`], [`OffsetMap::rehash`]).

/// Bytes one entry takes: a 128-bit key hash and an offset.
pub(crate) const ENTRY_BYTES: u64 = 24;
/// The share of slots that may be used: open addressing slows down as it fills.
const LOAD_FACTOR: f64 = 0.9;
/// Slots of a new map.
const INITIAL_SLOTS: usize = 8192;

/// `[hash low, hash high, offset + 1]`; all zero when empty (so a table is calloc'd).
type Slot = [u64; 3];

#[derive(Debug)]
pub(crate) struct OffsetMap {
    slots: Vec<Slot>,
    len: usize,
    /// Slots the map may grow to.
    slots_max: usize,
    hashers: [ahash::RandomState; 2],
}

/// The table being replaced while a map grows, with how far rehashing got.
#[derive(Debug)]
pub(crate) struct Growing {
    old: Vec<Slot>,
    next: usize,
}

impl OffsetMap {
    /// An empty map that may grow to `memory_bytes`.
    pub fn new(memory_bytes: u64) -> OffsetMap {
        let slots_max = (memory_bytes / ENTRY_BYTES).max(16) as usize;
        OffsetMap {
            slots: vec![[0; 3]; INITIAL_SLOTS.min(slots_max)],
            len: 0,
            slots_max,
            // Fixed seeds: the map lives for one compaction pass, and a fixed hash keeps
            // runs reproducible.
            hashers: [
                ahash::RandomState::with_seeds(1, 2, 3, 4),
                ahash::RandomState::with_seeds(5, 6, 7, 8),
            ],
        }
    }

    fn limit(&self) -> usize {
        ((self.slots.len() as f64 * LOAD_FACTOR) as usize).max(1)
    }

    /// Keys that can still be added without growing.
    pub fn room(&self) -> usize {
        self.limit() - self.len
    }

    /// Keys that can be added at most (growing to the memory limit).
    pub fn room_at_most(&self) -> usize {
        ((self.slots_max as f64 * LOAD_FACTOR) as usize).saturating_sub(self.len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Doubles the table (up to the limit) unless it is at the limit; the caller then
    /// calls [`OffsetMap::rehash`] until it returns true, and nothing else meanwhile.
    pub fn start_growing(&mut self) -> Option<Growing> {
        if self.slots.len() >= self.slots_max {
            return None;
        }
        let size = (self.slots.len() * 2).min(self.slots_max);
        let old = std::mem::replace(&mut self.slots, vec![[0; 3]; size]);
        Some(Growing { old, next: 0 })
    }

    /// Moves up to `count` slots of the old table into the new one; true when done.
    pub fn rehash(&mut self, growing: &mut Growing, count: usize) -> bool {
        let end = (growing.next + count).min(growing.old.len());
        for at in growing.next..end {
            let slot = growing.old[at];
            if slot[2] != 0 {
                let to = self.slot_of([slot[0], slot[1]]);
                self.slots[to] = slot;
            }
        }
        growing.next = end;
        end == growing.old.len()
    }

    fn hash(&self, key: &[u8]) -> [u64; 2] {
        [self.hashers[0].hash_one(key), self.hashers[1].hash_one(key)]
    }

    fn slot_of(&self, hash: [u64; 2]) -> usize {
        let mut at = (hash[0] % self.slots.len() as u64) as usize;
        loop {
            let slot = &self.slots[at];
            if slot[2] == 0 || (slot[0] == hash[0] && slot[1] == hash[1]) {
                return at;
            }
            at = (at + 1) % self.slots.len();
        }
    }

    /// Records `offset` for `key` if it is later than what the map holds. Returns false,
    /// changing nothing, when the key is new and the map has no room.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        let hash = self.hash(key);
        let at = self.slot_of(hash);
        let stored = offset as u64 + 1;
        if self.slots[at][2] == 0 {
            if self.len >= self.limit() {
                return false;
            }
            self.len += 1;
            self.slots[at] = [hash[0], hash[1], stored];
        } else {
            self.slots[at][2] = self.slots[at][2].max(stored);
        }
        true
    }

    /// The latest offset recorded for `key`.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        let slot = &self.slots[self.slot_of(self.hash(key))];
        (slot[2] != 0).then(|| slot[2] as i64 - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use quickcheck::quickcheck;

    fn grow_fully(map: &mut OffsetMap) {
        if let Some(mut growing) = map.start_growing() {
            while !map.rehash(&mut growing, 100) {}
        }
    }

    quickcheck! {
        /// Growing as needed, the map agrees with a HashMap of latest offsets.
        fn agrees_with_a_model(puts: Vec<(u16, u16)>) -> bool {
            let mut map = OffsetMap::new(1 << 24);
            let mut model = HashMap::new();
            for (key, offset) in &puts {
                if !map.put(&key.to_be_bytes(), i64::from(*offset)) {
                    grow_fully(&mut map);
                    assert!(map.put(&key.to_be_bytes(), i64::from(*offset)));
                }
                let latest = model.entry(*key).or_insert(i64::from(*offset));
                *latest = (*latest).max(i64::from(*offset));
            }
            map.len() == model.len()
                && model.iter().all(|(key, offset)| map.get(&key.to_be_bytes()) == Some(*offset))
                && map.get(b"absent").is_none()
        }
    }

    #[test]
    fn a_full_map_refuses_new_keys_but_updates_known_ones() {
        let mut map = OffsetMap::new(16_384 * ENTRY_BYTES);
        let mut added: i64 = 0;
        loop {
            if map.put(&(added as u32).to_be_bytes(), added) {
                added += 1;
            } else if map.room_at_most() > 0 {
                grow_fully(&mut map);
            } else {
                break;
            }
        }
        assert_eq!(added as usize, map.len());
        assert_eq!(map.len(), (16_384.0 * LOAD_FACTOR) as usize);
        assert!((0..added).all(|key| map.get(&(key as u32).to_be_bytes()) == Some(key)));
        assert!(map.put(&0u32.to_be_bytes(), 99_999));
        assert_eq!(map.get(&0u32.to_be_bytes()), Some(99_999));
        assert!(!map.put(b"new key", 5));
        assert_eq!(map.get(b"new key"), None);
    }
}
