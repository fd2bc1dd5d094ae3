//! `tally ledger`: day D's ledger, every transaction once, replaced in one Delta commit.
//!
//! A run, step by step (each step in its own module):
//! 1. [`inputs`]: list and check the raw files of the read window ([`window`]): D's own
//!    arrivals (ingest_date D − 1 … D + horizon) and its neighbours'. The plan then reads
//!    exactly those files ([`scan`]);
//! 2. the plan `sql/ledger.sql` collapses D's copies per transaction, grouped on
//!    `txn_key(txn_id)` and so hash-partitioned by transaction; each partition's rows are held
//!    ([`sink::collect`]);
//! 3. [`neighbours`]: the day's keys are looked up among the neighbouring days' copies;
//! 4. each partition takes out the transactions found there, writes the rest sorted by
//!    (`partner_id`, `txn_id`) into its own Parquet file ([`sink::finish`]);
//!
//!    A large day (over a few million raw rows under a memory limit, 16M without) runs
//!    steps 2–4 in [`passes`], one range of transaction keys at a time, over its copies split
//!    once into temporary files ([`one_pass`]);
//! 5. [`settle`]: disputed transactions and those with neighbouring copies are settled by
//!    `sql/ledger_settle.sql`: D keeps those whose winning copy names D;
//!    A transaction shared with a neighbouring day that this run gives another owner than
//!    that day's committed ledger did names the day to rebuild ([`stale_days`]);
//! 6. [`guard`]: a run that found no input, or that would shrink the committed day beyond
//!    `--max-shrink`, refuses;
//! 7. [`commit`]: the day's files replace the previous ones in ONE commit, made against the
//!    table version read at step 1 (a newer run's commit makes it fail), then
//!    `ledger_conflicts` follows, naming the ledger version it belongs to.
//!
//! Until the ledger commit, readers see the previous ledger: a run killed at any moment
//! changes nothing but leaves unreferenced files (removed by `tally vacuum`).

mod commit;
mod day_keys;
mod disputed_rows;
pub(crate) mod fingerprint;
pub mod guard;
mod held_rows;
pub mod inputs;
pub mod key_index;
mod metrics;
mod neighbours;
mod one_pass;
pub(crate) mod part_writer;
mod partition_sort;
pub mod passes;
mod payload_disputes;
mod plan_schema;
pub mod scan;
mod settle;
mod sink;
pub mod stale_days;
mod tasks;
pub mod window;

pub use crate::raw_files::InputFile;
pub use commit::{inputs_key, LOGIC_VERSION};
pub use fingerprint::Fingerprint;
pub use guard::Guard;
pub use metrics::LedgerMetrics;

use crate::day_lock::Fence;
use crate::delta;
use crate::error::Result;
use crate::failpoint;
use crate::jobs_sql;
use crate::lake::layout;
use crate::progress::Progress;
use crate::schema::{self, EVENT_DATE};
use crate::session::TallySession;
use chrono::NaiveDate;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_plan::{displayable, ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::DataFrame;
use inputs::Inputs;
use one_pass::Gathered;
use part_writer::PartWriter;
use plan_schema::{project, schema_of};
use std::sync::Arc;
use std::time::Instant;
use window::DayWindow;

/// Builds one day's ledger. Configure with `with_*`, then [`LedgerJob::run`] or
/// [`LedgerJob::explain`].
pub struct LedgerJob<'a> {
    session: &'a TallySession,
    day: NaiveDate,
    late_days: u32,
    buckets: u32,
    guard: Guard,
    progress: &'a dyn Progress,
    fence: Option<Fence>,
    passes: Option<usize>,
}

impl<'a> LedgerJob<'a> {
    /// The job for `day` over `session`'s lake, with the default horizon of 3 days.
    pub fn new(session: &'a TallySession, day: NaiveDate) -> Self {
        Self {
            session,
            day,
            late_days: 3,
            buckets: 16,
            guard: Guard::default(),
            progress: &crate::progress::NoProgress,
            fence: None,
            passes: None,
        }
    }

    /// Days after D whose arrivals still count.
    pub fn with_late_days(mut self, days: u32) -> Self {
        self.late_days = days;
        self
    }

