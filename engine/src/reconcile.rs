//! `tally reconcile --date D`: the ledger against the live view, per partner and
//! currency, with a verdict.
//!
//! The comparison is `sql/reconcile.sql`. Before it runs, the job checks that both sides can
//! be compared at all — the ledger has day D, and the live view still holds D (retention) and
//! has seen past its end (watermark) — because a verdict on half a day would be noise. Every
//! run is appended to the Delta table `reconciliations`, so drift has a history to query.

use crate::delta;
use crate::error::{Result, TallyError};
use crate::jobs_sql;
use crate::lake::layout;
use crate::schema::{self, RECONCILIATIONS};
use crate::session::TallySession;
use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Decimal128Type, Float64Type, Int64Type};
use chrono::{Days, NaiveDate, NaiveTime};
use datafusion::common::ScalarValue;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// One partner's figures in one currency for the day.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerDrift {
    /// The partner.
    pub partner_id: Option<String>,
    /// The currency of every amount in this row (amounts of different currencies are never
    /// added together).
    pub currency: Option<String>,
    /// Transactions in the ledger.
    pub ledger_events: i64,
    /// Of those, with a status other than `ok`.
    pub ledger_errors: i64,
    /// Ledger amount in cents (exact).
    pub ledger_amount_cents: i128,
    /// Events in the live view.
    pub live_events: i64,
    /// Errors in the live view.
    pub live_errors: i64,
    /// Live view amount in cents.
    pub live_amount_cents: i128,
    /// Events recorded in `live_late` for the day.
    pub late_events: i64,
    /// Their amount in cents.
    pub late_amount_cents: i128,
    /// Drift of live_view alone against the ledger.
    pub raw_drift: f64,
    /// Drift left once late events are taken into account.
    pub unexplained_drift: f64,
    /// `unexplained_drift` beyond the threshold.
    pub drifting: bool,
}

/// What a reconciliation found.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// The event day.
    pub day: NaiveDate,
    /// This run's id (also in `reconciliations`).
    pub run_id: String,
    /// The threshold the verdict used.
    pub threshold: f64,
    /// Per partner, sorted by partner.
    pub partners: Vec<PartnerDrift>,
    /// Partners whose unexplained drift exceeds the threshold.
    pub drifting: usize,
    /// Ledger Delta version compared.
    pub ledger_version: Option<i64>,
    /// Live view Delta version compared.
    pub live_view_version: Option<i64>,
    /// Version of `reconciliations` holding this run.
    pub recorded_version: u64,
    /// Raw files of the day's `ingest_date` folder or the next that the live mode
    /// quarantined (`live_quarantine`): their rows are in no live figure, so drift may be them.
    pub quarantined_files: Vec<String>,
}

/// Reconciles one day. Configure, then [`ReconcileJob::run`].
pub struct ReconcileJob<'a> {
    session: &'a TallySession,
    day: NaiveDate,
    threshold: f64,
}

impl<'a> ReconcileJob<'a> {
    /// Reconciles `day` with the default threshold (0.001).
    pub fn new(session: &'a TallySession, day: NaiveDate) -> Self {
        Self {
            session,
            day,
            threshold: 0.001,
        }
    }

    /// The largest acceptable unexplained drift.
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    fn params(&self) -> Result<(ScalarValue, ScalarValue, ScalarValue)> {
        let next =
            self.day
                .checked_add_days(Days::new(1))
                .ok_or_else(|| TallyError::InvalidArgument {
                    what: "date".into(),
                    message: format!("{} is out of range", self.day),
                })?;
        let ts = |d: NaiveDate| {
            ScalarValue::TimestampMicrosecond(
                Some(d.and_time(NaiveTime::MIN).and_utc().timestamp_micros()),
                Some("UTC".into()),
            )
        };
        Ok((
            ScalarValue::Date32(Some(schema::date32(self.day))),
            ts(self.day),
            ts(next),
        ))
    }

    fn version_of(&self, name: &str) -> Option<i64> {
        self.session
            .table(name)
            .ok()
            .and_then(|t| t.detail.strip_prefix("version "))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    }

