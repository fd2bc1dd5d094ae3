//! `raw_payments`: the raw Parquet lake as a table, pruned by arrival day from event-time filters.
//!
//! The raw lake is partitioned by arrival day (`ingest_date`), but analysts ask about event
//! time. A copy of an event cannot land before it happened, so `event_time >= T` implies
//! `ingest_date >= date(T)`; we allow one day of slack for partner clocks running ahead. This
//! provider adds that implied partition filter to the scan, so a one-day event-time query over
//! years of history lists and opens only the recent partitions instead of every file.
//! Everything else is DataFusion's `ListingTable`. It implements no `insert_into`: raw data is
//! never writable through tally.

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit};
use std::sync::Arc;

/// Days of slack between an event's time and its earliest possible arrival day.
const CLOCK_SKEW_DAYS: i32 = 1;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The raw events table: a Parquet listing with event-time-to-arrival-day pruning.
#[derive(Debug)]
pub struct RawPaymentsTable {
    inner: Arc<ListingTable>,
}

impl RawPaymentsTable {
    /// Wraps a listing table whose partition column is `ingest_date` (DATE).
    pub fn new(inner: ListingTable) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

/// The lower bound, in microseconds, that a filter puts on `event_time`, if any.
fn event_time_lower_bound(expr: &Expr) -> Option<i64> {
    let is_event_time = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "event_time");
    let micros = |e: &Expr| match e {
        Expr::Literal(ScalarValue::TimestampMicrosecond(Some(v), _), _) => Some(*v),
        Expr::Literal(ScalarValue::TimestampMillisecond(Some(v), _), _) => Some(v * 1_000),
        Expr::Literal(ScalarValue::TimestampSecond(Some(v), _), _) => Some(v * 1_000_000),
        Expr::Literal(ScalarValue::TimestampNanosecond(Some(v), _), _) => Some(v / 1_000),
        _ => None,
    };
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::GtEq | Operator::Gt | Operator::Eq if is_event_time(left) => micros(right),
            Operator::LtEq | Operator::Lt | Operator::Eq if is_event_time(right) => micros(left),
            Operator::And => event_time_lower_bound(left).or_else(|| event_time_lower_bound(right)),
            _ => None,
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            ..
        }) if is_event_time(expr) => micros(low),
        _ => None,
    }
}

/// Partition filters implied by the event-time filters of a scan.
pub fn implied_ingest_date_filters(filters: &[Expr]) -> Vec<Expr> {
    filters
        .iter()
        .filter_map(event_time_lower_bound)
        .map(|micros| {
            let day = micros.div_euclid(MICROS_PER_DAY) as i32 - CLOCK_SKEW_DAYS;
            col(crate::schema::INGEST_DATE).gt_eq(lit(ScalarValue::Date32(Some(day))))
        })
        .collect()
}

#[async_trait]
impl TableProvider for RawPaymentsTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut all = filters.to_vec();
        all.extend(implied_ingest_date_filters(filters));
        match self.inner.scan(state, projection, &all, limit).await {
            Err(e) if e.to_string().contains("Parquet") => {
                Err(self.name_bad_file(state, &all, e).await)
            }
            other => other,
        }
    }
}

impl RawPaymentsTable {
    /// A scan that failed reading footers (statistics are collected at planning): names the
    /// first file of the scan's partitions whose footer is not Parquet, reading only those
    /// footers, or returns `error` as it was.
    async fn name_bad_file(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        error: datafusion::error::DataFusionError,
    ) -> datafusion::error::DataFusionError {
        use futures::TryStreamExt;
        let Some(table_path) = self.inner.table_paths().first() else {
            return error;
        };
        let Ok(store) = state.runtime_env().object_store(table_path) else {
            return error;
        };
        let cols = &self.inner.options().table_partition_cols;
        let files: Vec<_> = match datafusion::datasource::listing::helpers::pruned_partition_list(
            state,
            store.as_ref(),
            table_path,
            filters,
            ".parquet",
            cols,
        )
        .await
        {
            Ok(stream) => stream.try_collect().await.unwrap_or_default(),
            Err(_) => return error,
        };
        for f in files {
            if let Some(message) = crate::raw_files::footer_problem(&store, &f.object_meta).await {
                return datafusion::error::DataFusionError::External(Box::new(
                    crate::TallyError::BadRawFile {
                        file: f.object_meta.location.to_string(),
                        message,
                    },
                ));
            }
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(micros),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn lower_bound_becomes_day_minus_skew() {
        // 2026-11-21T00:00:00Z is day 20778 since the epoch.
        let t = 20_778 * MICROS_PER_DAY + 5;
        let f = implied_ingest_date_filters(&[col("event_time").gt_eq(ts(t))]);
        assert_eq!(
            f,
            vec![col("ingest_date").gt_eq(lit(ScalarValue::Date32(Some(20_777))))]
        );
    }

    #[test]
    fn mirrored_and_between_forms_are_understood() {
        let t = 20_778 * MICROS_PER_DAY;
        assert_eq!(
            implied_ingest_date_filters(&[ts(t).lt(col("event_time"))]).len(),
            1
        );
        let between = Expr::Between(Between::new(
            Box::new(col("event_time")),
            false,
            Box::new(ts(t)),
            Box::new(ts(t + MICROS_PER_DAY)),
        ));
        assert_eq!(implied_ingest_date_filters(&[between]).len(), 1);
    }

    #[test]
    fn upper_bounds_and_other_columns_imply_nothing() {
        let t = 20_778 * MICROS_PER_DAY;
        assert!(implied_ingest_date_filters(&[col("event_time").lt(ts(t))]).is_empty());
        assert!(implied_ingest_date_filters(&[col("ingest_time").gt(ts(t))]).is_empty());
    }
}
