//! What the live mode reports: one micro-batch's metrics, and a run's totals.

use serde::Serialize;

/// What one micro-batch did: logged, printed by `tally live`, stored in the commit info.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchMetrics {
    /// Batch number (the Delta application transaction version).
    pub batch: u64,
    /// Raw files read.
    pub files: usize,
    /// Their paths, relative to the lake.
    pub paths: Vec<String>,
    /// Files skipped as unreadable, each with the reason.
    pub quarantined: Vec<String>,
    /// Files read that are dated in the future (folder after tomorrow or mtime ahead of now).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<String>,
    /// Raw rows read.
    pub rows: u64,
    /// Rows applied to `live_view`.
    pub applied: u64,
    /// Rows dropped as copies seen within the TTL.
    pub deduped: u64,
    /// Rows behind the watermark, recorded in `live_late`.
    pub late: u64,
    /// Of those, rows older than the dedup horizon (copies from earlier batches not detectable).
    pub untracked_late: u64,
    /// Rows without `txn_id` or `event_time`, counted and not applied.
    pub bad_rows: u64,
    /// Time from start of the batch to its commit.
    pub batch_ms: u64,
    /// Now minus the newest `ingest_time` applied: how stale the view is.
    pub freshness_ms: Option<i64>,
    /// The watermark after the batch (µs since the epoch).
    pub watermark_us: Option<i64>,
    /// Now minus the watermark.
    pub watermark_lag_ms: Option<i64>,
    /// `txn_id` keys remembered for dedup.
    pub state_keys: usize,
    /// Approximate bytes of the dedup state.
    pub state_bytes: usize,
    /// When the `live_view` commit landed (ms since the epoch).
    pub committed_at_ms: i64,
    /// The batch was a redo of one interrupted by a crash.
    pub recovered: bool,
    /// Attempts of this batch the store failed before it committed (each retried on the
    /// dedup state in memory).
    pub retries: u64,
    /// Dedup snapshot parts written after the commit (see [`super::key_snapshot`]).
    #[serde(default)]
    pub snapshot_parts: usize,
    /// Their bytes.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// Time spent writing them and collecting old ones (ms).
    #[serde(default)]
    pub snapshot_ms: u64,
    /// Bytes of the checkpoint the batch wrote (a delta, or every 60th batch the whole state).
    #[serde(default)]
    pub checkpoint_bytes: u64,
    /// Time spent writing it (µs: on local disk it is well under a millisecond).
    #[serde(default)]
    pub checkpoint_us: u64,
    /// Bytes of the batch's key file (the keys it added, for a restart's replay).
    #[serde(default)]
    pub key_file_bytes: u64,
    /// Time spent writing it (µs).
    #[serde(default)]
    pub key_file_us: u64,
    /// Raw files of retained batches the restart before this batch found gone (the dedup
    /// state was rebuilt without them).
    #[serde(default)]
    pub rebuild_missing_files: usize,
    /// The newest `ingest_time` applied (µs): freshness is measured from it.
    #[serde(skip)]
    pub newest_ingest_us: Option<i64>,
    /// What the batch added to `live_view`, per minute and partner (currencies summed): the
    /// per-partner metrics and the alert rule read these; too many to log or store.
    #[serde(skip)]
    pub minutes: Vec<PartnerMinute>,
}

/// Events and errors one batch added to one (minute of event time, partner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerMinute {
    /// Start of the minute (µs since the epoch, UTC).
    pub window_start_us: i64,
    /// The partner (`""` for rows without one).
    pub partner_id: String,
    /// Events applied.
    pub events: u64,
    /// Of those, events whose status is not `ok`.
    pub errors: u64,
}

/// What a run did in total.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveSummary {
    /// Batches committed.
    pub batches: u64,
    /// Raw files read.
    pub files: usize,
    /// Raw rows read.
    pub rows: u64,
    /// Rows applied to `live_view`.
    pub applied: u64,
    /// Rows dropped as copies.
    pub deduped: u64,
    /// Rows recorded in `live_late`.
    pub late: u64,
    /// Rows without `txn_id`/`event_time`.
    pub bad_rows: u64,
    /// Every quarantined file, with the reason.
    pub quarantined: Vec<String>,
    /// The last batch number committed.
    pub last_batch: u64,
    /// Batch attempts the store failed, retried without a rebuild.
    pub retries: u64,
    /// The watermark at the end (µs).
    pub watermark_us: Option<i64>,
}

impl LiveSummary {
    pub(super) fn add(&mut self, m: &BatchMetrics) {
        self.batches += 1;
        self.files += m.files;
        self.rows += m.rows;
        self.applied += m.applied;
        self.deduped += m.deduped;
        self.late += m.late;
        self.bad_rows += m.bad_rows;
        self.retries += m.retries;
        self.quarantined.extend(m.quarantined.iter().cloned());
        self.last_batch = m.batch;
        self.watermark_us = m.watermark_us;
    }
}
