//! `tally vacuum`: deletes the data files of tally's own Delta tables that no version within
//! the retention references (files of killed runs that were never committed, files replaced
//! by a rerun or a roll-up), and the log files the table's log retention has expired.
//!
//! Which files go is decided by delta-rs's full-mode vacuum: a file the current version
//! references stays; a removed file stays until its removal is older than the retention; a
//! file no version ever referenced stays until it is older than the retention, because it
//! may belong to a run that has not committed yet. Folders starting with `_` (tally's own
//! state: live checkpoints and key snapshots, ledger key indexes, leases) are never touched.
//!
//! A run holding a lease may still commit the files it wrote since it took the lease. The
//! retention must reach back past them, or the vacuum is refused before anything is deleted.

use crate::day_lock::{self, HeldLease};
use crate::delta;
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use chrono::{DateTime, Utc};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// What to vacuum and how.
#[derive(Debug, Clone)]
pub struct VacuumOptions {
    /// Table names (`ledger`, `live_view`, ...); empty for every table tally writes.
    pub tables: Vec<String>,
    /// Versions newer than this stay readable, with every file they reference.
    pub retain: Duration,
    /// List what would be deleted; delete nothing.
    pub dry_run: bool,
}

/// One file a vacuum deleted (or would delete).
#[derive(Debug, Clone, Serialize)]
pub struct VacuumedFile {
    /// Path under the table's folder.
    pub path: String,
    pub bytes: u64,
}

/// What a vacuum did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableVacuum {
    pub table: String,
    /// `false` when the lake has no such table yet (nothing to do).
    pub exists: bool,
    pub files: Vec<VacuumedFile>,
    pub bytes: u64,
    /// Expired log files deleted (not counted in a dry run).
    pub log_files: usize,
}

/// What a vacuum did.
#[derive(Debug, Clone, Serialize)]
pub struct VacuumReport {
    pub dry_run: bool,
    pub retain_secs: u64,
    pub tables: Vec<TableVacuum>,
}

impl VacuumReport {
    /// Data files deleted (or that would be) over all tables.
    pub fn files(&self) -> usize {
        self.tables.iter().map(|t| t.files.len()).sum()
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }
}

/// Vacuums tally's tables in `lake` (never `raw/`).
pub async fn vacuum(lake: &Lake, opts: &VacuumOptions) -> Result<VacuumReport> {
    let tables = tables_in_scope(&opts.tables)?;
    let retain =
        chrono::Duration::from_std(opts.retain).map_err(|_| TallyError::InvalidArgument {
            what: "--retain".into(),
            message: "too long".into(),
        })?;
    let now_ms = Utc::now().timestamp_millis();
    let held = day_lock::held(lake).await?;
    for table in &tables {
        refuse_under_running_job(table, &held, now_ms, retain.num_milliseconds())?;
    }
    let mut report = VacuumReport {
        dry_run: opts.dry_run,
        retain_secs: opts.retain.as_secs(),
        tables: Vec::new(),
    };
    for table in tables {
        report
            .tables
            .push(vacuum_table(lake, table, retain, opts.dry_run).await?);
    }
    Ok(report)
}

/// The named tables, checked against the ones tally writes; all of them when none is named.
fn tables_in_scope(named: &[String]) -> Result<Vec<&'static str>> {
    if named.is_empty() {
        return Ok(layout::DELTA_TABLES.to_vec());
    }
    named
        .iter()
        .map(|name| {
            layout::DELTA_TABLES
                .iter()
                .find(|t| **t == name.as_str())
                .copied()
                .ok_or_else(|| TallyError::Usage {
                    message: if name.starts_with("raw") {
                        format!(
                            "--table {name}: raw data is never modified, so it is never vacuumed"
                        )
                    } else {
                        format!(
                            "--table {name} is not one of tally's tables ({})",
                            layout::DELTA_TABLES.join(", ")
                        )
                    },
                })
        })
        .collect()
}

