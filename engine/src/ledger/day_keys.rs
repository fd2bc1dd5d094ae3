//! The day's transaction keys as an exact, cache-friendly set.
//!
//! The neighbour lookup tests tens of millions of keys (every copy naming a neighbouring day)
//! against the day's ten million. Keys are XXH3 hashes, so their top bits are uniform: the set
//! is a counting sort on the top [`BUCKET_BITS`] bits (an offsets table of 256 KiB, which stays
//! in cache) with each bucket's keys sorted, about 150 to a bucket. A probe is one offsets read
//! and a binary search in one small bucket; probes in ascending order (a key index segment is
//! sorted) walk the buckets front to back, so memory is read in order instead of at random as
//! a Bloom filter of the same keys would be. And the answer is exact: no false positives to
//! read back and drop.

use std::thread;

/// Bits of a key that choose its bucket.
const BUCKET_BITS: u32 = 16;

/// A set of keys, ordered as unsigned 64-bit numbers (see [`order`]).
#[derive(Debug, Default)]
pub struct DayKeys {
    /// `offsets[b]..offsets[b + 1]` are bucket `b`'s keys in `keys`.
    offsets: Vec<u32>,
    /// All keys, by bucket, each bucket sorted.
    keys: Vec<u64>,
}

/// The order the set and the key indexes sort keys in: as unsigned numbers, so the bucket
/// (the top bits) rises with the key.
pub fn order(key: i64) -> u64 {
    key as u64
}

fn bucket(k: u64) -> usize {
    (k >> (64 - BUCKET_BITS)) as usize
}

impl DayKeys {
    /// The set of every key in `parts` (slices of keys, as the day's partitions hold them).
    pub fn new(parts: &[Vec<&[i64]>]) -> Self {
        let slices = || parts.iter().flatten();
        let buckets = 1usize << BUCKET_BITS;
        let mut offsets = vec![0u32; buckets + 1];
        for s in slices() {
            for k in s.iter() {
                offsets[bucket(order(*k)) + 1] += 1;
            }
        }
        for b in 0..buckets {
            offsets[b + 1] += offsets[b];
        }
        let mut keys = vec![0u64; offsets[buckets] as usize];
        let mut next: Vec<u32> = offsets[..buckets].to_vec();
        for s in slices() {
            for k in s.iter() {
                let k = order(*k);
                let b = bucket(k);
                keys[next[b] as usize] = k;
                next[b] += 1;
            }
        }
        // Each bucket sorted; the buckets split evenly between the cores (keys are uniform).
        let threads = thread::available_parallelism().map_or(1, |n| n.get());
        let bounds: Vec<usize> = (0..=threads).map(|t| t * buckets / threads).collect();
        thread::scope(|scope| {
            let mut rest: &mut [u64] = &mut keys;
            for w in bounds.windows(2) {
                let (first, end) = (w[0], w[1]);
                let base = offsets[first] as usize;
                let (chunk, tail) = rest.split_at_mut(offsets[end] as usize - base);
                rest = tail;
                let offsets = &offsets;
                scope.spawn(move || {
                    for b in first..end {
                        let (lo, hi) = (offsets[b] as usize - base, offsets[b + 1] as usize - base);
                        chunk[lo..hi].sort_unstable();
                    }
                });
            }
        });
        Self { offsets, keys }
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether `key` is one of the day's.
    pub fn contains(&self, key: i64) -> bool {
        let k = order(key);
        let b = bucket(k);
        match (self.offsets.get(b), self.offsets.get(b + 1)) {
            (Some(lo), Some(hi)) => self.keys[*lo as usize..*hi as usize]
                .binary_search(&k)
                .is_ok(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn holds_exactly_the_keys_given_across_buckets_signs_and_duplicates() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as i64
        };
        let a: Vec<i64> = (0..50_000).map(|_| next()).collect();
        let mut b: Vec<i64> = (0..30_000).map(|_| next()).collect();
        b.extend([i64::MIN, i64::MAX, 0, -1, a[7]]);
        let day = DayKeys::new(&[vec![&a[..10_000], &a[10_000..]], vec![&b[..]]]);
        let want: HashSet<i64> = a.iter().chain(&b).copied().collect();
        assert_eq!(day.len(), a.len() + b.len());
        for k in &want {
            assert!(day.contains(*k), "{k}");
        }
        let mut misses = 0;
        for _ in 0..100_000 {
            let k = next();
            assert_eq!(day.contains(k), want.contains(&k));
            misses += usize::from(!want.contains(&k));
        }
        assert!(misses > 99_000);
    }

    #[test]
    fn an_empty_day_holds_nothing() {
        let day = DayKeys::new(&[]);
        assert!(day.len() == 0 && !day.contains(0) && !day.contains(-5));
    }
}
