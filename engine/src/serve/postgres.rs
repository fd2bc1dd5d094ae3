//! The Postgres wire protocol (psql, psycopg, JDBC, Grafana, Metabase, DBeaver), through
//! datafusion-postgres and pgwire, with tally's rules around it.
//!
//! datafusion-postgres brings the protocol, type encoding (`numeric` for decimals, exactly)
//! and the `pg_catalog` emulation BI tools browse. Around it, this module adds what a shared,
//! read-only server needs and the crate leaves open:
//! - **read-only** on both query paths: a hook refuses anything but reads (and the harmless
//!   session `SET`s clients send at connect) before DataFusion plans it, with SQLSTATE 25006;
//!   the crate would otherwise run DDL and apply unknown `SET`s to the context every
//!   connection shares;
//! - **fresh tables** per query (see [`super::fresh_schema`]);
//! - **password auth** with the token (any user), SQLSTATE 28P01 when wrong;
//! - **timeout and CancelRequest** that stop a running plan, also while its rows stream (the
//!   crate only races the planning step);
//! - **SQLSTATE codes** for DataFusion errors instead of one generic XX000.

use super::fresh_schema::{FreshSchema, PINNED};
use super::metrics::{Endpoint, Outcome, QueryRecord};
use super::Shared;
use crate::error::{Result, TallyError};
use crate::query;
use crate::session::TallySession;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::{Sink, Stream};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::Format;
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, Response,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::Type;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Serves the Postgres wire protocol until `stop` completes; open connections then get a
/// short grace period and are closed (dropping a connection stops its query).
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let handlers = Arc::new(Handlers::new(Arc::clone(&shared)).await?);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let Some(permit) = shared.admission.connection() else {
                        connections.spawn(refuse_connection(socket, shared.admission.max_connections()));
                        continue;
                    };
                    let (handlers, tls) = (Arc::clone(&handlers), tls.clone());
                    connections.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!(error = %e, "pg connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pg accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Idle connections never end on their own: give running queries a moment, then close.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

/// Answers a connection beyond `--max-connections` as Postgres does: after its startup
/// message (declining SSL/GSS encryption first), a FATAL `too_many_connections` (53300).
async fn refuse_connection(mut socket: tokio::net::TcpStream, max: usize) {
    use pgwire::messages::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SSL_REQUEST: i32 = 80877103;
    const GSSENC_REQUEST: i32 = 80877104;
    let work = async {
        loop {
            let len = socket.read_i32().await?;
            if !(8..=10_000).contains(&len) {
                break;
            }
            let mut body = vec![0u8; (len - 4) as usize];
            socket.read_exact(&mut body).await?;
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            if code != SSL_REQUEST && code != GSSENC_REQUEST {
                break;
            }
            socket.write_all(b"N").await?;
        }
        let info = ErrorInfo::new(
            "FATAL".into(),
            "53300".into(),
            format!(
                "sorry, too many clients already: tally serve has --max-connections {max} open"
            ),
        );
        let mut buf = bytes::BytesMut::new();
        pgwire::messages::response::ErrorResponse::from(info)
            .encode(&mut buf)
            .map_err(std::io::Error::other)?;
        socket.write_all(&buf).await?;
        socket.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), work).await {
        tracing::debug!(error = %e, "refused pg connection did not finish its startup");
    }
}

/// The context the Postgres endpoint plans in: tally's settings, UDFs and runtime (one memory
/// pool with Flight SQL), the lake's tables always at their newest refresh, and `pg_catalog`.
async fn pg_context(shared: &Shared) -> Result<SessionContext> {
    let newest = shared.catalog.session().await?;
    let ctx = SessionContext::new_with_config_rt(
        newest.ctx().copied_config(),
        Arc::clone(shared.catalog.runtime()),
    );
    tally_udfs::register_all(&ctx);
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| TallyError::Internal("no default catalog".into()))?;
    catalog.register_schema(
        "public",
        Arc::new(FreshSchema::new(Arc::clone(&shared.catalog))),
    )?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider)
        .map_err(|e| TallyError::Internal(format!("pg_catalog: {e}")))?;
    Ok(ctx)
}

/// Everything one Postgres connection is served by.
struct Handlers {
    queries: Arc<Guarded>,
    startup: Arc<TokenStartup>,
    cancels: Arc<Cancels>,
}

