//! Finding raw files the live mode has not taken, so that every landed file is read once,
//! whatever its mtime, folder or partner clock.
//!
//! A listed file is new when its path is not among the files the checkpoint tracks for its
//! `ingest_date` partition ([`Checkpoint::tracked`]); nothing is inferred from mtimes, so a
//! copy that keeps an old mtime (`rsync -t`, an S3 copy keeping LastModified, a slow multipart
//! upload) is read like any other. A tracked path whose file has another size now is
//! quarantined with that reason, not read twice; the same file uploaded again is skipped.
//!
//! The partition directories are listed every tick. Partitions are followed from
//! `track_days` before the *anchor*, the newest partition not dated in the future (after
//! tomorrow, UTC), and never before the first start's partition (`start_lookback_days` before
//! the anchor then, kept in the checkpoint). The two newest of them, and any future-dated
//! one, are listed every tick; older ones, inside the horizon, every [`RESCAN_TICKS`] ticks,
//! so a lander catching up into an older partition is seen within that many ticks. A
//! future-dated folder or mtime is data: its files are read and named (log and metric), and
//! it moves neither the anchor nor anything else.
//!
//! When `raw_payments` is a Delta table, nothing is listed: the table is followed by its
//! versions, reading the `add` actions of each commit after the last one processed (the
//! checkpoint keeps that version), as Spark's Delta source does.

use super::checkpoint::{partition_and_name, Checkpoint, FileRecord};
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::raw_files::list_parquet;
use chrono::{Days, NaiveDate};

/// Ticks between listings of the followed partitions older than the two newest.
pub const RESCAN_TICKS: u64 = 30;

/// How far past now an mtime may be before its file is reported as from the future.
const FUTURE_SLACK_MS: i64 = 5 * 60 * 1000;

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
    /// Paths of the files taken that are dated in the future (their partition is after
    /// tomorrow, or their mtime is ahead of now): read as data, reported.
    pub ahead: Vec<String>,
}

/// Lists open partitions and returns unseen files.
#[derive(Debug)]
pub struct Discovery {
    lake: Lake,
    /// Known partitions, sorted.
    partitions: Vec<NaiveDate>,
    ticks: u64,
    start_lookback_days: u64,
    /// Partitions followed before the anchor.
    track_days: u64,
    /// The last full listing found more files than one batch takes.
    backlog: bool,
    /// The raw Delta table, when `raw_payments` is one.
    delta: Option<deltalake::DeltaTable>,
}

impl Discovery {
    /// Discovery over `lake`'s raw payments.
    pub async fn new(lake: &Lake, start_lookback_days: u64, track_days: u64) -> Result<Self> {
        let mut d = Self {
            lake: lake.clone(),
            partitions: Vec::new(),
            ticks: 0,
            start_lookback_days,
            // A first start that follows more days than the horizon keeps them followed.
            track_days: track_days.max(start_lookback_days).max(1),
            backlog: false,
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

    /// True when `raw_payments` is a Delta table (followed by versions, not listings).
    pub fn follows_delta(&self) -> bool {
        self.delta.is_some()
    }

    /// The last partition that is not in the future: any dated after tomorrow (UTC) is.
    fn last_present() -> Option<NaiveDate> {
        chrono::Utc::now()
            .date_naive()
            .checked_add_days(Days::new(1))
    }

    /// The newest partition not dated in the future: what the horizon counts back from.
    fn anchor(&self) -> Option<NaiveDate> {
        let present = Self::last_present()?;
        self.partitions
            .iter()
            .rev()
            .find(|p| **p <= present)
            .copied()
    }

    /// The oldest partition to follow on a first start: `start_lookback_days` before the anchor.
    pub fn start_partition(&self) -> Option<NaiveDate> {
        self.anchor()
            .and_then(|n| n.checked_sub_days(Days::new(self.start_lookback_days)))
    }

    /// The oldest partition followed now: the first start's, or the horizon's when later.
    pub fn first_followed(&self, cp: &Checkpoint) -> Option<NaiveDate> {
        let start = cp
            .start_partition
            .as_deref()
            .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
            .or_else(|| self.start_partition());
        let horizon = self
            .anchor()
            .and_then(|a| a.checked_sub_days(Days::new(self.track_days)));
        start.max(horizon)
    }

    /// The partitions to list this tick: every followed one when `all`, else the two newest
    /// before the anchor and every future-dated one.
    fn open_partitions(&self, cp: &Checkpoint, all: bool) -> Vec<NaiveDate> {
        let from = self.first_followed(cp);
        let hot = self.anchor().and_then(|a| a.checked_sub_days(Days::new(1)));
        self.partitions
            .iter()
            .copied()
            .filter(|p| from.is_none_or(|f| *p >= f))
            .filter(|p| all || hot.is_none_or(|h| *p >= h))
            .collect()
    }

    /// Unseen raw files, at most `limit` (a Delta commit's files are never split).
    pub async fn new_files(&mut self, cp: &Checkpoint, limit: usize) -> Result<Found> {
        if self.delta.is_some() {
            return self.new_delta_files(cp, limit).await;
        }
        self.new_listed_files(cp, limit).await
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
            ahead: Vec::new(),
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
                let (path, reason) = match add_path(self.lake.root().as_str(), path) {
                    Ok(path) => (path, None),
                    Err(reason) => (path.to_string(), Some(reason)),
                };
                found.files.push(NewFile {
                    partition: NaiveDate::default(),
                    record: FileRecord {
                        path,
                        mtime_ms: add
                            .get("modificationTime")
                            .and_then(|v| v.as_i64())
                            .unwrap_or(0),
                        size: add.get("size").and_then(|v| v.as_u64()).unwrap_or(0),
                        quarantined: reason.is_some(),
                        reason,
                    },
                });
            }
            found.raw_version = Some(next);
            next += 1;
        }
        Ok(found)
    }

