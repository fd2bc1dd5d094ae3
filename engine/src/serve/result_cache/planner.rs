//! DataFusion's planner with the result cache in front: a kept answer becomes an in-memory
//! scan, anything cacheable gets a [`FillExec`] on top.

use super::fill::FillExec;
use super::{key, ResultCache};
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use std::sync::Arc;

/// Plans every statement of the server's sessions (both wires, cursors included).
#[derive(Debug)]
pub struct CachingQueryPlanner {
    cache: Arc<ResultCache>,
}

impl CachingQueryPlanner {
    /// A planner answering from `cache` where it can.
    pub fn new(cache: Arc<ResultCache>) -> Self {
        Self { cache }
    }
}

#[async_trait::async_trait]
impl QueryPlanner for CachingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let key = key::key(logical_plan);
        if let Some(answer) = key.as_deref().and_then(|k| self.cache.get(k)) {
            let exec: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
                std::slice::from_ref(&answer.batches),
                Arc::clone(&answer.schema),
                None,
            )?;
            return Ok(exec);
        }
        let physical = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session)
            .await?;
        Ok(match key {
            Some(key) => Arc::new(FillExec::new(physical, key, Arc::clone(&self.cache))),
            None => physical,
        })
    }
}
