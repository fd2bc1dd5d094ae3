//! Which neighbouring days a run leaves stale (`sql/ledger_stale_days.sql`).
//!
//! A transaction shared by D and a day X within the bound is owned by whichever day its winning
//! copy names, and both runs agree when they read the same copies. A copy landing late in an
//! old `ingest_date` folder changes what D's rerun reads, and so the owner, while X's committed
//! ledger still reflects the copies X saw. The run then names X (in its output and as a
//! `stale` row in `runs`, which makes the next backfill over X rebuild it). How X settled each
//! transaction is read from X's `ledger_conflicts` rows, a sliver of its ledger.

use super::window::DayWindow;
use crate::delta;
use crate::error::Result;
use crate::jobs_sql;
use crate::schema::{self, EVENT_DATE};
use crate::session::TallySession;
use arrow::array::{AsArray, Date32Array, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema};
use chrono::NaiveDate;
use datafusion::datasource::MemTable;
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;
use std::sync::Arc;

/// A neighbouring day whose committed ledger disagrees with this run on some transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleDay {
    /// The day to rebuild.
    pub day: NaiveDate,
    /// Transactions it holds but should not, or lacks but should hold.
    pub transactions: u64,
}

impl StaleDay {
    /// As the commit info and the JSON output name it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"day": self.day.to_string(), "transactions": self.transactions})
    }
}

/// The days around `window`'s day that decided a transaction of `shared` (`[txn_id, day,
/// owner_day]` rows from the settlement) otherwise, as of the `ledger` and `conflicts`
/// snapshots this run read.
pub async fn find(
    session: &TallySession,
    window: &DayWindow,
    ledger: &DeltaTable,
    conflicts: &DeltaTable,
    shared: Vec<RecordBatch>,
) -> Result<Vec<StaleDay>> {
    if shared.iter().all(|b| b.num_rows() == 0) {
        return Ok(Vec::new());
    }
    let mut built = Vec::new();
    for day in window.neighbour_days() {
        if delta::partition_exists(ledger, EVENT_DATE, &day.to_string()).await? {
            built.push(schema::date32(day));
        }
    }
    if built.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = session.job_context(1)?;
    let schema = shared[0].schema();
    ctx.register_table("shared", Arc::new(MemTable::try_new(schema, vec![shared])?))?;
    let built_schema = Arc::new(Schema::new(vec![Field::new(
        "day",
        DataType::Date32,
        false,
    )]));
    let built_batch = RecordBatch::try_new(
        Arc::clone(&built_schema),
        vec![Arc::new(Date32Array::from_iter_values(
            built.iter().copied(),
        ))],
    )?;
    ctx.register_table(
        "built_days",
        Arc::new(MemTable::try_new(built_schema, vec![vec![built_batch]])?),
    )?;
    let days = built
        .iter()
        .map(|d| lit(ScalarValue::Date32(Some(*d))))
        .collect();
    let theirs = ctx
        .read_table(conflicts.table_provider().await?)?
        .filter(col(EVENT_DATE).in_list(days, false))?
        .select(vec![
            col("txn_id"),
            col(EVENT_DATE),
            col("is_winner"),
            col("copy_event_date"),
            col("reason"),
        ])?;
    ctx.register_table("neighbour_conflicts", theirs.into_view())?;
    let rows = ctx
        .sql(jobs_sql::LEDGER_STALE_DAYS)
        .await?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in rows {
        let days = b.column(0).as_primitive::<Date32Type>();
        let counts = arrow::compute::cast(b.column(1), &DataType::Int64)?;
        let counts = counts.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if let Some(day) = schema::from_date32(days.value(i)) {
                out.push(StaleDay {
                    day,
                    transactions: counts.value(i) as u64,
                });
            }
        }
    }
    Ok(out)
}
