//! Ad-hoc SQL for analysts: parsing, the read-only guard, and planning.
//!
//! `tally sql` and `tally shell` are read-only unless `--allow-write` is given. The decision
//! that counts is made on the logical plan that will execute ([`write_in_plan`]), after
//! DataFusion's own parser and planner: a separate parse of the text can disagree with
//! DataFusion's (sqlparser reads `EXPLAIN (ANALYZE) COPY …` as a non-analyzing EXPLAIN, which
//! DataFusion then runs). Statements are also classified before planning, so that a
//! multi-statement text with a write runs none of it and refusals name the statement. Raw
//! data is never writable either way ([`crate::raw_guard`]).

use crate::error::{Result, TallyError};
use crate::session::TallySession;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

/// Whether a session may change tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Queries, EXPLAIN, SHOW and DESCRIBE only.
    ReadOnly,
    /// Everything DataFusion supports (DDL, DML, COPY, SET).
    AllowWrite,
}

/// Splits a SQL text into statements.
pub fn parse(sql: &str) -> Result<Vec<DFStatement>> {
    Ok(DFParser::parse_sql(sql)?.into_iter().collect())
}

/// The leading keywords of a statement, for messages (`INSERT INTO`, `COPY`, …).
pub fn statement_name(stmt: &DFStatement) -> String {
    if let DFStatement::Statement(s) = stmt {
        if let SqlStatement::Query(q) = s.as_ref() {
            if creates_table(q) {
                return "SELECT INTO".into();
            }
        }
    }
    let text = stmt.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let n = match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("CREATE") | Some("DROP") | Some("ALTER") => 3.min(words.len()),
        Some("INSERT") | Some("DELETE") => 2.min(words.len()),
        _ => 1,
    };
    words[..n].join(" ").to_ascii_uppercase()
}

/// True when a statement only reads.
pub fn is_read_only(stmt: &DFStatement) -> bool {
    match stmt {
        DFStatement::Statement(s) => match s.as_ref() {
            // `SELECT … INTO t` creates a table.
            SqlStatement::Query(q) if creates_table(q) => false,
            SqlStatement::Query(_)
            | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ExplainTable { .. } => true,
            SqlStatement::Explain {
                statement, analyze, ..
            } => {
                // Every EXPLAIN of a write is refused, whatever its options say: sqlparser
                // leaves `analyze` false for `EXPLAIN (ANALYZE) …`, which DataFusion runs.
                let _ = analyze;
                is_read_only(&DFStatement::Statement(statement.clone()))
            }
            _ => false,
        },
        // Conservative: EXPLAIN of a write is refused too, since EXPLAIN ANALYZE would run it.
        DFStatement::Explain(e) => is_read_only(&e.statement),
        DFStatement::CreateExternalTable(_) | DFStatement::CopyTo(_) | DFStatement::Reset(_) => {
            false
        }
    }
}

/// True for `SELECT … INTO`, anywhere in a query's set operations.
fn creates_table(query: &datafusion::sql::sqlparser::ast::Query) -> bool {
    use datafusion::sql::sqlparser::ast::SetExpr;
    fn walk(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.into.is_some(),
            SetExpr::Query(q) => walk(&q.body),
            SetExpr::SetOperation { left, right, .. } => walk(left) || walk(right),
            _ => false,
        }
    }
    walk(&query.body)
}

