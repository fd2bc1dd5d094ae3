//! The live loop's Prometheus series (SPEC "Metrics"): the figures `tally live --format json`
//! prints per batch, as counters, gauges and a histogram a scraper can read.
//!
//! Labels stay bounded: `outcome` has four values, `partner_id` as many as there are partners
//! (a few hundred); transaction ids never become labels. Gauges that age with the clock
//! (watermark lag) are computed when scraped, so a stalled loop shows a growing lag instead of
//! the last value it wrote.

use crate::live::BatchMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabel {
    partner_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every live series, registered once per process.
#[derive(Debug, Clone)]
pub struct LiveMetrics {
    batches: Counter,
    batch_duration: Histogram,
    rows: Family<OutcomeLabel, Counter>,
    partner_events: Family<PartnerLabel, Counter>,
    partner_errors: Family<PartnerLabel, Counter>,
    freshness: FloatGauge,
    watermark: FloatGauge,
    watermark_lag: FloatGauge,
    state_keys: Gauge,
    quarantined: Counter,
    retries: Counter,
    rebuild_missing: Counter,
    ahead: Counter,
    last_commit: FloatGauge,
    alerts: Family<StateLabel, Counter>,
    alerts_firing: Gauge,
    alert_attempts_failed: Counter,
    alerts_dropped: Counter,
    alert_queue: Gauge,
    /// The newest watermark (µs), for the lag computed at scrape time.
    watermark_us: std::sync::Arc<AtomicI64>,
}

impl LiveMetrics {
    /// Registers the series in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            batches: Counter::default(),
            // 10 ms .. ~80 s.
            batch_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            rows: Family::default(),
            partner_events: Family::default(),
            partner_errors: Family::default(),
            freshness: FloatGauge::default(),
            watermark: FloatGauge::default(),
            watermark_lag: FloatGauge::default(),
            state_keys: Gauge::default(),
            quarantined: Counter::default(),
            retries: Counter::default(),
            rebuild_missing: Counter::default(),
            ahead: Counter::default(),
            last_commit: FloatGauge::default(),
            alerts: Family::default(),
            alerts_firing: Gauge::default(),
            alert_attempts_failed: Counter::default(),
            alerts_dropped: Counter::default(),
            alert_queue: Gauge::default(),
            watermark_us: std::sync::Arc::new(AtomicI64::new(i64::MIN)),
        };
        let r = registry;
        r.register(
            "tally_live_batches",
            "Micro-batches committed to live_view",
            m.batches.clone(),
        );
        r.register_with_unit(
            "tally_live_batch_duration",
            "Wall time of one micro-batch, from its start to its live_view commit",
            Unit::Seconds,
            m.batch_duration.clone(),
        );
        r.register(
            "tally_live_rows",
            "Raw rows by what the live mode did with them: applied to live_view, deduped (a copy seen within the TTL), late (behind the watermark, in live_late), bad (no txn_id or event_time)",
            m.rows.clone(),
        );
        r.register(
            "tally_live_partner_events",
            "Events applied to live_view, per partner",
            m.partner_events.clone(),
        );
        r.register(
            "tally_live_partner_errors",
            "Applied events whose status is not ok, per partner",
            m.partner_errors.clone(),
        );
        r.register_with_unit(
            "tally_live_freshness",
            "Newest batch: the newest ingest_time it applied to the moment it was visible in live_view",
            Unit::Seconds,
            m.freshness.clone(),
        );
        r.register_with_unit(
            "tally_live_watermark",
            "The live watermark, Unix time",
            Unit::Seconds,
            m.watermark.clone(),
        );
        r.register_with_unit(
            "tally_live_watermark_lag",
            "Now minus the watermark, computed when scraped",
            Unit::Seconds,
            m.watermark_lag.clone(),
        );
        r.register(
            "tally_live_dedup_state_keys",
            "txn_id keys remembered for dedup",
            m.state_keys.clone(),
        );
        r.register(
            "tally_live_quarantined_files",
            "Raw files skipped as unreadable",
            m.quarantined.clone(),
        );
        r.register(
            "tally_live_batch_retries",
            "Batch attempts the store failed, retried on the dedup state in memory (no rebuild)",
            m.retries.clone(),
        );
        r.register(
            "tally_live_rebuild_missing_files",
            "Raw files of retained batches found gone when the dedup state was rebuilt (skipped)",
            m.rebuild_missing.clone(),
        );
        r.register(
            "tally_live_future_files",
            "Raw files read that are dated in the future (folder after tomorrow or mtime ahead of now)",
            m.ahead.clone(),
        );
        r.register_with_unit(
            "tally_live_last_commit_timestamp",
            "When the newest batch committed, Unix time (time() - this is how stale the view is)",
            Unit::Seconds,
            m.last_commit.clone(),
        );
        r.register(
            "tally_live_alerts",
            "Alerts sent (or recorded, without a webhook), by state",
            m.alerts.clone(),
        );
        r.register(
            "tally_live_alerts_firing",
            "Partners with a firing error-rate alert",
            m.alerts_firing.clone(),
        );
        r.register(
            "tally_live_alert_delivery_failures",
            "Webhook attempts that failed (each is retried with backoff)",
            m.alert_attempts_failed.clone(),
        );
        r.register(
            "tally_live_alerts_dropped",
            "Alerts dropped because the delivery queue was full",
            m.alerts_dropped.clone(),
        );
        r.register(
            "tally_live_alert_queue",
            "Alerts waiting for delivery",
            m.alert_queue.clone(),
        );
        m
    }

    /// Counts one committed batch.
    pub fn observe(&self, m: &BatchMetrics) {
        self.batches.inc();
        self.batch_duration.observe(m.batch_ms as f64 / 1000.0);
        for (outcome, n) in [
            ("applied", m.applied),
            ("deduped", m.deduped),
            ("late", m.late),
            ("bad", m.bad_rows),
        ] {
            self.rows.get_or_create(&OutcomeLabel { outcome }).inc_by(n);
        }
        for pm in &m.minutes {
            let label = PartnerLabel {
                partner_id: pm.partner_id.clone(),
            };
            self.partner_events.get_or_create(&label).inc_by(pm.events);
            // Created at 0 too, so a partner's error series exists before its first error.
            self.partner_errors.get_or_create(&label).inc_by(pm.errors);
        }
        if let Some(f) = m.freshness_ms {
            self.freshness.set(f.max(0) as f64 / 1000.0);
        }
        if let Some(w) = m.watermark_us {
            self.watermark.set(w as f64 / 1e6);
            self.watermark_us.store(w, Ordering::Relaxed);
        }
        self.state_keys
            .set(i64::try_from(m.state_keys).unwrap_or(i64::MAX));
        self.quarantined.inc_by(m.quarantined.len() as u64);
        self.retries.inc_by(m.retries);
        self.rebuild_missing.inc_by(m.rebuild_missing_files as u64);
        self.ahead.inc_by(m.ahead.len() as u64);
        self.last_commit.set(m.committed_at_ms as f64 / 1000.0);
    }

    /// Brings the clock-dependent gauges up to now (call before encoding).
    pub fn refresh(&self) {
        let w = self.watermark_us.load(Ordering::Relaxed);
        if w != i64::MIN {
            let now = chrono::Utc::now().timestamp_micros();
            self.watermark_lag.set((now - w) as f64 / 1e6);
        }
    }

    pub(super) fn alert_sent(&self, state: &'static str) {
        self.alerts.get_or_create(&StateLabel { state }).inc();
    }

    pub(super) fn set_firing(&self, n: usize) {
        self.alerts_firing.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(super) fn delivery_failed(&self) {
        self.alert_attempts_failed.inc();
    }

    pub(super) fn alert_dropped(&self) {
        self.alerts_dropped.inc();
    }

    pub(super) fn queue_changed(&self, delta: i64) {
        self.alert_queue.inc_by(delta);
    }
}
