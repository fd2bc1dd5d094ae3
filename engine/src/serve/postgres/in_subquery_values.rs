//! `x IN (SELECT …)` outside WHERE, and subqueries in ORDER BY, as Postgres allows them.
//!
//! Grafana 11.4+ lists tables with `CASE WHEN quote_ident(table_schema) IN (SELECT … search
//! path …) THEN … END` in the select list and again in `ORDER BY`. DataFusion 55 decorrelates
//! `IN (subquery)` only in filters, and in a sort plans only uncorrelated scalar subqueries. This analyzer rule:
//! - moves sort keys that hold a subquery into a projection below the sort (sorted by those
//!   columns, which a projection above removes again);
//! - answers an uncorrelated `x IN (q)` in a projection from one aggregate of `q`: its values,
//!   whether one is NULL and how many rows there are, with SQL's three-valued result
//!   (false on no rows; NULL when `x` is NULL, or when `x` is not found and a value is NULL).
//!   That aggregate is an uncorrelated scalar subquery, which DataFusion plans as a cross join
//!   with its single row. Its values are held as one list, so this applies only to subqueries
//!   over the catalogs, table functions and inline values (a lake table's column could be
//!   billions of values; such a query is still refused, as before).

use super::catalog_lookups::{has_subquery, reads_only_catalog_tables};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::functions::core::expr_fn::{get_field, named_struct};
use datafusion::functions_aggregate::expr_fn::{array_agg, bool_or, count};
use datafusion::functions_nested::expr_fn::array_has;
use datafusion::logical_expr::expr::{Case, InSubquery, Sort as SortExpr};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    col, lit, Expr, LogicalPlan, LogicalPlanBuilder, Projection, Sort, Subquery,
};
use datafusion::optimizer::AnalyzerRule;
use std::sync::Arc;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct InSubqueryValues;

const SORT_KEY: &str = "tally_sort_key";
const VALUES: &str = "tally_in_values";

/// A sort whose keys hold subqueries, as project → sort → project (see the module docs).
fn sort_keys_projected(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Sort(Sort { expr, input, fetch }) = &plan else {
        return Ok(Transformed::no(plan));
    };
    if !expr.iter().any(|s| has_subquery(&s.expr)) {
        return Ok(Transformed::no(plan));
    }
    let kept: Vec<Expr> = input
        .schema()
        .iter()
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    let mut below = kept.clone();
    let mut keys = Vec::with_capacity(expr.len());
    for (k, sort) in expr.iter().enumerate() {
        if has_subquery(&sort.expr) {
            let name = format!("{SORT_KEY}_{k}");
            below.push(sort.expr.clone().alias(&name));
            keys.push(SortExpr::new(col(name), sort.asc, sort.nulls_first));
        } else {
            keys.push(sort.clone());
        }
    }
    let sorted = LogicalPlanBuilder::from(input.as_ref().clone())
        .project(below)?
        .sort_with_limit(keys, *fetch)?
        .build()?;
    let restored = Projection::try_new(kept, Arc::new(sorted))?;
    Ok(Transformed::yes(LogicalPlan::Projection(restored)))
}

/// `x [NOT] IN (q)` for an uncorrelated `q`, from one aggregate row of `q`.
fn in_from_values(expr: Expr) -> Result<Transformed<Expr>> {
    let Expr::InSubquery(InSubquery {
        expr: needle,
        subquery,
        negated,
    }) = &expr
    else {
        return Ok(Transformed::no(expr));
    };
    if !subquery.outer_ref_columns.is_empty()
        || subquery.subquery.schema().fields().len() != 1
        || reads_only_catalog_tables(&subquery.subquery)?.is_none()
    {
        return Ok(Transformed::no(expr));
    }
    let plan = subquery.subquery.as_ref().clone();
    let (qualifier, field) = plan.schema().qualified_field(0);
    let value = Expr::Column(Column::new(qualifier.cloned(), field.name()));
    let summary = named_struct(vec![
        lit("values"),
        array_agg(value.clone()),
        lit("has_null"),
        bool_or(value.is_null()),
        lit("rows"),
        count(lit(1)),
    ]);
    let summary = LogicalPlanBuilder::from(plan)
        .aggregate(Vec::<Expr>::new(), vec![summary.alias(VALUES)])?
        .build()?;
    let summary = Expr::ScalarSubquery(Subquery {
        subquery: Arc::new(summary),
        outer_ref_columns: vec![],
        spans: subquery.spans.clone(),
    });
    let part = |name: &str| get_field(summary.clone(), name.to_string());
    let null = Expr::Literal(datafusion::common::ScalarValue::Boolean(None), None);
    let found = Expr::Case(Case::new(
        None,
        vec![
            (Box::new(part("rows").eq(lit(0i64))), Box::new(lit(false))),
            (
                Box::new(needle.as_ref().clone().is_null()),
                Box::new(null.clone()),
            ),
            (
                Box::new(array_has(part("values"), needle.as_ref().clone())),
                Box::new(lit(true)),
            ),
            (Box::new(part("has_null")), Box::new(null)),
        ],
        Some(Box::new(lit(false))),
    ));
    Ok(Transformed::yes(if *negated { !found } else { found }))
}

impl AnalyzerRule for InSubqueryValues {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let plan = plan.transform_up_with_subqueries(sort_keys_projected)?.data;
        plan.transform_up_with_subqueries(|p| {
            if !matches!(p, LogicalPlan::Projection(_)) {
                return Ok(Transformed::no(p));
            }
            let names = NamePreserver::new(&p);
            p.map_expressions(|e| {
                let saved = names.save(&e);
                Ok(e.transform_up(in_from_values)?
                    .update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tally_in_subquery_values"
    }
}
