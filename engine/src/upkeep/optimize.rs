//! `tally optimize --date D`: one ledger day's files written again as fewer, larger ones.
//!
//! A day rebuilt many times keeps the file count of its last run (one file per hash bucket
//! and pass, more under a memory limit), and its files are each sorted by (partner, txn_id)
//! but overlap: a partner's rows are in every file. Optimize reads the day at one table
//! version, sorts it as one (DataFusion's sort, spilling under the memory limit), and writes
//! it with the ledger's own writer (row groups, statistics, bloom filter) into files of at
//! most [`TARGET_FILE_ROWS`] rows, so a partner's rows are in one place and row groups prune.
//!
//! The rows must be exactly those the day's ledger run committed: the fingerprint of what was
//! written is checked against the one that run recorded in `runs` before anything is
//! committed. The commit is one Delta `OPTIMIZE` replacing the day's files (`dataChange:
//! false`), made against the version read: a ledger run of the same day that committed in
//! between makes it fail without committing (the ledger's own stale-run check), and the
//! day's lease keeps a new run from starting meanwhile. The old files stay until `tally
//! vacuum`; a killed optimize leaves only unreferenced files.

use crate::day_lock;
use crate::delta::{self, Replacement};
use crate::error::{Result, TallyError};
use crate::jobs_sql;
use crate::lake::layout;
use crate::ledger::fingerprint::Fingerprint;
use crate::ledger::part_writer::PartWriter;
use crate::schema::EVENT_DATE;
use crate::session::TallySession;
use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::ScalarValue;
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Rows per file written: 32 row groups of the ledger's 128k rows (~80 MB at the bench's
/// ~20 bytes a row), large enough that a year of days is a few hundred files, small enough
/// that a day still splits across a scan's partitions.
pub const TARGET_FILE_ROWS: u64 = 32 * crate::ledger::ROW_GROUP_ROWS as u64;

/// What `tally optimize` did to one day.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    pub day: NaiveDate,
    /// The ledger version read.
    pub version_read: u64,
    /// The version committed; `None` when the day was left as it was.
    pub version: Option<u64>,
    pub files_before: usize,
    pub files_after: usize,
    pub rows: u64,
    /// The day's fingerprint, the same before and after.
    pub fingerprint: serde_json::Value,
    /// Why nothing was committed (already compact, no such day).
    pub skipped: Option<String>,
}

/// Compacts `day` of the ledger in `session`'s lake.
pub async fn optimize(session: &TallySession, day: NaiveDate) -> Result<OptimizeReport> {
    let lake = session.lake();
    let lock = day_lock::acquire(lake, day, "optimize", Duration::ZERO).await?;
    let fence = lock.fence();
    let result = compact(session, day, &fence).await;
    lock.release().await;
    result
}

