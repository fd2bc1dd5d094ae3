//! The traffic model: partner volume, transaction ids, and one chunk's rows with their
//! retries, conflicts, stragglers, clock skew and replay.

use super::file_rows::FileRows;
use super::GenerateOptions;
use crate::error::{Result, TallyError};
use chrono::{NaiveDate, NaiveTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The replaying partner's outage (with `outage`): 10:00 to 14:00 of the replayed day.
const OUTAGE_START: i64 = 10 * 3_600_000_000;
const OUTAGE_END: i64 = 14 * 3_600_000_000;
const CURRENCIES: [&str; 8] = ["USD", "EUR", "GBP", "JPY", "BRL", "INR", "CAD", "AUD"];

/// Rates of the traffic model (fractions of transactions).
const RETRY_RATE: f64 = 0.03;
const CONFLICT_RATE: f64 = 0.0005;
const STRAGGLER_RATE: f64 = 0.005;
/// How far ahead the clock-skewed partner's clock runs.
const CLOCK_AHEAD_US: i64 = 180_000_000;
/// Ranks of the clock-skewed partner and of the partner whose retries re-stamp `event_time`.
const CLOCK_SKEWED_RANK: usize = 4;
const RESTAMPING_RANK: usize = 3;

/// Partner id of a rank (0 = the biggest).
pub fn partner_name(rank: u32) -> String {
    format!("partner-{:04}", rank + 1)
}

/// One unit of work: a chunk of one event day.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk {
    pub(super) day_index: u32,
    pub(super) day: NaiveDate,
    pub(super) chunk: u32,
    pub(super) chunks: u32,
    pub(super) txns: u64,
    pub(super) first_seq: u64,
}

/// A bijective 64-bit mixer (splitmix64's finaliser): distinct inputs give distinct ids.
pub(super) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A transaction id: `tx` and 16 hex digits, unique per (seed, day, sequence).
fn txn_id(seed: u64, day_index: u32, seq: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let key = ((day_index as u64) << 36 | seq) ^ mix64(seed);
    let _ = write!(out, "tx{:016x}", mix64(key));
}

