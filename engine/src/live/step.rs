//! One micro-batch: read its files, route the rows, then write the checkpoint, `live_late` and
//! `live_view` in that order.

use super::batch::{self, FileRows};
use super::checkpoint::{self, FileRecord};
use super::dedup::minute_of;
use super::{batch_keys, key_snapshot};
use super::{sink, BatchMetrics, PartnerMinute};
use crate::error::{Result, TallyError};
use crate::lake::layout;
use crate::schema;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

impl super::Runner {
    /// Runs batch `n` on `files`. When it fails, the dedup state is as it was before it, and a
    /// batch whose checkpoint was written is left to redo with exactly its files (as after a
    /// crash), so a continuous run can retry it without rebuilding the state.
    pub(super) async fn run_batch(
        &mut self,
        files: Vec<FileRecord>,
        raw_version: Option<u64>,
    ) -> Result<BatchMetrics> {
        self.state.begin_batch();
        self.written = None;
        let result = self.apply_batch(files, raw_version).await;
        match &result {
            Ok(_) => self.state.end_batch(),
            Err(_) => self.state.undo_batch(),
        }
        result
    }

    async fn apply_batch(
        &mut self,
        mut files: Vec<FileRecord>,
        raw_version: Option<u64>,
    ) -> Result<BatchMetrics> {
        let started = Instant::now();
        let n = self.cp.batch + 1;
        let mut rows = Vec::new();
        let mut quarantined = Vec::new();
        // Files quarantined when found (a tracked path that changed) are not read.
        let mut set_aside: Vec<(FileRecord, String)> = Vec::new();
        for file in files.iter().filter(|f| f.quarantined) {
            let why = file.reason.clone().unwrap_or_else(|| file.path.clone());
            set_aside.push((file.clone(), why));
        }
        let readable: Vec<FileRecord> = files.iter().filter(|f| !f.quarantined).cloned().collect();
        let read = batch::read_files(&self.lake, &readable, &schema::LIVE_INPUT).await?;
        let mut read = read.into_iter();
        for file in files.iter_mut().filter(|f| !f.quarantined) {
            match read.next() {
                Some(FileRows::Rows(r)) => rows.extend(r),
                Some(FileRows::Quarantined(why)) => {
                    file.quarantined = true;
                    set_aside.push((file.clone(), why));
                }
                Some(FileRows::Missing) => {
                    file.quarantined = true;
                    let why = format!("{}: deleted before it was read", file.path);
                    set_aside.push((file.clone(), why));
                }
                None => {}
            }
        }
        quarantined.extend(set_aside.iter().map(|(_, why)| why.clone()));
        let before = self.cp.max_event_time;
        let clock = self.clock(before);
        let routed = batch::route(&mut self.state, clock, &rows, true)?;
        drop(rows);
        let after = match (before, routed.max_event) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let view_rows = batch::window_totals(&self.ctx, routed.applied.clone()).await?;
        let late_rows = batch::window_totals(&self.ctx, routed.late.clone()).await?;

        let mut cp = self.next_checkpoint(n, before, after, files);
        cp.raw_version = raw_version.or(self.cp.raw_version);
        self.fence.confirm().await?;
        let delta = self
            .base
            .map(|base| checkpoint::Delta::between(base, &self.cp, &cp));
        let written_at = Instant::now();
        let (base, checkpoint_bytes) = checkpoint::write(&self.lake, &cp, delta.as_ref()).await?;
        let checkpoint_us = written_at.elapsed().as_micros() as u64;
        self.written = cp.batches.last().map(|b| (b.files.clone(), cp.raw_version));
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
            ahead: std::mem::take(&mut self.ahead),
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
            retries: 0,
            snapshot_parts: 0,
            snapshot_bytes: 0,
            snapshot_ms: 0,
            checkpoint_bytes,
            checkpoint_us,
            key_file_bytes: 0,
            key_file_us: 0,
            rebuild_missing_files: std::mem::take(&mut self.missing_on_rebuild),
            newest_ingest_us: routed.newest_ingest,
            minutes: partner_minutes(&view_rows)?,
        };
        let metadata = HashMap::from([(
            "tally.live".to_string(),
            serde_json::to_value(&m).map_err(|e| TallyError::Internal(e.to_string()))?,
        )]);
        // Quarantined files first, for good (a redo finds the batch recorded and skips it).
        if !set_aside.is_empty() {
            self.fence.confirm().await?;
            if self.quarantine.is_none() {
                self.quarantine = Some(super::quarantine::open(&self.lake).await?);
            }
            if let Some(table) = self.quarantine.as_mut() {
                super::quarantine::record(&self.lake, table, n, &set_aside).await?;
            }
        }
        // A batch already in live_late is a redo after a crash between the two commits.
        self.fence.confirm().await?;
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
        self.fence.confirm().await?;
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
        // Visible to readers from here on; what follows (key file, snapshot) only readies a
        // restart.
        m.committed_at_ms = chrono::Utc::now().timestamp_millis();
        // Landed (newest ingest_time applied) to visible.
        m.freshness_ms = routed.newest_ingest.map(|t| m.committed_at_ms - t / 1000);
        checkpoint::prune(&self.lake, n, base).await;
        self.cp = cp;
        self.base = Some(base);
        // The keys this batch added, so a restart replays it without its raw files.
        let t = Instant::now();
        match batch_keys::write(&self.lake, n, self.state.batch_keys()).await {
            Ok(bytes) => {
                m.key_file_bytes = bytes;
                m.key_file_us = t.elapsed().as_micros() as u64;
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = n, "live: could not write the batch's key file; a restart re-reads its raw files");
            }
        }
        // Sealed and evicted once committed: until then the batch's keys can be taken back.
        if let Some(m) = self.kept_minute(after) {
            self.state.evict_before(m);
        }
        if let Some(newest) = after.map(minute_of) {
            let t = Instant::now();
            let (parts, bytes) =
                key_snapshot::write(&self.lake, &mut self.state, &mut self.snapshot, n, newest)
                    .await;
            if parts > 0 {
                key_snapshot::collect(
                    &self.lake,
                    self.cp.key_snapshot.as_ref(),
                    &self.snapshot,
                    self.first_replayed_batch(),
                )
                .await;
                m.snapshot_parts = parts;
                m.snapshot_bytes = bytes;
                m.snapshot_ms = t.elapsed().as_millis() as u64;
            }
        }
        m.state_keys = self.state.keys();
        m.state_bytes = self.state.approx_bytes();
        m.batch_ms = started.elapsed().as_millis() as u64;
        Ok(m)
    }
}

