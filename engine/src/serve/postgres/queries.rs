//! Queries on the Postgres wire: a fresh snapshot, an admission slot, the deadline and the
//! client's cancel around datafusion-postgres's handlers, and the query metrics.

use super::*;

/// datafusion-postgres's handlers with a refresh before, and a deadline and cancel token
/// around, every query.
pub(super) struct Guarded {
    pub(super) inner: Arc<DfSessionService>,
    pub(super) parser: Arc<FreshParser>,
    pub(super) shared: Arc<Shared>,
}

/// The key datafusion-postgres keeps `SET statement_timeout` under.
pub(super) const STATEMENT_TIMEOUT_MS: &str = "statement_timeout_ms";

impl Guarded {
    /// Arms a new cancel token and the deadline (the server's timeout, or the client's
    /// `statement_timeout` when shorter), then refreshes the tables within both; returns the
    /// session the query is pinned to.
    async fn begin<C: ClientInfo>(
        &self,
        client: &C,
        record: &mut Option<QueryRecord>,
        admit: bool,
    ) -> PgWireResult<(Arc<TallySession>, CancellationToken, Instant, Duration)> {
        let timeout = query_timeout(&self.shared, client);
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
            // Statements on cursors run on the slot their cursor holds.
            let permit = if admit {
                Some(self.shared.admission.query().await.map_err(|e| {
                    PgWireError::ApiError(Box::new(std::io::Error::other(e.to_string())))
                })?)
            } else {
                None
            };
            Ok((session, permit))
        };
        match race(admitted, &token, deadline, timeout).await {
            Ok((session, permit)) => {
                if let (Some(r), Some(permit)) = (record.as_mut(), permit) {
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

/// True when every statement of a simple-protocol text declares, fetches from or closes a
/// cursor (see [`cursors::uses_cursor`]).
fn only_cursor_statements(sql: &str) -> bool {
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
    PostgresCompatibilityParser::new()
        .parse(sql)
        .is_ok_and(|s| !s.is_empty() && s.iter().all(cursors::uses_cursor))
}

/// The server's query timeout, or the client's `statement_timeout` when shorter.
pub(super) fn query_timeout<C: ClientInfo + ?Sized>(shared: &Shared, client: &C) -> Duration {
    let asked = client
        .metadata()
        .get(STATEMENT_TIMEOUT_MS)
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    asked.map_or(shared.query_timeout, |t| t.min(shared.query_timeout))
}

pub(super) fn refresh_error(e: &TallyError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "58030".into(),
        crate::lake::one_line(&e.to_string()),
    )))
}

/// datafusion-postgres's parser (it plans at Parse, the extended protocol's first step) on a
/// refreshed, pinned session: a table created since the last query is found, and a refused or
/// failing Parse is counted.
pub(super) struct FreshParser {
    pub(super) inner: Arc<datafusion_postgres::Parser>,
    pub(super) shared: Arc<Shared>,
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
                let inner = &self.inner;
                PINNED
                    .scope(session, async move {
                        let texts = super::set_returning::texts_to_try(sql);
                        let last = texts.len() - 1;
                        let mut parsed = Ok(None);
                        for (i, text) in texts.iter().enumerate() {
                            parsed = inner.parse_sql(client, text, types).await;
                            match &parsed {
                                Err(e) if i < last && is_planning_error(e) => continue,
                                _ => break,
                            }
                        }
                        parsed
                    })
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

/// Whether `e` is DataFusion refusing to plan a statement (nothing of it ran: the texts
/// tried one after another are single statements).
fn is_planning_error(e: &PgWireError) -> bool {
    let PgWireError::ApiError(inner) = e else {
        return false;
    };
    inner.downcast_ref::<DataFusionError>().is_some_and(|df| {
        matches!(
            df.find_root(),
            DataFusionError::Plan(_)
                | DataFusionError::SQL(..)
                | DataFusionError::SchemaError(..)
                | DataFusionError::NotImplemented(_)
        )
    })
}

pub(super) fn timeout_error(timeout: Duration) -> PgWireError {
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
pub(super) async fn race<T>(
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

pub(super) fn outcome_of(e: &PgWireError) -> Outcome {
    match e {
        PgWireError::QueryCanceled => Outcome::Cancelled,
        PgWireError::UserError(info) if info.code == "57014" => Outcome::Timeout,
        PgWireError::UserError(info) if info.code == "25006" => Outcome::Refused,
        _ => Outcome::Error,
    }
}

pub(super) type RowStream = pgwire::api::results::SendableRowStream;

/// A row stream that ends with an error when the query is cancelled or times out (dropping
/// the inner stream stops the plan), and counts the query when it ends.
pub(super) struct Bounded {
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

pub(super) fn bound(
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

pub(super) fn finish_responses(
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
        let admit = !only_cursor_statements(query);
        let (session, token, deadline, timeout) = self.begin(client, &mut record, admit).await?;
        let inner = self.inner.as_ref();
        // As in `FreshParser`; a text of several statements is only ever tried as sent.
        let work = PINNED.scope(session, async {
            let texts = super::set_returning::texts_to_try(query);
            let last = texts.len() - 1;
            let mut answered = Ok(vec![]);
            for (i, text) in texts.iter().enumerate() {
                answered = SimpleQueryHandler::do_query(inner, client, text).await;
                match &answered {
                    Err(e) if i < last && is_planning_error(e) => continue,
                    _ => break,
                }
            }
            answered
        });
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
            if let Err(e) = crate::serve::pg_params::check_exact(portal, plan) {
                if let Some(mut r) = record.take() {
                    r.finish(outcome_of(&e));
                }
                return Err(e);
            }
        }
        let admit =
            !matches!(&portal.statement.statement, (_, Some((s, _))) if cursors::uses_cursor(s));
        let (session, token, deadline, timeout) = self.begin(client, &mut record, admit).await?;
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