/// Cumulative weights of partner volume: Zipf with exponent 1.8, or uniform.
pub(super) fn partner_cdf(partners: u32, skew_free: bool) -> Vec<f64> {
    let weights: Vec<f64> = (1..=partners)
        .map(|r| {
            if skew_free {
                1.0
            } else {
                1.0 / (r as f64).powf(1.8)
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

pub(super) struct ChunkOutput {
    /// (arrival day offset from the event day, file kind, rows)
    pub(super) files: Vec<(i64, &'static str, FileRows)>,
    pub(super) transactions: u64,
}

/// Generates one chunk's rows. Pure: same inputs, same rows.
pub(super) fn generate_chunk(
    opts: &GenerateOptions,
    c: Chunk,
    cdf: &[f64],
    replay: Option<(u32, i64)>,
) -> Result<ChunkOutput> {
    let model_error = |e: String| TallyError::Internal(format!("generator model: {e}"));
    let mut rng = ChaCha8Rng::seed_from_u64(mix64(
        opts.seed ^ mix64((c.day_index as u64) << 20 | c.chunk as u64),
    ));
    let day_start = c.day.and_time(NaiveTime::MIN).and_utc().timestamp_micros();
    let span = MICROS_PER_DAY / c.chunks as i64;
    let lo = day_start + span * c.chunk as i64;
    // Sorted event times: uniform over the chunk's span.
    let mut times: Vec<i64> = (0..c.txns)
        .map(|_| lo + rng.random_range(0..span))
        .collect();
    times.sort_unstable();

    let cap = c.txns as usize;
    let mut main = FileRows::new(cap + cap / 20);
    let mut late = FileRows::new(16);
    let mut early = FileRows::new(16);
    // The re-stamped retries, in files of their own so every other file stays sorted by
    // event_time.
    let mut restamped = FileRows::new(16);
    let mut restamped_late = FileRows::new(16);
    let mut replay_rows = FileRows::new(if replay.is_some() { cap / 4 } else { 0 });
    let latency = Exp::new(1.0 / 1.5).map_err(|e| model_error(e.to_string()))?;
    let amount_dist =
        LogNormal::new((4_000f64).ln(), 1.2).map_err(|e| model_error(e.to_string()))?;
    let next_day = day_start + MICROS_PER_DAY;
    let mut id = String::with_capacity(18);
    let partner_names: Vec<String> = (0..opts.partners).map(partner_name).collect();

    for (k, &event) in times.iter().enumerate() {
        let seq = c.first_seq + k as u64;
        txn_id(opts.seed, c.day_index, seq, &mut id);
        let u: f64 = rng.random();
        let p = cdf.partition_point(|&x| x < u).min(cdf.len() - 1);
        let partner = &partner_names[p];
        let cents = (amount_dist.sample(&mut rng) as i128).clamp(50, 50_000_000);
        let currency = if rng.random_bool(0.9) {
            CURRENCIES[p % CURRENCIES.len()]
        } else {
            CURRENCIES[rng.random_range(0..CURRENCIES.len())]
        };
        // Error rate 1–3%, by partner.
        let error_rate = 0.01 + 0.02 * ((p * 7919) % 100) as f64 / 100.0;
        let status = if rng.random_bool(error_rate) {
            if rng.random_bool(0.75) {
                "declined"
            } else {
                "error"
            }
        } else {
            "ok"
        };
        let delay = if rng.random_bool(STRAGGLER_RATE) {
            rng.random_range(60_000_000..1_800_000_000)
        } else {
            200_000 + (latency.sample(&mut rng) * 1_000_000.0) as i64
        };
        // The skewed partner stamps events by a clock running ahead of the lake's.
        let ingest = if p == CLOCK_SKEWED_RANK {
            event - CLOCK_AHEAD_US + delay
        } else {
            event + delay
        };
        // Files by arrival day (D − 1, D, D + 1); re-stamped copies (`ev` not the event's
        // time) in their own files, after those.
        let push = |files: &mut [&mut FileRows; 5], t: i64, ev: i64, cents: i128, status: &str| {
            let day = if t < day_start {
                0
            } else if t < next_day {
                1
            } else {
                2
            };
            let target = if ev == event { day } else { (day + 2).min(4) };
            files[target].push(&id, partner, ev, t, cents, currency, status);
        };
        let mut files = [
            &mut early,
            &mut main,
            &mut late,
            &mut restamped,
            &mut restamped_late,
        ];
        // The draws below happen whether or not the copies are delivered, so an outage changes
        // nothing else about the day.
        let in_outage = opts.outage
            && replay.is_some_and(|(rp, _)| rp as usize == p)
            && (OUTAGE_START..OUTAGE_END).contains(&(event - day_start));
        let deliver = !in_outage;
        if deliver {
            push(&mut files, ingest, event, cents, status);
        }
        if rng.random_bool(RETRY_RATE) {
            let copies = if rng.random_bool(0.2) { 2 } else { 1 };
            for i in 0..copies {
                let t = ingest + rng.random_range(1_000_000..300_000_000) * (i + 1);
                // The re-stamping partner's retry names its own send time.
                let ev = if p == RESTAMPING_RANK { t } else { event };
                if deliver {
                    push(&mut files, t, ev, cents, status);
                }
            }
        }
        if rng.random_bool(CONFLICT_RATE) {
            let t = ingest + rng.random_range(1_000_000..600_000_000);
            let flip = rng.random_bool(0.5);
            if deliver && flip {
                push(&mut files, t, event, cents + 100, status);
            } else if deliver {
                let flipped = if status == "ok" { "declined" } else { "ok" };
                push(&mut files, t, event, cents, flipped);
            }
        }
        if let Some((rp, arrival_offset)) = replay {
            if rp as usize == p {
                // The replay re-sends the day in event order over a few hours of the arrival day.
                let arrival = day_start + arrival_offset * MICROS_PER_DAY + 3_600_000_000;
                let t = arrival + (event - day_start) / 8;
                replay_rows.push(&id, partner, event, t, cents, currency, status);
            }
        }
    }
    let mut files = vec![
        (-1, "early", early),
        (0, "live", main),
        (1, "late", late),
        (0, "restamped", restamped),
        (1, "restamped-late", restamped_late),
    ];
    if let Some((_, offset)) = replay {
        files.push((offset, "replay", replay_rows));
    }
    files.retain(|(_, _, rows)| rows.rows > 0);
    Ok(ChunkOutput {
        files,
        transactions: c.txns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ids_are_unique_and_stable() {
        let mut a = String::new();
        let mut b = String::new();
        txn_id(1, 0, 5, &mut a);
        txn_id(1, 0, 5, &mut b);
        assert_eq!(a, b);
        txn_id(1, 1, 5, &mut b);
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
    }

    #[test]
    fn zipf_top_partner_carries_about_half() {
        let cdf = partner_cdf(300, false);
        assert!(cdf[0] > 0.4 && cdf[0] < 0.7, "{}", cdf[0]);
        let flat = partner_cdf(300, true);
        assert!((flat[0] - 1.0 / 300.0).abs() < 1e-9);
    }

    #[test]
    fn chunk_is_deterministic_and_sorted() {
        let opts = GenerateOptions::default();
        let c = Chunk {
            day_index: 0,
            day: opts.start,
            chunk: 0,
            chunks: 1,
            txns: 2_000,
            first_seq: 0,
        };
        let cdf = partner_cdf(opts.partners, false);
        let a = generate_chunk(&opts, c, &cdf, None)
            .unwrap()
            .files
            .into_iter()
            .find(|f| f.1 == "live")
            .unwrap()
            .2
            .finish()
            .unwrap();
        let b = generate_chunk(&opts, c, &cdf, None)
            .unwrap()
            .files
            .into_iter()
            .find(|f| f.1 == "live")
            .unwrap()
            .2
            .finish()
            .unwrap();
        assert_eq!(a, b);
        let times = a
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert!(times.values().windows(2).all(|w| w[0] <= w[1]));
        assert!(a.num_rows() >= 2_000);
    }
}
