//! The operator on top of a cacheable plan that keeps its answer once every row has gone out.

use super::{Answer, ResultCache};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Passes its input's batches through and, when the input ends without error, keeps them in
/// the cache under the plan's key. A client that stops early (a cancel, a cursor closed
/// before its end, a timeout) leaves nothing behind: only complete answers are kept.
#[derive(Debug)]
pub(crate) struct FillExec {
    input: Arc<dyn ExecutionPlan>,
    key: String,
    cache: Arc<ResultCache>,
}

impl FillExec {
    /// Wraps `input` (merged into one partition first: an answer is one sequence of batches).
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, key: String, cache: Arc<ResultCache>) -> Self {
        let input = if input.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(input)) as Arc<dyn ExecutionPlan>
        } else {
            input
        };
        Self { input, key, cache }
    }
}

impl DisplayAs for FillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ResultCacheFillExec")
    }
}

impl ExecutionPlan for FillExec {
    fn name(&self) -> &str {
        "ResultCacheFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal(
                "ResultCacheFillExec takes one input".into(),
            ));
        }
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.key.clone(),
            Arc::clone(&self.cache),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        Ok(Box::pin(Filling {
            schema: inner.schema(),
            inner,
            kept: Some(Vec::new()),
            bytes: 0,
            key: Some(self.key.clone()),
            cache: Arc::clone(&self.cache),
        }))
    }
}

struct Filling {
    inner: SendableRecordBatchStream,
    schema: SchemaRef,
    /// The batches so far; `None` once the answer is too big to keep or failed.
    kept: Option<Vec<RecordBatch>>,
    bytes: usize,
    key: Option<String>,
    cache: Arc<ResultCache>,
}

impl Stream for Filling {
    type Item = Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.inner.poll_next_unpin(cx);
        match &polled {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(kept) = this.kept.as_mut() {
                    // Counts whole buffers (a slice keeps its parent alive): never under.
                    this.bytes += batch.get_array_memory_size();
                    if this.bytes > this.cache.entry_limit() {
                        this.kept = None;
                    } else {
                        kept.push(batch.clone());
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.kept = None,
            Poll::Ready(None) => {
                if let (Some(batches), Some(key)) = (this.kept.take(), this.key.take()) {
                    this.cache.put(
                        key,
                        Answer {
                            schema: Arc::clone(&this.schema),
                            batches,
                            bytes: this.bytes,
                        },
                    );
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl RecordBatchStream for Filling {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