    /// Number of `txn_id` hash buckets.
    pub fn with_buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets.max(1);
        self
    }

    /// Passes over the day's transaction keys ([`passes`]); by default one per 4M raw rows
    /// under a memory limit (more if it needs them), one per 16M without.
    pub fn with_passes(mut self, passes: Option<usize>) -> Self {
        self.passes = passes.map(|p| p.clamp(1, passes::MAX_PASSES));
        self
    }

    /// When the run refuses to replace the committed day (see [`Guard`]).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// Where to report progress.
    pub fn with_progress(mut self, progress: &'a dyn Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The day's lease, confirmed right before each commit.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    async fn confirm_fence(&self) -> Result<()> {
        match &self.fence {
            Some(f) => f.confirm().await,
            None => Ok(()),
        }
    }

    fn window(&self) -> Result<DayWindow> {
        DayWindow::new(self.day, self.late_days)
    }

    /// Registers D's own checked files as `day_arrivals` for `sql/ledger.sql` (the
    /// neighbours' rows are registered by [`neighbours::find`], once it knows which to read).
    fn register_inputs(&self, window: &DayWindow, inputs: &Inputs) -> Result<()> {
        let ctx = self.session.ctx();
        let url = ObjectStoreUrl::parse(self.session.lake().store_url().as_str())?;
        let files = inputs.scan_files(|f| window.is_own(f.ingest_date));
        ctx.deregister_table("day_arrivals")?;
        ctx.register_table(
            "day_arrivals",
            Arc::new(scan::CheckedFiles::new(url, files)),
        )?;
        Ok(())
    }

    /// The physical plan of `sql/ledger.sql`. Each of its hash partitions is then held,
    /// ordered by (`partner_id`, `txn_id`) and written by [`sink`].
    async fn plan(&self, window: &DayWindow) -> Result<Arc<dyn ExecutionPlan>> {
        let mut state = self.session.ctx().state();
        // The ledger groups by transaction, so nearly every raw copy starts its own group and a
        // partial aggregate before the shuffle only copies the rows once more. DataFusion
        // notices and skips it after a probe (100k rows per partition by default); one batch
        // is enough to tell.
        let options = state.config_mut().options_mut();
        options
            .execution
            .skip_partial_aggregation_probe_rows_threshold = options
            .execution
            .skip_partial_aggregation_probe_rows_threshold
            .min(options.execution.batch_size.get());
        let plan = state.create_logical_plan(jobs_sql::LEDGER).await?;
        let df = DataFrame::new(state, plan).with_param_values(window.ledger_params())?;
        Ok(df.create_physical_plan().await?)
    }

    /// The plan as text, for `tally ledger --explain`: DataFusion's plan under the sink that
    /// orders and writes each of its partitions.
    pub async fn explain(&self) -> Result<String> {
        let window = self.window()?;
        let inputs = inputs::collect(self.session.lake(), &window).await?;
        self.register_inputs(&window, &inputs)?;
        let plan = self.plan(&window).await?;
        let partitions = plan.output_partitioning().partition_count();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        let sink = format!(
            "LedgerSink: partitions={partitions}, each ordered by [partner_id ASC NULLS FIRST, txn_id ASC] \
             into its own Parquet file (zstd, {ROW_GROUP_ROWS}-row groups, txn_id bloom filter), \
             after the day's keys are looked up among {} files of the neighbouring days; \
             one Delta commit replacing event_date={}\n",
            inputs.files.len(),
            self.day
        );
        let indented: String = text.lines().map(|l| format!("  {l}\n")).collect();
        Ok(format!("{sink}{indented}"))
    }

    /// Builds the day and commits it.
    pub async fn run(self) -> Result<LedgerMetrics> {
        let started = Instant::now();
        let window = self.window()?;
        let lake = self.session.lake();
        // The tables as this run found them: the versions its commits replace.
        let ledger = delta::open_or_create(
            lake,
            &lake.url_of(layout::LEDGER)?,
            "ledger",
            &schema::LEDGER,
            &[EVENT_DATE],
            &[],
        )
        .await?;
        // Tables written by an older tally lack `reason` and `copy_event_date`: added now, in
        // their own commit, before this run's snapshot is read (never inside a day's commit,
        // where it would stand in the way of another day's run committing beside it).
        let conflicts_table = delta::open_or_create(
            lake,
            &lake.url_of(layout::LEDGER_CONFLICTS)?,
            "ledger_conflicts",
            &schema::LEDGER_CONFLICTS,
            &[EVENT_DATE],
            &[],
        )
        .await?;
        let conflicts_table =
            delta::ensure_columns(conflicts_table, &schema::LEDGER_CONFLICTS).await?;
        let day_text = self.day.to_string();
        let committed_rows = delta::partition_rows(&ledger, EVENT_DATE, &day_text).await?;

        self.progress
            .message(&format!("{}: checking raw files", self.day));
        let inputs = inputs::collect(lake, &window).await?;
        self.guard
            .check_inputs(lake, &window, &inputs, committed_rows)?;
        let rows_read = inputs.rows();
        tracing::info!(day = %self.day, files = inputs.files.len(), rows_read, secs = started.elapsed().as_secs_f64(), "ledger: inputs checked");
        self.register_inputs(&window, &inputs)?;
        // A file landing from here on is not this run's: the scan reads the checked list only.
        failpoint::hit("ledger_after_input_check");

        // The main plan, one sink per hash partition; a large day goes through it in passes,
        // each a range of transaction keys ([`passes`]).
        let limit = match self.session.ctx().task_ctx().memory_pool().memory_limit() {
            MemoryLimit::Finite(bytes) => Some(bytes),
            MemoryLimit::Infinite | MemoryLimit::Unknown => None,
        };
        let passes = self
            .passes
            .unwrap_or_else(|| passes::needed(rows_read, limit));
        // Between passes, the wanted part of the neighbours' key indexes stays in memory
        // while it takes at most an eighth of the limit (1 GiB without one).
        let kept_budget = match (passes, limit) {
            (1, _) => 0,
            (_, Some(bytes)) => bytes / 8,
            (_, None) => 1 << 30,
        };
        let kept = Arc::new(neighbours::KeptIndexes::new(kept_budget));
        let run_id = format!("{:016x}", rand::random::<u64>());
        let store = ledger.object_store();
        // One pass reads the checked files (registered above); several read their split.
        let scattered = if passes > 1 {
            self.progress.message(&format!(
                "{}: splitting {} raw rows into {passes} passes",
                self.day, rows_read
            ));
            let s = passes::scatter(self.session, &window, passes).await?;
            tracing::info!(day = %self.day, passes, rows = s.rows, secs = started.elapsed().as_secs_f64(), "ledger: copies split into passes");
            Some(s)
        } else {
            None
        };
        let mut day = Gathered::default();
        for pass in 0..passes {
            if let Some(s) = &scattered {
                s.register(self.session, pass).await?;
            }
            self.pass(
                &window,
                &inputs,
                &store,
                &conflicts_table,
                &run_id,
                (pass, passes),
                &kept,
                &mut day,
            )
            .await?;
        }
        if let Some(s) = scattered {
            drop(s);
            // Later queries of `day_arrivals` read the checked files again.
            self.register_inputs(&window, &inputs)?;
        }
        let Gathered {
            mut adds,
            mut fp,
            disputed,
            taken,
            conflict_files,
            settled_here,
            disputes_spilled,
            neighbour_copies,
            neighbour_schema,
            plan_schema,
            partitions,
        } = day;
        let plan_schema = plan_schema
            .ok_or_else(|| crate::error::TallyError::Internal("the ledger ran no pass".into()))?;
        let task_ctx = self.session.ctx().task_ctx();
        // The disputes left for the settlement are counted as one consumer that cannot spill
        // (spillable ones would each claim a fair share of the pool from its sorts). The main
        // plan goes: its operators' memory consumers stay registered while it lives, and a
        // fair pool splits the limit between every registered consumer, idle or not.
        let held_memory = MemoryConsumer::new("LedgerSettleInput").register(task_ctx.memory_pool());
        held_memory.grow(disputed.iter().map(disputed_rows::slice_memory_size).sum());
        drop(task_ctx);
        let disputed_count: u64 = disputed.iter().map(|b| b.num_rows() as u64).sum::<u64>()
            + taken.iter().map(|b| b.num_rows() as u64).sum::<u64>()
            + settled_here;
        let to_settle = settle::ToSettle {
            disputed: (project(&plan_schema, &["txn_key", "variants"])?, disputed),
            day_rows: (schema_of(&plan_schema)?, taken),
            neighbour_copies: (
                neighbour_schema.ok_or_else(|| {
                    crate::error::TallyError::Internal("the ledger ran no lookup".into())
                })?,
                neighbour_copies,
            ),
        };
        let mut conflicts = Vec::new();
        let mut ceded = 0;
        let mut beyond_bound = 0;
        let mut shared = Vec::new();
        if !to_settle.is_empty() {
            let settled = settle::settle(self.session, &window, to_settle).await?;
            drop(held_memory);
            let mut writer = PartWriter::new(
                Arc::clone(&store),
                &schema::LEDGER,
                &day_text,
                partitions * passes,
                &run_id,
            )?;
            for b in settled.ledger_rows {
                let b = schema::conform(&b, &schema::LEDGER)?;
                fp.update(&b)?;
                writer.write(&b).await?;
            }
            adds.extend(writer.finish().await?);
            conflicts = settled.conflicts;
            ceded = settled.ceded;
            beyond_bound = settled.beyond_bound;
            shared = settled.shared;
        }
        self.progress.advance(1);
        failpoint::hit("ledger_after_part_files");
        tracing::info!(day = %self.day, secs = started.elapsed().as_secs_f64(), disputed = disputed_count, ceded, beyond_bound, "ledger: settled");
        let stale_days =
            stale_days::find(self.session, &window, &ledger, &conflicts_table, shared).await?;
        for s in &stale_days {
            tracing::warn!(day = %self.day, stale = %s.day, transactions = s.transactions, "ledger: a neighbouring day decided shared transactions otherwise and must be rebuilt");
        }

        let rows_without_event_time = match inputs.rows_without_event_time(&window) {
            Some(n) => n,
            None => self.count_rows_without_event_time().await?,
        };
        self.guard
            .check_shrink(self.day, committed_rows, fp.rows, ledger.version())?;

        // The ledger commit (the one finance reads), then the conflicts naming it.
        let added_files = adds.len();
        let facts = commit::RunFacts {
            window,
            buckets: self.buckets,
            passes,
            inputs: &inputs,
            rows_without_event_time,
            fingerprint: &fp,
            disputed: disputed_count,
            ceded,
            beyond_bound,
            stale_days: &stale_days,
        };
        failpoint::hit("ledger_before_commit");
        self.confirm_fence().await?;
        // Between the lease's confirmation and the commit: a holder paused here past its
        // expiry is stopped by the commit itself (it is made against this run's snapshot).
        failpoint::hit("ledger_after_fence");
        let (version, removed_files) = delta::replace_partition(
            &ledger,
            EVENT_DATE,
            &day_text,
            adds,
            commit::ledger_info(&facts),
        )
        .await?;
        failpoint::hit("ledger_after_commit");
        let (conflict_rows, conflicts_version) = commit::write_conflicts(
            &conflicts_table,
            &day_text,
            &run_id,
            conflict_files,
            conflicts,
            version,
        )
        .await?;
        failpoint::hit("ledger_after_conflicts_commit");
        Ok(LedgerMetrics {
            day: self.day,
            files_read: inputs.files.len(),
            rows_read,
            rows_without_event_time,
            ledger_rows: fp.rows,
            disputed: disputed_count,
            ceded,
            beyond_bound,
            stale_days,
            conflict_rows,
            disputes_spilled,
            passes,
            fingerprint: fp,
            version,
            conflicts_version,
            removed_files,
            added_files,
            elapsed: started.elapsed(),
            inputs_key: inputs_key(&inputs.recorded(), self.late_days),
        })
    }
}

/// Rows per Parquet row group of a ledger file (and per sorted chunk handed to the writer).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