async fn compact(
    session: &TallySession,
    day: NaiveDate,
    fence: &day_lock::Fence,
) -> Result<OptimizeReport> {
    let lake = session.lake();
    let day_text = day.to_string();
    let table = delta::open(lake, &lake.url_of(layout::LEDGER)?)
        .await
        .map_err(|e| match e {
            TallyError::Delta(deltalake::DeltaTableError::NotATable(_)) => TallyError::Refused {
                message: format!("no ledger in {}: nothing to optimize", lake.root()),
            },
            other => other,
        })?;
    let version_read = table.version().unwrap_or(0);
    let files: Vec<Option<usize>> = delta::partition_files(&table, EVENT_DATE, &day_text)
        .await?
        .into_iter()
        .map(|(_, rows)| rows)
        .collect();
    let rows_before: u64 = files.iter().map(|r| r.unwrap_or(0) as u64).sum();
    let mut report = OptimizeReport {
        day,
        version_read,
        version: None,
        files_before: files.len(),
        files_after: files.len(),
        rows: rows_before,
        fingerprint: serde_json::Value::Null,
        skipped: None,
    };
    let wanted = rows_before.div_ceil(TARGET_FILE_ROWS).max(1) as usize;
    if files.is_empty() {
        report.skipped = Some(format!("the ledger has no rows for {day}"));
        return Ok(report);
    }
    if files.len() <= wanted {
        report.skipped = Some(format!(
            "already compact: {} file(s) for {rows_before} rows",
            files.len()
        ));
        return Ok(report);
    }
    let expected = expected_fingerprint(session, day).await?;

    // The day at the version read, in file order, through the session's memory pool.
    let ctx = session.job_context(session.ctx().copied_config().target_partitions())?;
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("ledger_day", table.table_provider().await?)?;
    let log_store = table.log_store();
    ctx.runtime_env().register_object_store(
        log_store.object_store_url().as_ref(),
        log_store.object_store(None),
    );
    let mut rows = ctx
        .sql(jobs_sql::OPTIMIZE_DAY)
        .await?
        .with_param_values(vec![ScalarValue::Date32(Some(crate::schema::date32(day)))])?
        .execute_stream()
        .await?;
    let store = log_store.object_store(None);
    let schema = Arc::clone(&crate::schema::LEDGER);
    let run_id = format!("opt{:013x}", rand::random::<u64>() >> 12);
    let mut fingerprint = Fingerprint::default();
    let mut adds = Vec::new();
    let mut part = 0usize;
    let mut writer = PartWriter::new(Arc::clone(&store), &schema, &day_text, part, &run_id)?;
    let mut in_file = 0u64;
    while let Some(batch) = rows.next().await {
        let batch = batch?;
        fingerprint.update(&batch)?;
        let mut at = 0usize;
        while at < batch.num_rows() {
            let room = (TARGET_FILE_ROWS - in_file) as usize;
            let take = room.min(batch.num_rows() - at);
            writer.write(&batch.slice(at, take)).await?;
            at += take;
            in_file += take as u64;
            if in_file == TARGET_FILE_ROWS {
                adds.extend(writer.finish().await?);
                part += 1;
                writer = PartWriter::new(Arc::clone(&store), &schema, &day_text, part, &run_id)?;
                in_file = 0;
            }
        }
    }
    adds.extend(writer.finish().await?);
    report.fingerprint = fingerprint.to_json();
    if let Some(want) = expected {
        if want != fingerprint {
            return Err(TallyError::Internal(format!(
                "optimize of {day}: the rewritten rows ({}) differ from the ledger run's ({}); nothing was committed",
                fingerprint.to_json(),
                want.to_json()
            )));
        }
    }
    fence.confirm().await?;
    let target_size = adds.iter().map(|a| a.size).max().unwrap_or(0);
    let info = HashMap::from([(
        "tally.optimize".to_string(),
        serde_json::json!({
            "day": day_text,
            "files_before": report.files_before,
            "files_after": adds.len(),
            "fingerprint": report.fingerprint,
            "version_read": version_read,
        }),
    )]);
    let files_after = adds.len();
    let (version, _) = delta::replace_partition_as(
        &table,
        EVENT_DATE,
        &day_text,
        adds,
        info,
        Replacement::Compaction { target_size },
    )
    .await?;
    report.version = Some(version);
    report.files_after = files_after;
    report.rows = fingerprint.rows;
    Ok(report)
}

/// The fingerprint the day's newest successful ledger run recorded in `runs`; `None` when
/// the lake has no `runs` table or no such row (a ledger from before `runs`).
async fn expected_fingerprint(
    session: &TallySession,
    day: NaiveDate,
) -> Result<Option<Fingerprint>> {
    if session.table(layout::RUNS).is_err() {
        return Ok(None);
    }
    let batches = session
        .ctx()
        .sql(jobs_sql::OPTIMIZE_EXPECTED)
        .await?
        .with_param_values(vec![ScalarValue::Date32(Some(crate::schema::date32(day)))])?
        .collect()
        .await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let rows = b
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .filter(|c| c.is_valid(0));
    let text = |i: usize| -> Option<String> {
        let c = datafusion::arrow::compute::cast(
            b.column(i),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .ok()?;
        let c = c.as_string_opt::<i32>()?;
        c.is_valid(0).then(|| c.value(0).to_string())
    };
    let (Some(rows), Some(amount), Some(hash)) = (rows, text(1), text(2)) else {
        return Ok(None);
    };
    let amount_cents = parse_cents(&amount).ok_or_else(|| {
        TallyError::Internal(format!(
            "runs: ledger_amount {amount} of {day} is not an amount"
        ))
    })?;
    let row_hash = u64::from_str_radix(&hash, 16)
        .map_err(|_| TallyError::Internal(format!("runs: row_hash {hash} of {day} is not hex")))?;
    Ok(Some(Fingerprint {
        rows: rows.value(0) as u64,
        amount_cents,
        row_hash,
    }))
}

/// `12.34` → 1234 (two decimals, as the ledger's amounts).
fn parse_cents(text: &str) -> Option<i128> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 2 || whole.is_empty() {
        return None;
    }
    let cents = whole.parse::<i128>().ok()? * 100 + format!("{frac:0<2}").parse::<i128>().ok()?;
    Some(if neg { -cents } else { cents })
}

#[cfg(test)]
mod tests {
    use super::parse_cents;

    #[test]
    fn amounts_parse_to_exact_cents() {
        assert_eq!(parse_cents("398908.88"), Some(39_890_888));
        assert_eq!(parse_cents("-0.50"), Some(-50));
        assert_eq!(parse_cents("7"), Some(700));
        assert_eq!(parse_cents("1.2"), Some(120));
        assert_eq!(parse_cents("1.234"), None);
        assert_eq!(parse_cents("x"), None);
    }
}
