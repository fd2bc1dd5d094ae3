//! `tally live`: incremental micro-batches into `live_view`, seconds fresh, exactly once.
//!
//! Each tick: find raw files not processed yet ([`discovery`]), read them, drop copies of a
//! `txn_id` seen within the TTL ([`dedup`]), route rows behind the watermark to `live_late`
//! ([`batch`]), total per (minute, partner) with `sql/live_window.sql`, and commit
//! ([`sink`]). The order of durable steps is what makes a crash at any point harmless:
//! 1. checkpoint `n` (state after the batch, including its file list) is written;
//! 2. `live_late` gets batch `n` (application transaction `tally-live` = n), if it has rows;
//! 3. `live_view` gets batch `n` (same transaction id): this commit is the point of no return.
//!
//! On start, the last batch in `live_view`'s transaction log says which checkpoint is true; a
//! checkpoint one past it is a batch that did not finish, and is redone with exactly its
//! recorded files (routing is deterministic, and each table skips a batch it already has).
//! The dedup keys are rebuilt from the raw files of the batches whose keys may still be alive
//! (see [`checkpoint`]). Every `compact_every` batches the tables are rolled up (one row per
//! minute, partner and currency, windows past the retention dropped), the Delta log checkpointed and
//! vacuumed, so reading `live_view` stays as fast after a day of 1 s batches as after a minute.

pub mod batch;
pub mod batch_keys;
pub mod checkpoint;
pub mod dedup;
pub mod discovery;
pub mod key_snapshot;
mod maintain;
mod metrics;
mod next_checkpoint;
mod quarantine;
mod replay;
pub mod sink;
mod step;

pub use metrics::{BatchMetrics, LiveSummary, PartnerMinute};

use crate::config::LiveConfig;
use crate::day_lock::Fence;
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use batch::Clock;
use checkpoint::{Checkpoint, FileRecord};
use datafusion::prelude::SessionContext;
use dedup::{minute_of, DedupState};
use deltalake::DeltaTable;
use discovery::Discovery;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The live mode. Configure with `with_*`, then [`LiveJob::run`].
pub struct LiveJob {
    lake: Lake,
    cfg: LiveConfig,
    once: bool,
    shutdown: Option<watch::Receiver<bool>>,
}

impl LiveJob {
    /// The live mode over `lake` with `cfg`'s settings.
    pub fn new(lake: &Lake, cfg: &LiveConfig) -> Self {
        Self {
            lake: lake.clone(),
            cfg: cfg.clone(),
            once: false,
            shutdown: None,
        }
    }

    /// Process what is there, then return (instead of running until shut down).
    pub fn once(mut self, once: bool) -> Self {
        self.once = once;
        self
    }

    /// Finish the current batch and return when this turns `true`.
    pub fn with_shutdown(mut self, rx: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(rx);
        self
    }