/// The first node of `plan` that would change something (DDL, DML, `COPY`, `SET`, `PREPARE`,
/// …), by name, looking inside `EXPLAIN`/`EXPLAIN ANALYZE` and subqueries; `None` for a plan
/// that only reads. This is the read-only decision every path makes on what it will execute.
pub fn write_in_plan(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        let name = match node {
            LogicalPlan::Ddl(ddl) => Some(words(ddl.name())),
            LogicalPlan::Dml(dml) => Some(dml.op.to_string().to_ascii_uppercase()),
            LogicalPlan::Copy(_) => Some("COPY".to_string()),
            LogicalPlan::Statement(stmt) => Some(words(stmt.name())),
            _ => None,
        };
        Ok(match name {
            Some(name) => {
                found = Some(name);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    found
}

/// `CreateExternalTable` → `CREATE EXTERNAL TABLE`, as the statement is written.
fn words(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Plans one statement under `access`; the returned DataFrame runs when executed.
pub async fn plan(session: &TallySession, stmt: DFStatement, access: Access) -> Result<DataFrame> {
    if access == Access::ReadOnly && !is_read_only(&stmt) {
        return Err(TallyError::ReadOnly {
            statement: statement_name(&stmt),
        });
    }
    let state = session.ctx().state();
    let plan = state.statement_to_plan(stmt).await?;
    if access == Access::ReadOnly {
        if let Some(statement) = write_in_plan(&plan) {
            return Err(TallyError::ReadOnly { statement });
        }
        // DataFusion's own check as a second line.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
    } else {
        crate::raw_guard::check(session.lake(), &plan)?;
    }
    if let LogicalPlan::Explain(e) = &plan {
        if crate::cluster::is_distributed(&state) {
            let batch = crate::cluster::explain(&state, &e.plan).await?;
            return Ok(session.ctx().read_batch(batch)?);
        }
    }
    Ok(session.ctx().execute_logical_plan(plan).await?)
}

/// Refuses a multi-statement text with any write before one statement of it runs.
pub fn check_all_read_only(statements: &[DFStatement]) -> Result<()> {
    match statements.iter().find(|s| !is_read_only(s)) {
        Some(s) => Err(TallyError::ReadOnly {
            statement: statement_name(s),
        }),
        None => Ok(()),
    }
}

/// The raw files a physical plan scans: after a query failed in the Parquet reader, the only
/// footers worth reading to name the file at fault (not every footer of the lake).
pub fn raw_files_scanned(
    lake: &crate::lake::Lake,
    plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Vec<object_store::path::Path> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let Ok(raw) = lake.path_of(crate::lake::layout::RAW_PAYMENTS) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut stack = vec![std::sync::Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(scan) = node.as_ref().downcast_ref::<DataSourceExec>() {
            if let Some(config) = scan.data_source().as_ref().downcast_ref::<FileScanConfig>() {
                found.extend(
                    config
                        .file_groups
                        .iter()
                        .flat_map(|g| g.files())
                        .map(|f| f.object_meta.location.clone())
                        .filter(|p| p.prefix_matches(&raw)),
                );
            }
        }
        stack.extend(node.children().into_iter().cloned());
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> DFStatement {
        parse(sql).unwrap().remove(0)
    }

    #[test]
    fn reads_are_allowed() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE raw_payments",
        ] {
            assert!(is_read_only(&one(sql)), "{sql}");
        }
    }

    #[test]
    fn writes_are_refused_by_name() {
        for (sql, name) in [
            ("INSERT INTO t VALUES (1)", "INSERT INTO"),
            ("COPY (SELECT 1) TO '/tmp/x.parquet'", "COPY"),
            (
                "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp'",
                "CREATE EXTERNAL TABLE",
            ),
            ("DELETE FROM t", "DELETE FROM"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "EXPLAIN"),
            ("EXPLAIN INSERT INTO t VALUES (1)", "EXPLAIN"),
            (
                "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '/tmp/x.csv'",
                "EXPLAIN",
            ),
            (
                "EXPLAIN (ANALYZE true) COPY (SELECT 1) TO '/tmp/x.csv'",
                "EXPLAIN",
            ),
            ("SELECT * INTO t2 FROM t", "SELECT INTO"),
        ] {
            let s = one(sql);
            assert!(!is_read_only(&s), "{sql}");
            assert_eq!(statement_name(&s), name, "{sql}");
        }
    }

    /// Every spelling of a write, as DataFusion itself parses and plans it, is found in the
    /// plan (the text check is only the first line).
    #[tokio::test]
    async fn writes_are_found_in_the_plan() {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.sql("CREATE TABLE t (a INT)").await.unwrap();
        for (sql, name) in [
            (
                "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/never.csv'",
                "COPY",
            ),
            (
                "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '/tmp/never.csv'",
                "COPY",
            ),
            ("EXPLAIN COPY (SELECT 1) TO '/tmp/never.csv'", "COPY"),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "INSERT INTO"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            (
                "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/tmp/x.csv'",
                "CREATE EXTERNAL TABLE",
            ),
            ("SET datafusion.execution.batch_size = 1", "SET VARIABLE"),
        ] {
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            assert_eq!(write_in_plan(&plan).as_deref(), Some(name), "{sql}: {plan}");
        }
        for sql in [
            "SELECT * FROM t",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT * FROM t",
        ] {
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            assert_eq!(write_in_plan(&plan), None, "{sql}");
        }
    }
}
