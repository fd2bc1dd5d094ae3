//! Finding raw files the live mode has not processed, without re-listing years of history.
//!
//! Each tick lists only the *open* `ingest_date` partitions: from one day before the newest
//! partition processed (stragglers still land in yesterday's directory) onwards, plus the next
//! day's directory by name, so a new day is picked up on the first tick it exists. The lake's
//! partition directories are re-listed at start and every [`RESCAN_TICKS`] ticks to notice
//! anything else. On the very first start, partitions from `start_lookback_days` before the
//! newest one are followed (the view keeps 48 h anyway); that start is kept in the checkpoint.
//!
//! A listed file is new unless a retained batch read it, or its last-modified time is older
//! than `file_window` behind the newest processed file (then it was processed by a batch the
//! checkpoint no longer retains). This is Spark's `maxFileAge` rule: a file written with an
//! mtime far in the past (e.g. copied preserving times) is not picked up.

use super::checkpoint::{Checkpoint, FileRecord};
use crate::error::Result;
use crate::lake::{layout, Lake};
use crate::raw_files::list_parquet;
use chrono::{Days, NaiveDate};
use object_store::ObjectMeta;

/// Ticks between re-listings of the partition directories.
pub const RESCAN_TICKS: u64 = 30;

/// A new raw file, with the partition it is in.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Its `ingest_date` partition.
    pub partition: NaiveDate,
    /// Listing metadata.
    pub meta: ObjectMeta,
    /// The record the checkpoint will hold.
    pub record: FileRecord,
}

/// Lists open partitions and returns unseen files.
#[derive(Debug)]
pub struct Discovery {
    lake: Lake,
    /// Known partitions, sorted.
    partitions: Vec<NaiveDate>,
    ticks: u64,
    start_lookback_days: u64,
    /// How far behind the newest processed file an unseen file's mtime may be.
    file_window_ms: i64,
}

impl Discovery {
    /// Discovery over `lake`'s raw payments.
    pub async fn new(lake: &Lake, start_lookback_days: u64, file_window_ms: i64) -> Result<Self> {
        let mut d = Self {
            lake: lake.clone(),
            partitions: Vec::new(),
            ticks: 0,
            start_lookback_days,
            file_window_ms,
        };
        d.rescan().await?;
        Ok(d)
    }

    async fn rescan(&mut self) -> Result<()> {
        let dirs = self.lake.list_dirs(layout::RAW_PAYMENTS).await?;
        let mut parts: Vec<NaiveDate> = dirs
            .iter()
            .filter_map(|d| d.strip_prefix("ingest_date="))
            .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .collect();
        parts.sort();
        self.partitions = parts;
        Ok(())
    }

    /// The oldest partition to follow on a first start: `start_lookback_days` before the newest.
    pub fn start_partition(&self) -> Option<NaiveDate> {
        self.partitions
            .last()
            .and_then(|n| n.checked_sub_days(Days::new(self.start_lookback_days)))
    }

    /// The partitions to list this tick.
    fn open_partitions(&self, cp: &Checkpoint) -> Vec<NaiveDate> {
        let parse = |p: &Option<String>| {
            p.as_deref()
                .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
        };
        let processed = parse(&cp.newest_partition);
        let start = parse(&cp.start_partition).or_else(|| self.start_partition());
        let from = processed
            .and_then(|p| p.checked_sub_days(Days::new(1)))
            .max(start);
        let mut open: Vec<NaiveDate> = self
            .partitions
            .iter()
            .copied()
            .filter(|p| from.is_none_or(|f| *p >= f))
            .collect();
        // The next day by name, in case it appeared since the last rescan.
        if let Some(next) = open
            .last()
            .copied()
            .or(processed)
            .and_then(|d| d.checked_add_days(Days::new(1)))
        {
            if !open.contains(&next) {
                open.push(next);
            }
        }
        open
    }

    /// Unseen files of the open partitions, in (partition, path) order, at most `limit`.
    pub async fn new_files(&mut self, cp: &Checkpoint, limit: usize) -> Result<Vec<NewFile>> {
        self.ticks += 1;
        if self.ticks.is_multiple_of(RESCAN_TICKS) {
            self.rescan().await?;
        }
        let oldest_ok = cp
            .newest_mtime_ms
            .map(|m| m - self.file_window_ms)
            .unwrap_or(i64::MIN);
        let seen = cp.seen_paths();
        let mut found = Vec::new();
        for day in self.open_partitions(cp) {
            let dir = format!("{}/ingest_date={day}", layout::RAW_PAYMENTS);
            for meta in list_parquet(&self.lake, &dir).await? {
                let path = self.lake.relative_path(&meta.location);
                let mtime_ms = meta.last_modified.timestamp_millis();
                if mtime_ms < oldest_ok || seen.contains(path.as_str()) {
                    continue;
                }
                if !self.partitions.contains(&day) {
                    self.partitions.push(day);
                    self.partitions.sort();
                }
                found.push(NewFile {
                    partition: day,
                    record: FileRecord {
                        path,
                        mtime_ms,
                        size: meta.size,
                        quarantined: false,
                    },
                    meta,
                });
            }
            if found.len() >= limit {
                break;
            }
        }
        found.sort_by(|a, b| (a.partition, &a.record.path).cmp(&(b.partition, &b.record.path)));
        found.truncate(limit);
        Ok(found)
    }
}
