//! The partial `GROUP BY` on one string column that interns runs of equal keys, not rows.
//!
//! DataFusion's partial aggregate interns every row's key in a hash table
//! (`ArrowBytesViewMap`): on the 10M-row ledger day, grouping by `partner_id` spent 43% of the
//! query's CPU hashing and probing 10M keys for 300 partners. Parquet decodes a dictionary
//! column into views, and clustered data (the ledger's files are sorted by partner) gives long
//! runs of identical views, so [`RunGroupsExec`] compares each view with the previous one (one
//! 128-bit compare), interns only the first key of each run in the same map, and hands the
//! accumulators the same group indices DataFusion would. On data with no runs it interns the
//! rows themselves, as DataFusion does.
//!
//! It is a partial aggregate in every other respect: the same output schema (group key, then
//! each accumulator's state), so the final aggregate above it is DataFusion's, unchanged. It
//! emits early rather than fail when the memory pool is full (the final aggregate merges the
//! pieces), and, like DataFusion's, it stops aggregating and passes rows through as states when
//! the first rows show almost one group per row.

use super::run_groups_stream::RunGroupsStream;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode,
    PlanProperties, ReplaceChildrenOptions,
};
use std::fmt;
use std::sync::Arc;

/// Replaces each partial `GROUP BY` on one string-view column by a [`RunGroupsExec`].
#[derive(Debug, Default)]
pub struct RunGroupsRule;

impl PhysicalOptimizerRule for RunGroupsRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(agg) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            if !RunGroupsExec::fits(agg)? {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(RunGroupsExec::new(agg.clone()))))
        })
        .data()
    }

    fn name(&self) -> &str {
        "run_groups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregate grouped by one `Utf8View`/`BinaryView` key (see the module docs).
#[derive(Debug)]
pub struct RunGroupsExec {
    /// The DataFusion aggregate it stands for: its expressions, input and output schema.
    agg: AggregateExec,
    metrics: ExecutionPlanMetricsSet,
}

impl RunGroupsExec {
    fn new(agg: AggregateExec) -> Self {
        Self {
            agg,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Whether `agg` computes the same answer as a [`RunGroupsExec`]: a partial aggregate of
    /// unordered input with one view-typed group key, no grouping sets and no limit, whose
    /// aggregates all have group accumulators and no `ORDER BY` of their own.
    fn fits(agg: &AggregateExec) -> Result<bool> {
        let group_by = agg.group_expr();
        if *agg.mode() != AggregateMode::Partial
            || group_by.has_grouping_set()
            || group_by.expr().len() != 1
            || agg.limit_options().is_some()
            || *agg.input_order_mode() != InputOrderMode::Linear
        {
            return Ok(false);
        }
        let key_type = group_by.expr()[0].0.data_type(&agg.input_schema())?;
        if !matches!(key_type, DataType::Utf8View | DataType::BinaryView) {
            return Ok(false);
        }
        Ok(agg
            .aggr_expr()
            .iter()
            .all(|a| a.groups_accumulator_supported() && a.order_bys().is_empty()))
    }
}

impl DisplayAs for RunGroupsExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RunGroupsExec: ")?;
        // The aggregate's own description (`mode=Partial, gby=[…], aggr=[…]`).
        self.agg.fmt_as(t, f)
    }
}

impl ExecutionPlan for RunGroupsExec {
    fn name(&self) -> &str {
        "RunGroupsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = Arc::new(self.agg.clone()).replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        let agg = agg
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| DataFusionError::Internal("RunGroupsExec lost its aggregate".into()))?
            .clone();
        // A new input may be ordered on the key: DataFusion's aggregate then streams its groups.
        if !Self::fits(&agg)? {
            return Ok(Arc::new(agg));
        }
        Ok(Arc::new(Self::new(agg)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, Arc::clone(&context))?;
        Ok(Box::pin(RunGroupsStream::new(
            &self.agg,
            input,
            partition,
            &context,
            &self.metrics,
        )?))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