impl Handlers {
    async fn new(shared: Arc<Shared>) -> Result<Self> {
        let ctx = Arc::new(pg_context(&shared).await?);
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnlyHook),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
            // Last: everything the hooks above did not answer runs here, on a plan checked
            // for writes, instead of the crate's unchecked `SessionContext::sql`.
            Arc::new(CheckedPlanHook),
        ];
        let inner = Arc::new(DfSessionService::new_with_hooks(ctx, hooks));
        let cancels = Arc::new(Cancels::default());
        let mut params = DefaultServerParameterProvider::default();
        params.default_transaction_read_only = true;
        params.is_superuser = false;
        Ok(Self {
            queries: Arc::new(Guarded {
                parser: Arc::new(FreshParser {
                    inner: inner.query_parser(),
                    shared: Arc::clone(&shared),
                }),
                inner,
                shared: Arc::clone(&shared),
            }),
            startup: Arc::new(TokenStartup {
                shared,
                params,
                pids: RandomPidSecretKeyGenerator::default(),
                cancels: Arc::clone(&cancels),
            }),
            cancels,
        })
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStates)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancels)
    }
}

// ---------------------------------------------------------------------------------------------
// Read-only

/// Session settings clients send on connect, answered per connection by the crate's own hook
/// without touching the shared context.
const SESSION_SETTINGS: &[&str] = &[
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
fn refusal(stmt: &Statement) -> Option<String> {
    let allowed = match stmt {
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
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
async fn refusal_planned(stmt: &Statement, ctx: &SessionContext) -> Option<String> {
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
fn refusal_in_text(sql: &str) -> Option<String> {
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
    // A text that does not parse fails in the crate's handler with the parser's message.
    let statements = PostgresCompatibilityParser::new().parse(sql).ok()?;
    statements.iter().find_map(refusal)
}

fn wrap(stmt: &Statement) -> DFStatement {
    DFStatement::Statement(Box::new(stmt.clone()))
}

fn read_only_error(statement: String) -> PgWireError {
    let message = TallyError::ServeReadOnly { statement }.to_string();
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        message,
    )))
}

/// Refuses writes on the simple and the extended path before anything plans them, by
/// statement kind (so the refusal names it); the plan check comes after, on what will run.
struct ReadOnlyHook;

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
struct CheckedPlanHook;

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

async fn run_checked(
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

// ---------------------------------------------------------------------------------------------
// Queries: fresh tables, timeout, cancellation, metrics

/// datafusion-postgres's handlers with a refresh before, and a deadline and cancel token
/// around, every query.
struct Guarded {
    inner: Arc<DfSessionService>,
    parser: Arc<FreshParser>,
    shared: Arc<Shared>,
}

/// The key datafusion-postgres keeps `SET statement_timeout` under.
const STATEMENT_TIMEOUT_MS: &str = "statement_timeout_ms";

impl Guarded {
    /// Arms a new cancel token and the deadline (the server's timeout, or the client's
    /// `statement_timeout` when shorter), then refreshes the tables within both; returns the
    /// session the query is pinned to.
    async fn begin<C: ClientInfo>(
        &self,
        client: &C,
        record: &mut Option<QueryRecord>,
    ) -> PgWireResult<(Arc<TallySession>, CancellationToken, Instant, Duration)> {
        let mut timeout = self.shared.query_timeout;
        if let Some(ms) = client
            .metadata()
            .get(STATEMENT_TIMEOUT_MS)
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
        {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        let token = client
            .session_extensions()
            .get::<Connection>()
            .map(|c| c.arm())
            .unwrap_or_default();
        let deadline = Instant::now() + timeout;
        // A fresh snapshot, then a slot among the running queries: both within the query's
        // deadline and cancel, so a queued query can be cancelled or time out while it waits.
        let admitted = async {
            let session = self
                .shared
                .catalog
                .session()
                .await
                .map_err(|e| refresh_error(&e))?;
            let permit = self.shared.admission.query().await.map_err(|e| {
                PgWireError::ApiError(Box::new(std::io::Error::other(e.to_string())))
            })?;
            Ok((session, permit))
        };
        match race(admitted, &token, deadline, timeout).await {
            Ok((session, permit)) => {
                if let Some(r) = record.as_mut() {
                    r.hold(permit);
                }
                Ok((session, token, deadline, timeout))
            }
            Err(e) => {
                if let Some(mut r) = record.take() {
                    r.finish(outcome_of(&e));
                }
                Err(e)
            }
        }
    }
}

fn refresh_error(e: &TallyError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "58030".into(),
        crate::lake::one_line(&e.to_string()),
    )))
}