    /// Untracked files of the partitions open this tick, in (partition, path) order, at most
    /// `limit` (the rest are still untracked next tick).
    async fn new_listed_files(&mut self, cp: &Checkpoint, limit: usize) -> Result<Found> {
        self.ticks += 1;
        self.rescan().await?;
        // Every followed partition on the first tick, every RESCAN_TICKS, and while a full
        // listing left files for later.
        let all = self.ticks % RESCAN_TICKS == 1 || self.backlog;
        let no_tracked = std::collections::BTreeMap::new();
        let mut found = Vec::new();
        for day in self.open_partitions(cp, all) {
            let dir = format!("{}/ingest_date={day}", layout::RAW_PAYMENTS);
            let tracked = cp.tracked.get(&day.to_string()).unwrap_or(&no_tracked);
            for meta in list_parquet(&self.lake, &dir).await? {
                let path = self.lake.relative_path(&meta.location);
                let Some((_, name)) = partition_and_name(&path) else {
                    continue;
                };
                let reason = match tracked.get(name) {
                    Some(size) if *size == meta.size => continue,
                    Some(size) => Some(format!(
                        "{path}: changed after it was taken ({size} bytes then, {} now); raw \
                         files are immutable, so it is not read again",
                        meta.size
                    )),
                    None => None,
                };
                found.push(NewFile {
                    partition: day,
                    record: FileRecord {
                        path,
                        mtime_ms: meta.last_modified.timestamp_millis(),
                        size: meta.size,
                        quarantined: reason.is_some(),
                        reason,
                    },
                });
            }
        }
        found.sort_by(|a, b| (a.partition, &a.record.path).cmp(&(b.partition, &b.record.path)));
        self.backlog = all && found.len() > limit;
        found.truncate(limit);
        let present = Self::last_present();
        let soon = chrono::Utc::now().timestamp_millis() + FUTURE_SLACK_MS;
        let ahead = found
            .iter()
            .filter(|f| present.is_some_and(|p| f.partition > p) || f.record.mtime_ms > soon)
            .map(|f| f.record.path.clone())
            .collect();
        Ok(Found {
            files: found,
            raw_version: None,
            ahead,
        })
    }
}

/// The lake-relative path of a raw Delta table's `add` as its log spells it (percent-encoded);
/// `Err(reason)` for an absolute path outside the lake: quarantined, not retried for ever.
fn add_path(lake_root: &str, path: &str) -> std::result::Result<String, String> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    crate::raw_delta::lake_relative(lake_root, &decoded)
}

#[cfg(test)]
mod tests {
    use super::add_path;

    #[test]
    fn delta_add_paths_are_decoded_as_the_log_spells_them() {
        assert_eq!(
            add_path(
                "file:///data/lake/",
                "ingest_date=2026-11-20/part%20one.parquet"
            )
            .unwrap(),
            "raw/payments/ingest_date=2026-11-20/part one.parquet"
        );
    }
}
