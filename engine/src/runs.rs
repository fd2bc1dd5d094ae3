//! The `runs` table: one row per ledger day run, so backfills resume and audits can ask
//! "what built this day, from what, and when".
//!
//! A day is *unchanged* when its inputs key — the raw files of its arrival window (paths and
//! sizes), the lateness horizon and the ledger SQL's hash — equals the key of its last run
//! whose outcome was `ok` (or `skipped`, which carried the same key forward). Raw files are
//! immutable, so the same key means the same ledger; anything else is rebuilt. A `stale` row
//! newer than that run (another day's run found this day's ledger settling a shared
//! transaction otherwise) means rebuilt too.

use crate::delta;
use crate::error::Result;
use crate::lake::{layout, Lake};
use crate::schema::{self, RUNS};
use arrow::array::{
    ArrayRef, AsArray, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use chrono::NaiveDate;
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;
use std::collections::HashMap;
use std::sync::Arc;

/// How a day run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The ledger was built and committed.
    Ok,
    /// Inputs unchanged since the last successful run: nothing to do.
    Skipped,
    /// The run failed (the error column says why); the ledger was left as it was.
    Failed,
    /// The run refused to replace the committed day (no input, or too large a shrink; the
    /// error column says which); the ledger was left as it was.
    Refused,
    /// Written for a neighbouring day by another day's run that settled a transaction they
    /// share otherwise than this day's committed ledger (the error column says which run and
    /// how many transactions): the day must be rebuilt, and a backfill over it does not skip it.
    Stale,
}

impl Outcome {
    /// The value stored in `runs.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Stale => "stale",
        }
    }
}

/// One row of `runs`.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The invocation (shared by every day of one backfill).
    pub run_id: String,
    /// `ledger` or `backfill`.
    pub command: &'static str,
    /// The event day.
    pub day: NaiveDate,
    /// Start, µs since the epoch.
    pub started_at: i64,
    /// End, µs since the epoch.
    pub finished_at: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The inputs key (see the module docs).
    pub inputs_key: Option<String>,
    /// Raw files read.
    pub input_files: Option<i64>,
    /// Raw rows read.
    pub rows_read: Option<i64>,
    /// Ledger rows written.
    pub ledger_rows: Option<i64>,
    /// Ledger amount in cents.
    pub ledger_amount_cents: Option<i128>,
    /// The fingerprint's row hash (hex).
    pub row_hash: Option<String>,
    /// The ledger's Delta version holding the day.
    pub ledger_version: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Rows of arrival day D without an `event_time`.
    pub rows_without_event_time: Option<i64>,
    /// The `ledger_conflicts` version holding the day's conflicts.
    pub conflicts_version: Option<i64>,
}

impl RunRecord {
    /// A row with the run's identity and outcome; the figures are filled in by the caller.
    pub fn new(
        run_id: &str,
        command: &'static str,
        day: NaiveDate,
        started_at: i64,
        finished_at: i64,
        outcome: Outcome,
    ) -> Self {
        Self {
            run_id: run_id.to_string(),
            command,
            day,
            started_at,
            finished_at,
            outcome,
            inputs_key: None,
            input_files: None,
            rows_read: None,
            ledger_rows: None,
            ledger_amount_cents: None,
            row_hash: None,
            ledger_version: None,
            error: None,
            rows_without_event_time: None,
            conflicts_version: None,
        }
    }
}

fn batch(records: &[RunRecord]) -> Result<RecordBatch> {
    let ts = |f: &dyn Fn(&RunRecord) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(f)).with_timezone("UTC"),
        )
    };
    let text = |f: &dyn Fn(&RunRecord) -> Option<String>| -> ArrayRef {
        Arc::new(records.iter().map(f).collect::<StringArray>())
    };
    let int = |f: &dyn Fn(&RunRecord) -> Option<i64>| -> ArrayRef {
        Arc::new(records.iter().map(f).collect::<Int64Array>())
    };
    let amount = records
        .iter()
        .map(|r| r.ledger_amount_cents)
        .collect::<Decimal128Array>()
        .with_precision_and_scale(38, schema::AMOUNT_SCALE)?;
    let columns: Vec<ArrayRef> = vec![
        text(&|r| Some(r.run_id.clone())),
        text(&|r| Some(r.command.to_string())),
        Arc::new(Date32Array::from_iter_values(
            records.iter().map(|r| schema::date32(r.day)),
        )),
        ts(&|r| r.started_at),
        ts(&|r| r.finished_at),
        text(&|r| Some(r.outcome.as_str().to_string())),
        text(&|r| r.inputs_key.clone()),
        int(&|r| r.input_files),
        int(&|r| r.rows_read),
        int(&|r| r.ledger_rows),
        Arc::new(amount),
        text(&|r| r.row_hash.clone()),
        int(&|r| r.ledger_version),
        text(&|r| r.error.clone()),
        text(&|_| Some(env!("CARGO_PKG_VERSION").to_string())),
        int(&|r| r.rows_without_event_time),
        int(&|r| r.conflicts_version),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&RUNS), columns)?)
}

/// Appends run rows to `runs` (creating the table on first use).
pub async fn append(lake: &Lake, records: &[RunRecord]) -> Result<u64> {
    append_to(&open(lake).await?, records).await
}

/// Opens `runs` (creating it on first use) for [`append_to`]. A job can open it while it works,
/// so that recording its outcome does not wait for the log replay: tens of milliseconds on a
/// table many commits past its last checkpoint.
pub async fn open(lake: &Lake) -> Result<DeltaTable> {
    let url = lake.url_of(layout::RUNS)?;
    let table = delta::open_or_create(lake, &url, "runs", &RUNS, &[], &[]).await?;
    // A `runs` table of an older tally lacks the newer columns: added once.
    delta::ensure_columns(table, &RUNS).await
}

/// Appends run rows to `table` (from [`open`]; brought up to date with the log first, so commits
/// made since it was opened are not lost).
pub async fn append_to(table: &DeltaTable, records: &[RunRecord]) -> Result<u64> {
    let meta = HashMap::from([(
        "tally".to_string(),
        serde_json::json!({ "job": "runs", "rows": records.len() }),
    )]);
    delta::append(table, vec![batch(records)?], meta).await
}

/// The inputs key of `day`'s last run that left a good ledger (`ok` or `skipped`), if any and
/// if no `stale` row came after it.
pub async fn last_good_key(lake: &Lake, day: NaiveDate) -> Result<Option<String>> {
    let url = lake.url_of(layout::RUNS)?;
    let table = match delta::open(lake, &url).await {
        Ok(t) => t,
        Err(crate::TallyError::Delta(deltalake::DeltaTableError::NotATable(_))) => return Ok(None),
        Err(e) => return Err(e),
    };
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let day_value = ScalarValue::Date32(Some(schema::date32(day)));
    let rows = ctx
        .read_table(table.table_provider().await?)?
        .filter(
            col("day")
                .eq(lit(day_value))
                .and(col("outcome").in_list(vec![lit("ok"), lit("skipped"), lit("stale")], false)),
        )?
        .sort(vec![col("finished_at").sort(false, true)])?
        .limit(0, Some(1))?
        .select(vec![col("inputs_key"), col("outcome")])?
        .collect()
        .await?;
    Ok(rows.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        let text = |i: usize| -> Option<String> {
            let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).ok()?;
            let s = c.as_string::<i32>();
            (!arrow::array::Array::is_null(s, 0)).then(|| s.value(0).to_string())
        };
        if text(1).as_deref() == Some(Outcome::Stale.as_str()) {
            return None;
        }
        text(0)
    }))
}
