//! Compaction's map from each key to the offset of its latest record, in a fixed amount
//! of memory (Kafka's `SkimpyOffsetMap`): keys are not stored, only a 128-bit hash of
//! each, so the map's size does not depend on key sizes. Two keys whose hashes collide
//! would share an entry; at 128 bits that is not expected to happen in the life of the
//! universe's disks.

/// Bytes one entry takes: a 128-bit key hash and an offset.
pub(crate) const ENTRY_BYTES: u64 = 24;
/// The share of slots that may be used: open addressing slows down as it fills.
const LOAD_FACTOR: f64 = 0.9;

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: [u64; 2],
    /// -1 when the slot is empty.
    offset: i64,
}

const EMPTY: Slot = Slot {
    hash: [0, 0],
    offset: -1,
};

#[derive(Debug)]
pub(crate) struct OffsetMap {
    slots: Vec<Slot>,
    len: usize,
    limit: usize,
    hashers: [ahash::RandomState; 2],
}

impl OffsetMap {
    /// A map in at most `memory_bytes`, smaller when `entries_wanted` needs less.
    pub fn new(memory_bytes: u64, entries_wanted: usize) -> OffsetMap {
        let most = (memory_bytes / ENTRY_BYTES).max(16) as usize;
        let wanted = ((entries_wanted as f64 / LOAD_FACTOR) as usize).max(16);
        let slots = most.min(wanted);
        OffsetMap {
            slots: vec![EMPTY; slots],
            len: 0,
            limit: ((slots as f64 * LOAD_FACTOR) as usize).max(1),
            // Fixed seeds: the map lives for one compaction run, and a fixed hash keeps
            // runs reproducible.
            hashers: [
                ahash::RandomState::with_seeds(1, 2, 3, 4),
                ahash::RandomState::with_seeds(5, 6, 7, 8),
            ],
        }
    }

    /// Keys that can still be added.
    pub fn room(&self) -> usize {
        self.limit - self.len
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn hash(&self, key: &[u8]) -> [u64; 2] {
        [self.hashers[0].hash_one(key), self.hashers[1].hash_one(key)]
    }

    fn slot_of(&self, hash: [u64; 2]) -> usize {
        let mut at = (hash[0] % self.slots.len() as u64) as usize;
        loop {
            let slot = &self.slots[at];
            if slot.offset < 0 || slot.hash == hash {
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
        let slot = &mut self.slots[at];
        if slot.offset < 0 {
            if self.len >= self.limit {
                return false;
            }
            self.len += 1;
            *slot = Slot { hash, offset };
        } else {
            slot.offset = slot.offset.max(offset);
        }
        true
    }

    /// The latest offset recorded for `key`.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        let slot = &self.slots[self.slot_of(self.hash(key))];
        (slot.offset >= 0).then_some(slot.offset)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use quickcheck::quickcheck;

    quickcheck! {
        /// With room for every key, the map agrees with a HashMap of latest offsets.
        fn agrees_with_a_model(puts: Vec<(u8, u16)>) -> bool {
            let mut map = OffsetMap::new(1 << 20, 256);
            let mut model = HashMap::new();
            for (key, offset) in &puts {
                assert!(map.put(&[*key], i64::from(*offset)));
                let latest = model.entry(*key).or_insert(i64::from(*offset));
                *latest = (*latest).max(i64::from(*offset));
            }
            map.len() == model.len()
                && (0..=255u8).all(|key| map.get(&[key]) == model.get(&key).copied())
        }
    }

    #[test]
    fn a_full_map_refuses_new_keys_but_updates_known_ones() {
        let mut map = OffsetMap::new(16 * ENTRY_BYTES, 1000);
        let mut added = 0;
        while map.put(&(added as u32).to_be_bytes(), added) {
            added += 1;
        }
        assert_eq!(added as usize, map.len());
        assert_eq!(map.room(), 0);
        assert!(map.put(&0u32.to_be_bytes(), 99));
        assert_eq!(map.get(&0u32.to_be_bytes()), Some(99));
        assert!(!map.put(b"new key", 5));
        assert_eq!(map.get(b"new key"), None);
    }
}
