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

    /// The smallest and largest key, in [`order`] (`None` when empty): a day split into passes
    /// holds one range of keys at a time, and index segments are trimmed to it.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let keys = self.keys.get(..self.count)?;
        Some((*keys.first()?, *keys.last()?))
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

    /// For each of `segments` (keys sorted as [`order`] sorts them), the positions of its keys
    /// that are in the set, ascending.
    ///
    /// Probed partition-major: the set's coarse buckets one after the other (split between
    /// the cores), and in each, every segment's run of keys that fall in it. The set's part in
    /// use (a few thousand keys and their directory) then stays in cache while all segments
    /// probe it, and each segment is read front to back once: probing segment by segment would
    /// sweep the whole set once per segment and miss the cache on nearly every key.
    ///
    /// A panicking worker (a bug) loses its part of the answer, so it panics here too.
    pub fn positions_in(&self, segments: &[&[i64]]) -> Vec<Vec<u32>> {
        let coarse = 1usize << COARSE_BITS;
        let threads = thread::available_parallelism().map_or(1, |n| n.get());
        let bounds: Vec<usize> = (0..=threads).map(|t| t * coarse / threads).collect();
        let coarse_of = |k: i64| bucket(order(k), COARSE_BITS);
        let found: Vec<Vec<(u32, u32)>> = thread::scope(|scope| {
            let handles: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let (first, end) = (w[0], w[1]);
                    scope.spawn(move || {
                        let mut cursors: Vec<usize> = segments
                            .iter()
                            .map(|s| s.partition_point(|k| coarse_of(*k) < first))
                            .collect();
                        let mut out = Vec::new();
                        for p in first..end {
                            for (i, s) in segments.iter().enumerate() {
                                let mut c = cursors[i];
                                while c < s.len() && coarse_of(s[c]) == p {
                                    if self.contains(s[c]) {
                                        out.push((i as u32, c as u32));
                                    }
                                    c += 1;
                                }
                                cursors[i] = c;
                            }
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut out = vec![Vec::new(); segments.len()];
        for (segment, position) in found.into_iter().flatten() {
            out[segment as usize].push(position);
        }
        for o in &mut out {
            o.sort_unstable();
        }
        out
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
        assert_eq!(day.bounds(), Some((0, u64::MAX)));
        assert_eq!(
            DayKeys::new(&[vec![&[5, -2, 9][..]]]).bounds(),
            Some((5, (-2i64) as u64))
        );
        assert_eq!(DayKeys::new(&[]).bounds(), None);
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
    fn ordered_probes_find_exactly_the_keys_in_the_set() {
        let day_keys: Vec<i64> = (0..40_000i64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15u64 as i64))
            .collect();
        let day = DayKeys::new(&[vec![&day_keys[..]]]);
        let mut segments: Vec<Vec<i64>> = (0..5i64)
            .map(|s| {
                (0..9_000i64)
                    .map(|i| (i * 5 + s).wrapping_mul(0x9e37_79b9_7f4a_7c15u64 as i64) ^ (s % 2))
                    .collect()
            })
            .collect();
        for s in &mut segments {
            s.sort_unstable_by_key(|k| order(*k));
        }
        let views: Vec<&[i64]> = segments.iter().map(|s| &s[..]).collect();
        let got = day.positions_in(&views);
        for (s, positions) in segments.iter().zip(&got) {
            let want: Vec<u32> = (0..s.len() as u32)
                .filter(|i| day_keys.contains(&s[*i as usize]))
                .collect();
            assert_eq!(positions, &want);
        }
        assert!(got.iter().any(|p| !p.is_empty()) && got.iter().any(|p| p.len() < 9_000));
    }

    #[test]
    fn an_empty_day_holds_nothing() {
        let day = DayKeys::new(&[]);
        assert!(day.len() == 0 && !day.contains(0) && !day.contains(-5));
    }
}
