//! What the HTTP API and the dashboard read about the live mode: `live_view` rows, partner
//! totals, the loop's status (watermark, last commit, firing alerts) and the latest
//! reconciliation per day. Queries run on a fresh session through the jobs' SQL in `sql/`,
//! with values bound as parameters.

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::ops::{Firing, LastBatch, LiveOps};
use crate::session::TallySession;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use chrono::SecondsFormat;
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Mutex;

const API_LIVE: &str = include_str!("../../../sql/api_live.sql");
const API_PARTNERS: &str = include_str!("../../../sql/api_partners.sql");
const API_RECONCILIATIONS: &str = include_str!("../../../sql/api_reconciliations.sql");
const API_QUARANTINE: &str = include_str!("../../../sql/api_quarantine.sql");
const ALERTS_LATEST: &str = include_str!("../../../sql/alerts_latest.sql");

/// The most `/api/live?minutes=` accepts: a day.
pub const MAX_MINUTES: i64 = 24 * 60;

/// One `/api/live` row (SPEC "HTTP").
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LiveRow {
    /// Start of the minute, ISO-8601 UTC.
    pub window_start: String,
    /// The partner.
    pub partner_id: Option<String>,
    /// The currency of `amount`.
    pub currency: Option<String>,
    /// Events.
    pub events: i64,
    /// Events whose status is not `ok`.
    pub errors: i64,
    /// Exact sum, as a decimal string.
    pub amount: Option<String>,
}

/// One partner's totals over the dashboard's hour.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartnerTotal {
    /// The partner.
    pub partner_id: Option<String>,
    /// Events.
    pub events: i64,
    /// Errors.
    pub errors: i64,
}

/// The latest reconciliation of one day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DayVerdict {
    /// The day (`YYYY-MM-DD`).
    pub day: String,
    /// `ok` or `drift`.
    pub verdict: String,
    /// Partner × currency rows compared.
    pub partners: i64,
    /// Of those, over the threshold.
    pub drifting: i64,
    /// The largest unexplained drift.
    pub max_unexplained_drift: Option<f64>,
    /// The run's threshold.
    pub threshold: Option<f64>,
    /// When it ran (ISO-8601 UTC).
    pub run_time: String,
}

/// `/api/status` (SPEC "HTTP").
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The live watermark (ISO-8601 UTC), `null` before the first batch.
    pub watermark: Option<String>,
    /// Now minus the watermark.
    pub watermark_lag_seconds: Option<f64>,
    /// When the newest live batch committed (ISO-8601 UTC).
    pub last_commit: Option<String>,
    /// Seconds since then: how stale the live view is.
    pub seconds_since_last_commit: Option<f64>,
    /// Whether an alert rule runs in this process (`false`: the firing list comes from the
    /// `alerts` table another process writes).
    pub alert_rule: bool,
    /// Partners whose alert is firing.
    pub firing: Vec<FiringJson>,
    /// The latest reconciliation verdict per day, newest first.
    pub reconciliations: Vec<DayVerdict>,
    /// Raw files the live mode quarantined, in all (`live_quarantine`).
    pub quarantined_files: i64,
    /// The newest of them (at most 20), with why.
    pub quarantine: Vec<QuarantinedJson>,
}

/// A raw file the live mode did not read.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedJson {
    /// Its path under the lake.
    pub path: String,
    /// Why it was not read.
    pub reason: String,
    /// When (ISO-8601 UTC).
    pub at: String,
}

/// The quarantined files' count and the newest of them.
async fn quarantine(session: &TallySession) -> Result<(i64, Vec<QuarantinedJson>)> {
    if !has(session, layout::LIVE_QUARANTINE) {
        return Ok((0, Vec::new()));
    }
    let mut total = 0;
    let mut out = Vec::new();
    for b in &run(session, API_QUARANTINE, Vec::new()).await? {
        let (path, reason, at, count) = (strings(b, 0)?, strings(b, 1)?, times(b, 2)?, ints(b, 3)?);
        for r in 0..b.num_rows() {
            total = count[r];
            out.push(QuarantinedJson {
                path: path[r].clone().unwrap_or_default(),
                reason: reason[r].clone().unwrap_or_default(),
                at: at[r].map(iso).unwrap_or_default(),
            });
        }
    }
    Ok((total, out))
}

/// A firing alert.
#[derive(Debug, Clone, Serialize)]
pub struct FiringJson {
    /// The partner.
    pub partner_id: String,
    /// The minute its episode started (ISO-8601 UTC).
    pub since: String,
}

