//! Operations for the live mode (SPEC "Operations: dashboard, metrics, alerts"): the
//! Prometheus series of the loop, the per-partner error-rate alerts and their delivery.
//!
//! [`LiveOps`] is what a running loop reports into: `tally live` and `tally serve --live`
//! create one, hand [`LiveOps::on_batch`] to the loop, and serve its registry on `/metrics`;
//! the dashboard reads its firing alerts and last batch. Module map: [`alert_rule`] (the
//! rule as a pure state machine), [`live_metrics`] (the series), [`delivery`] (the webhook
//! queue), [`alerts_table`] (the `alerts` Delta table), [`metrics_server`] (`--metrics ADDR`).

pub mod alert_rule;
pub mod alerts_table;
mod delivery;
pub mod live_metrics;
pub mod metrics_server;

use crate::config::AlertsConfig;
use crate::error::Result;
use crate::lake::{layout, Lake};
use crate::live::{BatchMetrics, PartnerMinute};
use alert_rule::{AlertEvaluator, AlertRule};
use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use delivery::Delivery;
use live_metrics::LiveMetrics;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIVE_RECENT_MINUTES: &str = include_str!("../../../sql/live_recent_minutes.sql");

/// The newest committed batch, as the dashboard shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastBatch {
    /// Its number.
    pub batch: u64,
    /// The watermark after it (µs).
    pub watermark_us: Option<i64>,
    /// When it committed (ms since the epoch).
    pub committed_at_ms: i64,
}

/// A partner whose alert is firing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Firing {
    /// The partner.
    pub partner_id: String,
    /// The minute its episode started (µs).
    pub since_us: i64,
}

/// The live loop's metrics and alerting, shared by the loop and the HTTP endpoints.
pub struct LiveOps {
    registry: Registry,
    metrics: LiveMetrics,
    evaluator: Option<Mutex<AlertEvaluator>>,
    delivery: Option<Delivery>,
    last: Mutex<Option<LastBatch>>,
}

impl LiveOps {
    /// Metrics only, no alert rule.
    pub fn metrics_only() -> Arc<Self> {
        let mut registry = Registry::default();
        let metrics = LiveMetrics::register(&mut registry);
        Arc::new(Self {
            registry,
            metrics,
            evaluator: None,
            delivery: None,
            last: Mutex::new(None),
        })
    }

    /// Metrics, and the alert rule of `alerts` if it has one: the rule continues from the
    /// `alerts` table (episodes already fired are not fired again) and the newest minutes
    /// of `live_view`; `grace` is the live watermark's (minutes older than it no longer change).
    pub async fn start(lake: &Lake, alerts: &AlertsConfig, grace: Duration) -> Result<Arc<Self>> {
        alerts.validate()?;
        let Some(error_rate) = alerts.error_rate else {
            return Ok(Self::metrics_only());
        };
        let mut registry = Registry::default();
        let metrics = LiveMetrics::register(&mut registry);
        let keep_minutes = i64::try_from(grace.as_secs() / 60).unwrap_or(60) + 3;
        let mut evaluator = AlertEvaluator::new(
            AlertRule {
                error_rate,
                min_events: alerts.min_events,
            },
            keep_minutes,
        );
        for (partner, state) in alerts_table::latest_states(lake).await? {
            evaluator.restore(&partner, state);
        }
        evaluator.seed(&recent_minutes(lake, keep_minutes).await?);
        metrics.set_firing(evaluator.firing().len());
        let webhook = alerts
            .webhook
            .as_deref()
            .and_then(|w| url::Url::parse(w).ok());
        let owed = if webhook.is_some() {
            alerts_table::pending(lake).await?
        } else {
            Vec::new()
        };
        let delivery = Delivery::spawn(lake.clone(), webhook, metrics.clone());
        if !owed.is_empty() {
            tracing::info!(
                alerts = owed.len(),
                "sending alerts the last run could not deliver"
            );
        }
        for alert in owed {
            delivery.submit(alert);
        }
        Ok(Arc::new(Self {
            registry,
            metrics,
            evaluator: Some(Mutex::new(evaluator)),
            delivery: Some(delivery),
            last: Mutex::new(None),
        }))
    }

