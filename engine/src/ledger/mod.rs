//! `tally ledger`: day D's ledger, every transaction once, replaced in one Delta commit.
//!
//! The plan is `sql/ledger.sql`: arrivals of D's events over the lateness horizon, collapsed per
//! transaction by an aggregate grouped on `txn_key(txn_id)` (the 64-bit hash behind
//! `txn_bucket`), so the work is hash-partitioned by transaction and the aggregate spills under
//! a memory limit instead of failing. Transactions whose copies disagree are settled by `sql/ledger_disputed.sql` and
//! their variants go to `ledger_conflicts`. Each output partition is sorted by
//! (`partner_id`, `txn_id`) and streamed into its own Parquet file, so files are sized by the
//! bucket count and row groups prune by partner. The day's files then replace the previous
//! ones in ONE commit whose info records the inputs, the SQL hash and the content fingerprint.
//! Until that commit, readers see the previous ledger: a run killed at any moment changes nothing
//! but leaves unreferenced files (removed by VACUUM).

mod fingerprint;
pub mod inputs;
mod part_writer;
mod partition_sort;

pub use crate::raw_files::InputFile;
pub use fingerprint::Fingerprint;

use crate::day_lock::Fence;
use crate::delta;
use crate::error::{Result, TallyError};
use crate::jobs_sql;
use crate::lake::layout;
use crate::progress::Progress;
use crate::schema::{self, EVENT_DATE};
use crate::session::TallySession;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use chrono::{Days, NaiveDate, NaiveTime};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_plan::{displayable, ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{cast, col, lit, DataFrame, SessionConfig, SessionContext};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use part_writer::PartWriter;
use partition_sort::SortedRun;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a ledger run did.
#[derive(Debug, Clone)]
pub struct LedgerMetrics {
    /// The event day.
    pub day: NaiveDate,
    /// Raw files read (the whole arrival window).
    pub files_read: usize,
    /// Raw rows in those files (the window; rows outside day D are skipped by the plan).
    pub rows_read: u64,
    /// Ledger rows written.
    pub ledger_rows: u64,
    /// Transactions whose copies disagreed (settled by the disputed path).
    pub disputed: u64,
    /// Rows written to `ledger_conflicts` (one per distinct payload).
    pub conflict_rows: u64,
    /// The content fingerprint.
    pub fingerprint: Fingerprint,
    /// Delta version of `ledger` that holds the day.
    pub version: u64,
    /// Files the commit replaced and added.
    pub removed_files: usize,
    /// Files added.
    pub added_files: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// What identifies this run's inputs and logic (see [`inputs_key`]).
    pub inputs_key: String,
}

/// Builds one day's ledger. Configure with `with_*`, then [`LedgerJob::run`] or
/// [`LedgerJob::explain`].
pub struct LedgerJob<'a> {
    session: &'a TallySession,
    day: NaiveDate,
    late_days: u32,
    buckets: u32,
    progress: &'a dyn Progress,
    fence: Option<Fence>,
}

