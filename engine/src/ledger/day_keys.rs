//! The day's transaction keys as an exact, cache-friendly set.
//!
//! The neighbour lookup tests tens of millions of keys (every copy naming a neighbouring day)
//! against the day's ten million. Keys are XXH3 hashes, so their top bits are uniform: the set
//! is a counting sort on the top bits (as many bits as give buckets of about
//! [`KEYS_PER_BUCKET`] keys) with each bucket's keys sorted. A probe reads one offset and scans
//! one short bucket; probes in ascending order (a key index segment is sorted) walk offsets and
//! buckets front to back, so memory is read in order, not at random as a Bloom filter of the
//! same keys would be, and without a binary search's mispredicted branches. The answer is
//! exact: no false positives to read back and drop.

use std::thread;

/// Keys per fine bucket the set aims at: a probe scans its bucket.
const KEYS_PER_BUCKET: usize = 4;

/// Slots a probe compares at once: most buckets hold fewer keys.
const WINDOW: usize = 8;

/// Bits of the counting sort's buckets (2048 of them: the scatter's write positions stay in
/// cache).
const COARSE_BITS: u32 = 11;

/// A set of keys, ordered as unsigned 64-bit numbers (see [`order`]).
#[derive(Debug, Default)]
pub struct DayKeys {
    /// `offsets[b]..offsets[b + 1]` are bucket `b`'s keys in `keys`.
    offsets: Vec<u32>,
    /// All keys, sorted, then [`WINDOW`] slots of padding.
    keys: Vec<u64>,
    /// Keys in `keys` (before the padding).
    count: usize,
    /// Bits of a key that choose its bucket (its top bits).
    bits: u32,
}

/// The order the set and the key indexes sort keys in: as unsigned numbers, so the bucket
/// (the top bits) rises with the key.
pub fn order(key: i64) -> u64 {
    key as u64
}

fn bucket(k: u64, bits: u32) -> usize {
    (k >> (64 - bits)) as usize
}

impl DayKeys {
    /// The set of every key in `parts` (slices of keys, as the day's partitions hold them).
    pub fn new(parts: &[Vec<&[i64]>]) -> Self {
        let slices = || parts.iter().flatten();
        let count: usize = slices().map(|s| s.len()).sum();
        // 1. A counting sort on the top COARSE_BITS bits: few enough buckets that the scatter
        //    writes stay in cache.
        let coarse = 1usize << COARSE_BITS;
        let mut starts = vec![0usize; coarse + 1];
        for s in slices() {
            for k in s.iter() {
                starts[bucket(order(*k), COARSE_BITS) + 1] += 1;
            }
        }
        for b in 0..coarse {
            starts[b + 1] += starts[b];
        }
        let mut keys = vec![0u64; count + WINDOW];
        let mut next: Vec<usize> = starts[..coarse].to_vec();
        for s in slices() {
            for k in s.iter() {
                let k = order(*k);
                let b = bucket(k, COARSE_BITS);
                keys[next[b]] = k;
                next[b] += 1;
            }
        }
        // 2. Each coarse bucket sorted (a few thousand keys, in cache), split between the
        //    cores: the whole array is then sorted.
        let threads = thread::available_parallelism().map_or(1, |n| n.get());
        let bounds: Vec<usize> = (0..=threads).map(|t| t * coarse / threads).collect();
        thread::scope(|scope| {
            let mut rest: &mut [u64] = &mut keys[..count];
            for w in bounds.windows(2) {
                let (first, end) = (w[0], w[1]);
                let base = starts[first];
                let (chunk, tail) = rest.split_at_mut(starts[end] - base);
                rest = tail;
                let starts = &starts;
                scope.spawn(move || {
                    for b in first..end {
                        chunk[starts[b] - base..starts[b + 1] - base].sort_unstable();
                    }
                });
            }
        });
        // 3. The fine directory: where each fine bucket starts, in one pass over the sorted
        //    keys. The padding after the last key is never a key's match (see `contains`).
        let bits = (count / KEYS_PER_BUCKET)
            .max(1)
            .ilog2()
            .clamp(COARSE_BITS, 28)
            + 1;
        let buckets = 1usize << bits;
        let mut offsets = vec![0u32; buckets + 1];
        for k in &keys[..count] {
            offsets[bucket(*k, bits) + 1] += 1;
        }
        for b in 0..buckets {
            offsets[b + 1] += offsets[b];
        }
        Self {
            offsets,
            keys,
            count,
            bits,
        }
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether `key` is one of the day's.
    pub fn contains(&self, key: i64) -> bool {
        let k = order(key);
        let b = bucket(k, self.bits);
        let (Some(lo), Some(hi)) = (self.offsets.get(b), self.offsets.get(b + 1)) else {
            return false;
        };
        let (lo, hi) = (*lo as usize, *hi as usize);
        if hi - lo <= WINDOW {
            // The usual bucket: a fixed window compared without branching (slots past the
            // bucket are masked out), so probes do not stall on mispredicted loop exits.
            let window = &self.keys[lo..lo + WINDOW];
            let hits = window.iter().enumerate().fold(0usize, |n, (i, x)| {
                n | usize::from((*x == k) & (lo + i < hi))
            });
            hits != 0
        } else {
            self.keys[lo..hi].contains(&k)
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
