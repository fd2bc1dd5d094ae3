//! `tally generate`: a realistic, deterministic raw lake for demos, tests and benchmarks.
//!
//! What it models, because every job downstream is tested against it:
//! - a few hundred partners with Zipf-skewed volume (the top partner carries about half), or
//!   uniform partners with `skew_free`;
//! - arrival latency of a second or two, with a tail of stragglers up to 30 minutes, so events
//!   near midnight land in the next day's `ingest_date` partition;
//! - webhook retries: the same transaction again, seconds to minutes later, same payload;
//! - conflicting copies: a retry whose amount or status differs (a partner bug finance must see);
//! - one whole-partner replay of one day, landing one or two days later;
//! - a partner whose clock runs three minutes fast: its events of D's first minutes arrive
//!   (by the lake's clock) on D − 1, in the evening's `ingest_date` partition;
//! - a partner whose retries carry the retry's time as `event_time`: a retry across midnight
//!   names the next day, so one transaction has copies on two days;
//! - 1–3% error statuses, varying by partner.
//!
//! Each event day is cut into chunks of event time; a chunk's rows come from its own RNG seeded
//! by (seed, day, chunk), so the output is identical for a seed however many threads write it.
//! Rows in a file are sorted by `event_time`, so row-group statistics prune time ranges.

mod file_rows;
mod model;

pub use model::partner_name;

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::progress::Progress;
use chrono::{Days, NaiveDate};
use file_rows::encode_parquet;
use futures::{StreamExt, TryStreamExt};
use model::{generate_chunk, mix64, partner_cdf, Chunk};
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// First event day.
    pub start: NaiveDate,
    /// Number of event days.
    pub days: u32,
    /// Distinct transactions per event day (raw rows are a few percent more).
    pub events_per_day: u64,
    /// RNG seed: the same seed gives byte-identical rows.
    pub seed: u64,
    /// Uniform partner volume instead of Zipf skew.
    pub skew_free: bool,
    /// Number of partners.
    pub partners: u32,
    /// Transactions per chunk (one file per chunk and arrival day).
    pub rows_per_file: u64,
    /// The replaying partner had an outage: its events of 10:00–14:00 on the replayed day are
    /// delivered only by the late replay (the live view misses them; the ledger re-run gets
    /// them). Without it the replay only re-sends copies already delivered.
    pub outage: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default(),
            days: 1,
            events_per_day: 100_000,
            seed: 42,
            skew_free: false,
            partners: 300,
            rows_per_file: 500_000,
            outage: false,
        }
    }
}

