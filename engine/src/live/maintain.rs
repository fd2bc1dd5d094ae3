//! Maintenance every `compact_every` batches: roll-up of both live tables (windows past the
//! retention dropped), Delta log checkpoint and vacuum, and stale live checkpoints collected.

use super::sink;
use crate::error::Result;
use crate::lake::layout;
use std::time::Instant;

impl super::Runner {
    /// Roll-up, log checkpoint and vacuum of both live tables.
    pub(super) async fn maintain(&mut self) -> Result<()> {
        let keep_from = self
            .cp
            .max_event_time
            .map(|m| m.saturating_sub(self.cfg.retention.as_micros() as i64));
        // A roll-up rewrites both tables: only while the lease is still this run's.
        self.fence.confirm().await?;
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
        // The committed checkpoint builds on the full one at `base`: every earlier one is
        // stale.
        if let Some(base) = self.base {
            super::checkpoint::collect(&self.lake, base).await;
        }
        Ok(())
    }
}
