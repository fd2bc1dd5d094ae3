//! What a ledger run reports ([`LedgerMetrics`]), and the scan that counts one of its figures
//! when the raw files' footers cannot.

use super::fingerprint::Fingerprint;
use super::LedgerJob;
use crate::error::Result;
use crate::schema;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use chrono::NaiveDate;
use std::time::Duration;

/// What a ledger run did.
#[derive(Debug, Clone)]
pub struct LedgerMetrics {
    /// The event day.
    pub day: NaiveDate,
    /// Raw files read (the day's arrival window and its neighbours').
    pub files_read: usize,
    /// Raw rows in those files (rows of other days are skipped by the plan).
    pub rows_read: u64,
    /// Rows of arrival day D without an `event_time`: billable on no day, counted here.
    pub rows_without_event_time: u64,
    /// Ledger rows written.
    pub ledger_rows: u64,
    /// Transactions whose copies disagreed or named another day (settled apart).
    pub disputed: u64,
    /// Transactions left to another day because their winning copy names it.
    pub ceded: u64,
    /// Transactions whose copies name days further apart than the ledger's bound (two days):
    /// settled on the copies this run saw, listed in `ledger_conflicts` for finance to check.
    pub beyond_bound: u64,
    /// Neighbouring days whose committed ledger settled a shared transaction otherwise: each
    /// must be rebuilt (recorded as `stale` in `runs`, which a backfill picks up).
    pub stale_days: Vec<super::stale_days::StaleDay>,
    /// Rows written to `ledger_conflicts` (one per distinct payload and day).
    pub conflict_rows: u64,
    /// Disputed transactions whose variants went to disk because the memory pool refused them.
    pub disputes_spilled: u64,
    /// Passes over the day's transaction keys ([`super::passes`]).
    pub passes: usize,
    /// The content fingerprint.
    pub fingerprint: Fingerprint,
    /// Delta version of `ledger` that holds the day.
    pub version: u64,
    /// Delta version of `ledger_conflicts` that holds the day's conflicts.
    pub conflicts_version: u64,
    /// Files the commit replaced.
    pub removed_files: usize,
    /// Files added.
    pub added_files: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// What identifies this run's inputs and logic (see [`inputs_key`](super::inputs_key)).
    pub inputs_key: String,
}

impl LedgerJob<'_> {
    /// Rows of arrival day D with a NULL `event_time`, counted by a scan: for files whose
    /// footers carry no null counts.
    pub(super) async fn count_rows_without_event_time(&self) -> Result<u64> {
        let sql = "SELECT count(*) FROM day_arrivals WHERE ingest_date = $1 AND event_time IS NULL";
        let batches = self
            .session
            .ctx()
            .sql(sql)
            .await?
            .with_param_values(vec![datafusion::common::ScalarValue::Date32(Some(
                schema::date32(self.day),
            ))])?
            .collect()
            .await?;
        Ok(batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0)) as u64)
    }
}
