//! The live mode's dedup state: which `txn_id`s were seen, bounded by a TTL in event time.
//!
//! Retries carry the original `event_time`, so a copy can only ever collide with copies in the
//! same minute of event time. The state is therefore a set of 64-bit key hashes per minute: a
//! lookup touches one minute's set, and eviction drops whole minutes once they fall behind
//! `watermark - ttl`. The current minute is a hash set (~10–18 bytes per key); older minutes
//! are sealed into sorted vectors (8 bytes per key, binary search for the few retries that
//! reach them). At 200,000 events/s a 10-minute TTL holds ~120M keys: about 1 GB sealed plus
//! one minute of hash set.
//!
//! False positives: two different `txn_id`s of the same minute whose xxh3-64 hashes collide;
//! with `k` keys in a minute the chance that a new id is wrongly dropped is `k / 2^64`
//! (~7e-13 at 12M keys per minute). The live view is approximate by contract; the ledger is
//! the exact path.

use nohash_hasher::IntSet;
use std::collections::BTreeMap;

/// Microseconds per minute.
pub const MINUTE_US: i64 = 60_000_000;

/// The minute (since the epoch) an event-time in microseconds falls in.
pub fn minute_of(event_us: i64) -> i64 {
    event_us.div_euclid(MINUTE_US)
}

/// The 64-bit dedup key of a `txn_id`: xxh3-64, the same hash family as `txn_bucket`.
pub fn key_of(txn_id: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(txn_id)
}

/// The keys of one minute: a hash set while the minute still receives most of its rows, then
/// a sorted vector (8 bytes per key instead of ~18) once it is sealed; copies arriving for a
/// sealed minute (retries, late rows) go to a small set beside it.
#[derive(Debug, Default)]
struct MinuteKeys {
    sealed: Vec<u64>,
    recent: IntSet<u64>,
}

impl MinuteKeys {
    fn contains(&self, key: u64) -> bool {
        self.recent.contains(&key) || self.sealed.binary_search(&key).is_ok()
    }

    fn len(&self) -> usize {
        self.sealed.len() + self.recent.len()
    }

    /// Folds the recent set into the sorted vector.
    fn seal(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        self.sealed.extend(self.recent.drain());
        self.sealed.sort_unstable();
        self.sealed.shrink_to_fit();
        self.recent = IntSet::default();
    }

    fn bytes(&self) -> usize {
        self.sealed.capacity() * 8 + self.recent.capacity() * 9
    }
}

/// Seen `txn_id` hashes, one set per minute of event time.
#[derive(Debug, Default)]
pub struct DedupState {
    /// Minute → hashes of the `txn_id`s first seen with an `event_time` in that minute.
    minutes: BTreeMap<i64, MinuteKeys>,
    /// Total keys across minutes.
    keys: usize,
}

impl DedupState {
    /// Records `key` in `minute`; `true` if it was not there yet (the row is a first copy).
    pub fn insert(&mut self, minute: i64, key: u64) -> bool {
        let m = self.minutes.entry(minute).or_default();
        if !m.sealed.is_empty() && m.sealed.binary_search(&key).is_ok() {
            return false;
        }
        let fresh = m.recent.insert(key);
        self.keys += usize::from(fresh);
        fresh
    }

    /// Whether `key` was seen in `minute`.
    pub fn contains(&self, minute: i64, key: u64) -> bool {
        self.minutes.get(&minute).is_some_and(|m| m.contains(key))
    }

    /// Seals every minute before `minute` whose recent set is worth folding in (the first
    /// time, or once it holds more than 1/8 of the sealed keys): those minutes now get only
    /// the odd retry or late row.
    pub fn seal_before(&mut self, minute: i64) {
        for m in self.minutes.range_mut(..minute).map(|(_, m)| m) {
            if m.recent.len() > m.sealed.len() / 8 {
                m.seal();
            }
        }
    }

    /// Forgets every minute before `minute`; returns the keys dropped.
    pub fn evict_before(&mut self, minute: i64) -> usize {
        let kept = self.minutes.split_off(&minute);
        let dropped: usize = self.minutes.values().map(MinuteKeys::len).sum();
        self.minutes = kept;
        self.keys -= dropped;
        dropped
    }

    /// Keys remembered.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Approximate heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.minutes.values().map(MinuteKeys::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copy_in_the_same_minute_is_not_fresh() {
        let mut s = DedupState::default();
        let k = key_of(b"t-1");
        assert!(s.insert(10, k));
        assert!(!s.insert(10, k));
        assert!(s.insert(11, key_of(b"t-2")));
        assert_eq!(s.keys(), 2);
    }

    #[test]
    fn eviction_drops_whole_minutes_before_the_cutoff() {
        let mut s = DedupState::default();
        s.insert(1, 1);
        s.insert(2, 2);
        s.insert(3, 3);
        assert_eq!(s.evict_before(3), 2);
        assert_eq!(s.keys(), 1);
        assert!(s.insert(2, 2), "an evicted key is fresh again");
    }

    #[test]
    fn sealed_minutes_still_find_their_keys_and_take_new_ones() {
        let mut s = DedupState::default();
        for k in 0..100u64 {
            assert!(s.insert(5, k * 7));
        }
        s.seal_before(6);
        assert!(s.contains(5, 21));
        assert!(!s.insert(5, 21), "a sealed key is a duplicate");
        assert!(s.insert(5, 22), "a new key after sealing");
        assert!(!s.insert(5, 22));
        assert_eq!(s.keys(), 101);
        s.seal_before(6);
        assert!(s.contains(5, 22) && s.contains(5, 0));
    }

    #[test]
    fn minutes_floor_negative_times() {
        assert_eq!(minute_of(-1), -1);
        assert_eq!(minute_of(MINUTE_US), 1);
    }
}