    /// One scalar from a query.
    async fn scalar(&self, sql: &str, params: Vec<ScalarValue>) -> Result<ScalarValue> {
        let batches = self
            .session
            .ctx()
            .sql(sql)
            .await?
            .with_param_values(params)?
            .collect()
            .await?;
        let b = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| TallyError::Internal(format!("no row from {sql}")))?;
        Ok(ScalarValue::try_from_array(b.column(0), 0)?)
    }

    /// Refuses to compare when either side cannot cover the whole day.
    async fn check_coverage(&self) -> Result<()> {
        for (table, how) in [
            (
                layout::LEDGER,
                format!("run `tally ledger --date {}`", self.day),
            ),
            (layout::LIVE_VIEW, "run `tally live`".to_string()),
            (layout::LIVE_LATE, "run `tally live`".to_string()),
        ] {
            if self.session.table(table).is_err() {
                return Err(TallyError::TableNotFound {
                    name: format!("{table} (reconcile needs it: {how})"),
                });
            }
        }
        let live = self.session.ctx().table(layout::LIVE_VIEW).await?;
        if !live.schema().has_column_with_unqualified_name("currency") {
            return Err(TallyError::Refused {
                message: "live_view was written by an older tally that added amounts across \
                          currencies: delete live_view/ and live_late/ under the lake and rerun \
                          `tally live` to rebuild them per currency"
                    .into(),
            });
        }
        let (d, from, to) = self.params()?;
        let n = self
            .scalar("SELECT count(*) FROM ledger WHERE event_date = $1", vec![d])
            .await?;
        if n == ScalarValue::Int64(Some(0)) {
            return Err(TallyError::InvalidArgument {
                what: "date".into(),
                message: format!(
                    "the ledger has no rows for {}: run `tally ledger --date {}` first",
                    self.day, self.day
                ),
            });
        }
        let span = |v: ScalarValue| match v {
            ScalarValue::TimestampMicrosecond(t, _) => t,
            _ => None,
        };
        let oldest = span(
            self.scalar("SELECT min(window_start) FROM live_view", vec![])
                .await?,
        );
        let newest = span(
            self.scalar("SELECT max(window_start) FROM live_view", vec![])
                .await?,
        );
        let (from, to) = (span(from), span(to));
        let minute = 60_000_000;
        let text = |t: Option<i64>| {
            t.and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "nothing".into())
        };
        if oldest.zip(from).is_none_or(|(o, f)| o > f + minute) {
            return Err(TallyError::InvalidArgument {
                what: "date".into(),
                message: format!(
                    "live_view starts at {} (retention), so {} cannot be reconciled",
                    text(oldest),
                    self.day
                ),
            });
        }
        if newest.zip(to).is_none_or(|(n, t)| n < t - 2 * minute) {
            return Err(TallyError::InvalidArgument {
                what: "date".into(),
                message: format!(
                    "live_view has only reached {}; {} is not complete in the live view yet",
                    text(newest),
                    self.day
                ),
            });
        }
        Ok(())
    }

    /// Compares, records the run in `reconciliations`, and returns the report.
    pub async fn run(self) -> Result<ReconcileReport> {
        self.check_coverage().await?;
        let (d, from, to) = self.params()?;
        let batches = self
            .session
            .ctx()
            .sql(jobs_sql::RECONCILE)
            .await?
            .with_param_values(vec![d, from, to])?
            .collect()
            .await?;
        let run_id = format!("{:016x}", rand::random::<u64>());
        let run_time = chrono::Utc::now().timestamp_micros();
        let ledger_version = self.version_of(layout::LEDGER);
        let live_view_version = self.version_of(layout::LIVE_VIEW);
        let mut partners = Vec::new();
        let mut rows = Vec::new();
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let (drifts, record) =
                self.record_batch(b, &run_id, run_time, ledger_version, live_view_version)?;
            partners.extend(drifts);
            rows.push(record);
        }
        let lake = self.session.lake();
        let url = lake.url_of(layout::RECONCILIATIONS)?;
        let table =
            delta::open_or_create(lake, &url, "reconciliations", &RECONCILIATIONS, &[], &[])
                .await?;
        // Tables from before the currency column gain it (older rows read it as null).
        let table = delta::ensure_columns(table, &RECONCILIATIONS).await?;
        let drifting = partners.iter().filter(|p| p.drifting).count();
        let meta = HashMap::from([(
            "tally".to_string(),
            serde_json::json!({
                "job": "reconcile",
                "day": self.day.to_string(),
                "run_id": run_id,
                "threshold": self.threshold,
                "partners": partners.len(),
                "drifting": drifting,
            }),
        )]);
        let recorded_version = delta::append(&table, rows, meta).await?;
        let quarantined_files = self.quarantined_files().await?;
        Ok(ReconcileReport {
            day: self.day,
            run_id,
            threshold: self.threshold,
            partners,
            drifting,
            ledger_version,
            live_view_version,
            recorded_version,
            quarantined_files,
        })
    }

    /// The live mode's quarantined files of the day's `ingest_date` folder or the next.
    async fn quarantined_files(&self) -> Result<Vec<String>> {
        if self.session.table(layout::LIVE_QUARANTINE).is_err() {
            return Ok(Vec::new());
        }
        let folder = |day: NaiveDate| ScalarValue::Utf8(Some(format!("%/ingest_date={day}/%")));
        let next = self.day.checked_add_days(Days::new(1)).unwrap_or(self.day);
        let batches = self
            .session
            .ctx()
            .sql(jobs_sql::RECONCILE_QUARANTINE)
            .await?
            .with_param_values(vec![folder(self.day), folder(next)])?
            .collect()
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            let paths = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            let reasons = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8)?;
            let (paths, reasons) = (paths.as_string::<i32>(), reasons.as_string::<i32>());
            for i in 0..b.num_rows() {
                out.push(format!("{}: {}", paths.value(i), reasons.value(i)));
            }
        }
        Ok(out)
    }

    /// Turns one result batch into partner figures and a `reconciliations` batch.
    fn record_batch(
        &self,
        b: &RecordBatch,
        run_id: &str,
        run_time: i64,
        ledger_version: Option<i64>,
        live_view_version: Option<i64>,
    ) -> Result<(Vec<PartnerDrift>, RecordBatch)> {
        let n = b.num_rows();
        let col = |name: &str| -> Result<ArrayRef> {
            let want = RECONCILIATIONS.field_with_name(name)?.data_type().clone();
            let c = b
                .column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("reconcile.sql lacks {name}")))?;
            Ok(arrow::compute::cast(c, &want)?)
        };
        let partner = col("partner_id")?;
        let partner = partner.as_string::<i32>();
        let currency = col("currency")?;
        let currency = currency.as_string::<i32>();
        let ints = |name: &str| -> Result<Int64Array> {
            Ok(col(name)?.as_primitive::<Int64Type>().clone())
        };
        let decs = |name: &str| -> Result<arrow::array::Decimal128Array> {
            Ok(col(name)?.as_primitive::<Decimal128Type>().clone())
        };
        let floats = |name: &str| -> Result<Float64Array> {
            Ok(col(name)?.as_primitive::<Float64Type>().clone())
        };
        let (le, lr, la) = (
            ints("ledger_events")?,
            ints("ledger_errors")?,
            decs("ledger_amount")?,
        );
        let (ve, vr, va) = (
            ints("live_events")?,
            ints("live_errors")?,
            decs("live_amount")?,
        );
        let (te, ta) = (ints("late_events")?, decs("late_amount")?);
        let (raw, unexplained) = (floats("raw_drift")?, floats("unexplained_drift")?);
        let mut drifts = Vec::with_capacity(n);
        for i in 0..n {
            let u = unexplained.value(i);
            drifts.push(PartnerDrift {
                partner_id: (!partner.is_null(i)).then(|| partner.value(i).to_string()),
                currency: (!currency.is_null(i)).then(|| currency.value(i).to_string()),
                ledger_events: le.value(i),
                ledger_errors: lr.value(i),
                ledger_amount_cents: la.value(i),
                live_events: ve.value(i),
                live_errors: vr.value(i),
                live_amount_cents: va.value(i),
                late_events: te.value(i),
                late_amount_cents: ta.value(i),
                raw_drift: raw.value(i),
                unexplained_drift: u,
                drifting: u > self.threshold,
            });
        }
        let verdict: StringArray = drifts
            .iter()
            .map(|d| Some(if d.drifting { "drift" } else { "ok" }))
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![run_id; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![run_time; n]).with_timezone("UTC")),
            Arc::new(Date32Array::from(vec![schema::date32(self.day); n])),
            col("partner_id")?,
            col("currency")?,
            Arc::new(le),
            Arc::new(lr),
            Arc::new(la),
            Arc::new(ve),
            Arc::new(vr),
            Arc::new(va),
            Arc::new(te),
            Arc::new(ta),
            Arc::new(raw),
            Arc::new(unexplained),
            Arc::new(Float64Array::from(vec![self.threshold; n])),
            Arc::new(verdict),
            Arc::new(Int64Array::from(vec![ledger_version; n])),
            Arc::new(Int64Array::from(vec![live_view_version; n])),
        ];
        Ok((
            drifts,
            RecordBatch::try_new(Arc::clone(&RECONCILIATIONS), columns)?,
        ))
    }
}
