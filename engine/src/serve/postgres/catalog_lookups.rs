//! Correlated scalar subqueries over the catalog, as Postgres runs them.
//!
//! Clients look one attribute up per column with a correlated subquery that is not
//! aggregated, e.g. SQLAlchemy's `(SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE
//! adrelid = attrelid AND adnum = attnum)`. Postgres runs it as "the one row, or NULL";
//! DataFusion decorrelates only aggregated scalar subqueries and refuses the rest.
//!
//! This analyzer rule rewrites such a subquery when every table it reads is in `pg_catalog`
//! or `information_schema`, where the lookup's key is the catalog's key, so "the first row"
//! is "the one row": the subquery answers `first_value` of a struct of the inner columns its
//! value needs, and the value is computed outside from that struct and the outer row, under
//! `CASE WHEN <the struct is not NULL> AND <conjuncts on the outer row alone>`. That is the
//! shape DataFusion decorrelates (an aggregate whose only correlation is join predicates);
//! outer references in the value or in outer-only predicates would stop it. A subquery over the lake's tables is left alone (and
//! still refused), because for an analyst's query "some row" would be a silent wrong answer
//! where Postgres would raise "more than one row returned by a subquery".

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::functions::core::expr_fn::{get_field, named_struct};
use datafusion::functions_aggregate::expr_fn::first_value;
use datafusion::logical_expr::expr::Case;
use datafusion::logical_expr::expr_rewriter::strip_outer_reference;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{col, lit, Expr, LogicalPlan, LogicalPlanBuilder, Subquery};
use datafusion::optimizer::AnalyzerRule;
use std::sync::Arc;

/// The schemas whose tables a lookup may read (see the module docs).
const CATALOG_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// The looked-up row's struct, and its always-true field (a row with every column NULL is
/// still a row: the struct is NULL only when there is none).
const ROW: &str = "tally_lookup_row";
const PRESENT: &str = "present";

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct CatalogLookups;

/// Whether `subquery` is a catalog lookup DataFusion would refuse.
fn is_unaggregated_catalog_lookup(subquery: &Subquery) -> Result<bool> {
    if subquery.outer_ref_columns.is_empty() || subquery.subquery.schema().fields().len() != 1 {
        return Ok(false);
    }
    let mut top = subquery.subquery.as_ref();
    while let LogicalPlan::Projection(p) = top {
        top = p.input.as_ref();
    }
    if matches!(top, LogicalPlan::Aggregate(_))
        || subquery.subquery.max_rows().is_some_and(|n| n <= 1)
    {
        return Ok(false);
    }
    Ok(reads_only_catalog_tables(&subquery.subquery)?.is_some_and(|tables| tables > 0))
}

/// How many tables `plan` reads when every one is in `pg_catalog` or `information_schema`
/// or is a table function (`generate_series`, `range`) — `Some(0)` for inline data only —
/// and `None` when it reads any other (lake) table: rules that change how a subquery is
/// evaluated apply only to the former.
pub(super) fn reads_only_catalog_tables(plan: &LogicalPlan) -> Result<Option<usize>> {
    let (mut scans, mut catalog_only) = (0, true);
    plan.apply_with_subqueries(|plan| {
        if let LogicalPlan::TableScan(scan) = plan {
            scans += 1;
            let in_catalog = match scan.table_name.schema() {
                Some(schema) => CATALOG_SCHEMAS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(schema)),
                // A table function's scan is named after it: `generate_series()`.
                None => {
                    let name = scan.table_name.table();
                    let name = name.strip_suffix("()").unwrap_or(name);
                    super::set_returning::TABLE_FUNCTIONS
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(name))
                }
            };
            if !in_catalog {
                catalog_only = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(catalog_only.then_some(scans))
}

/// Whether `e` holds a subquery of any kind (moving it out of a lookup would rebind it).
pub(super) fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::SetComparison(_)
        ))
    })
    .unwrap_or(true)
}

fn rewrite(expr: Expr) -> Result<Transformed<Expr>> {
    let Expr::ScalarSubquery(subquery) = &expr else {
        return Ok(Transformed::no(expr));
    };
    if !is_unaggregated_catalog_lookup(subquery)? {
        return Ok(Transformed::no(expr));
    }
    let LogicalPlan::Projection(top) = subquery.subquery.as_ref() else {
        return Ok(Transformed::no(expr));
    };
    let [value] = top.expr.as_slice() else {
        return Ok(Transformed::no(expr));
    };
    let value = value.clone().unalias_nested().data;
    if has_subquery(&value) {
        return Ok(Transformed::no(expr));
    }

    // Conjuncts on the outer row alone guard the lookup from outside.
    let (input, guards) = match top.input.as_ref() {
        LogicalPlan::Filter(filter) => {
            let (guards, kept): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&filter.predicate)
                .into_iter()
                .partition(|e| {
                    e.contains_outer() && e.column_refs().is_empty() && !has_subquery(e)
                });
            let mut input = LogicalPlanBuilder::from(filter.input.as_ref().clone());
            if let Some(kept) = conjunction(kept.into_iter().cloned()) {
                input = input.filter(kept)?;
            }
            let guards: Vec<Expr> = guards
                .into_iter()
                .cloned()
                .map(strip_outer_reference)
                .collect();
            (input, guards)
        }
        other => (LogicalPlanBuilder::from(other.clone()), vec![]),
    };

    // The subquery answers the inner columns the value needs, as one row struct.
    let mut inner: Vec<Column> = value.column_refs().into_iter().cloned().collect();
    inner.sort();
    let mut fields = vec![lit(PRESENT), lit(true)];
    for (k, c) in inner.iter().enumerate() {
        fields.push(lit(format!("c{k}")));
        fields.push(Expr::Column(c.clone()));
    }
    let row = input
        .project(vec![named_struct(fields).alias(ROW)])?
        .aggregate(
            Vec::<Expr>::new(),
            vec![first_value(col(ROW), vec![]).alias(ROW)],
        )?
        .build()?;
    let row = Expr::ScalarSubquery(Subquery {
        subquery: Arc::new(row),
        outer_ref_columns: subquery.outer_ref_columns.clone(),
        spans: subquery.spans.clone(),
    });

    // The value, evaluated on the outer row and the looked-up one.
    let value = value
        .transform(|e| match e {
            Expr::Column(c) => match inner.iter().position(|i| *i == c) {
                Some(k) => Ok(Transformed::yes(get_field(row.clone(), format!("c{k}")))),
                None => Ok(Transformed::no(Expr::Column(c))),
            },
            Expr::OuterReferenceColumn(_, c) => Ok(Transformed::yes(Expr::Column(c))),
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let found = guards
        .into_iter()
        .fold(row.is_not_null(), |acc, guard| guard.and(acc));
    Ok(Transformed::yes(Expr::Case(Case::new(
        None,
        vec![(Box::new(found), Box::new(value))],
        None,
    ))))
}

impl AnalyzerRule for CatalogLookups {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        super::like_escape::rewrite_expressions(plan, rewrite)
    }

    fn name(&self) -> &str {
        "tally_catalog_lookups"
    }
}
