//! Read-only on both Postgres query paths: refusals by statement kind, and the last hook
//! that plans, checks and runs a simple-protocol statement (see `query::write_in_plan`).

use super::*;

/// Session settings clients send on connect, answered per connection by the crate's own hook
/// without touching the shared context.
pub(super) const SESSION_SETTINGS: &[&str] = &[
    "datestyle",
    "intervalstyle",
    "bytea_output",
    "application_name",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
    "client_encoding",
    "client_min_messages",
];

/// Why a statement is refused, or `None` when it may run.
pub(super) fn refusal(stmt: &Statement) -> Option<String> {
    let allowed = match stmt {
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(Set::SetTransaction { .. })
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Set(Set::SetTimeZone { .. }) => true,
        Statement::Declare { stmts } => stmts.iter().all(|d| {
            d.for_query
                .as_ref()
                .is_none_or(|q| query::is_read_only(&wrap(&Statement::Query(q.clone()))))
        }),
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string().to_ascii_lowercase();
            SESSION_SETTINGS.contains(&name.as_str())
        }
        other => query::is_read_only(&wrap(other)),
    };
    (!allowed).then(|| query::statement_name(&wrap(stmt)))
}

/// [`refusal`], and for `DECLARE … CURSOR FOR q` the decision on `q`'s plan as the cursor
/// hook will plan it (DataFusion's parser on the same text).
pub(super) async fn refusal_planned(stmt: &Statement, ctx: &SessionContext) -> Option<String> {
    if let Some(name) = refusal(stmt) {
        return Some(name);
    }
    let Statement::Declare { stmts } = stmt else {
        return None;
    };
    for q in stmts.iter().filter_map(|d| d.for_query.as_ref()) {
        // A query that does not plan fails in the cursor hook the same way.
        if let Ok(plan) = ctx.state().create_logical_plan(&q.to_string()).await {
            if let Some(write) = query::write_in_plan(&plan) {
                return Some(format!("DECLARE … CURSOR FOR {write}"));
            }
        }
    }
    None
}

/// Refuses a simple-protocol text in which any statement is a write, before one of them runs.
pub(super) fn refusal_in_text(sql: &str) -> Option<String> {
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
    // A text that does not parse fails in the crate's handler with the parser's message.
    let statements = PostgresCompatibilityParser::new().parse(sql).ok()?;
    statements.iter().find_map(refusal)
}

pub(super) fn wrap(stmt: &Statement) -> DFStatement {
    DFStatement::Statement(Box::new(stmt.clone()))
}

pub(super) fn read_only_error(statement: String) -> PgWireError {
    let message = TallyError::ServeReadOnly { statement }.to_string();
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        message,
    )))
}

/// Refuses writes on the simple and the extended path before anything plans them, by
/// statement kind (so the refusal names it); the plan check comes after, on what will run.
pub(super) struct ReadOnlyHook;

#[async_trait::async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal_planned(statement, ctx)
            .await
            .map(|s| Err(read_only_error(s)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<datafusion::logical_expr::LogicalPlan>> {
        refusal_planned(statement, ctx)
            .await
            .map(|s| Err(read_only_error(s)))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &datafusion::logical_expr::LogicalPlan,
        _params: &datafusion::common::ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(|s| Err(read_only_error(s)))
    }
}

/// Runs a simple-protocol statement the way the crate would (DataFusion's parser and planner
/// on the statement's text), except that the plan is checked for writes before it executes:
/// the plan checked is the plan that runs.
pub(super) struct CheckedPlanHook;

#[async_trait::async_trait]
impl QueryHook for CheckedPlanHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(run_checked(statement, ctx, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<datafusion::logical_expr::LogicalPlan>> {
        // The crate plans at Parse; `FreshParser` checks that plan, which is the one Execute runs.
        None
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &datafusion::logical_expr::LogicalPlan,
        _params: &datafusion::common::ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

pub(super) async fn run_checked(
    statement: &Statement,
    ctx: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
    use pgwire::types::format::FormatOptions;
    let api = |e: DataFusionError| PgWireError::ApiError(Box::new(e));
    let plan = ctx
        .state()
        .create_logical_plan(&statement.to_string())
        .await
        .map_err(api)?;
    if let Some(write) = query::write_in_plan(&plan) {
        return Err(read_only_error(write));
    }
    let df = ctx.execute_logical_plan(plan).await.map_err(api)?;
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let response = encode_dataframe(df, &Format::UnifiedText, Some(options)).await?;
    Ok(Response::Query(response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn one(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn reads_and_session_settings_pass() {
        for sql in [
            "SELECT 1",
            "BEGIN",
            "COMMIT",
            "SET extra_float_digits = 3",
            "SET application_name = 'psql'",
            "SET TIME ZONE 'UTC'",
            "SHOW server_version",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            assert_eq!(refusal(&one(sql)), None, "{sql}");
        }
    }

    #[test]
    fn writes_and_engine_settings_are_refused() {
        for sql in [
            "INSERT INTO ledger VALUES (1)",
            "CREATE TABLE t (a int)",
            "DROP TABLE ledger",
            "COPY ledger TO '/tmp/x'",
            "SET datafusion.execution.batch_size = 1",
            "DELETE FROM ledger",
            "PREPARE p AS SELECT 1",
            "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '/tmp/x.csv'",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'",
            "CREATE VIEW v AS SELECT 1",
        ] {
            assert!(refusal(&one(sql)).is_some(), "{sql}");
        }
    }

    #[test]
    fn a_text_with_one_write_is_refused_whole() {
        assert!(refusal_in_text("SELECT 1; SELECT 2").is_none());
        assert!(
            refusal_in_text("SELECT 1; EXPLAIN (ANALYZE) COPY (SELECT 1) TO '/tmp/x'").is_some()
        );
        assert!(refusal_in_text("BEGIN; INSERT INTO t VALUES (1); COMMIT").is_some());
    }
}