    /// Counts a committed batch and judges its minutes; alerts it causes are queued for
    /// delivery without waiting.
    pub fn on_batch(&self, m: &BatchMetrics) {
        self.metrics.observe(m);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(LastBatch {
                batch: m.batch,
                watermark_us: m.watermark_us,
                committed_at_ms: m.committed_at_ms,
            });
        }
        let (Some(evaluator), Some(delivery)) = (&self.evaluator, &self.delivery) else {
            return;
        };
        let Ok(mut evaluator) = evaluator.lock() else {
            return;
        };
        let now = chrono::Utc::now().timestamp_micros();
        for alert in evaluator.apply(&m.minutes, now) {
            tracing::warn!(
                partner_id = %alert.partner_id,
                state = alert.state.as_str(),
                events = alert.events,
                errors = alert.errors,
                error_rate = alert.error_rate,
                "live alert"
            );
            delivery.submit(alert);
        }
        self.metrics.set_firing(evaluator.firing().len());
    }

    /// Appends the series in Prometheus text (without the closing `# EOF`, so a server can
    /// add its own registry after).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        self.metrics.refresh();
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }

    /// Partners firing now; `None` when no alert rule is configured.
    pub fn firing(&self) -> Option<Vec<Firing>> {
        let evaluator = self.evaluator.as_ref()?.lock().ok()?;
        Some(
            evaluator
                .firing()
                .into_iter()
                .map(|(partner_id, since_us)| Firing {
                    partner_id,
                    since_us,
                })
                .collect(),
        )
    }

    /// The newest batch this process committed.
    pub fn last_batch(&self) -> Option<LastBatch> {
        self.last.lock().ok().and_then(|l| *l)
    }

    /// Delivers what is queued (for a short while) and stops the delivery task.
    pub async fn shutdown(&self) {
        if let Some(d) = &self.delivery {
            d.shutdown().await;
        }
    }
}

impl std::fmt::Debug for LiveOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOps")
            .field("alerts", &self.evaluator.is_some())
            .finish_non_exhaustive()
    }
}

/// `live_view`'s newest `keep_minutes` minutes per partner; empty without a `live_view`.
async fn recent_minutes(lake: &Lake, keep_minutes: i64) -> Result<Vec<PartnerMinute>> {
    let url = lake.url_of(layout::LIVE_VIEW)?;
    let table = match crate::delta::open(lake, &url).await {
        Ok(t) => t,
        Err(crate::TallyError::Delta(deltalake::DeltaTableError::NotATable(_))) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("live_view_parts", table.table_provider().await?)?;
    let back = ScalarValue::new_interval_mdn(0, 0, keep_minutes * 60 * 1_000_000_000);
    let batches = ctx
        .sql(LIVE_RECENT_MINUTES)
        .await?
        .with_param_values(vec![back])?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in &batches {
        let window = cast(
            b.column(0),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let window = window.as_primitive::<TimestampMicrosecondType>();
        let partner = cast(b.column(1), &DataType::Utf8)?;
        let partner = partner.as_string::<i32>();
        let events = cast(b.column(2), &DataType::Int64)?;
        let events = events.as_primitive::<Int64Type>();
        let errors = cast(b.column(3), &DataType::Int64)?;
        let errors = errors.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if window.is_null(i) {
                continue;
            }
            out.push(PartnerMinute {
                window_start_us: window.value(i),
                partner_id: if partner.is_null(i) {
                    String::new()
                } else {
                    partner.value(i).to_string()
                },
                events: events.value(i).max(0) as u64,
                errors: errors.value(i).max(0) as u64,
            });
        }
    }
    Ok(out)
}
