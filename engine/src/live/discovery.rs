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
//!
//! When `raw_payments` is a Delta table, nothing is listed: the table is followed by its
//! versions, reading the `add` actions of each commit after the last one processed (the
//! checkpoint keeps that version), as Spark's Delta source does.

use super::checkpoint::{Checkpoint, FileRecord};
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::raw_files::list_parquet;
use chrono::{Days, NaiveDate};

/// Ticks between re-listings of the partition directories.
pub const RESCAN_TICKS: u64 = 30;

/// A new raw file, with the partition it is in.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Its `ingest_date` partition (Parquet layout; the Unix epoch for Delta files).
    pub partition: NaiveDate,
    /// The record the checkpoint will hold.
    pub record: FileRecord,
}

/// What a tick found: new files, and for a Delta raw table the last version they cover.
#[derive(Debug, Default)]
pub struct Found {
    /// The files, in processing order.
    pub files: Vec<NewFile>,
    /// The last raw Delta version read (Delta raw tables only).
    pub raw_version: Option<u64>,
    /// The oldest mtime among unseen files left for a later batch (listed raw files only).
    /// The checkpoint's newest-mtime mark must not pass it by more than the file window, or
    /// those files would be taken for long-forgotten ones and never read.
    pub waiting_mtime_ms: Option<i64>,
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
    /// The raw Delta table, when `raw_payments` is one.
    delta: Option<deltalake::DeltaTable>,
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
            delta: None,
        };
        let dirs = lake.list_dirs(layout::RAW_PAYMENTS).await?;
        if dirs.iter().any(|d| d == "_delta_log") {
            let url = lake.url_of(layout::RAW_PAYMENTS)?;
            d.delta = Some(crate::delta::open(lake, &url).await?);
        } else {
            d.rescan().await?;
        }
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

    /// Unseen raw files, at most `limit` (a Delta commit's files are never split).
    pub async fn new_files(&mut self, cp: &Checkpoint, limit: usize) -> Result<Found> {
        if self.delta.is_some() {
            return self.new_delta_files(cp, limit).await;
        }
        let (files, waiting_mtime_ms) = self.new_listed_files(cp, limit).await?;
        Ok(Found {
            files,
            raw_version: None,
            waiting_mtime_ms,
        })
    }

    /// The files added by raw Delta versions after the checkpoint's.
    async fn new_delta_files(&mut self, cp: &Checkpoint, limit: usize) -> Result<Found> {
        let Some(table) = self.delta.as_mut() else {
            return Ok(Found::default());
        };
        table.update_state().await?;
        let Some(latest) = table.version() else {
            return Ok(Found::default());
        };
        let log = table.log_store();
        let mut next = cp.raw_version.map_or(0, |v| v + 1);
        let mut found = Found {
            files: Vec::new(),
            raw_version: cp.raw_version,
            waiting_mtime_ms: None,
        };
        while next <= latest && found.files.len() < limit {
            let commit = log
                .read_commit_entry(next)
                .await?
                .ok_or_else(|| TallyError::Lake {
                    location: self.lake.root().to_string(),
                    message: format!(
                        "version {next} of the raw Delta table's log is gone (log retention); \
                     the live mode cannot tell which files it added"
                    ),
                })?;
            for line in commit.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let action: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| TallyError::Internal(format!("raw Delta version {next}: {e}")))?;
                let Some(add) = action.get("add") else {
                    continue;
                };
                // dataChange=false: a rewrite of rows already there (OPTIMIZE, Z-order), not
                // new data; Spark's Delta streaming source skips these files too.
                if add.get("dataChange").and_then(|v| v.as_bool()) == Some(false) {
                    continue;
                }
                let Some(path) = add.get("path").and_then(|p| p.as_str()) else {
                    continue;
                };
                let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
                found.files.push(NewFile {
                    partition: NaiveDate::default(),
                    record: FileRecord {
                        path: format!("{}/{path}", layout::RAW_PAYMENTS),
                        mtime_ms: add
                            .get("modificationTime")
                            .and_then(|v| v.as_i64())
                            .unwrap_or(0),
                        size: add.get("size").and_then(|v| v.as_u64()).unwrap_or(0),
                        quarantined: false,
                    },
                });
            }
            found.raw_version = Some(next);
            next += 1;
        }
        Ok(found)
    }

    /// Unseen files of the open partitions, in (partition, path) order, at most `limit`; and
    /// the oldest mtime among those left for later.
    async fn new_listed_files(
        &mut self,
        cp: &Checkpoint,
        limit: usize,
    ) -> Result<(Vec<NewFile>, Option<i64>)> {
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
                });
            }
        }
        found.sort_by(|a, b| (a.partition, &a.record.path).cmp(&(b.partition, &b.record.path)));
        let waiting = found
            .get(limit..)
            .and_then(|rest| rest.iter().map(|f| f.record.mtime_ms).min());
        found.truncate(limit);
        Ok((found, waiting))
    }
}
