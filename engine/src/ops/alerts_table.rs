//! The Delta table `alerts`: every alert the live mode sent, appended after delivery, so
//! operations has a history to query and a restarted loop knows which partners are firing.

use super::alert_rule::{Alert, PartnerState};
use crate::delta;
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::schema::ALERTS;
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use std::collections::HashMap;
use std::sync::Arc;

/// The state and episode of each partner's newest alert (`sql/alerts_latest.sql`).
const ALERTS_LATEST: &str = include_str!("../../../sql/alerts_latest.sql");

/// Rows a restarted loop sends again (`sql/alerts_pending.sql`).
const ALERTS_PENDING: &str = include_str!("../../../sql/alerts_pending.sql");

/// What became of an alert's delivery, as the `delivery` column says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The webhook accepted it.
    Delivered,
    /// The webhook answered a 4xx (other than 408/429): it will never take it.
    Refused,
    /// Not accepted yet when the loop stopped: the next start sends it again.
    Pending,
    /// No webhook is configured: evaluated and recorded only.
    NoWebhook,
}

impl Outcome {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Refused => "refused",
            Outcome::Pending => "pending",
            Outcome::NoWebhook => "no_webhook",
        }
    }
}

/// One alert with what became of its delivery.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The alert.
    pub alert: Alert,
    /// What became of it.
    pub outcome: Outcome,
    /// When the webhook accepted it (µs); `None` unless delivered.
    pub delivered_at_us: Option<i64>,
    /// POST attempts made.
    pub attempts: u64,
}

/// A stable id for one state change of one partner's minute: a receiver can drop a copy sent
/// again after a restart.
pub fn alert_id(a: &Alert) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(a.state.as_str().as_bytes());
    h.update(&[0]);
    h.update(a.partner_id.as_bytes());
    h.update(&[0]);
    h.update(&a.window_start_us.to_le_bytes());
    format!("{:016x}", h.digest())
}

/// Opens `alerts`, creating it on first use.
pub async fn open(lake: &Lake) -> Result<DeltaTable> {
    let url = lake.url_of(layout::ALERTS)?;
    delta::open_or_create(lake, &url, layout::ALERTS, &ALERTS, &[], &[]).await
}

/// Appends `rows` in one commit.
pub async fn append(table: &DeltaTable, rows: &[Recorded]) -> Result<u64> {
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| alert_id(&r.alert)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.alert.state.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.alert.partner_id.as_str()),
        )),
        ts(rows.iter().map(|r| Some(r.alert.window_start_us)).collect()),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| saturating(r.alert.events)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| saturating(r.alert.errors)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.alert.error_rate),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.alert.threshold),
        )),
        ts(rows.iter().map(|r| Some(r.alert.detected_at_us)).collect()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.outcome.as_str()),
        )),
        ts(rows.iter().map(|r| r.delivered_at_us).collect()),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| saturating(r.attempts)),
        )),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&ALERTS), columns)?;
    let meta = HashMap::from([(
        "tally".to_string(),
        serde_json::json!({ "job": "alerts", "rows": rows.len() }),
    )]);
    delta::append(table, vec![batch], meta).await
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs `sql` over the `alerts` table; no rows when the table does not exist yet.
async fn query(lake: &Lake, sql: &str) -> Result<Vec<RecordBatch>> {
    let url = lake.url_of(layout::ALERTS)?;
    let table = match delta::open(lake, &url).await {
        Ok(t) => t,
        Err(TallyError::Delta(deltalake::DeltaTableError::NotATable(_))) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table(layout::ALERTS, table.table_provider().await?)?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Each partner's state by its newest alert: firing since its minute, or quiet after the
/// minute that resolved it. Empty when the table does not exist yet.
pub async fn latest_states(lake: &Lake) -> Result<Vec<(String, PartnerState)>> {
    let batches = query(lake, ALERTS_LATEST).await?;
    let mut out = Vec::new();
    for b in &batches {
        let partner = cast(b.column(0), &DataType::Utf8)?;
        let partner = partner.as_string::<i32>();
        let state = cast(b.column(1), &DataType::Utf8)?;
        let state = state.as_string::<i32>();
        let minute = cast(
            b.column(2),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let minute = minute.as_primitive::<TimestampMicrosecondType>();
        for i in 0..b.num_rows() {
            if partner.is_null(i) || minute.is_null(i) {
                continue;
            }
            let m = minute.value(i);
            let s = if state.value(i) == "firing" {
                PartnerState::Firing {
                    since: m,
                    last_bad: m,
                }
            } else {
                PartnerState::Quiet { after: m }
            };
            out.push((partner.value(i).to_string(), s));
        }
    }
    Ok(out)
}

/// Alerts recorded `pending` and never delivered or refused since, oldest first: what a
/// restarted loop owes the webhook. Empty when the table does not exist yet.
pub async fn pending(lake: &Lake) -> Result<Vec<Alert>> {
    let batches = query(lake, ALERTS_PENDING).await?;
    let mut out = Vec::new();
    for b in &batches {
        let text = |i: usize| cast(b.column(i), &DataType::Utf8);
        let micros = |i: usize| {
            cast(
                b.column(i),
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )
        };
        let (state, partner) = (text(0)?, text(1)?);
        let (state, partner) = (state.as_string::<i32>(), partner.as_string::<i32>());
        let (window, detected) = (micros(2)?, micros(7)?);
        let window = window.as_primitive::<TimestampMicrosecondType>();
        let detected = detected.as_primitive::<TimestampMicrosecondType>();
        let ints = |i: usize| cast(b.column(i), &DataType::Int64);
        let (events, errors) = (ints(3)?, ints(4)?);
        let events = events.as_primitive::<arrow::datatypes::Int64Type>();
        let errors = errors.as_primitive::<arrow::datatypes::Int64Type>();
        let floats = |i: usize| cast(b.column(i), &DataType::Float64);
        let (rate, threshold) = (floats(5)?, floats(6)?);
        let rate = rate.as_primitive::<arrow::datatypes::Float64Type>();
        let threshold = threshold.as_primitive::<arrow::datatypes::Float64Type>();
        for i in 0..b.num_rows() {
            let state = match state.value(i) {
                "firing" => super::alert_rule::AlertState::Firing,
                "resolved" => super::alert_rule::AlertState::Resolved,
                other => {
                    tracing::warn!(
                        state = other,
                        "alerts: a pending row with an unknown state is not sent again"
                    );
                    continue;
                }
            };
            out.push(Alert {
                state,
                partner_id: partner.value(i).to_string(),
                window_start_us: window.value(i),
                events: u64::try_from(events.value(i)).unwrap_or(0),
                errors: u64::try_from(errors.value(i)).unwrap_or(0),
                error_rate: rate.value(i),
                threshold: threshold.value(i),
                detected_at_us: detected.value(i),
            });
        }
    }
    Ok(out)
}
