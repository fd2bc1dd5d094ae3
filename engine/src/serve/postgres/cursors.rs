//! `DECLARE … CURSOR`: a query left open between FETCHes is still a query. It takes a slot
//! among the running queries for as long as it is open, counts its memory in the server's pool
//! (it runs on the pinned session's runtime), and ends at the query timeout from its DECLARE,
//! like any statement; a connection holds at most [`MAX_CURSORS`] of them. FETCH and CLOSE are
//! left to datafusion-postgres's cursor hook, which runs after this one; the crate's own
//! DECLARE would keep the plan running with no slot, no deadline and no bound on how many.

use super::queries::{bound, outcome_of, query_timeout, timeout_error};
use super::*;
use datafusion::sql::sqlparser::ast::DeclareType;
use pgwire::api::results::Tag;
use std::sync::Mutex;

/// Cursors one connection may hold open at once (PostgreSQL has no such bound; a shared server
/// needs one, since each open cursor holds a running plan and a query slot).
pub(super) const MAX_CURSORS: usize = 8;

/// The statement type datafusion-postgres keeps in its portal store.
type DfStatement = (
    String,
    Option<(Statement, datafusion::logical_expr::LogicalPlan)>,
);

/// The cursors a connection declared, by name (kept in its session extensions); the portal
/// store says which are still open.
#[derive(Default)]
pub(super) struct Declared(Mutex<Vec<String>>);

impl Declared {
    fn open(&self, store: &pgwire::api::store::MemPortalStore<DfStatement>) -> Vec<String> {
        let Ok(mut names) = self.0.lock() else {
            return Vec::new();
        };
        names.retain(|n| store.get_portal(n).is_some());
        names.clone()
    }

    fn add(&self, name: String) {
        if let Ok(mut names) = self.0.lock() {
            names.push(name);
        }
    }
}

/// Whether `stmt` works on a cursor already admitted (FETCH, CLOSE) or declares one (which
/// takes its own slot): such statements do not queue for a slot of their own, so a client
/// holding cursors can always fetch from and close them.
pub(super) fn uses_cursor(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. }
    )
}

/// Declares cursors with a query slot, a deadline and a per-connection bound.
pub(super) struct CursorHook {
    pub(super) shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl QueryHook for CursorHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let Statement::Declare { stmts } = statement else {
            return None;
        };
        Some(self.declare(stmts, ctx, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<datafusion::logical_expr::LogicalPlan>> {
        None // the crate's hook answers Parse of cursor statements with an empty plan
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &datafusion::logical_expr::LogicalPlan,
        _params: &datafusion::common::ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let Statement::Declare { stmts } = statement else {
            return None;
        };
        Some(self.declare(stmts, ctx, client).await)
    }
}

fn syntax_error(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "42601".into(),
        message,
    )))
}

impl CursorHook {
    async fn declare(
        &self,
        stmts: &[datafusion::sql::sqlparser::ast::Declare],
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let timeout = query_timeout(&self.shared, client);
        let declared = client
            .session_extensions()
            .get_or_insert_with(Declared::default);
        for declare in stmts {
            if declare.declare_type != Some(DeclareType::Cursor) {
                return Err(syntax_error(format!(
                    "unsupported DECLARE type: {:?}",
                    declare.declare_type
                )));
            }
            let Some(name) = declare.names.first().map(|n| n.value.clone()) else {
                return Err(syntax_error("cursor name is required".into()));
            };
            let Some(for_query) = declare.for_query.as_ref().map(|q| q.to_string()) else {
                return Err(syntax_error("DECLARE CURSOR requires a FOR query".into()));
            };
            let store = client.portal_store();
            let open = declared.open(store);
            if open.contains(&name) {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "42P03".into(),
                    format!("cursor \"{name}\" already exists"),
                ))));
            }
            if open.len() >= MAX_CURSORS {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "53400".into(),
                    format!(
                        "too many open cursors on this connection (at most {MAX_CURSORS}): CLOSE one first"
                    ),
                ))));
            }
            let deadline = Instant::now() + timeout;
            let mut record = Some(self.shared.metrics.start(Endpoint::Pg));
            let planned = async {
                let permit = self.shared.admission.query().await.map_err(|e| {
                    PgWireError::ApiError(Box::new(std::io::Error::other(e.to_string())))
                })?;
                let plan = ctx
                    .state()
                    .create_logical_plan(&for_query)
                    .await
                    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                if let Some(write) = query::write_in_plan(&plan) {
                    return Err(read_only_error(format!("DECLARE … CURSOR FOR {write}")));
                }
                let df = ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                let rows = datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe(
                    df,
                    &Format::UnifiedText,
                    None,
                )
                .await?;
                Ok((permit, rows))
            };
            let (permit, rows) = match tokio::time::timeout(timeout, planned).await {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    if let Some(mut r) = record.take() {
                        r.finish(outcome_of(&e));
                    }
                    return Err(e);
                }
                Err(_) => {
                    let e = timeout_error(timeout);
                    if let Some(mut r) = record.take() {
                        r.finish(outcome_of(&e));
                    }
                    return Err(e);
                }
            };
            if let Some(r) = record.as_mut() {
                r.hold(permit);
            }
            // The cursor's rows end with the timeout error once its deadline passes; the
            // record (and with it the slot) goes when the rows end or the cursor is closed.
            let Response::Query(rows) = bound(
                Response::Query(rows),
                CancellationToken::new(),
                deadline,
                timeout,
                &mut record,
            ) else {
                return Err(PgWireError::ApiError(Box::new(std::io::Error::other(
                    "cursor: not a query response",
                ))));
            };
            let statement = Arc::new(StoredStatement::new(
                name.clone(),
                (for_query, None),
                vec![],
            ));
            let fields = rows.row_schema();
            let portal = Arc::new(Portal::new_cursor(name.clone(), statement));
            portal.start(rows).await;
            store.put_portal(Arc::clone(&portal));
            declared.add(name);
            // A cursor nobody fetches from still ends at its deadline: its plan (memory, slot)
            // is dropped for the timeout error, unless it was closed before.
            let open = Arc::downgrade(&portal);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                if let Some(portal) = open.upgrade() {
                    let expired = futures::stream::once(async move { Err(timeout_error(timeout)) });
                    portal
                        .start(pgwire::api::results::QueryResponse::new(fields, expired))
                        .await;
                }
            });
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }
}