/// datafusion-postgres's parser (it plans at Parse, the extended protocol's first step) on a
/// refreshed, pinned session: a table created since the last query is found, and a refused or
/// failing Parse is counted.
struct FreshParser {
    inner: Arc<datafusion_postgres::Parser>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl QueryParser for FreshParser {
    type Statement = <datafusion_postgres::Parser as QueryParser>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let refreshed =
            tokio::time::timeout(self.shared.query_timeout, self.shared.catalog.session())
                .await
                .map_err(|_| timeout_error(self.shared.query_timeout))?
                .map_err(|e| refresh_error(&e));
        let parsed = match refreshed {
            Ok(session) => {
                PINNED
                    .scope(session, self.inner.parse_sql(client, sql, types))
                    .await
            }
            Err(e) => Err(e),
        };
        // The plan made here is the one Execute runs (with parameters bound): decide on it.
        let parsed = parsed.and_then(|p| match &p {
            Some((_, Some((_, plan)))) => match query::write_in_plan(plan) {
                Some(write) => Err(read_only_error(write)),
                None => Ok(p),
            },
            _ => Ok(p),
        });
        if let Err(e) = &parsed {
            let mut record = self.shared.metrics.start(Endpoint::Pg);
            record.finish(outcome_of(e));
        }
        parsed
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

fn timeout_error(timeout: Duration) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "57014".into(),
        format!(
            "canceling statement due to statement timeout: {}",
            TallyError::QueryTimeout {
                seconds: timeout.as_secs()
            }
        ),
    )))
}

/// Runs `work` until it completes, the token is cancelled or the deadline passes.
async fn race<T>(
    work: impl Future<Output = PgWireResult<T>>,
    token: &CancellationToken,
    deadline: Instant,
    timeout: Duration,
) -> PgWireResult<T> {
    tokio::select! {
        r = work => r,
        _ = token.cancelled() => Err(PgWireError::QueryCanceled),
        _ = tokio::time::sleep_until(deadline) => Err(timeout_error(timeout)),
    }
}

fn outcome_of(e: &PgWireError) -> Outcome {
    match e {
        PgWireError::QueryCanceled => Outcome::Cancelled,
        PgWireError::UserError(info) if info.code == "57014" => Outcome::Timeout,
        PgWireError::UserError(info) if info.code == "25006" => Outcome::Refused,
        _ => Outcome::Error,
    }
}

type RowStream = pgwire::api::results::SendableRowStream;

/// A row stream that ends with an error when the query is cancelled or times out (dropping
/// the inner stream stops the plan), and counts the query when it ends.
struct Bounded {
    rows: RowStream,
    stop: Pin<Box<dyn Future<Output = PgWireError> + Send>>,
    record: Option<QueryRecord>,
    done: bool,
}

impl Stream for Bounded {
    type Item = PgWireResult<pgwire::messages::data::DataRow>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(e) = this.stop.as_mut().poll(cx) {
            this.done = true;
            this.rows = Box::pin(futures::stream::empty());
            if let Some(mut r) = this.record.take() {
                r.finish(outcome_of(&e));
            }
            return Poll::Ready(Some(Err(e)));
        }
        let polled = this.rows.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => {
                this.done = true;
                if let Some(mut r) = this.record.take() {
                    r.finish(Outcome::Ok);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                if let Some(mut r) = this.record.take() {
                    r.finish(outcome_of(e));
                }
            }
            _ => {}
        }
        polled
    }
}

fn bound(
    response: Response,
    token: CancellationToken,
    deadline: Instant,
    timeout: Duration,
    record: &mut Option<QueryRecord>,
) -> Response {
    let Response::Query(mut q) = response else {
        return response;
    };
    let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
    let stop = Box::pin(async move {
        tokio::select! {
            _ = token.cancelled() => PgWireError::QueryCanceled,
            _ = tokio::time::sleep_until(deadline) => timeout_error(timeout),
        }
    });
    q.data_rows = Box::pin(Bounded {
        rows,
        stop,
        record: record.take(),
        done: false,
    });
    Response::Query(q)
}

fn finish_responses(
    responses: Vec<Response>,
    token: CancellationToken,
    deadline: Instant,
    timeout: Duration,
    mut record: Option<QueryRecord>,
) -> Vec<Response> {
    // The last result set carries the query's record; earlier ones are already complete
    // statements of the same simple query.
    let last_query = responses
        .iter()
        .rposition(|r| matches!(r, Response::Query(_)));
    let out = responses
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut none = None;
            let rec = if Some(i) == last_query {
                &mut record
            } else {
                &mut none
            };
            bound(r, token.clone(), deadline, timeout, rec)
        })
        .collect();
    if let Some(mut r) = record {
        r.finish(Outcome::Ok);
    }
    out
}

