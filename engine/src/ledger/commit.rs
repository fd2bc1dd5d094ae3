//! What a ledger commit records, and the `ledger_conflicts` commit that follows it.
//!
//! The ledger commit's info carries everything a rerun needs to prove it built the same day:
//! the tally version and ledger-logic version, the SQL's hash, the raw files read with their
//! sizes and rows, the rows no day can bill (no `event_time`), and the content fingerprint.
//! `ledger_conflicts` commits after the ledger and names the ledger version its rows belong
//! to: a crash between the two leaves conflicts that name an older ledger version, which a
//! reader can tell and a rerun replaces.

use super::fingerprint::Fingerprint;
use super::inputs::Inputs;
use super::part_writer::PartWriter;
use super::window::DayWindow;
use crate::delta;
use crate::error::Result;
use crate::jobs_sql;
use crate::raw_files::InputFile;
use crate::schema::{self, EVENT_DATE};
use arrow::array::RecordBatch;
use deltalake::DeltaTable;
use std::collections::HashMap;

/// The version of the ledger's rules beyond its SQL text (which is hashed on its own). Bump
/// it when a change in Rust alters what a day contains — a fixed dedup rule then rebuilds
/// days in a backfill instead of skipping them as unchanged.
/// 2: arrivals from D − 1, one day per transaction (neighbouring days' copies).
/// 3: the neighbouring days' copies within two days of D (three-day spreads).
pub const LOGIC_VERSION: u32 = 3;

/// What one run read and produced, for its commit info.
pub struct RunFacts<'a> {
    /// The day and its windows.
    pub window: DayWindow,
    /// Hash buckets of the plan.
    pub buckets: u32,
    /// Passes over the day's transaction keys.
    pub passes: usize,
    /// The raw files read.
    pub inputs: &'a Inputs,
    /// Rows of arrival day D without an `event_time`.
    pub rows_without_event_time: u64,
    /// The day's fingerprint.
    pub fingerprint: &'a Fingerprint,
    /// Transactions settled apart.
    pub disputed: u64,
    /// Transactions left to another day.
    pub ceded: u64,
    /// Transactions whose copies name days further apart than the bound.
    pub beyond_bound: u64,
    /// Neighbouring days that settled shared transactions otherwise.
    pub stale_days: &'a [super::stale_days::StaleDay],
}

fn sql_hash() -> String {
    jobs_sql::sql_hash(&[
        jobs_sql::LEDGER,
        jobs_sql::LEDGER_SCATTER,
        jobs_sql::LEDGER_NEIGHBOURS,
        jobs_sql::LEDGER_SETTLE,
        jobs_sql::LEDGER_STALE_DAYS,
    ])
}

/// The ledger commit's info.
pub fn ledger_info(f: &RunFacts<'_>) -> HashMap<String, serde_json::Value> {
    let files = f.inputs.recorded();
    HashMap::from([(
        "tally".to_string(),
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "logic_version": LOGIC_VERSION,
            "job": "ledger",
            "day": f.window.day.to_string(),
            "late_days": f.window.late_days,
            "buckets": f.buckets,
            "passes": f.passes,
            "sql_hash": sql_hash(),
            "inputs": {
                "files": files,
                "file_count": files.len(),
                "rows_read": f.inputs.rows(),
                "hash": inputs_hash(&files),
            },
            "rows_without_event_time": f.rows_without_event_time,
            "fingerprint": f.fingerprint.to_json(),
            "disputed": f.disputed,
            "ceded_to_other_days": f.ceded,
            "spread_beyond_bound": f.beyond_bound,
            "days_to_rebuild": f.stale_days.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        }),
    )])
}

/// `ledger_conflicts` files already written (by the partitions that settled their own
/// disputes), to commit with the rest.
#[derive(Default)]
pub struct ConflictFiles {
    pub adds: Vec<deltalake::kernel::Add>,
    pub rows: u64,
}

/// Replaces day D in `ledger_conflicts` (even with no rows, so a rerun clears stale ones),
/// against the snapshot `table` was opened at, with `written` and `batches`; the commit names
/// `ledger_version`. Returns the rows written and the version.
pub async fn write_conflicts(
    table: &DeltaTable,
    day: &str,
    run_id: &str,
    written: ConflictFiles,
    batches: Vec<RecordBatch>,
    ledger_version: u64,
) -> Result<(u64, u64)> {
    let mut writer = PartWriter::new(
        table.object_store(),
        &schema::LEDGER_CONFLICTS,
        day,
        0,
        run_id,
    )?;
    let mut rows = written.rows;
    for b in batches {
        let b = schema::conform(&b, &schema::LEDGER_CONFLICTS)?;
        rows += b.num_rows() as u64;
        writer.write(&b).await?;
    }
    let mut adds = written.adds;
    adds.extend(writer.finish().await?);
    let meta = HashMap::from([(
        "tally".to_string(),
        serde_json::json!({
            "job": "ledger_conflicts",
            "day": day,
            "rows": rows,
            "ledger_version": ledger_version,
        }),
    )]);
    let (version, _) = delta::replace_partition(table, EVENT_DATE, day, adds, meta).await?;
    Ok((rows, version))
}

/// What decides a day's ledger: the raw files (paths and sizes), the lateness horizon, the
/// SQL, the ledger-logic version and the tally version. A backfill skips a day whose key
/// equals the key of its last successful run.
pub fn inputs_key(inputs: &[InputFile], late_days: u32) -> String {
    format!(
        "{}-{late_days}-{}-l{LOGIC_VERSION}-v{}",
        inputs_hash(inputs),
        sql_hash(),
        env!("CARGO_PKG_VERSION")
    )
}

/// A hash of the input file list (paths and sizes): equal hashes mean the same raw inputs.
pub fn inputs_hash(inputs: &[InputFile]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in inputs {
        h.update(f.path.as_bytes());
        h.update(&[0]);
        h.update(&f.size.to_le_bytes());
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A changed dedup rule (a new logic version) or a new tally must rebuild a day whose raw
    /// inputs did not change, so both are part of the key backfill compares.
    #[test]
    fn the_inputs_key_names_the_logic_and_tally_versions() {
        let files = vec![InputFile {
            path: "raw/payments/ingest_date=2026-11-01/a.parquet".into(),
            size: 10,
            rows: 0,
            rows_without_event_time: None,
        }];
        let key = inputs_key(&files, 3);
        assert!(key.contains(&format!("-l{LOGIC_VERSION}-")), "{key}");
        assert!(
            key.ends_with(&format!("-v{}", env!("CARGO_PKG_VERSION"))),
            "{key}"
        );
        assert_eq!(key, inputs_key(&files, 3), "stable for the same inputs");
        assert_ne!(key, inputs_key(&files, 4));
    }
}
