//! One pass of a ledger run: `sql/ledger.sql` over what `day_arrivals` holds (the whole day, or
//! one range of its transaction keys: see [`super::passes`]), each hash partition held, the
//! neighbour lookup for the pass's keys, and each partition's files written.

use super::commit::ConflictFiles;
use super::fingerprint::Fingerprint;
use super::inputs::Inputs;
use super::part_writer::PartWriter;
use super::plan_schema::schema_of;
use super::tasks::join;
use super::window::DayWindow;
use super::{disputed_rows, neighbours, sink, LedgerJob};
use crate::error::Result;
use crate::schema;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_plan::ExecutionPlanProperties;
use object_store::ObjectStore;
use std::sync::Arc;
use std::time::Instant;

/// What the passes produced, gathered for the settlement and the commit.
#[derive(Default)]
pub(super) struct Gathered {
    /// The partitions' files.
    pub adds: Vec<deltalake::kernel::Add>,
    /// Fingerprint of the rows in `adds`.
    pub fp: Fingerprint,
    /// `[txn_key, variants]` of disputes left for the settlement SQL.
    pub disputed: Vec<RecordBatch>,
    /// The day's rows of transactions found on a neighbouring day.
    pub taken: Vec<RecordBatch>,
    /// `ledger_conflicts` files written by the partitions.
    pub conflict_files: ConflictFiles,
    /// Disputes the partitions settled themselves, and those that went to disk first.
    pub settled_here: u64,
    pub disputes_spilled: u64,
    /// The neighbours' copies of the day's transactions, and their schema.
    pub neighbour_copies: Vec<RecordBatch>,
    pub neighbour_schema: Option<SchemaRef>,
    /// The ledger plan's output schema.
    pub plan_schema: Option<SchemaRef>,
    /// Hash partitions of each pass.
    pub partitions: usize,
}

impl LedgerJob<'_> {
    /// Runs pass `pass` of `passes` over the registered `day_arrivals` and adds what it
    /// produced to `day`. Its files are numbered after every earlier pass's.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pass(
        &self,
        window: &DayWindow,
        inputs: &Inputs,
        store: &Arc<dyn ObjectStore>,
        conflicts_table: &deltalake::DeltaTable,
        run_id: &str,
        (pass, passes): (usize, usize),
        kept: &Arc<neighbours::KeptIndexes>,
        day: &mut Gathered,
    ) -> Result<()> {
        let started = Instant::now();
        let day_text = self.day.to_string();
        self.progress.message(&if passes == 1 {
            format!("{}: deduplicating {} raw rows", self.day, inputs.rows())
        } else {
            format!("{}: deduplicating pass {} of {passes}", self.day, pass + 1)
        });
        let plan = self.plan(window).await?;
        let plan_schema = plan.schema();
        let partitions = plan.output_partitioning().partition_count();
        if pass == 0 {
            self.progress
                .set_total("partitions", (partitions * passes) as u64 + 2);
        }
        let first_part = pass * partitions;
        let task_ctx = self.session.ctx().task_ctx();
        let mut tasks = Vec::new();
        for p in 0..partitions {
            let stream = plan.execute(p, Arc::clone(&task_ctx))?;
            let writer = PartWriter::new(
                Arc::clone(store),
                &schema::LEDGER,
                &day_text,
                first_part + p,
                run_id,
            )?;
            let reservation = MemoryConsumer::new(format!("LedgerSink[{p}]"))
                .with_can_spill(true)
                .register(task_ctx.memory_pool());
            // Disputed transactions' variants are held until they are settled, in the pool,
            // and go to disk when it refuses them.
            let disputed = disputed_rows::DisputedRows::new(
                MemoryConsumer::new(format!("LedgerDisputed[{p}]"))
                    .with_can_spill(true)
                    .register(task_ctx.memory_pool()),
                Arc::clone(&task_ctx.runtime_env().disk_manager),
            );
            tasks.push(tokio::spawn(sink::collect(
                stream,
                writer,
                reservation,
                disputed,
            )));
        }
        let mut collected = Vec::with_capacity(partitions);
        for t in tasks {
            collected.push(join(t).await??);
            self.progress.advance(1);
        }
        // The plan's operators keep their memory consumers registered while it lives.
        drop(plan);
        tracing::info!(day = %self.day, pass, secs = started.elapsed().as_secs_f64(), "ledger: main plan collected");

        // The pass's keys among the neighbours' copies.
        let parts: Vec<Vec<&[i64]>> = collected
            .iter()
            .map(|c| {
                c.held
                    .key_slices()
                    .chain(std::iter::once(c.early_keys.as_slice()))
                    .chain(c.disputed.key_slices())
                    .collect()
            })
            .collect();
        self.progress
            .message(&format!("{}: looking up the neighbouring days", self.day));
        let found = neighbours::find(self.session, inputs, window, &parts, kept).await?;
        drop(parts);
        tracing::info!(
            day = %self.day,
            pass,
            secs = started.elapsed().as_secs_f64(),
            key_indexes_read = found.indexes_read,
            key_indexes_built = found.indexes_built,
            rows_selected = found.rows_selected,
            neighbour_copies = found.copies.iter().map(|b| b.num_rows()).sum::<usize>(),
            "ledger: neighbours looked up"
        );

        // Each partition writes what it owns for sure.
        let settle_keys = Arc::new(found.keys);
        let held_schema = schema_of(&plan_schema)?;
        let mut tasks = Vec::new();
        for (p, part) in collected.into_iter().enumerate() {
            let part_no = first_part + p;
            let rewrite = PartWriter::new(
                Arc::clone(store),
                &schema::LEDGER,
                &day_text,
                part_no,
                &format!("{run_id}-r"),
            )?;
            let keys = Arc::clone(&settle_keys);
            let store = Arc::clone(store);
            let d = self.day;
            let held_schema = Arc::clone(&held_schema);
            let conflicts_store = conflicts_table.object_store();
            let conflicts_run = format!("{run_id}-c");
            let day_text = day_text.clone();
            let conflicts = move || {
                PartWriter::new(
                    conflicts_store,
                    &schema::LEDGER_CONFLICTS,
                    &day_text,
                    part_no,
                    &conflicts_run,
                )
            };
            tasks.push(tokio::spawn(async move {
                sink::finish(part, &keys, d, held_schema, rewrite, store, conflicts).await
            }));
        }
        for t in tasks {
            let part = join(t).await??;
            day.adds.extend(part.adds);
            day.fp.merge(&part.fingerprint);
            day.disputed.extend(part.disputed);
            day.taken.extend(part.taken);
            day.conflict_files.adds.extend(part.conflicts);
            day.conflict_files.rows += part.conflict_rows;
            day.settled_here += part.settled_here;
            day.disputes_spilled += part.spilled;
        }
        if pass + 1 == passes {
            self.progress.advance(1);
        }
        tracing::info!(day = %self.day, pass, secs = started.elapsed().as_secs_f64(), "ledger: pass written");
        day.neighbour_copies.extend(found.copies);
        day.neighbour_schema = Some(found.schema);
        day.plan_schema = Some(plan_schema);
        day.partitions = partitions;
        Ok(())
    }
}