#[async_trait::async_trait]
impl SimpleQueryHandler for Guarded {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut record = Some(self.shared.metrics.start(Endpoint::Pg));
        if let Some(write) = refusal_in_text(query) {
            let e = read_only_error(write);
            if let Some(mut r) = record.take() {
                r.finish(outcome_of(&e));
            }
            return Err(e);
        }
        let (session, token, deadline, timeout) = self.begin(client, &mut record).await?;
        let work = PINNED.scope(
            session,
            SimpleQueryHandler::do_query(self.inner.as_ref(), client, query),
        );
        match race(work, &token, deadline, timeout).await {
            Ok(responses) => Ok(finish_responses(
                responses, token, deadline, timeout, record,
            )),
            Err(e) => {
                if let Some(mut r) = record {
                    r.finish(outcome_of(&e));
                }
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl ExtendedQueryHandler for Guarded {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = FreshParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.inner.do_describe_statement(client, target).await
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        target: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.inner.do_describe_portal(client, target).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut record = Some(self.shared.metrics.start(Endpoint::Pg));
        if let (_, Some((_, plan))) = &portal.statement.statement {
            if let Err(e) = super::pg_params::check_exact(portal, plan) {
                if let Some(mut r) = record.take() {
                    r.finish(outcome_of(&e));
                }
                return Err(e);
            }
        }
        let (session, token, deadline, timeout) = self.begin(client, &mut record).await?;
        let work = PINNED.scope(
            session,
            ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows),
        );
        match race(work, &token, deadline, timeout).await {
            Ok(response) => {
                let response = bound(response, token, deadline, timeout, &mut record);
                if let Some(mut r) = record {
                    r.finish(Outcome::Ok);
                }
                Ok(response)
            }
            Err(e) => {
                if let Some(mut r) = record {
                    r.finish(outcome_of(&e));
                }
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cancellation

/// One connection's cancel handle: the token of its running query.
#[derive(Default)]
struct ConnectionCancel {
    current: Mutex<CancellationToken>,
}

/// Stored in the connection's session extensions; unregisters the connection when it closes.
struct Connection {
    key: (i32, bytes::Bytes),
    cancel: Arc<ConnectionCancel>,
    cancels: Arc<Cancels>,
}

impl Connection {
    /// A fresh token for the next query (a cancel only ever stops the query running now).
    fn arm(&self) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut current) = self.cancel.current.lock() {
            *current = token.clone();
        }
        token
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut map) = self.cancels.map.lock() {
            map.remove(&self.key);
        }
    }
}

/// Open connections by (process id, secret key), as CancelRequest names them.
#[derive(Default)]
struct Cancels {
    /// Keyed by the secret's bytes: a cancel request arrives on a new connection, which may
    /// decode the same 4-byte key as bytes where the session had an i32.
    map: Mutex<HashMap<(i32, bytes::Bytes), Arc<ConnectionCancel>>>,
}

#[async_trait::async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.map.lock().ok().and_then(|m| {
            m.get(&(request.pid, request.secret_key.to_bytes()))
                .cloned()
        });
        if let Some(conn) = found {
            if let Ok(current) = conn.current.lock() {
                current.cancel();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Startup and auth

/// Trust without a token; with one, a cleartext password that must be the token (any user).
struct TokenStartup {
    shared: Arc<Shared>,
    params: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
    cancels: Arc<Cancels>,
}

impl TokenStartup {
    async fn accept<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = self.pids.generate(&*client);
        client.set_pid_and_secret_key(pid, key.clone());
        let cancel = Arc::new(ConnectionCancel::default());
        if let Ok(mut map) = self.cancels.map.lock() {
            map.insert((pid, key.to_bytes()), Arc::clone(&cancel));
        }
        let connection = Connection {
            key: (pid, key.to_bytes()),
            cancel,
            cancels: Arc::clone(&self.cancels),
        };
        client
            .session_extensions()
            .get_or_insert_with(|| connection);
        finish_authentication(client, &self.params).await
    }
}

#[async_trait::async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !self.shared.token.is_required() {
                    return self.accept(client).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(p) => {
                let password = p.into_password()?;
                if self.shared.token.is_required() && self.shared.token.accepts(&password.password)
                {
                    return self.accept(client).await;
                }
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                return Err(PgWireError::InvalidPassword(user));
            }
            _ => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// SQLSTATE codes for DataFusion's errors (the crate reports them all as XX000).
struct SqlStates;

impl ErrorHandler for SqlStates {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let PgWireError::ApiError(inner) = error else {
            return;
        };
        let Some(df) = inner.downcast_ref::<DataFusionError>() else {
            return;
        };
        let code = sqlstate(df);
        let message = crate::lake::one_line(&df.to_string());
        *error = PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            code.into(),
            message,
        )));
    }
}

fn sqlstate(e: &DataFusionError) -> &'static str {
    use datafusion::common::SchemaError;
    match e.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::Plan(m) if m.contains("not found") && m.starts_with("table") => "42P01",
        DataFusionError::SchemaError(se, _)
            if matches!(**se, SchemaError::FieldNotFound { .. }) =>
        {
            "42703"
        }
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => "58030",
        DataFusionError::ParquetError(_) | DataFusionError::ArrowError(..) => "22000",
        _ => "XX000",
    }
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
