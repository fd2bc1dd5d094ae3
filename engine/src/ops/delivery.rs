//! Alert delivery, off the live loop: the loop hands alerts to a bounded queue and goes on;
//! one task POSTs them to the webhook in order, retrying with backoff while the receiver is
//! down or slow, and appends each delivered alert to `alerts`.
//!
//! Nothing here can stall a batch: [`Delivery::submit`] never waits (a full queue drops the
//! alert and counts it in `tally_live_alerts_dropped_total`), and the webhook call has a
//! timeout. Delivery is at least once: a receiver that answered but whose answer was lost
//! gets the alert again, with the same `alert_id` so it can drop the copy. An alert the
//! webhook has not taken when the loop stops is recorded `pending` and sent again by the next
//! start (the `alerts` table is the outbox), so a restart during an outage loses none.

use super::alert_rule::Alert;
use super::alerts_table::{self, Outcome, Recorded};
use super::live_metrics::LiveMetrics;
use crate::lake::Lake;
use backon::{ExponentialBuilder, Retryable};
use chrono::SecondsFormat;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Alerts waiting beyond this many are dropped (and counted): an alert storm must not grow
/// memory without bound while the receiver is down.
const QUEUE: usize = 1024;
/// Alerts delivered before their rows are committed to `alerts` in one commit.
const RECORD_EVERY: usize = 256;
/// One webhook call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// What shutdown gives the queue to drain.
const DRAIN: Duration = Duration::from_secs(2);

/// The sending side of the queue and its task.
pub(super) struct Delivery {
    tx: mpsc::Sender<Alert>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    metrics: LiveMetrics,
}

impl Delivery {
    /// Starts the task: alerts go to `webhook` (or are only recorded, without one).
    pub(super) fn spawn(lake: Lake, webhook: Option<url::Url>, metrics: LiveMetrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = CancellationToken::new();
        let worker = Worker {
            lake,
            webhook,
            client: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .build()
                .ok(),
            metrics: metrics.clone(),
            cancel: cancel.clone(),
            table: None,
            unrecorded: Vec::new(),
        };
        let task = tokio::spawn(worker.run(rx));
        Self {
            tx,
            cancel,
            task: Mutex::new(Some(task)),
            metrics,
        }
    }

    /// Queues `alert` without waiting.
    pub(super) fn submit(&self, alert: Alert) {
        match self.tx.try_send(alert) {
            Ok(()) => self.metrics.queue_changed(1),
            Err(e) => {
                self.metrics.alert_dropped();
                let alert = e.into_inner();
                tracing::error!(
                    partner_id = %alert.partner_id,
                    state = alert.state.as_str(),
                    "alert dropped: the delivery queue is full ({QUEUE} waiting)"
                );
            }
        }
    }

    /// Stops taking alerts, gives the queue [`DRAIN`] to be delivered and recorded, and
    /// returns.
    pub(super) async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(task) = self.task.lock().await.take() {
            if tokio::time::timeout(DRAIN + Duration::from_secs(3), task)
                .await
                .is_err()
            {
                tracing::warn!("alert delivery did not finish in time");
            }
        }
    }
}

