//! One partition of a [`super::RunGroupsExec`]: interning runs, feeding the accumulators,
//! emitting their states.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::binary_map::OutputType;
use datafusion::physical_expr_common::binary_view_map::ArrowBytesViewMap;
use datafusion::physical_plan::aggregates::{aggregate_expressions, evaluate_many, AggregateExec};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder,
};
use datafusion::physical_plan::ExecutionPlan;
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Runs pay off when a batch has at most one run per this many rows; otherwise its rows are
/// interned directly (a run's key is a `take` and an expansion more than a row's).
const ROWS_PER_RUN: usize = 4;

/// When to stop aggregating: DataFusion's own probe (`skip_partial_aggregation_probe_*`).
struct Probe {
    rows_threshold: usize,
    ratio_threshold: f64,
    rows: usize,
}

pub(super) struct RunGroupsStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    key: Arc<dyn PhysicalExpr>,
    key_type: OutputType,
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Each distinct key with its group index as payload (the index is its insertion rank).
    groups: ArrowBytesViewMap<usize>,
    /// The current batch's group index per row.
    group_indices: Vec<usize>,
    /// The current batch's run starts.
    run_starts: Vec<u32>,
    reservation: MemoryReservation,
    batch_size: usize,
    probe: Probe,
    /// Rows pass through as states (the probe found about one group per row).
    passing_through: bool,
    /// Batches emitted and not yet returned.
    pending: VecDeque<RecordBatch>,
    input_done: bool,
    baseline: BaselineMetrics,
    runs: Count,
    skipped_rows: Count,
    early_emits: Count,
}