    fn stopping(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Sleeps up to `d`, waking early on shutdown.
    async fn sleep(&mut self, d: Duration) {
        match self.shutdown.as_mut() {
            Some(rx) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = rx.changed() => {}
                }
            }
            None => tokio::time::sleep(d).await,
        }
    }

    /// Runs batches until shut down (or, with `once`, until no new file is left), calling
    /// `on_batch` after each commit. In continuous mode a batch failed by the store (S3
    /// unreachable, a throttled request) is retried with backoff on the state in memory, so a
    /// flaky store costs no rebuild; any other failure recovers from the last checkpoint, so
    /// the view never stalls. With `once` the error is returned.
    pub async fn run(mut self, on_batch: impl FnMut(&BatchMetrics)) -> Result<LiveSummary> {
        // Nothing to follow: fail before taking the lease (which would create directories).
        if !self.lake.top_level_dirs().await?.iter().any(|d| d == "raw") {
            return Err(TallyError::Lake {
                location: self.lake.root().to_string(),
                message: "no raw/payments directory to follow".into(),
            });
        }
        let owner = format!("live-{:016x}", rand::random::<u64>());
        let lease = crate::day_lock::acquire_live(&self.lake, &owner).await?;
        let result = self.run_batches(lease.fence(), on_batch).await;
        lease.release().await;
        result
    }

    async fn run_batches(
        &mut self,
        fence: Fence,
        mut on_batch: impl FnMut(&BatchMetrics),
    ) -> Result<LiveSummary> {
        let mut summary = LiveSummary::default();
        let mut runner: Option<Runner> = None;
        // Retries of a batch the store failed: from one interval, at most ten apart (10 s at
        // the default 1 s), so a store that comes back is used again within seconds.
        let retry_max =
            (self.cfg.interval * 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(
                self.cfg
                    .interval
                    .clamp(Duration::from_millis(100), retry_max),
            )
            .with_max_delay(retry_max)
            .with_jitter()
            .without_max_times();
        let mut delays = backon::BackoffBuilder::build(backoff);
        let mut retries = 0u64;
        loop {
            if self.stopping() {
                break;
            }
            let started = Instant::now();
            if runner.is_none() {
                match Runner::recover(&self.lake, &self.cfg, fence.clone()).await {
                    Ok(r) => runner = Some(r),
                    Err(e) if !self.once && e.kind() == crate::ErrorKind::External => {
                        tracing::error!(error = %e, "live: cannot start, retrying");
                        self.sleep(self.cfg.interval.max(Duration::from_secs(1)))
                            .await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(r) = runner.as_mut() else { continue };
            match r.tick().await {
                Ok(Some(mut m)) => {
                    m.retries = std::mem::take(&mut retries);
                    delays = backon::BackoffBuilder::build(backoff);
                    tracing::info!(
                        batch = m.batch,
                        files = m.files,
                        rows = m.rows,
                        applied = m.applied,
                        deduped = m.deduped,
                        late = m.late,
                        batch_ms = m.batch_ms,
                        freshness_ms = m.freshness_ms,
                        watermark_lag_ms = m.watermark_lag_ms,
                        state_keys = m.state_keys,
                        quarantined = m.quarantined.len(),
                        "live batch committed"
                    );
                    for f in &m.ahead {
                        tracing::warn!(file = %f, "live: read a raw file dated in the future (its folder is after tomorrow or its mtime ahead of now)");
                    }
                    for q in &m.quarantined {
                        tracing::warn!(file = %q, "live: quarantined a raw file");
                    }
                    summary.add(&m);
                    on_batch(&m);
                    if self.once {
                        continue;
                    }
                }
                Ok(None) if self.once => break,
                Ok(None) => {}
                Err(e) if self.once => return Err(e),
                // Another run holds the lease now: retrying would race it.
                Err(e) if fence.check().is_err() => return Err(e),
                Err(e)
                    if e.kind() == crate::ErrorKind::External
                        && !matches!(e, TallyError::Busy { .. }) =>
                {
                    let wait = delays.next().unwrap_or(retry_max);
                    retries += 1;
                    tracing::warn!(
                        error = %e,
                        retry = retries,
                        retry_in_ms = wait.as_millis() as u64,
                        "live: batch failed on the store; retrying it, the dedup state kept"
                    );
                    self.sleep(wait).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "live: batch failed; retrying from the last checkpoint");
                    runner = None;
                }
            }
            let spent = started.elapsed();
            if spent < self.cfg.interval {
                self.sleep(self.cfg.interval - spent).await;
            }
        }
        Ok(summary)
    }
}

/// The running state between ticks.
struct Runner {
    lake: Lake,
    cfg: LiveConfig,
    view: DeltaTable,
    late: DeltaTable,
    /// `live_quarantine`, opened at the first quarantined file.
    quarantine: Option<DeltaTable>,
    cp: Checkpoint,
    state: DedupState,
    discovery: Discovery,
    ctx: SessionContext,
    /// A batch to redo before discovering new files (crash recovery), with the raw Delta
    /// version it covered.
    pending: Option<(Vec<FileRecord>, Option<u64>)>,
    /// Files of this tick dated in the future (see [`discovery::Found::ahead`]).
    ahead: Vec<String>,
    /// Checked before every write: a run whose lease was taken over writes nothing more.
    fence: Fence,
    /// The files and raw Delta version of the batch in progress once its checkpoint is
    /// written: what a retry after a failure must redo.
    written: Option<(Vec<FileRecord>, Option<u64>)>,
    /// The dedup state's parts on the store, as the next checkpoint will list them.
    snapshot: key_snapshot::KeySnapshot,
    /// Raw files the last rebuild found gone, reported with the next batch.
    missing_on_rebuild: usize,
    /// The full checkpoint the committed one builds on (`None` before the first batch): the
    /// next batch writes a delta on it, or a full checkpoint when the chain is long.
    base: Option<u64>,
}

impl Runner {
    /// Opens the tables, finds the last committed batch, rebuilds the dedup state.
    async fn recover(lake: &Lake, cfg: &LiveConfig, fence: Fence) -> Result<Self> {
        if !lake.list_dirs("").await?.iter().any(|d| d == "raw") {
            return Err(TallyError::Lake {
                location: lake.root().to_string(),
                message: "no raw/payments directory to follow".into(),
            });
        }
        let opening = Instant::now();
        let (view, late, discovery) = futures::try_join!(
            sink::open(lake, layout::LIVE_VIEW),
            sink::open(lake, layout::LIVE_LATE),
            Discovery::new(lake, cfg.start_lookback_days, cfg.track_days),
        )?;
        let committed = sink::committed_batch(&view).await?;
        let (cp, base) = if committed == 0 {
            (Checkpoint::default(), None)
        } else {
            let (cp, base) = checkpoint::read(lake, committed).await?.ok_or_else(|| {
                TallyError::Internal(format!(
                    "live_view has batch {committed} but its checkpoint is missing"
                ))
            })?;
            (cp, Some(base))
        };
        let pending = checkpoint::read_next(lake, &cp).await?.and_then(|p| {
            let raw_version = p.raw_version;
            p.batches
                .last()
                .filter(|b| b.batch == committed + 1)
                .map(|b| (b.files.clone(), raw_version))
        });
        let mut runner = Self {
            lake: lake.clone(),
            cfg: cfg.clone(),
            view,
            late,
            quarantine: None,
            state: DedupState::default(),
            discovery,
            ctx: SessionContext::new(),
            pending,
            ahead: Vec::new(),
            fence,
            written: None,
            snapshot: Default::default(),
            missing_on_rebuild: 0,
            cp,
            base,
        };
        let open_ms = opening.elapsed().as_millis() as u64;
        let started = Instant::now();
        let rebuilt = runner.rebuild_state().await?;
        runner.missing_on_rebuild = rebuilt.missing_files;
        tracing::info!(
            batch = committed,
            keys = runner.state.keys(),
            redo = runner.pending.is_some(),
            from_snapshot = rebuilt.from_snapshot,
            snapshot_keys = rebuilt.loaded_keys,
            replayed_batches = rebuilt.replayed_batches,
            replayed_from_keys = rebuilt.replayed_from_keys,
            replayed_files = rebuilt.replayed_files,
            missing_files = rebuilt.missing_files,
            open_ms,
            load_ms = rebuilt.load_ms,
            replay_ms = rebuilt.replay_ms,
            ms = started.elapsed().as_millis() as u64,
            "live: recovered"
        );
        Ok(runner)
    }

    fn clock(&self, max_event: Option<i64>) -> Clock {
        Clock::after(
            max_event,
            self.cfg.grace.as_micros() as i64,
            self.cfg.dedup_ttl.as_micros() as i64,
        )
    }

    /// The first minute whose keys are kept after the newest event `max_event`.
    fn kept_minute(&self, max_event: Option<i64>) -> Option<i64> {
        self.clock(max_event).horizon.map(minute_of)
    }

    /// One tick: the pending redo, or new files. `None` when there was nothing to do.
    async fn tick(&mut self) -> Result<Option<BatchMetrics>> {
        let (files, raw_version, recovered) = match self.pending.take() {
            Some((files, raw_version)) => (files, raw_version, true),
            None => {
                let found = self
                    .discovery
                    .new_files(&self.cp, self.cfg.max_files_per_batch.max(1))
                    .await?;
                self.ahead = found.ahead;
                let files: Vec<FileRecord> = found.files.into_iter().map(|f| f.record).collect();
                (files, found.raw_version, false)
            }
        };
        if files.is_empty() && raw_version == self.cp.raw_version {
            return Ok(None);
        }
        let redo = recovered.then(|| (files.clone(), raw_version));
        let mut m = match self.run_batch(files, raw_version).await {
            Ok(m) => m,
            Err(e) => {
                // Its checkpoint is on the store (written now, or before a crash): a retry
                // redoes exactly its files, whatever landed since.
                self.pending = self.written.take().or(redo);
                return Err(e);
            }
        };
        m.recovered = recovered;
        // The batch is committed: a failed roll-up is only put off to the next one (a batch
        // failed here would never reach the metrics and the alert rule).
        if m.batch.is_multiple_of(self.cfg.compact_every.max(1)) {
            if let Err(e) = self.maintain().await {
                if self.fence.check().is_err() {
                    return Err(e);
                }
                tracing::warn!(error = %e, batch = m.batch, "live: roll-up failed; it runs again with a later batch");
            }
        }
        Ok(Some(m))
    }
}
