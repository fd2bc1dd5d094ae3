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

    /// Folds the recent set into the sorted vector; says what the sorted keys gained.
    fn seal(&mut self) -> Option<Sealed> {
        if self.recent.is_empty() {
            return None;
        }
        let mut new: Vec<u64> = self.recent.drain().collect();
        new.sort_unstable();
        self.recent = IntSet::default();
        if self.sealed.is_empty() {
            new.shrink_to_fit();
            self.sealed = new;
            return Some(Sealed::All);
        }
        self.sealed = merge_sorted(&self.sealed, &new);
        Some(Sealed::New(new))
    }

    fn bytes(&self) -> usize {
        self.sealed.capacity() * 8 + self.recent.capacity() * 9
    }
}

/// What sealing a minute added to its sorted keys: all of them (it had none sorted yet), or
/// these new ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    All,
    New(Vec<u64>),
}

/// Seen `txn_id` hashes, one set per minute of event time.
#[derive(Debug, Default)]
pub struct DedupState {
    /// Minute → hashes of the `txn_id`s first seen with an `event_time` in that minute.
    minutes: BTreeMap<i64, MinuteKeys>,
    /// Total keys across minutes.
    keys: usize,
    /// The keys first recorded by the batch in progress, so a batch that fails before its
    /// commit can be taken back and retried against the state as it was (see
    /// [`DedupState::begin_batch`]).
    journal: Option<Vec<(i64, u64)>>,
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
        if fresh {
            if let Some(journal) = self.journal.as_mut() {
                journal.push((minute, key));
            }
        }
        fresh
    }

    /// Starts recording the keys a batch adds, until [`Self::end_batch`] or
    /// [`Self::undo_batch`]. Sealing and eviction wait for the batch's commit, so every key
    /// it adds is still in its minute's recent set when it is undone.
    pub fn begin_batch(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Keeps the batch's keys (it committed).
    pub fn end_batch(&mut self) {
        self.journal = None;
    }

    /// The keys the batch in progress added so far, as `(minute, key)`.
    pub fn batch_keys(&self) -> &[(i64, u64)] {
        self.journal.as_deref().unwrap_or_default()
    }

    /// Forgets the keys the batch added (it did not commit): the state is as before
    /// [`Self::begin_batch`].
    pub fn undo_batch(&mut self) {
        for (minute, key) in self.journal.take().unwrap_or_default() {
            if let Some(m) = self.minutes.get_mut(&minute) {
                if m.recent.remove(&key) {
                    self.keys -= 1;
                }
                if m.len() == 0 {
                    self.minutes.remove(&minute);
                }
            }
        }
    }

    /// Whether `key` was seen in `minute`.
    pub fn contains(&self, minute: i64, key: u64) -> bool {
        self.minutes.get(&minute).is_some_and(|m| m.contains(key))
    }

    /// Seals every minute before `minute` whose recent set is worth folding in (the first
    /// time, or once it holds more than 1/8 of the sealed keys): those minutes now get only
    /// the odd retry or late row. Returns what each sealed minute gained.
    pub fn seal_before(&mut self, minute: i64) -> Vec<(i64, Sealed)> {
        let mut gained = Vec::new();
        for (&m, keys) in self.minutes.range_mut(..minute) {
            if keys.recent.len() > keys.sealed.len() / 8 {
                gained.extend(keys.seal().map(|g| (m, g)));
            }
        }
        gained
    }

    /// Seals every minute before `minute` that has recent keys at all, and returns what each
    /// gained: afterwards every key of those minutes is in [`Self::sorted_keys`] (what a
    /// snapshot writes).
    pub fn seal_all_before(&mut self, minute: i64) -> Vec<(i64, Sealed)> {
        let mut gained = Vec::new();
        for (&m, keys) in self.minutes.range_mut(..minute) {
            gained.extend(keys.seal().map(|g| (m, g)));
        }
        gained
    }

    /// The minutes held before `minute`, with how many keys each has.
    pub fn minutes_before(&self, minute: i64) -> Vec<(i64, usize)> {
        self.minutes
            .range(..minute)
            .map(|(&m, keys)| (m, keys.len()))
            .collect()
    }

    /// Every key of `minute`, sorted, when they are all sealed (`None` otherwise).
    pub fn sorted_keys(&self, minute: i64) -> Option<&[u64]> {
        self.minutes
            .get(&minute)
            .filter(|keys| keys.recent.is_empty())
            .map(|keys| keys.sealed.as_slice())
    }

    /// Adds the keys of `minute` read from a snapshot (`keys` sorted, without repeats) to
    /// what the state holds of it.
    pub fn load_minute(&mut self, minute: i64, keys: Vec<u64>) {
        let m = self.minutes.entry(minute).or_default();
        let before = m.len();
        m.seal();
        m.sealed = if m.sealed.is_empty() {
            keys
        } else {
            let mut merged = merge_sorted(&m.sealed, &keys);
            merged.dedup();
            merged
        };
        self.keys = self.keys - before + m.len();
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

/// The sorted union of two sorted vectors.
fn merge_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
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
    fn an_undone_batch_leaves_the_state_as_it_was() {
        let mut s = DedupState::default();
        s.insert(5, 1);
        s.seal_before(6);
        s.insert(5, 2);
        s.begin_batch();
        assert!(s.insert(5, 3));
        assert!(!s.insert(5, 1), "a sealed key stays a duplicate");
        assert!(!s.insert(5, 2), "a recent key stays a duplicate");
        assert!(s.insert(7, 4));
        s.undo_batch();
        assert_eq!(s.keys(), 2);
        assert!(s.contains(5, 1) && s.contains(5, 2));
        assert!(!s.contains(5, 3) && !s.contains(7, 4));
        assert_eq!(s.minutes.len(), 1, "a minute only the batch opened is gone");
        // The retry sees its rows as first copies again, and then keeps them.
        s.begin_batch();
        assert!(s.insert(5, 3) && s.insert(7, 4));
        s.end_batch();
        s.undo_batch();
        assert_eq!(s.keys(), 4, "nothing to undo after the batch ended");
    }

    #[test]
    fn sealing_all_hands_out_each_new_key_once_and_loading_restores_them() {
        let mut s = DedupState::default();
        for k in [9, 3, 7] {
            s.insert(1, k);
        }
        s.insert(2, 5);
        s.insert(4, 1);
        let gained = s.seal_all_before(4);
        assert_eq!(gained, vec![(1, Sealed::All), (2, Sealed::All)]);
        assert_eq!(s.sorted_keys(1), Some(&[3, 7, 9][..]));
        assert_eq!(s.sorted_keys(4), None, "minute 4 is not sealed");
        s.insert(1, 4);
        assert_eq!(s.seal_all_before(4), vec![(1, Sealed::New(vec![4]))]);
        assert_eq!(s.sorted_keys(1), Some(&[3, 4, 7, 9][..]));
        assert_eq!(s.minutes_before(4), vec![(1, 4), (2, 1)]);

        let mut loaded = DedupState::default();
        loaded.insert(1, 8);
        loaded.load_minute(1, vec![3, 4, 7, 8, 9]);
        loaded.load_minute(2, vec![5]);
        assert_eq!(loaded.keys(), 6);
        assert!(!loaded.insert(1, 8) && !loaded.insert(2, 5) && loaded.insert(2, 6));
    }

    #[test]
    fn minutes_floor_negative_times() {
        assert_eq!(minute_of(-1), -1);
        assert_eq!(minute_of(MINUTE_US), 1);
    }
}