/// Formats µs since the epoch as ISO-8601 UTC (`2026-12-04T10:01:00Z`).
pub fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

fn minutes_param(minutes: i64) -> ScalarValue {
    ScalarValue::new_interval_mdn(0, 0, minutes.clamp(1, MAX_MINUTES) * 60 * 1_000_000_000)
}

fn has(session: &TallySession, table: &str) -> bool {
    session.tables().iter().any(|t| t.name == table)
}

async fn run(
    session: &TallySession,
    sql: &str,
    params: Vec<ScalarValue>,
) -> Result<Vec<RecordBatch>> {
    let mut df = session.ctx().sql(sql).await?;
    if !params.is_empty() {
        df = df.with_param_values(params)?;
    }
    let mut stream = df.execute_stream().await?;
    let mut out = Vec::new();
    while let Some(b) = stream.next().await {
        out.push(b?);
    }
    Ok(out)
}

fn column(b: &RecordBatch, i: usize, to: &DataType) -> Result<ArrayRef> {
    Ok(cast(b.column(i), to)?)
}

fn strings(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>> {
    let c = column(b, i, &DataType::Utf8)?;
    let s = c.as_string::<i32>();
    Ok((0..s.len())
        .map(|r| (!s.is_null(r)).then(|| s.value(r).to_string()))
        .collect())
}

fn ints(b: &RecordBatch, i: usize) -> Result<Vec<i64>> {
    let c = column(b, i, &DataType::Int64)?;
    let v = c.as_primitive::<Int64Type>();
    Ok((0..v.len())
        .map(|r| if v.is_null(r) { 0 } else { v.value(r) })
        .collect())
}

fn times(b: &RecordBatch, i: usize) -> Result<Vec<Option<i64>>> {
    let c = column(b, i, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let v = c.as_primitive::<TimestampMicrosecondType>();
    Ok((0..v.len())
        .map(|r| (!v.is_null(r)).then(|| v.value(r)))
        .collect())
}

/// `/api/live?minutes=N`: `live_view`'s last `minutes` minutes; empty without a live view.
pub async fn live_rows(session: &TallySession, minutes: i64) -> Result<Vec<LiveRow>> {
    if !has(session, layout::LIVE_VIEW) {
        return Ok(Vec::new());
    }
    let batches = run(session, API_LIVE, vec![minutes_param(minutes)]).await?;
    let mut out = Vec::new();
    for b in &batches {
        let window = times(b, 0)?;
        let partner = strings(b, 1)?;
        let currency = strings(b, 2)?;
        let events = ints(b, 3)?;
        let errors = ints(b, 4)?;
        // Decimal → Utf8 keeps every digit (the scale's trailing zeros included).
        let amount = strings(b, 5)?;
        for r in 0..b.num_rows() {
            let Some(w) = window[r] else { continue };
            out.push(LiveRow {
                window_start: iso(w),
                partner_id: partner[r].clone(),
                currency: currency[r].clone(),
                events: events[r],
                errors: errors[r],
                amount: amount[r].clone(),
            });
        }
    }
    Ok(out)
}

/// Each partner's events and errors over the last `minutes` minutes, busiest first.
pub async fn partner_totals(session: &TallySession, minutes: i64) -> Result<Vec<PartnerTotal>> {
    if !has(session, layout::LIVE_VIEW) {
        return Ok(Vec::new());
    }
    let batches = run(session, API_PARTNERS, vec![minutes_param(minutes)]).await?;
    let mut out = Vec::new();
    for b in &batches {
        let partner = strings(b, 0)?;
        let events = ints(b, 1)?;
        let errors = ints(b, 2)?;
        for r in 0..b.num_rows() {
            out.push(PartnerTotal {
                partner_id: partner[r].clone(),
                events: events[r],
                errors: errors[r],
            });
        }
    }
    Ok(out)
}

/// The latest reconciliation verdict per day; empty before the first `tally reconcile`.
pub async fn reconciliations(session: &TallySession) -> Result<Vec<DayVerdict>> {
    if !has(session, layout::RECONCILIATIONS) {
        return Ok(Vec::new());
    }
    let batches = run(session, API_RECONCILIATIONS, Vec::new()).await?;
    let mut out = Vec::new();
    for b in &batches {
        let day = strings(b, 0)?;
        let run_time = times(b, 2)?;
        let verdict = strings(b, 3)?;
        let partners = ints(b, 4)?;
        let drifting = ints(b, 5)?;
        let floats = |i: usize| -> Result<Vec<Option<f64>>> {
            let c = column(b, i, &DataType::Float64)?;
            let v = c.as_primitive::<Float64Type>();
            Ok((0..v.len())
                .map(|r| (!v.is_null(r)).then(|| v.value(r)))
                .collect())
        };
        let max_drift = floats(6)?;
        let threshold = floats(7)?;
        for r in 0..b.num_rows() {
            out.push(DayVerdict {
                day: day[r].clone().unwrap_or_default(),
                verdict: verdict[r].clone().unwrap_or_default(),
                partners: partners[r],
                drifting: drifting[r],
                max_unexplained_drift: max_drift[r],
                threshold: threshold[r],
                run_time: run_time[r].map(iso).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Firing alerts as the `alerts` table records them (for a server without the loop).
async fn firing_from_table(session: &TallySession) -> Result<Vec<Firing>> {
    if !has(session, layout::ALERTS) {
        return Ok(Vec::new());
    }
    let batches = run(session, ALERTS_LATEST, Vec::new()).await?;
    let mut out = Vec::new();
    for b in &batches {
        let partner = strings(b, 0)?;
        let state = strings(b, 1)?;
        let since = times(b, 2)?;
        for r in 0..b.num_rows() {
            if let (Some(p), Some("firing"), Some(s)) = (&partner[r], state[r].as_deref(), since[r])
            {
                out.push(Firing {
                    partner_id: p.clone(),
                    since_us: s,
                });
            }
        }
    }
    Ok(out)
}

/// The live loop's newest batch, read from `live_view`'s commit log when the loop runs in
/// another process. Keeps the table open and reads only the log tail per call.
#[derive(Default)]
pub struct CommitReader {
    table: Mutex<Option<deltalake::DeltaTable>>,
}

impl CommitReader {
    /// The newest live batch committed to `live_view`, `None` without one.
    pub async fn last_batch(&self, lake: &Lake) -> Result<Option<LastBatch>> {
        let mut guard = self.table.lock().await;
        if guard.is_none() {
            let url = lake.url_of(layout::LIVE_VIEW)?;
            match crate::delta::open(lake, &url).await {
                Ok(t) => *guard = Some(t),
                Err(TallyError::Delta(deltalake::DeltaTableError::NotATable(_))) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        let Some(table) = guard.as_mut() else {
            return Ok(None);
        };
        table.update_incremental(None).await?;
        // Roll-ups commit without batch figures: look a few commits back.
        let mut history = table.history(Some(8));
        while let Some(commit) = history.next().await {
            let commit = commit?;
            let Some(live) = commit.info.get("tally.live") else {
                continue;
            };
            let batch = live.get("batch").and_then(|v| v.as_u64()).unwrap_or(0);
            let watermark_us = live.get("watermark_us").and_then(|v| v.as_i64());
            let committed_at_ms = commit.timestamp.unwrap_or(0);
            return Ok(Some(LastBatch {
                batch,
                watermark_us,
                committed_at_ms,
            }));
        }
        Ok(None)
    }
}

/// `/api/status`.
pub async fn status(
    session: &TallySession,
    ops: Option<&LiveOps>,
    commits: &CommitReader,
) -> Result<Status> {
    let last = match ops.and_then(|o| o.last_batch()) {
        Some(l) => Some(l),
        None => commits.last_batch(session.lake()).await?,
    };
    let now_us = chrono::Utc::now().timestamp_micros();
    let (quarantined_files, quarantine) = quarantine(session).await?;
    let (alert_rule, firing) = match ops.and_then(|o| o.firing()) {
        Some(f) => (true, f),
        None => (false, firing_from_table(session).await?),
    };
    Ok(Status {
        watermark: last.and_then(|l| l.watermark_us).map(iso),
        watermark_lag_seconds: last
            .and_then(|l| l.watermark_us)
            .map(|w| (now_us - w) as f64 / 1e6),
        last_commit: last.map(|l| iso(l.committed_at_ms * 1000)),
        seconds_since_last_commit: last
            .map(|l| ((now_us / 1000 - l.committed_at_ms) as f64 / 1000.0).max(0.0)),
        alert_rule,
        firing: firing
            .into_iter()
            .map(|f| FiringJson {
                partner_id: f.partner_id,
                since: iso(f.since_us),
            })
            .collect(),
        reconciliations: reconciliations(session).await?,
        quarantined_files,
        quarantine,
    })
}