/// Sums a batch's `live_view` rows (`sql/live_window.sql`'s output) over currencies, per
/// minute and partner.
fn partner_minutes(view_rows: &[RecordBatch]) -> Result<Vec<PartnerMinute>> {
    let mut sums: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for b in view_rows {
        let column = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("live window rows lack column {name}")))
        };
        let window = column("window_start")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| TallyError::Internal("window_start is not a timestamp".into()))?;
        let partner =
            arrow::compute::cast(column("partner_id")?, &arrow::datatypes::DataType::Utf8)?;
        let partner = partner.as_string::<i32>();
        let events = column("events")?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| TallyError::Internal("events is not Int64".into()))?;
        let errors = column("errors")?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| TallyError::Internal("errors is not Int64".into()))?;
        for i in 0..b.num_rows() {
            if window.is_null(i) {
                continue;
            }
            let p = if partner.is_null(i) {
                ""
            } else {
                partner.value(i)
            };
            let e = sums.entry((window.value(i), p.to_string())).or_default();
            e.0 += events.value(i).max(0) as u64;
            e.1 += errors.value(i).max(0) as u64;
        }
    }
    Ok(sums
        .into_iter()
        .map(
            |((window_start_us, partner_id), (events, errors))| PartnerMinute {
                window_start_us,
                partner_id,
                events,
                errors,
            },
        )
        .collect())
}