impl<'a> LedgerJob<'a> {
    /// The job for `day` over `session`'s lake, with the default horizon of 3 days.
    pub fn new(session: &'a TallySession, day: NaiveDate) -> Self {
        Self {
            session,
            day,
            late_days: 3,
            buckets: 16,
            progress: &crate::progress::NoProgress,
            fence: None,
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

    /// Where to report progress.
    pub fn with_progress(mut self, progress: &'a dyn Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The day's lease, checked before each commit. A run that stalled past its lease (a
    /// paused VM) while another run rebuilt the day from newer arrivals must not then replace
    /// that newer ledger with its older one.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    fn check_fence(&self) -> Result<()> {
        self.fence.as_ref().map_or(Ok(()), Fence::check)
    }

    fn params(&self) -> Result<Vec<ScalarValue>> {
        let bad = || TallyError::InvalidArgument {
            what: "date".into(),
            message: format!("{} + {} days is out of range", self.day, self.late_days),
        };
        let last = self
            .day
            .checked_add_days(Days::new(self.late_days as u64))
            .ok_or_else(bad)?;
        let next = self.day.checked_add_days(Days::new(1)).ok_or_else(bad)?;
        let date = |d: NaiveDate| ScalarValue::Date32(Some(schema::date32(d)));
        let ts = |d: NaiveDate| {
            ScalarValue::TimestampMicrosecond(
                Some(d.and_time(NaiveTime::MIN).and_utc().timestamp_micros()),
                Some("UTC".into()),
            )
        };
        Ok(vec![date(self.day), date(last), ts(self.day), ts(next)])
    }

    fn require_raw(&self) -> Result<()> {
        self.session
            .table("raw_payments")
            .map(|_| ())
            .map_err(|_| TallyError::TableNotFound {
                name: format!(
                    "raw_payments (no raw files under {})",
                    self.session
                        .lake()
                        .url_of(layout::RAW_PAYMENTS)
                        .map(|u| u.to_string())
                        .unwrap_or_default()
                ),
            })
    }

    /// The physical plan: the ledger SQL. Each of its hash partitions is then ordered by
    /// (`partner_id`, `txn_id`) and written by [`write_partition`].
    async fn plan(&self) -> Result<Arc<dyn ExecutionPlan>> {
        self.require_raw()?;
        let params = self.params()?;
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
        let df = DataFrame::new(state, plan).with_param_values(params)?;
        Ok(df.create_physical_plan().await?)
    }

    /// The plan as text, for `tally ledger --explain`: DataFusion's plan under the sink that
    /// orders and writes each of its partitions.
    pub async fn explain(&self) -> Result<String> {
        let plan = self.plan().await?;
        let partitions = plan.output_partitioning().partition_count();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        let sink = format!(
            "LedgerSink: partitions={partitions}, each ordered by [partner_id ASC NULLS FIRST, txn_id ASC] \
             into its own Parquet file (zstd, {ROW_GROUP_ROWS}-row groups, txn_id bloom filter), \
             one Delta commit replacing event_date={}\n",
            self.day
        );
        let indented: String = text.lines().map(|l| format!("  {l}\n")).collect();
        Ok(format!("{sink}{indented}"))
    }

    /// Builds the day and commits it.
    pub async fn run(self) -> Result<LedgerMetrics> {
        let started = Instant::now();
        let lake = self.session.lake();
        self.require_raw()?;
        self.progress
            .message(&format!("{}: checking raw files", self.day));
        let inputs = inputs::collect(lake, self.day, self.late_days).await?;
        let rows_read: u64 = inputs.iter().map(|f| f.rows).sum();
        tracing::info!(day = %self.day, files = inputs.len(), rows_read, secs = started.elapsed().as_secs_f64(), "ledger: inputs checked");

        let ledger_url = lake.url_of(layout::LEDGER)?;
        let table = delta::open_or_create(
            lake,
            &ledger_url,
            "ledger",
            &schema::LEDGER,
            &[EVENT_DATE],
            &[],
        )
        .await?;

        // Phase 1: the ledger plan, one writer per hash partition.
        self.progress.message(&format!(
            "{}: deduplicating {} raw rows",
            self.day, rows_read
        ));
        let plan = self.plan().await?;
        let partitions = plan.output_partitioning().partition_count();
        self.progress.set_total("partitions", partitions as u64 + 1);
        let task_ctx = self.session.ctx().task_ctx();
        let mut tasks = Vec::new();
        let run_id = format!("{:016x}", rand::random::<u64>());
        let store = table.object_store();
        let day_text = self.day.to_string();
        for p in 0..partitions {
            let stream = plan.execute(p, Arc::clone(&task_ctx))?;
            let writer =
                PartWriter::new(Arc::clone(&store), &schema::LEDGER, &day_text, p, &run_id)?;
            let reservation = MemoryConsumer::new(format!("LedgerSink[{p}]"))
                .with_can_spill(true)
                .register(task_ctx.memory_pool());
            // The disputed transactions' variants are held until they are settled; counted in
            // the pool (not spillable) so that other operators spill to make room for them.
            let held = MemoryConsumer::new(format!("LedgerDisputed[{p}]"))
                .register(task_ctx.memory_pool());
            tasks.push(tokio::spawn(write_partition(
                stream,
                writer,
                reservation,
                held,
            )));
        }
        let mut adds = Vec::new();
        let mut fp = Fingerprint::default();
        let mut disputed: Vec<RecordBatch> = Vec::new();
        let mut held = Vec::new();
        for t in tasks {
            let part = t
                .await
                .map_err(|e| TallyError::Internal(format!("ledger writer task: {e}")))??;
            adds.extend(part.adds);
            fp.merge(&part.fingerprint);
            disputed.extend(part.disputed);
            held.push(part.held);
            self.progress.advance(1);
        }

        tracing::info!(day = %self.day, secs = started.elapsed().as_secs_f64(), rows = fp.rows, "ledger: main plan written");

        // Phase 2: transactions whose copies disagree.
        let disputed_count: u64 = disputed.iter().map(|b| b.num_rows() as u64).sum();
        let mut conflicts: Vec<RecordBatch> = Vec::new();
        // The settlement query accounts for what it holds itself. The main plan goes too: its
        // operators' memory consumers stay registered while it lives, and a fair pool splits
        // the limit between every registered consumer, idle or not.
        drop(held);
        drop(plan);
        drop(task_ctx);
        if disputed_count > 0 {
            let (winners, variants) = self.settle_disputed(disputed).await?;
            let mut writer = PartWriter::new(
                Arc::clone(&store),
                &schema::LEDGER,
                &day_text,
                partitions,
                &run_id,
            )?;
            for b in winners {
                let b = schema::conform(&b, &schema::LEDGER)?;
                fp.update(&b)?;
                writer.write(&b).await?;
            }
            adds.extend(writer.finish().await?);
            conflicts = variants;
        }
        self.progress.advance(1);

        tracing::info!(day = %self.day, secs = started.elapsed().as_secs_f64(), disputed = disputed_count, "ledger: disputed settled");

        // Phase 3: conflicts, then the ledger commit (the one finance reads).
        self.check_fence()?;
        let conflict_rows = self.write_conflicts(conflicts).await?;
        let meta = commit_info(
            &self,
            &inputs,
            rows_read,
            &fp,
            disputed_count,
            conflict_rows,
        );
        let added_files = adds.len();
        self.check_fence()?;
        let (version, removed_files) =
            delta::replace_partition(&table, EVENT_DATE, &day_text, adds, meta).await?;
        Ok(LedgerMetrics {
            day: self.day,
            files_read: inputs.len(),
            rows_read,
            ledger_rows: fp.rows,
            disputed: disputed_count,
            conflict_rows,
            fingerprint: fp,
            version,
            removed_files,
            added_files,
            elapsed: started.elapsed(),
            inputs_key: inputs_key(&inputs, self.late_days),
        })
    }

    /// Runs `ledger_disputed.sql` over the disputed transactions' variants; returns (ledger
    /// rows, conflict rows).
    async fn settle_disputed(
        &self,
        disputed: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
        // Its own small context over the session's runtime (the same memory pool), with one
        // partition: the settlement reads only `disputed_txns`, usually a sliver of the day,
        // and a fair pool gives each spillable consumer an equal share, so a window sort per
        // partition left each too little for a day where every transaction is disputed.
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_target_partitions(1),
            self.session.ctx().runtime_env(),
        );
        let schema = disputed[0].schema();
        // One batch: the disputed rows arrive as a sliver of every output batch.
        let one = arrow::compute::concat_batches(&schema, &disputed)?;
        let ids = MemTable::try_new(schema, vec![vec![one]])?;
        ctx.register_table("disputed_txns", Arc::new(ids))?;
        let result = async {
            let df = ctx.sql(jobs_sql::LEDGER_DISPUTED).await?;
            let settled = df.cache().await?;
            let winners = settled
                .clone()
                .filter(col("is_winner"))?
                .select(vec![
                    col("txn_id"),
                    col("partner_id"),
                    col("event_time"),
                    cast(col("event_time"), arrow::datatypes::DataType::Date32).alias(EVENT_DATE),
                    col("amount"),
                    col("currency"),
                    col("status"),
                    col("txn_first_ingest_time").alias("first_ingest_time"),
                    col("txn_copies").alias("copies"),
                ])?
                // Ordered like every other ledger file, so its row groups prune by partner.
                .sort(vec![
                    col("partner_id").sort(true, true),
                    col("txn_id").sort(true, true),
                ])?
                .collect()
                .await?;
            let variants = settled
                .filter(col("variants").gt(lit(1i64)))?
                .select(vec![
                    col("txn_id"),
                    cast(col("event_time"), arrow::datatypes::DataType::Date32).alias(EVENT_DATE),
                    col("partner_id"),
                    col("amount"),
                    col("currency"),
                    col("status"),
                    col("first_ingest_time"),
                    col("copies"),
                    col("is_winner"),
                ])?
                .collect()
                .await?;
            Ok::<_, TallyError>((winners, variants))
        }
        .await;
        let (winners, variants) = result?;
        // Conflict rows are all of day D (the event_time of losing variants may be NULL above).
        let day = ScalarValue::Date32(Some(schema::date32(self.day)));
        let variants = variants
            .into_iter()
            .map(|b| {
                let n = b.num_rows();
                let mut cols = b.columns().to_vec();
                cols[1] = day.to_array_of_size(n)?;
                Ok(RecordBatch::try_new(b.schema(), cols)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((winners, variants))
    }

    /// Replaces day D in `ledger_conflicts` (even with no rows, so a re-run clears stale ones).
    async fn write_conflicts(&self, batches: Vec<RecordBatch>) -> Result<u64> {
        let lake = self.session.lake();
        let url = lake.url_of(layout::LEDGER_CONFLICTS)?;
        let table = delta::open_or_create(
            lake,
            &url,
            "ledger_conflicts",
            &schema::LEDGER_CONFLICTS,
            &[EVENT_DATE],
            &[],
        )
        .await?;
        let mut writer = RecordBatchWriter::for_table(&table)?;
        let mut rows = 0u64;
        for b in batches {
            let b = schema::conform(&b, &writer.arrow_schema())?;
            rows += b.num_rows() as u64;
            writer.write(b).await?;
        }
        let adds = writer.flush().await?;
        let meta = HashMap::from([(
            "tally".to_string(),
            serde_json::json!({"job": "ledger_conflicts", "day": self.day.to_string(), "rows": rows}),
        )]);
        delta::replace_partition(&table, EVENT_DATE, &self.day.to_string(), adds, meta).await?;
        Ok(rows)
    }
}

/// What one partition writer produced.
struct PartOutput {
    adds: Vec<deltalake::kernel::Add>,
    fingerprint: Fingerprint,
    /// The `variants` of transactions whose copies disagree (one-column batches).
    disputed: Vec<RecordBatch>,
    /// The memory `disputed` holds, in the session's pool.
    held: MemoryReservation,
}

/// Rows per Parquet row group of a ledger file (and per sorted chunk handed to the writer).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Streams one hash partition into its ledger file, splitting off disputed transactions.
///
/// The partition's rows are collected, then written in (`partner_id`, `txn_id`) order. The
/// collected rows are held against the session's memory pool; when the pool refuses more (a
/// `--memory-limit` run), what is collected is written as a sorted run and collection starts
/// again, so the file holds several sorted runs instead of one: the same rows, row groups that
/// prune a little less.
async fn write_partition(
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    mut writer: PartWriter,
    reservation: MemoryReservation,
    held: MemoryReservation,
) -> Result<PartOutput> {
    let mut fp = Fingerprint::default();
    let mut disputed = Vec::new();
    let mut run = SortedRun::default();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let txn = batch
            .column_by_name("txn_id")
            .ok_or_else(|| TallyError::Internal("ledger plan lost txn_id".into()))?;
        if txn.null_count() > 0 {
            return Err(TallyError::BadInput {
                message: "raw rows with a null txn_id (the dedup key) in the day's window".into(),
            });
        }
        let agree = batch
            .column_by_name("agree")
            .ok_or_else(|| TallyError::Internal("ledger plan lost agree".into()))?
            .as_boolean()
            .clone();
        // Disputed rows (a few per batch) stay in the batch and are left out of the fingerprint
        // and the sorted run, instead of copying every other row into a new batch.
        let agreeing = agree.true_count();
        let keep = if agreeing < agree.len() {
            let not_agree = arrow::compute::not(&agree)?;
            let others = filter_record_batch(&batch, &not_agree)?;
            let variants = others.project(&[others.schema().index_of("variants")?])?;
            held.grow(slice_memory_size(&variants));
            disputed.push(variants);
            if agreeing == 0 {
                continue;
            }
            Some(agree.values() & &agree_valid(&agree))
        } else {
            None
        };
        // The fingerprint is order-independent: take it while the rows are still in memory
        // order (after the sort every row is a random access).
        fp.update_selected(&batch, keep.as_ref())?;
        let rows = batch.project(&writer.file_column_indices(&batch.schema())?)?;
        let size = slice_memory_size(&rows);
        if reservation.try_grow(size).is_err() && run.rows() > 0 {
            write_run(std::mem::take(&mut run), &mut writer).await?;
            reservation.free();
        }
        // A single batch is always taken, even past the limit: progress over purity.
        if reservation.size() == 0 {
            reservation.grow(size);
        }
        run.push_selected(rows, keep);
    }
    write_run(run, &mut writer).await?;
    reservation.free();
    let adds: Vec<_> = writer.finish().await?.into_iter().collect();
    Ok(PartOutput {
        adds,
        fingerprint: fp,
        disputed,
        held,
    })
}

/// Writes a run of rows in (`partner_id`, `txn_id`) order, a row group at a time.
async fn write_run(run: SortedRun, writer: &mut PartWriter) -> Result<()> {
    if run.rows() == 0 {
        return Ok(());
    }
    for chunk in run.into_sorted_chunks(ROW_GROUP_ROWS)? {
        writer.write(&chunk?).await?;
    }
    Ok(())
}

/// The rows where `agree` is not NULL (a NULL `agree` is not a ledger row). Arrow's
/// `prep_null_mask_filter` would do, but it panics on an array without a null buffer.
fn agree_valid(agree: &arrow::array::BooleanArray) -> arrow::buffer::BooleanBuffer {
    agree.nulls().map_or_else(
        || arrow::buffer::BooleanBuffer::new_set(agree.len()),
        |n| n.inner().clone(),
    )
}

/// Memory held by the rows of a batch (not by the buffers its slices share with others).
fn slice_memory_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// The commit info: what produced this version, and what it contains.
fn commit_info(
    job: &LedgerJob<'_>,
    inputs: &[InputFile],
    rows_read: u64,
    fp: &Fingerprint,
    disputed: u64,
    conflict_rows: u64,
) -> HashMap<String, serde_json::Value> {
    HashMap::from([(
        "tally".to_string(),
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "job": "ledger",
            "day": job.day.to_string(),
            "late_days": job.late_days,
            "buckets": job.buckets,
            "sql_hash": jobs_sql::sql_hash(&[jobs_sql::LEDGER, jobs_sql::LEDGER_DISPUTED]),
            "inputs": {
                "files": inputs,
                "file_count": inputs.len(),
                "rows_read": rows_read,
                "hash": inputs_hash(inputs),
            },
            "fingerprint": fp.to_json(),
            "disputed": disputed,
            "conflict_rows": conflict_rows,
        }),
    )])
}

/// What decides a day's ledger: the raw files (paths and sizes), the lateness horizon and the
/// SQL. A backfill skips a day whose key equals the key of its last successful run.
pub fn inputs_key(inputs: &[InputFile], late_days: u32) -> String {
    let sql = jobs_sql::sql_hash(&[jobs_sql::LEDGER, jobs_sql::LEDGER_DISPUTED]);
    format!("{}-{late_days}-{sql}", inputs_hash(inputs))
}

/// A hash of the input file list (paths and sizes): equal hashes mean the same raw inputs.
pub fn inputs_hash(inputs: &[InputFile]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in inputs {
        h.update(f.path.as_bytes());
        h.update(&[0]);
        h.update(&f.size.to_le_bytes());
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, S3Options};
    use crate::generate::{generate, GenerateOptions};
    use crate::lake::Lake;
    use crate::progress::NoProgress;
    use crate::session::SessionOptions;

    #[tokio::test]
    async fn a_run_whose_lease_was_taken_over_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&dir.path().to_string_lossy(), &S3Options::default()).unwrap();
        let opts = GenerateOptions {
            days: 2,
            events_per_day: 2_000,
            ..Default::default()
        };
        generate(&lake, &opts, &NoProgress).await.unwrap();
        let session = TallySession::open(&lake, &Config::default(), &SessionOptions::default())
            .await
            .unwrap();
        let day = opts.start;
        let e = LedgerJob::new(&session, day)
            .with_fence(Fence::lost("ledger day"))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, TallyError::Busy { .. }), "{e}");
        let ledger_log = dir.path().join("ledger/_delta_log");
        let versions = std::fs::read_dir(&ledger_log)
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(
            versions <= 1,
            "only the table's creation, if any: {versions}"
        );
        let conflicts = dir.path().join("ledger_conflicts/_delta_log");
        let versions = std::fs::read_dir(&conflicts)
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(versions <= 1, "ledger_conflicts: {versions}");

        // The same job without a lost lease commits.
        let m = LedgerJob::new(&session, day).run().await.unwrap();
        assert!(m.ledger_rows > 0 && m.version >= 1);
    }
}
