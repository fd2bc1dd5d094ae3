//! What the server says it is, and the transaction statements a read-only server accepts as
//! no-ops, in the forms Postgres clients expect.
//!
//! Clients parse the version: SQLAlchemy's dialect reads `select version()` with a regex that
//! wants `PostgreSQL <major>.<minor>`, libpq (psql, psycopg) reads the `server_version`
//! parameter sent at startup. Both get `PostgreSQL 16.6 (tally … on Apache DataFusion …)`, as
//! CockroachDB, Materialize and RisingWave name themselves after the Postgres they speak.
//!
//! Drivers wrap reads in transactions (psycopg opens one for its type lookup, SQLAlchemy uses
//! savepoints for nested work), so `SAVEPOINT`, `RELEASE`, `ROLLBACK TO` and `SET
//! TRANSACTION` are answered as the no-ops they are on a read-only server, with Postgres'
//! command tags and errors; `BEGIN`/`COMMIT`/`ROLLBACK` stay with the crate's hook, which keeps
//! the transaction status clients see in ReadyForQuery. Writes inside are still refused.

use super::*;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use pgwire::api::results::{DataRowEncoder, FieldFormat, QueryResponse, Tag};
use pgwire::messages::response::TransactionStatus;

/// The Postgres release whose wire and catalog tally speaks, as clients parse it.
const PG_VERSION: &str = "16.6";

/// `server_version`: `16.6 (tally 0.1.0 on Apache DataFusion 55.2.0)`.
pub(super) fn server_version() -> String {
    format!(
        "{PG_VERSION} (tally {} on Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    )
}

/// `server_version_num`: `160006` for 16.6 (Grafana reads `current_setting('server_version_num')`).
pub(super) fn server_version_num() -> String {
    let mut parts = PG_VERSION.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major * 10_000 + minor).to_string()
}

/// `version()`: `PostgreSQL 16.6 (tally … on Apache DataFusion …)`.
pub(super) fn version_text() -> String {
    format!("PostgreSQL {}", server_version())
}

/// Answers `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `SET TRANSACTION` and `SHOW server_version`.
pub(super) struct ServerIdentityHook;

/// The command tag of a transaction statement answered here as a no-op.
fn no_op_tag(stmt: &Statement) -> Option<&'static str> {
    Some(match stmt {
        Statement::Savepoint { .. } => "SAVEPOINT",
        Statement::ReleaseSavepoint { .. } => "RELEASE",
        // Only ROLLBACK TO: a plain ROLLBACK ends the transaction, in the crate's hook.
        Statement::Rollback {
            savepoint: Some(_), ..
        } => "ROLLBACK",
        Statement::Set(Set::SetTransaction { .. }) => "SET",
        _ => return None,
    })
}

fn is_show_version(stmt: &Statement) -> bool {
    matches!(stmt, Statement::ShowVariable { variable }
        if variable.len() == 1 && variable[0].value.eq_ignore_ascii_case("server_version"))
}

fn respond(stmt: &Statement, client: &dyn HookClient) -> Option<PgWireResult<Response>> {
    if is_show_version(stmt) {
        return Some(show("server_version", &server_version()));
    }
    let tag = no_op_tag(stmt)?;
    // As Postgres: savepoints exist only inside a transaction block.
    if tag != "SET" && client.transaction_status() == TransactionStatus::Idle {
        return Some(Err(PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "25P01".into(),
            format!("{tag} can only be used in transaction blocks"),
        )))));
    }
    Some(Ok(Response::Execution(Tag::new(tag))))
}

fn show(name: &str, value: &str) -> PgWireResult<Response> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        Box::pin(futures::stream::once(async move { Ok(row) })),
    )))
}

#[async_trait::async_trait]
impl QueryHook for ServerIdentityHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        respond(statement, client)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        // Nothing to plan: the statement is answered at execute.
        (no_op_tag(statement).is_some() || is_show_version(statement)).then(|| {
            Ok(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(datafusion::common::DFSchema::empty()),
            }))
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &datafusion::common::ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        respond(statement, client)
    }
}