/// The tables a lease's holder writes to: a ledger or backfill run writes its day's ledger
/// and conflicts files and a row of `runs`; the live mode writes its tables and alerts. A
/// lease of another name guards every table.
fn guards(lease: &str, table: &str) -> bool {
    if lease == "live" {
        [
            layout::LIVE_VIEW,
            layout::LIVE_LATE,
            layout::LIVE_QUARANTINE,
            layout::ALERTS,
        ]
        .contains(&table)
    } else if lease.starts_with("ledger-") {
        [layout::LEDGER, layout::LEDGER_CONFLICTS, layout::RUNS].contains(&table)
    } else {
        true
    }
}

/// The oldest file the holder of `lease` may still commit (ms since the epoch): a ledger run
/// commits what it wrote since it took its lease; the live mode commits each batch's files
/// within the batch, and a batch that outlives the lease loses it. `None`: unknown.
fn writes_since(lease: &HeldLease, now_ms: i64) -> Option<i64> {
    if lease.name == "live" {
        return Some(now_ms - day_lock::lease_duration().as_millis() as i64);
    }
    lease.since_ms
}

fn refuse_under_running_job(
    table: &str,
    held: &[HeldLease],
    now_ms: i64,
    retain_ms: i64,
) -> Result<()> {
    for lease in held.iter().filter(|l| guards(&l.name, table)) {
        let since = writes_since(lease, now_ms);
        if since.is_some_and(|s| s >= now_ms - retain_ms) {
            continue;
        }
        let started = since
            .and_then(DateTime::from_timestamp_millis)
            .map(|t| format!("since {}", t.format("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_else(|| "since an unknown time".into());
        let needed = since
            .map(|s| {
                let secs = ((now_ms - s) / 1000 + 60).max(60) as u64;
                format!(
                    "a --retain of {} or more",
                    humantime::format_duration(Duration::from_secs(secs / 60 * 60))
                )
            })
            .unwrap_or_else(|| "a longer --retain".into());
        return Err(TallyError::Refused {
            message: format!(
                "{table} is being written by a run holding the lease {} {started} ({} on {}, pid {}): a retention of {} could delete files it has not committed yet; vacuum when it finishes, or with {needed}",
                lease.name,
                lease.owner,
                lease.host,
                lease.pid,
                humantime::format_duration(Duration::from_millis(retain_ms.max(0) as u64)),
            ),
        });
    }
    Ok(())
}

async fn vacuum_table(
    lake: &Lake,
    name: &str,
    retain: chrono::Duration,
    dry_run: bool,
) -> Result<TableVacuum> {
    let mut out = TableVacuum {
        table: name.to_string(),
        exists: false,
        files: Vec::new(),
        bytes: 0,
        log_files: 0,
    };
    if !lake
        .list_dirs(name)
        .await?
        .iter()
        .any(|d| d == "_delta_log")
    {
        return Ok(out);
    }
    out.exists = true;
    let url = lake.url_of(name)?;
    let table = delta::open(lake, &url)
        .await
        .map_err(|e| TallyError::TableOpen {
            name: name.into(),
            location: url.to_string(),
            message: crate::lake::one_line(&e.to_string()),
        })?;
    let sizes = file_sizes(lake, name).await?;
    // The plan first: a real vacuum writes a VACUUM START and END commit even when it
    // deletes nothing, which a nightly run would add to every table's history.
    let root = format!("{}/", lake.path_of(name)?.as_ref());
    let (_, planned) = run_vacuum(&table, name, retain, true).await?;
    let (table, deleted) =
        if dry_run || !planned.iter().any(|p| existing(&root, p, &sizes).is_some()) {
            (table, planned)
        } else {
            run_vacuum(&table, name, retain, false).await?
        };
    // delta-rs names expired tombstones by their full store path and orphans relative to the
    // table, and names a tombstone again on every run after its file is gone: what counts is
    // what was there.
    for path in deleted {
        if let Some((rel, bytes)) = existing(&root, &path, &sizes) {
            out.bytes += bytes;
            out.files.push(VacuumedFile { path: rel, bytes });
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    if !dry_run {
        out.log_files = expire_logs(&table)
            .await
            .map_err(|e| vacuum_error(name, e))?;
    }
    Ok(out)
}

async fn run_vacuum(
    table: &DeltaTable,
    name: &str,
    retain: chrono::Duration,
    dry_run: bool,
) -> Result<(DeltaTable, Vec<String>)> {
    let (table, metrics) = table
        .clone()
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retain)
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .await
        .map_err(|e| vacuum_error(name, e))?;
    Ok((table, metrics.files_deleted))
}

/// A file delta-rs named (full store path or relative to the table, whose store path is
/// `root`), relative to the table, with its size, if it was there.
fn existing(root: &str, path: &str, sizes: &HashMap<String, u64>) -> Option<(String, u64)> {
    let trimmed = path.trim_start_matches('/');
    let rel = trimmed.strip_prefix(root).unwrap_or(trimmed);
    sizes.get(rel).map(|&b| (rel.to_string(), b))
}

/// Deletes log files older than the table's `delta.logRetentionDuration` (30 days unless
/// set) that a later checkpoint makes unnecessary.
async fn expire_logs(table: &DeltaTable) -> std::result::Result<usize, deltalake::DeltaTableError> {
    deltalake::protocol::checkpoints::cleanup_metadata(table, None).await
}

fn vacuum_error(table: &str, e: deltalake::DeltaTableError) -> TallyError {
    TallyError::Internal(format!(
        "vacuum of {table} failed: {}",
        crate::lake::one_line(&e.to_string())
    ))
}

/// Sizes of the files under a table's folder, by path relative to it.
async fn file_sizes(lake: &Lake, table: &str) -> Result<HashMap<String, u64>> {
    let root = lake.path_of(table)?;
    lake.store()
        .list(Some(&root))
        .map_err(|e| lake.storage_error(e))
        .try_filter_map(|meta| {
            let rel = meta.location.prefix_match(&root).map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            });
            futures::future::ready(Ok(rel.map(|r| (r, meta.size))))
        })
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, since_ms: Option<i64>) -> HeldLease {
        HeldLease {
            name: name.into(),
            owner: "ledger".into(),
            host: "h".into(),
            pid: 7,
            since_ms,
        }
    }

    #[test]
    fn a_run_older_than_the_retention_refuses_the_tables_it_writes() {
        let now = 10_000_000;
        let hour = 3_600_000;
        let held = [lease("ledger-2026-11-03", Some(now - 2 * hour))];
        let refused = refuse_under_running_job("ledger", &held, now, hour).unwrap_err();
        let msg = refused.to_string();
        assert!(
            msg.contains("ledger-2026-11-03") && msg.contains("pid 7"),
            "{msg}"
        );
        assert!(msg.contains("2h 1m"), "{msg}");
        // Its files are younger than a longer retention; other tables are not its.
        refuse_under_running_job("ledger", &held, now, 3 * hour).unwrap();
        refuse_under_running_job("reconciliations", &held, now, 0).unwrap();
        // A lease from a build that did not say when it started guards its tables always.
        let unknown = [lease("ledger-2026-11-03", None)];
        assert!(refuse_under_running_job("runs", &unknown, now, 1000 * hour).is_err());
    }

    #[test]
    fn the_live_mode_needs_a_retention_of_one_lease() {
        let now = 10_000_000;
        let held = [lease("live", Some(now - 86_400_000))];
        let lease_ms = day_lock::lease_duration().as_millis() as i64;
        assert!(refuse_under_running_job("live_view", &held, now, lease_ms / 2).is_err());
        refuse_under_running_job("live_view", &held, now, lease_ms).unwrap();
        refuse_under_running_job("ledger", &held, now, 0).unwrap();
    }

    #[test]
    fn raw_and_unknown_names_are_refused() {
        let raw = tables_in_scope(&["raw".into()]).unwrap_err().to_string();
        assert!(raw.contains("never modified"), "{raw}");
        let other = tables_in_scope(&["ledgr".into()]).unwrap_err().to_string();
        assert!(other.contains("live_view"), "{other}");
        assert_eq!(
            tables_in_scope(&[]).unwrap().len(),
            layout::DELTA_TABLES.len()
        );
    }
}
