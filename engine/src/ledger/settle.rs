//! Settling the transactions the main plan could not write on its own (`sql/ledger_settle.sql`).
//!
//! Two kinds reach here, usually a sliver of the day: transactions whose copies disagree on the
//! payload, and transactions with copies that name a neighbouring day. The settlement ranks all
//! of a transaction's copies at once and says which day owns it; D's ledger gets the rows it
//! owns, and every transaction with more than one distinct (payload, day) gets its rows in
//! `ledger_conflicts`, with the reason:
//! - `payload`: the copies disagree on partner, amount, currency or status (all naming D);
//! - `owned_here`: the copies name D and another day, and the winning copy names D;
//! - `owned_by_other_day`: the winning copy names another day, so D's ledger leaves it out;
//! - `spread_beyond_bound`: the copies name days further apart than the ledger's bound
//!   ([`SPREAD_DAYS`](super::window::SPREAD_DAYS)); D settles it on the copies it sees, which days that cannot see each
//!   other's copies may not agree on, so finance must look at it.

use super::window::DayWindow;
use crate::error::Result;
use crate::jobs_sql;
use crate::schema::{self, EVENT_DATE};
use crate::session::TallySession;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{cast, col, lit, when};
use std::ops::Not;
use std::sync::Arc;

/// What the settlement decided.
pub struct Settled {
    /// D's ledger rows among the settled transactions, ordered like every ledger file.
    pub ledger_rows: Vec<RecordBatch>,
    /// `ledger_conflicts` rows of day D.
    pub conflicts: Vec<RecordBatch>,
    /// Transactions D's ledger leaves to another day.
    pub ceded: u64,
    /// Transactions whose copies name days further apart than [`SPREAD_DAYS`](super::window::SPREAD_DAYS).
    pub beyond_bound: u64,
    /// `[txn_id, day, owner_day]`: each transaction shared with another day (a day one of its
    /// copies names, never D) and the day D's settlement gave it to, for
    /// [`super::stale_days`].
    pub shared: Vec<RecordBatch>,
}

/// The settlement's inputs.
pub struct ToSettle {
    /// `[txn_key, variants]` batches of disputed transactions, and their schema.
    pub disputed: (SchemaRef, Vec<RecordBatch>),
    /// D's ledger rows taken out for settling (ledger file columns), and their schema.
    pub day_rows: (SchemaRef, Vec<RecordBatch>),
    /// The neighbours' copies, and their schema.
    pub neighbour_copies: (SchemaRef, Vec<RecordBatch>),
}

impl ToSettle {
    /// Nothing to settle.
    pub fn is_empty(&self) -> bool {
        [&self.disputed.1, &self.day_rows.1, &self.neighbour_copies.1]
            .iter()
            .all(|b| b.iter().all(|b| b.num_rows() == 0))
    }
}

/// Runs the settlement of `window`'s day over `input`.
pub async fn settle(
    session: &TallySession,
    window: &DayWindow,
    input: ToSettle,
) -> Result<Settled> {
    // One partition: the input is a sliver of the day, and a fair pool gives each spillable
    // consumer an equal share, so a window sort per partition left each too little for a day
    // where every transaction is disputed.
    let ctx = session.job_context(1)?;
    for (name, (schema, batches)) in [
        ("disputed_txns", input.disputed),
        ("day_rows", input.day_rows),
        ("neighbour_copies", input.neighbour_copies),
    ] {
        // One batch per table: the rows arrive as slivers of many batches, some read back
        // from files written early (Utf8 where the plan's rows are Utf8View), so each is cast
        // to the table's schema first.
        let batches = batches
            .iter()
            .map(|b| schema::conform(b, &schema))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let one = arrow::compute::concat_batches(&schema, &batches)?;
        ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![vec![one]])?))?;
    }
    let settled = ctx
        .sql(jobs_sql::LEDGER_SETTLE)
        .await?
        .with_param_values(window.settle_params())?
        .cache()
        .await?;
    let ledger_rows = settled
        .clone()
        .filter(col("is_winner").and(col("owned_here")))?
        .select(vec![
            col("txn_id"),
            col("partner_id"),
            col("winner_event_time").alias("event_time"),
            cast(col("winner_event_time"), DataType::Date32).alias(EVENT_DATE),
            col("amount"),
            col("currency"),
            col("status"),
            col("txn_first_ingest_time").alias("first_ingest_time"),
            col("txn_copies").alias("copies"),
        ])?
        .sort(vec![
            col("partner_id").sort(true, true),
            col("txn_id").sort(true, true),
        ])?
        .collect()
        .await?;
    let ceded = settled
        .clone()
        .filter(col("is_winner").and(col("owned_here").not()))?
        .count()
        .await? as u64;
    let beyond_bound = settled
        .clone()
        .filter(col("is_winner").and(col("beyond_bound")))?
        .count()
        .await? as u64;
    let shared = settled
        .clone()
        .filter(
            col("spans_days")
                .and(col("beyond_bound").not())
                .and(col("copy_day").not_eq(lit(window.day_value()))),
        )?
        .select(vec![
            col("txn_id"),
            col("copy_day").alias("day"),
            col("owner_day"),
        ])?
        .distinct()?
        .collect()
        .await?;
    let reason = when(col("spans_days").not(), lit("payload"))
        .when(col("beyond_bound"), lit("spread_beyond_bound"))
        .when(col("owned_here"), lit("owned_here"))
        .otherwise(lit("owned_by_other_day"))?;
    let day = lit(window.day_value());
    let conflicts = settled
        .filter(col("variants").gt(lit(1i64)))?
        .select(vec![
            col("txn_id"),
            day.alias(EVENT_DATE),
            col("partner_id"),
            col("amount"),
            col("currency"),
            col("status"),
            col("first_ingest_time"),
            col("copies"),
            col("is_winner"),
            reason.alias("reason"),
            col("copy_day").alias("copy_event_date"),
        ])?
        .collect()
        .await?;
    Ok(Settled {
        ledger_rows,
        conflicts,
        ceded,
        beyond_bound,
        shared,
    })
}
