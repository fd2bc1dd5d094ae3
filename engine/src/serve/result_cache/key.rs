//! Whether a plan's answer may be kept, and under which key.

use crate::delta_files::DeltaFiles;
use crate::serve::fresh_schema::FreshTable;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use std::sync::Arc;

/// The key of `plan`'s answer, or `None` when it must run every time: it reads something
/// other than a versioned Delta snapshot, calls a volatile function, or is not a query
/// (EXPLAIN, DDL, DML, a statement, an extension node).
///
/// The key is every scanned snapshot (`location@version`, sorted) and the plan as DataFusion
/// prints it with schemas: the printed plan carries each literal (bound parameters included)
/// with its type, each projection, filter and limit.
pub(crate) fn key(plan: &LogicalPlan) -> Option<String> {
    let mut snapshots: Vec<String> = Vec::new();
    if !collect(plan, &mut snapshots) || snapshots.is_empty() {
        return None;
    }
    snapshots.sort();
    snapshots.dedup();
    Some(format!(
        "{}\n{}",
        snapshots.join("\n"),
        plan.display_indent_schema()
    ))
}

/// Adds the snapshots `plan` reads to `out`; false when something in it cannot be cached.
fn collect(plan: &LogicalPlan, out: &mut Vec<String>) -> bool {
    let mut cacheable = true;
    let visited = plan.apply_with_subqueries(|node| {
        let node_ok = match node {
            LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::DescribeTable(_)
            | LogicalPlan::Extension(_) => false,
            LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)
                .ok()
                .is_some_and(|p| snapshots_of(&p, out)),
            _ => true,
        };
        let mut exprs_ok = true;
        node.apply_expressions(|e| {
            if changes_between_calls(e) {
                exprs_ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if node_ok && exprs_ok {
            Ok(TreeNodeRecursion::Continue)
        } else {
            cacheable = false;
            Ok(TreeNodeRecursion::Stop)
        }
    });
    visited.is_ok() && cacheable
}

/// Adds the snapshots a table reads to `out`: a Delta snapshot itself, the Postgres
/// endpoint's name for the pinned session's table, or what a view reads.
fn snapshots_of(provider: &Arc<dyn TableProvider>, out: &mut Vec<String>) -> bool {
    let any: &dyn std::any::Any = provider.as_ref();
    if let Some(files) = any.downcast_ref::<DeltaFiles>() {
        out.push(files.identity());
        return true;
    }
    if let Some(fresh) = any.downcast_ref::<FreshTable>() {
        // Only the query's pinned session says which snapshot its scan will read.
        return fresh
            .pinned()
            .is_some_and(|current| snapshots_of(&current, out));
    }
    match provider.get_logical_plan() {
        Some(view) => collect(&view, out),
        None => false,
    }
}

/// True when `e` holds a function that may answer differently on the same input.
fn changes_between_calls(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(match e {
            Expr::ScalarFunction(f) => f.func.signature().volatility == Volatility::Volatile,
            Expr::AggregateFunction(f) => f.func.signature().volatility == Volatility::Volatile,
            _ => false,
        })
    })
    .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn plan_of(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap()
    }

    #[tokio::test]
    async fn only_versioned_snapshots_and_stable_functions_are_kept() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1), (2)").await.unwrap();
        // An in-memory table has no version to key on.
        assert!(key(&plan_of(&ctx, "SELECT * FROM t").await).is_none());
        // No table at all: nothing worth keeping.
        assert!(key(&plan_of(&ctx, "SELECT 1").await).is_none());
        assert!(key(&plan_of(&ctx, "EXPLAIN SELECT 1").await).is_none());
        let volatile = plan_of(&ctx, "SELECT random()").await;
        assert!(changes_between_calls(&volatile.expressions()[0]));
        let stable = plan_of(&ctx, "SELECT abs(-1)").await;
        assert!(!changes_between_calls(&stable.expressions()[0]));
    }
}