/// What a generate run wrote.
#[derive(Debug, Clone, Default)]
pub struct GenerateMetrics {
    /// Parquet files written.
    pub files: u64,
    /// Raw rows written (transactions plus retries, conflicts and replays).
    pub rows: u64,
    /// Distinct transactions.
    pub transactions: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The partner whose day was replayed, the event day and the arrival day of the replay.
    pub replay: Option<(String, NaiveDate, NaiveDate)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Writes the raw lake. Existing files with the same names (same seed and days) are replaced.
pub async fn generate(
    lake: &Lake,
    opts: &GenerateOptions,
    progress: &dyn Progress,
) -> Result<GenerateMetrics> {
    if opts.days == 0 || opts.events_per_day == 0 {
        return Err(TallyError::InvalidArgument {
            what: "generate size".into(),
            message: "--days and --events-per-day must be at least 1".into(),
        });
    }
    if opts.partners == 0 {
        return Err(TallyError::InvalidArgument {
            what: "partners".into(),
            message: "need at least one partner".into(),
        });
    }
    let started = Instant::now();
    let cdf = Arc::new(partner_cdf(opts.partners, opts.skew_free));
    let per_chunk = opts
        .rows_per_file
        .min(opts.events_per_day.div_ceil(4).max(10_000))
        .max(1);
    let chunks_per_day = opts.events_per_day.div_ceil(per_chunk) as u32;
    // One replay: the third-largest partner re-sends the middle day 1 or 2 days later.
    let replay_day = opts.days / 2;
    let replay_partner = 2.min(opts.partners - 1);
    let replay_offset = 1 + (mix64(opts.seed) % 2) as i64;

    let mut work = Vec::new();
    for d in 0..opts.days {
        let day = opts
            .start
            .checked_add_days(Days::new(d as u64))
            .ok_or_else(|| TallyError::InvalidArgument {
                what: "date range".into(),
                message: format!("{} + {d} days is out of range", opts.start),
            })?;
        let mut seq = 0;
        for chunk in 0..chunks_per_day {
            let txns = per_chunk.min(opts.events_per_day - seq);
            work.push(Chunk {
                day_index: d,
                day,
                chunk,
                chunks: chunks_per_day,
                txns,
                first_seq: seq,
            });
            seq += txns;
        }
    }
    progress.set_total("transactions", opts.days as u64 * opts.events_per_day);

    let root = lake.path_of(layout::RAW_PAYMENTS)?;
    let store = lake.store();
    if lake.is_local() {
        let dir = lake
            .root()
            .to_file_path()
            .map_err(|_| TallyError::Internal("local lake without a path".into()))?;
        std::fs::create_dir_all(dir.join(layout::RAW_PAYMENTS))?;
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let results: Vec<(u64, u64, u64, u64)> = futures::stream::iter(work)
        .map(|c| {
            let opts = opts.clone();
            let cdf = Arc::clone(&cdf);
            let store = Arc::clone(&store);
            let root = root.clone();
            async move {
                let replay = (c.day_index == replay_day).then_some((replay_partner, replay_offset));
                let encoded = tokio::task::spawn_blocking(move || -> Result<_> {
                    let out = generate_chunk(&opts, c, &cdf, replay)?;
                    let mut files = Vec::new();
                    for (offset, kind, rows) in out.files {
                        let n = rows.rows as u64;
                        let bytes = encode_parquet(&rows.finish()?)?;
                        let arrival = if offset >= 0 {
                            c.day.checked_add_days(Days::new(offset as u64))
                        } else {
                            c.day.checked_sub_days(Days::new(offset.unsigned_abs()))
                        }
                        .unwrap_or(c.day);
                        let name = format!(
                            "ingest_date={arrival}/part-s{}-e{}-{kind}-{:04}.parquet",
                            opts.seed,
                            c.day.format("%Y%m%d"),
                            c.chunk
                        );
                        files.push((name, bytes, n));
                    }
                    Ok((files, out.transactions))
                })
                .await
                .map_err(|e| TallyError::Internal(format!("generator task failed: {e}")))??;
                let (files, txns) = encoded;
                let (mut nfiles, mut nrows, mut nbytes) = (0, 0, 0);
                for (name, bytes, n) in files {
                    let path = StorePath::from(format!("{root}/{name}"));
                    nbytes += bytes.len() as u64;
                    store.put(&path, PutPayload::from(bytes)).await?;
                    nfiles += 1;
                    nrows += n;
                }
                Ok::<_, TallyError>((nfiles, nrows, nbytes, txns))
            }
        })
        .buffer_unordered(workers)
        .inspect_ok(|(_, _, _, txns)| progress.advance(*txns))
        .try_collect()
        .await?;

    let mut m = GenerateMetrics::default();
    for (f, r, b, t) in results {
        m.files += f;
        m.rows += r;
        m.bytes += b;
        m.transactions += t;
    }
    let replay_date = opts
        .start
        .checked_add_days(Days::new(replay_day as u64))
        .unwrap_or(opts.start);
    m.replay = Some((
        partner_name(replay_partner),
        replay_date,
        replay_date
            .checked_add_days(Days::new(replay_offset as u64))
            .unwrap_or(replay_date),
    ));
    m.elapsed = started.elapsed();
    Ok(m)
}
