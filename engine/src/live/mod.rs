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
pub mod checkpoint;
pub mod dedup;
pub mod discovery;
pub mod sink;

use crate::config::LiveConfig;
use crate::day_lock::Fence;
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::schema;
use batch::{Clock, FileRows};
use checkpoint::{BatchRecord, Checkpoint, FileRecord};
use datafusion::prelude::SessionContext;
use dedup::{minute_of, DedupState, MINUTE_US};
use deltalake::DeltaTable;
use discovery::Discovery;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// An unseen file whose mtime is older than this behind the newest processed file is taken
/// as already processed (see [`discovery`]).
const FILE_WINDOW: Duration = Duration::from_secs(15 * 60);

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
    /// The watermark at the end (µs).
    pub watermark_us: Option<i64>,
}

impl LiveSummary {
    fn add(&mut self, m: &BatchMetrics) {
        self.batches += 1;
        self.files += m.files;
        self.rows += m.rows;
        self.applied += m.applied;
        self.deduped += m.deduped;
        self.late += m.late;
        self.bad_rows += m.bad_rows;
        self.quarantined.extend(m.quarantined.iter().cloned());
        self.last_batch = m.batch;
        self.watermark_us = m.watermark_us;
    }
}

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
    /// `on_batch` after each commit. In continuous mode a failed batch is logged and retried
    /// from the last checkpoint, so the view never stalls on a transient error; with `once`
    /// the error is returned.
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
                Ok(Some(m)) => {
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
    cp: Checkpoint,
    state: DedupState,
    discovery: Discovery,
    ctx: SessionContext,
    /// A batch to redo before discovering new files (crash recovery), with the raw Delta
    /// version it covered and the newest-mtime mark it recorded.
    pending: Option<(Vec<FileRecord>, Option<u64>, Option<i64>)>,
    /// The most this tick's checkpoint may set its newest-mtime mark to: files left for a
    /// later batch must stay within the file window of it (see `Found::waiting_mtime_ms`).
    mark_cap_ms: Option<i64>,
    /// Checked before every write: a run whose lease was taken over writes nothing more.
    fence: Fence,
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
        let view = sink::open(lake, layout::LIVE_VIEW).await?;
        let late = sink::open(lake, layout::LIVE_LATE).await?;
        let committed = sink::committed_batch(&view).await?;
        let cp = if committed == 0 {
            Checkpoint::default()
        } else {
            checkpoint::read(lake, committed).await?.ok_or_else(|| {
                TallyError::Internal(format!(
                    "live_view has batch {committed} but its checkpoint is missing"
                ))
            })?
        };
        let pending = checkpoint::read(lake, committed + 1).await?.and_then(|p| {
            let (raw_version, mark) = (p.raw_version, p.newest_mtime_ms);
            p.batches
                .last()
                .filter(|b| b.batch == committed + 1)
                .map(|b| (b.files.clone(), raw_version, mark))
        });
        let mut runner = Self {
            lake: lake.clone(),
            cfg: cfg.clone(),
            view,
            late,
            state: DedupState::default(),
            discovery: Discovery::new(
                lake,
                cfg.start_lookback_days,
                FILE_WINDOW.as_millis() as i64,
            )
            .await?,
            ctx: SessionContext::new(),
            pending,
            mark_cap_ms: None,
            fence,
            cp,
        };
        runner.rebuild_state().await?;
        tracing::info!(
            batch = committed,
            keys = runner.state.keys(),
            redo = runner.pending.is_some(),
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

    /// Re-reads the batches whose dedup keys may still be alive and replays their routing.
    async fn rebuild_state(&mut self) -> Result<()> {
        let Some(kept) = self.kept_minute(self.cp.max_event_time) else {
            return Ok(());
        };
        let replay: Vec<BatchRecord> = self
            .cp
            .batches
            .iter()
            .filter(|b| b.max_event_after.is_some_and(|m| m >= kept * MINUTE_US))
            .cloned()
            .collect();
        for b in replay {
            let files: Vec<FileRecord> = b.files.into_iter().filter(|f| !f.quarantined).collect();
            let clock = self.clock(b.max_event_before);
            for rows in batch::read_files(&self.lake, &files, &schema::LIVE_KEYS).await? {
                if let FileRows::Rows(rows) = rows {
                    batch::route(&mut self.state, clock, &rows, false)?;
                }
            }
            if let Some(m) = self.kept_minute(b.max_event_after) {
                self.state.evict_before(m);
            }
            if let Some(newest) = b.max_event_after {
                self.state.seal_before(minute_of(newest));
            }
        }
        Ok(())
    }

    /// One tick: the pending redo, or new files. `None` when there was nothing to do.
    async fn tick(&mut self) -> Result<Option<BatchMetrics>> {
        let window_ms = FILE_WINDOW.as_millis() as i64;
        let (files, raw_version, recovered) = match self.pending.take() {
            Some((files, raw_version, mark)) => {
                // The redo records the same mark as the interrupted try did.
                self.mark_cap_ms = mark;
                (files, raw_version, true)
            }
            None => {
                let found = self
                    .discovery
                    .new_files(&self.cp, self.cfg.max_files_per_batch.max(1))
                    .await?;
                self.mark_cap_ms = found.waiting_mtime_ms.map(|w| w.saturating_add(window_ms));
                let files: Vec<FileRecord> = found.files.into_iter().map(|f| f.record).collect();
                (files, found.raw_version, false)
            }
        };
        if files.is_empty() && raw_version == self.cp.raw_version {
            return Ok(None);
        }
        let mut m = self.run_batch(files, raw_version).await?;
        m.recovered = recovered;
        if m.batch.is_multiple_of(self.cfg.compact_every.max(1)) {
            self.maintain().await?;
        }
        Ok(Some(m))
    }

    async fn run_batch(
        &mut self,
        mut files: Vec<FileRecord>,
        raw_version: Option<u64>,
    ) -> Result<BatchMetrics> {
        let started = Instant::now();
        let n = self.cp.batch + 1;
        let mut rows = Vec::new();
        let mut quarantined = Vec::new();
        let read = batch::read_files(&self.lake, &files, &schema::LIVE_INPUT).await?;
        for (file, got) in files.iter_mut().zip(read) {
            match got {
                FileRows::Rows(r) => rows.extend(r),
                FileRows::Quarantined(why) => {
                    file.quarantined = true;
                    quarantined.push(why);
                }
            }
        }
        let before = self.cp.max_event_time;
        let clock = self.clock(before);
        let routed = batch::route(&mut self.state, clock, &rows, true)?;
        drop(rows);
        let after = match (before, routed.max_event) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(m) = self.kept_minute(after) {
            self.state.evict_before(m);
        }
        if let Some(newest) = after {
            self.state.seal_before(minute_of(newest));
        }
        let view_rows = batch::window_totals(&self.ctx, routed.applied.clone()).await?;
        let late_rows = batch::window_totals(&self.ctx, routed.late.clone()).await?;

        let mut cp = self.next_checkpoint(n, before, after, files);
        cp.raw_version = raw_version.or(self.cp.raw_version);
        self.fence.check()?;
        checkpoint::write(&self.lake, &cp).await?;
        crate::failpoint::hit("live_after_checkpoint");

        let now_ms = chrono::Utc::now().timestamp_millis();
        let watermark = self.clock(after).watermark;
        let mut m = BatchMetrics {
            batch: n,
            files: cp.batches.last().map_or(0, |b| b.files.len()),
            paths: cp
                .batches
                .last()
                .map(|b| b.files.iter().map(|f| f.path.clone()).collect())
                .unwrap_or_default(),
            quarantined,
            rows: routed.rows,
            applied: routed.applied.iter().map(|b| b.num_rows() as u64).sum(),
            deduped: routed.deduped,
            late: routed.late_rows,
            untracked_late: routed.untracked_late_rows,
            bad_rows: routed.bad_rows,
            batch_ms: 0,
            freshness_ms: routed.newest_ingest.map(|t| now_ms - t / 1000),
            watermark_us: watermark,
            watermark_lag_ms: watermark.map(|w| now_ms - w / 1000),
            state_keys: self.state.keys(),
            state_bytes: self.state.approx_bytes(),
            committed_at_ms: 0,
            recovered: false,
        };
        let metadata = HashMap::from([(
            "tally.live".to_string(),
            serde_json::to_value(&m).map_err(|e| TallyError::Internal(e.to_string()))?,
        )]);
        // A batch already in live_late is a redo after a crash between the two commits.
        self.fence.check()?;
        if !late_rows.is_empty() {
            sink::append(
                &self.lake,
                layout::LIVE_LATE,
                &mut self.late,
                n,
                &late_rows,
                metadata.clone(),
            )
            .await?;
            crate::failpoint::hit("live_after_late_commit");
        }
        self.fence.check()?;
        let appended = sink::append(
            &self.lake,
            layout::LIVE_VIEW,
            &mut self.view,
            n,
            &view_rows,
            metadata,
        )
        .await?;
        crate::failpoint::hit("live_after_view_commit");
        // This run recovered at the view's last batch and holds the lease, so batch n can
        // only be there if another writer committed it meanwhile: fail the batch rather than
        // go on from a checkpoint that is not the view's (a continuous run then recovers from
        // the view; `--once` exits).
        if !appended {
            return Err(TallyError::Busy {
                message: format!(
                    "batch {n} of live_view was already committed by another writer; not committing it again"
                ),
            });
        }
        checkpoint::prune(&self.lake, n).await;
        self.cp = cp;
        m.committed_at_ms = chrono::Utc::now().timestamp_millis();
        m.batch_ms = started.elapsed().as_millis() as u64;
        Ok(m)
    }

    /// The checkpoint after batch `n`: the new batch appended, old ones dropped once neither
    /// their dedup keys nor their files can matter any more.
    fn next_checkpoint(
        &self,
        n: u64,
        before: Option<i64>,
        after: Option<i64>,
        files: Vec<FileRecord>,
    ) -> Checkpoint {
        // Capped so that files left for a later batch stay within the window of the mark: a
        // backlog taken in name order cannot strand older files.
        let window_ms = FILE_WINDOW.as_millis() as i64;
        let newest_mtime_ms = files
            .iter()
            .map(|f| f.mtime_ms)
            .chain(self.cp.newest_mtime_ms)
            .max()
            .map(|m| self.mark_cap_ms.map_or(m, |cap| m.min(cap)));
        let newest_partition = files
            .iter()
            .filter_map(|f| partition_of(&f.path))
            .chain(self.cp.newest_partition.clone())
            .max();
        let mut batches = self.cp.batches.clone();
        batches.push(BatchRecord {
            batch: n,
            max_event_before: before,
            max_event_after: after,
            files,
        });
        let kept = self.kept_minute(after).map(|m| m * MINUTE_US);
        let recent = newest_mtime_ms.map(|m| m - window_ms);
        batches.retain(|b| {
            let keys_alive = match (kept, b.max_event_after) {
                (Some(k), Some(m)) => m >= k,
                (None, _) => true,
                (Some(_), None) => false,
            };
            let files_recent = recent.is_none_or(|r| b.files.iter().any(|f| f.mtime_ms >= r));
            keys_alive || files_recent
        });
        let start_partition = self
            .cp
            .start_partition
            .clone()
            .or_else(|| self.discovery.start_partition().map(|d| d.to_string()));
        Checkpoint {
            batch: n,
            max_event_time: after,
            newest_mtime_ms,
            newest_partition,
            start_partition,
            raw_version: self.cp.raw_version,
            batches,
        }
    }

    /// Roll-up, log checkpoint and vacuum of both live tables.
    async fn maintain(&mut self) -> Result<()> {
        let keep_from = self
            .cp
            .max_event_time
            .map(|m| m.saturating_sub(self.cfg.retention.as_micros() as i64));
        let started = Instant::now();
        let view = sink::rollup(&self.lake, layout::LIVE_VIEW, &mut self.view, keep_from).await?;
        // Between the two tables' roll-ups: each is one commit of the same totals, so a crash
        // here leaves live_view rolled up and live_late not, which the next roll-up finishes.
        crate::failpoint::hit("live_after_rollup");
        let late = sink::rollup(&self.lake, layout::LIVE_LATE, &mut self.late, keep_from).await?;
        tracing::info!(
            view_files = view.files_before,
            view_rows = view.rows_after,
            late_files = late.files_before,
            ms = started.elapsed().as_millis() as u64,
            "live: rolled up"
        );
        Ok(())
    }
}

/// The `ingest_date` partition (`YYYY-MM-DD`) in a raw file's path.
fn partition_of(path: &str) -> Option<String> {
    path.split('/')
        .find_map(|p| p.strip_prefix("ingest_date="))
        .map(str::to_string)
}
