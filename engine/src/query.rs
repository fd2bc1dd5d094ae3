//! Ad-hoc SQL for analysts: parsing, the read-only guard, and planning.
//!
//! `tally sql` and `tally shell` are read-only unless `--allow-write` is given: statements are
//! classified before planning (so the refusal names the statement), and DataFusion's own
//! `SQLOptions` check the resulting plan as a second line of defence. Raw data is never
//! writable either way: `raw_payments` has no insert path.

use crate::error::{Result, TallyError};
use crate::session::TallySession;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
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
                // EXPLAIN ANALYZE executes its statement; plain EXPLAIN of a write is harmless.
                let inner = DFStatement::Statement(statement.clone());
                !*analyze || is_read_only(&inner)
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

/// Plans one statement under `access`; the returned DataFrame runs when executed.
pub async fn plan(session: &TallySession, stmt: DFStatement, access: Access) -> Result<DataFrame> {
    let options = match access {
        Access::ReadOnly => {
            if !is_read_only(&stmt) {
                return Err(TallyError::ReadOnly {
                    statement: statement_name(&stmt),
                });
            }
            SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false)
        }
        Access::AllowWrite => SQLOptions::new(),
    };
    let state = session.ctx().state();
    let plan = state.statement_to_plan(stmt).await?;
    options.verify_plan(&plan)?;
    Ok(session.ctx().execute_logical_plan(plan).await?)
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
            ("SELECT * INTO t2 FROM t", "SELECT INTO"),
        ] {
            let s = one(sql);
            assert!(!is_read_only(&s), "{sql}");
            assert_eq!(statement_name(&s), name, "{sql}");
        }
    }
}