struct Worker {
    lake: Lake,
    webhook: Option<url::Url>,
    client: Option<reqwest::Client>,
    metrics: LiveMetrics,
    cancel: CancellationToken,
    table: Option<deltalake::DeltaTable>,
    /// Delivered, not yet in `alerts` (its commit failed: retried with the next ones).
    unrecorded: Vec<Recorded>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Alert>) {
        let mut left: Vec<Alert> = Vec::new();
        loop {
            let first = tokio::select! {
                a = rx.recv() => a,
                _ = self.cancel.cancelled() => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < RECORD_EVERY {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let mut batch = batch.into_iter();
            while let Some(alert) = batch.next() {
                self.metrics.queue_changed(-1);
                let r = self.deliver(alert, None).await;
                if r.outcome == Outcome::Pending {
                    // Cancelled mid-retry: it and the rest of the batch go to the drain below.
                    left.push(r.alert);
                    for a in batch.by_ref() {
                        self.metrics.queue_changed(-1);
                        left.push(a);
                    }
                } else {
                    self.unrecorded.push(r);
                }
            }
            self.record().await;
            if !left.is_empty() {
                break;
            }
        }
        // Shutdown: one more try for what is left, within the drain time; what the webhook has
        // not taken by then is recorded `pending`, and the next start sends it again.
        let deadline = tokio::time::Instant::now() + DRAIN;
        while let Ok(alert) = rx.try_recv() {
            self.metrics.queue_changed(-1);
            left.push(alert);
        }
        for alert in left {
            let r = self.deliver(alert, Some(deadline)).await;
            self.unrecorded.push(r);
        }
        self.record().await;
    }

    /// Sends one alert, retrying until it is accepted, refused for good, or (with a deadline,
    /// or on cancel) time is up: then it is [`Outcome::Pending`].
    async fn deliver(&mut self, alert: Alert, deadline: Option<tokio::time::Instant>) -> Recorded {
        let (Some(url), Some(client)) = (self.webhook.clone(), self.client.clone()) else {
            self.metrics.alert_sent(alert.state.as_str());
            return Recorded {
                alert,
                outcome: Outcome::NoWebhook,
                delivered_at_us: None,
                attempts: 0,
            };
        };
        let body = body(&alert);
        let attempts = std::sync::atomic::AtomicU64::new(0);
        let metrics = self.metrics.clone();
        let call = || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let response = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_client_error()
                && status != reqwest::StatusCode::REQUEST_TIMEOUT
                && status != reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                Err(Failure::Refused(status.to_string()))
            } else {
                Err(Failure::Retry(status.to_string()))
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times();
        let retried = call
            .retry(backoff)
            .when(|f| matches!(f, Failure::Retry(_)))
            .notify(|f, wait| {
                metrics.delivery_failed();
                tracing::warn!(partner_id = %alert.partner_id, error = %f, retry_in = ?wait, "alert webhook failed; retrying");
            });
        let outcome = match deadline {
            Some(d) => tokio::time::timeout_at(d, retried).await.ok(),
            None => tokio::select! {
                r = retried => Some(r),
                _ = self.cancel.cancelled() => None,
            },
        };
        let attempts = attempts.into_inner();
        match outcome {
            Some(Ok(())) => {
                self.metrics.alert_sent(alert.state.as_str());
                Recorded {
                    alert,
                    outcome: Outcome::Delivered,
                    delivered_at_us: Some(chrono::Utc::now().timestamp_micros()),
                    attempts,
                }
            }
            Some(Err(f)) => {
                self.metrics.delivery_failed();
                tracing::error!(partner_id = %alert.partner_id, error = %f, "alert webhook refused the alert; recorded as refused");
                Recorded {
                    alert,
                    outcome: Outcome::Refused,
                    delivered_at_us: None,
                    attempts,
                }
            }
            None => {
                tracing::warn!(partner_id = %alert.partner_id, state = alert.state.as_str(), attempts, "alert not delivered before shutdown; recorded as pending, sent again on the next start");
                Recorded {
                    alert,
                    outcome: Outcome::Pending,
                    delivered_at_us: None,
                    attempts,
                }
            }
        }
    }

    /// Commits the delivered alerts to `alerts`; on failure they wait for the next commit.
    async fn record(&mut self) {
        if self.unrecorded.is_empty() {
            return;
        }
        if self.table.is_none() {
            match alerts_table::open(&self.lake).await {
                Ok(t) => self.table = Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the alerts table; will retry");
                    return;
                }
            }
        }
        let Some(table) = self.table.as_ref() else {
            return;
        };
        match alerts_table::append(table, &self.unrecorded).await {
            Ok(_) => self.unrecorded.clear(),
            Err(e) => {
                tracing::error!(error = %e, rows = self.unrecorded.len(), "cannot append to the alerts table; will retry")
            }
        }
    }
}

#[derive(Debug)]
enum Failure {
    /// Down, slow, or a 5xx/408/429: try again later.
    Retry(String),
    /// A 4xx: the receiver will never take it.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(m) | Failure::Refused(m) => f.write_str(m),
        }
    }
}

/// The webhook body (SPEC "Alerts"), plus `alert_id` and `detected_at` for receivers that
/// dedup or measure.
pub(super) fn body(a: &Alert) -> String {
    let iso = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let detected = chrono::DateTime::from_timestamp_micros(a.detected_at_us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    serde_json::json!({
        "state": a.state.as_str(),
        "partner_id": a.partner_id,
        "window_start": iso(a.window_start_us),
        "events": a.events,
        "errors": a.errors,
        "error_rate": a.error_rate,
        "threshold": a.threshold,
        "alert_id": alerts_table::alert_id(a),
        "detected_at": detected,
    })
    .to_string()
}