impl RunGroupsStream {
    pub(super) fn new(
        agg: &AggregateExec,
        input: SendableRecordBatchStream,
        partition: usize,
        context: &Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Self> {
        let key = Arc::clone(&agg.group_expr().expr()[0].0);
        let key_type = match key.data_type(&agg.input_schema())? {
            DataType::Utf8View => OutputType::Utf8View,
            DataType::BinaryView => OutputType::BinaryView,
            other => {
                return Err(DataFusionError::Internal(format!(
                    "RunGroupsExec groups by a view column, not {other}"
                )))
            }
        };
        let accumulators = agg
            .aggr_expr()
            .iter()
            .map(|a| a.create_groups_accumulator())
            .collect::<Result<Vec<_>>>()?;
        let options = &context.session_config().options().execution;
        let reservation = MemoryConsumer::new(format!("RunGroupsExec[{partition}]"))
            .with_can_spill(true)
            .register(context.memory_pool());
        Ok(Self {
            schema: agg.schema(),
            input,
            key,
            key_type,
            args: aggregate_expressions(agg.aggr_expr(), agg.mode(), 0)?,
            filters: agg.filter_expr().to_vec(),
            accumulators,
            groups: ArrowBytesViewMap::new(key_type),
            group_indices: Vec::new(),
            run_starts: Vec::new(),
            reservation,
            batch_size: context.session_config().batch_size(),
            probe: Probe {
                rows_threshold: options.skip_partial_aggregation_probe_rows_threshold,
                ratio_threshold: options.skip_partial_aggregation_probe_ratio_threshold,
                rows: 0,
            },
            passing_through: false,
            pending: VecDeque::new(),
            input_done: false,
            baseline: BaselineMetrics::new(metrics, partition),
            runs: MetricBuilder::new(metrics).counter("runs", partition),
            skipped_rows: MetricBuilder::new(metrics)
                .counter("skipped_aggregation_rows", partition),
            early_emits: MetricBuilder::new(metrics).counter("early_emits", partition),
        })
    }

    /// Evaluates the key, the aggregates' arguments and their filters on `batch`.
    fn evaluate(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let rows = batch.num_rows();
        let key = self.key.evaluate(batch)?.into_array(rows)?;
        let args = evaluate_many(&self.args, batch)?;
        let filters = self
            .filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| {
                        let array = f.evaluate(batch)?.into_array(rows)?;
                        array.as_boolean_opt().cloned().ok_or_else(|| {
                            DataFusionError::Internal(format!(
                                "an aggregate filter evaluated to {}, not booleans",
                                array.data_type()
                            ))
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Evaluated { key, args, filters })
    }

    fn consume(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let input = self.evaluate(&batch)?;
        if self.passing_through {
            let states = self.as_states(input)?;
            self.pending.push_back(states);
            return Ok(());
        }
        self.intern(&input.key)?;
        let total_groups = self.groups.len();
        for ((acc, values), filter) in self
            .accumulators
            .iter_mut()
            .zip(&input.args)
            .zip(&input.filters)
        {
            acc.update_batch(values, &self.group_indices, filter.as_ref(), total_groups)?;
        }
        self.check_probe(batch.num_rows())?;
        self.account()
    }

    /// Fills `group_indices` with the group of each row of `keys`.
    fn intern(&mut self, keys: &ArrayRef) -> Result<()> {
        let rows = keys.len();
        self.group_indices.clear();
        let groups = &mut self.groups;
        let out = &mut self.group_indices;
        let mut next_group = groups.len();
        let mut new_group = |_: Option<&[u8]>| {
            let g = next_group;
            next_group += 1;
            g
        };
        // A null's view is not its value: rows with nulls are interned one by one.
        if keys.null_count() == 0 {
            let views = match self.key_type {
                OutputType::BinaryView => keys.as_binary_view().views(),
                _ => keys.as_string_view().views(),
            };
            // Equal views are equal values: inline, the bytes themselves; otherwise the same
            // bytes of the same buffer (Parquet's dictionary pages decode to such views).
            // Given up as soon as the runs are too many to pay off.
            let most = rows / ROWS_PER_RUN;
            let mut starts = std::mem::take(&mut self.run_starts);
            starts.clear();
            starts.push(0);
            for i in 1..rows {
                if views[i] != views[i - 1] {
                    starts.push(i as u32);
                    if starts.len() > most {
                        break;
                    }
                }
            }
            if starts.len() <= most {
                self.runs.add(starts.len());
                let indices = UInt32Array::from(starts);
                let run_keys = take(keys.as_ref(), &indices, None)?;
                let mut run_groups = Vec::with_capacity(indices.len());
                groups.insert_if_new(&run_keys, &mut new_group, |g| run_groups.push(g));
                let starts = indices.values();
                for (r, &group) in run_groups.iter().enumerate() {
                    let end = starts.get(r + 1).map_or(rows, |&s| s as usize);
                    out.extend(std::iter::repeat_n(group, end - starts[r] as usize));
                }
                // The allocation back for the next batch.
                self.run_starts = indices
                    .into_parts()
                    .1
                    .into_inner()
                    .into_vec()
                    .unwrap_or_default();
                return Ok(());
            }
            self.run_starts = starts;
        }
        self.runs.add(rows);
        groups.insert_if_new(keys, &mut new_group, |g| out.push(g));
        Ok(())
    }

    /// Once the probe's rows are in, switches to passing rows through as soon as there are
    /// more groups per row than the ratio (checked again on every batch until it does).
    fn check_probe(&mut self, rows: usize) -> Result<()> {
        if self.passing_through {
            return Ok(());
        }
        self.probe.rows += rows;
        // A threshold of 1 or more turns skipping off, as in DataFusion.
        if self.probe.rows < self.probe.rows_threshold || self.probe.ratio_threshold >= 1.0 {
            return Ok(());
        }
        let ratio = self.groups.len() as f64 / self.probe.rows as f64;
        if ratio > self.probe.ratio_threshold {
            self.passing_through = true;
            self.emit_all()?;
        }
        Ok(())
    }

    /// Keeps the reservation at the groups' size; when the pool has no room, emits what is
    /// aggregated so far (the final aggregate merges it with later states) and starts again.
    fn account(&mut self) -> Result<()> {
        let size = self.groups.size()
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self.group_indices.capacity() * std::mem::size_of::<usize>();
        match self.reservation.try_resize(size) {
            Ok(()) => Ok(()),
            Err(DataFusionError::ResourcesExhausted(_)) => {
                self.early_emits.add(1);
                self.emit_all()?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every group's key and states into `pending`, in batches of `batch_size` rows.
    fn emit_all(&mut self) -> Result<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let keys = self.groups.take().into_state();
        let mut columns = vec![keys];
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = self.batch_size.min(batch.num_rows() - offset);
            self.pending.push_back(batch.slice(offset, len));
            offset += len;
        }
        self.reservation
            .resize(self.accumulators.iter().map(|a| a.size()).sum());
        Ok(())
    }

    /// Each row as its own group's state (passing through).
    fn as_states(&self, input: Evaluated) -> Result<RecordBatch> {
        self.skipped_rows.add(input.key.len());
        let mut columns = vec![input.key];
        for ((acc, values), filter) in self
            .accumulators
            .iter()
            .zip(&input.args)
            .zip(&input.filters)
        {
            columns.extend(acc.convert_to_state(values, filter.as_ref())?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// One batch's key, aggregate arguments and aggregate filters.
struct Evaluated {
    key: ArrayRef,
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

impl Stream for RunGroupsStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                let poll = Poll::Ready(Some(Ok(batch)));
                return self.baseline.record_poll(poll);
            }
            if self.input_done {
                return Poll::Ready(None);
            }
            let next = ready!(self.input.poll_next_unpin(cx));
            let elapsed = self.baseline.elapsed_compute().clone();
            let _timer = elapsed.timer();
            let step = match next {
                Some(Ok(batch)) => self.consume(batch),
                Some(Err(e)) => Err(e),
                None => {
                    self.input_done = true;
                    let emitted = self.emit_all();
                    self.reservation.free();
                    emitted
                }
            };
            if let Err(e) = step {
                self.input_done = true;
                self.pending.clear();
                return Poll::Ready(Some(Err(e)));
            }
        }
    }
}

impl RecordBatchStream for RunGroupsStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
