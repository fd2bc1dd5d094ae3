//! Arrow Flight SQL: statements, prepared statements with parameters and the metadata calls
//! BI tools make first (ADBC, the Flight SQL JDBC driver, DBeaver through it).
//!
//! Stateless by design: a statement's ticket carries its SQL, and a prepared statement's
//! handle carries its SQL plus the parameter row bound by the last `DoPut` (as Arrow IPC), so
//! any request can be answered without server-side sessions to leak or expire. `GetFlightInfo`
//! plans the statement (refusing writes and reporting SQL errors before any row moves) and
//! returns the plan's wire schema; `DoGet` plans it again on a fresh snapshot (tally's tables
//! keep their schemas across commits, so the two schemas agree) and streams rows in it.

use super::metrics::{Endpoint, Outcome};
use super::statement::{self, Planned};
use super::Shared;
use crate::error::{ErrorKind, TallyError};
use crate::lake::one_line;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, Nullable,
    ProstMessageExt, Searchable, SqlInfo, SqlSupportedTransaction, TicketStatementQuery,
    XdbcDataType,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use futures::{Stream, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

/// The catalog and schema every tally table is in (DataFusion's defaults, as in `tally sql`).
const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";

/// The Flight SQL service over the shared server state.
#[derive(Clone)]
pub struct FlightSql {
    shared: Arc<Shared>,
    plans: Arc<PlanCache>,
}

/// Plans made to answer GetFlightInfo, kept for the DoGet that follows it (clients ask at
/// once): the query is planned once, on the snapshot of its first call. A ticket whose plan is
/// gone (expired, evicted, another server) is planned again.
///
/// A kept plan belongs to its caller: its id is 128 random bits (not guessable from another
/// ticket), and it is handed out only to the connection that asked for it and for the same SQL
/// and parameters. Any other redemption of the id plans the ticket's own SQL afresh, so a
/// forged or replayed ticket never yields another caller's plan.
#[derive(Default)]
struct PlanCache {
    plans: std::sync::Mutex<std::collections::VecDeque<Kept>>,
}

struct Kept {
    id: String,
    at: std::time::Instant,
    owner: Owner,
    planned: Planned,
}

/// Who may redeem a kept plan: the connection that asked, for the statement it asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    peer: Option<std::net::SocketAddr>,
    sql: String,
    params: Option<String>,
}

impl Owner {
    fn of<T>(handle: &Handle, request: &Request<T>) -> Self {
        Owner {
            peer: request.remote_addr(),
            sql: handle.sql.clone(),
            params: handle.params.clone(),
        }
    }
}

/// Plans waiting for their DoGet, at most.
const PLANS_KEPT: usize = 64;
/// Batches a DoPut of parameters may send (one row in all; clients send one or two).
const PARAM_BATCHES: usize = 8;
/// How long a plan waits for its DoGet.
const PLAN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl PlanCache {
    fn put(&self, owner: Owner, planned: Planned) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Ok(mut plans) = self.plans.lock() {
            plans.retain(|k| k.at.elapsed() < PLAN_WAIT);
            if plans.len() >= PLANS_KEPT {
                plans.pop_front();
            }
            plans.push_back(Kept {
                id: id.clone(),
                at: std::time::Instant::now(),
                owner,
                planned,
            });
        }
        id
    }

    /// The plan kept under `id` if `owner` is the one who asked for it; otherwise `None`,
    /// leaving it for its owner.
    fn take(&self, id: &str, owner: &Owner) -> Option<Planned> {
        let mut plans = self.plans.lock().ok()?;
        let i = plans.iter().position(|k| k.id == id && &k.owner == owner)?;
        let kept = plans.remove(i)?;
        (kept.at.elapsed() < PLAN_WAIT).then_some(kept.planned)
    }
}

/// The gRPC service with the token check in front of every call.
pub fn service(
    shared: Arc<Shared>,
) -> tonic::service::interceptor::InterceptedService<
    FlightServiceServer<FlightSql>,
    impl tonic::service::Interceptor + Clone,
> {
    let token = shared.token.clone();
    let check = move |req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token.accepts_header(header) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong token: send authorization: Bearer <TALLY_TOKEN>, or basic auth with the token as password",
            ))
        }
    };
    let plans = Arc::new(PlanCache::default());
    FlightServiceServer::with_interceptor(FlightSql { shared, plans }, check)
}

/// What a ticket or prepared-statement handle carries.
#[derive(Serialize, Deserialize)]
struct Handle {
    sql: String,
    /// One parameter row as an Arrow IPC stream, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<String>,
    /// In a ticket: the plan GetFlightInfo made, waiting in the [`PlanCache`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
}

impl Handle {
    fn encode(&self) -> Result<Vec<u8>, Status> {
        serde_json::to_vec(self).map_err(|e| Status::internal(e.to_string()))
    }

    fn decode(bytes: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(bytes)
            .map_err(|_| Status::invalid_argument("not a statement handle of this server"))
    }

    fn params(&self) -> Result<Option<Vec<ScalarValue>>, Status> {
        let Some(encoded) = &self.params else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| Status::invalid_argument("bad parameters in statement handle"))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut values = None;
        for batch in reader {
            let batch = batch.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if batch.num_rows() > 0 && values.is_none() {
                values = Some(
                    batch
                        .columns()
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, 0))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                );
            }
        }
        Ok(values)
    }
}

fn encode_params(batch: &RecordBatch) -> Result<String, Status> {
    let mut buf = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut buf, &batch.schema())
            .map_err(|e| Status::internal(e.to_string()))?;
        writer
            .write(batch)
            .map_err(|e| Status::internal(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// A tally error as a gRPC status, with a code a client can act on.
pub(crate) fn status_of(e: &TallyError) -> Status {
    let message = one_line(&e.to_string());
    match e {
        TallyError::ServeReadOnly { .. } | TallyError::ReadOnly { .. } => {
            Status::permission_denied(message)
        }
        TallyError::QueryTimeout { .. } => Status::deadline_exceeded(message),
        TallyError::TableNotFound { .. } => Status::not_found(message),
        TallyError::Query(d)
            if matches!(
                d.find_root(),
                datafusion::error::DataFusionError::ResourcesExhausted(_)
            ) =>
        {
            Status::resource_exhausted(message)
        }
        _ => match e.kind() {
            ErrorKind::User => Status::invalid_argument(message),
            ErrorKind::External => Status::unavailable(message),
            ErrorKind::Internal => Status::internal(message),
        },
    }
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

fn info_for(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn batch_stream(schema: Arc<Schema>, batch: Result<RecordBatch, FlightError>) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Box::pin(stream)
}

impl FlightSql {
    /// Plans `handle` on a fresh snapshot for its schema. A failure counts as a query (the
    /// client never reaches DoGet); a success does not, since DoGet counts the run.
    async fn plan(&self, handle: &Handle) -> Result<Planned, Status> {
        let mut record = self.shared.metrics.start(Endpoint::FlightSql);
        let params = handle
            .params()
            .inspect_err(|_| record.finish(Outcome::Error))?;
        let planned = self.plan_fresh(&handle.sql, params).await;
        match planned {
            Ok(planned) => {
                record.discard();
                Ok(planned)
            }
            Err(e) => {
                record.finish(Outcome::of(&e));
                Err(status_of(&e))
            }
        }
    }

    /// Refreshes (within the query timeout: a stalled store must not hang the call) and plans.
    async fn plan_fresh(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> crate::Result<Planned> {
        let timeout = self.shared.query_timeout;
        let session = tokio::time::timeout(timeout, self.shared.catalog.session())
            .await
            .map_err(|_| TallyError::QueryTimeout {
                seconds: timeout.as_secs(),
            })??;
        statement::plan(&session, sql, params).await
    }

    /// Plans for a FlightInfo; its ticket names the plan, kept for the DoGet.
    async fn info(
        &self,
        mut handle: Handle,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let owner = Owner::of(&handle, &request);
        let descriptor = request.into_inner();
        let planned = self.plan(&handle).await?;
        let schema = Arc::clone(&planned.wire_schema);
        handle.plan = Some(self.plans.put(owner, planned));
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode()?.into(),
        };
        info_for(&schema, ticket.as_any().encode_to_vec(), descriptor)
    }

    async fn run(&self, handle: Handle, owner: Owner) -> Result<Response<DoGetStream>, Status> {
        let mut record = self.shared.metrics.start(Endpoint::FlightSql);
        let kept = handle
            .plan
            .as_deref()
            .and_then(|id| self.plans.take(id, &owner));
        let planned = match kept {
            Some(planned) => Ok(planned),
            None => {
                let params = handle
                    .params()
                    .inspect_err(|_| record.finish(Outcome::Error))?;
                self.plan_fresh(&handle.sql, params).await
            }
        };
        let planned = match planned {
            Ok(p) => p,
            Err(e) => {
                record.finish(Outcome::of(&e));
                return Err(status_of(&e));
            }
        };
        // Wait for a slot among the running queries; the wait counts toward the timeout.
        let timeout = self.shared.query_timeout;
        let queued = std::time::Instant::now();
        match tokio::time::timeout(timeout, self.shared.admission.query()).await {
            Ok(Ok(permit)) => record.hold(permit),
            Ok(Err(e)) => {
                record.finish(Outcome::of(&e));
                return Err(status_of(&e));
            }
            Err(_) => {
                let e = TallyError::QueryTimeout {
                    seconds: timeout.as_secs(),
                };
                record.finish(Outcome::of(&e));
                return Err(status_of(&e));
            }
        }
        let left = timeout.saturating_sub(queued.elapsed());
        let schema = Arc::clone(&planned.wire_schema);
        let rows = match statement::execute(planned, left).await {
            Ok(rows) => rows,
            Err(e) => {
                record.finish(Outcome::of(&e));
                return Err(status_of(&e));
            }
        };
        let rows = record
            .observe(rows)
            .map_err(|e| FlightError::Tonic(Box::new(status_of(&e))));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(rows)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// Every table of a fresh session with its type and wire schema.
    async fn tables(&self) -> Result<Vec<(String, &'static str, Arc<Schema>)>, Status> {
        let timeout = self.shared.query_timeout;
        let session = tokio::time::timeout(timeout, self.shared.catalog.session())
            .await
            .map_err(|_| {
                status_of(&TallyError::QueryTimeout {
                    seconds: timeout.as_secs(),
                })
            })?
            .map_err(|e| status_of(&e))?;
        let ctx = session.ctx();
        let Some(schema) = ctx.catalog(CATALOG).and_then(|c| c.schema(SCHEMA)) else {
            return Ok(Vec::new());
        };
        let mut names = schema.table_names();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Ok(Some(table)) = schema.table(&name).await else {
                continue;
            };
            let kind = match table.table_type() {
                TableType::Base => "TABLE",
                TableType::View => "VIEW",
                TableType::Temporary => "LOCAL TEMPORARY",
            };
            out.push((name, kind, statement::wire_schema(&table.schema())));
        }
        Ok(out)
    }
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "tally");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    // A fixed set of scalar entries; building it cannot fail.
    b.build().unwrap_or_else(|_| {
        SqlInfoDataBuilder::new()
            .build()
            .unwrap_or_else(|_| unreachable!())
    })
});

fn xdbc(name: &str, t: XdbcDataType, size: Option<i32>, scale: Option<i32>) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type: t,
        column_size: size,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(t, XdbcDataType::XdbcVarchar),
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: matches!(t, XdbcDataType::XdbcDecimal),
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: scale,
        maximum_scale: scale,
        sql_data_type: t,
        datetime_subcode: None,
        num_prec_radix: Some(10),
        interval_precision: None,
    }
}

static XDBC_INFO: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(19), None));
    b.append(xdbc("INTEGER", XdbcDataType::XdbcInteger, Some(10), None));
    b.append(xdbc(
        "DECIMAL",
        XdbcDataType::XdbcDecimal,
        Some(38),
        Some(2),
    ));
    b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(15), None));
    b.append(xdbc("VARCHAR", XdbcDataType::XdbcVarchar, None, None));
    b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None));
    b.append(xdbc("DATE", XdbcDataType::XdbcDate, Some(10), None));
    b.append(xdbc(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(26),
        None,
    ));
    b.build().unwrap_or_else(|_| unreachable!())
});

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The interceptor already checked the credentials; answer with the bearer token the
        // client sends from now on (the JDBC driver requires the header, arrow-rs #5665).
        let bearer = self.shared.token.bearer();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: bytes::Bytes::new(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::iter(vec![Ok(reply)])));
        if let Some(bearer) = bearer {
            let value = MetadataValue::try_from(bearer.as_str())
                .map_err(|_| Status::internal("token is not a valid header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Handle {
            sql: query.query,
            params: None,
            plan: None,
        };
        self.info(handle, request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Handle::decode(&cmd.prepared_statement_handle)?;
        self.info(handle, request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = Handle::decode(&ticket.statement_handle)?;
        let owner = Owner::of(&handle, &request);
        self.run(handle, owner).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let owner = Owner::of(&handle, &request);
        self.run(handle, owner).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let handle = Handle {
            sql: query.query,
            params: None,
            plan: None,
        };
        let planned = self.plan(&handle).await?;
        let params = statement::parameter_types(&planned).map_err(|e| status_of(&e))?;
        let parameter_schema = Schema::new(
            params
                .into_iter()
                .map(|(name, t)| Field::new(name, t.unwrap_or(DataType::Utf8), true))
                .collect::<Vec<_>>(),
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode()?.into(),
            dataset_schema: schema_bytes(&planned.wire_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::decode(&query.prepared_statement_handle)?;
        let data = request
            .into_inner()
            .map_err(|status| FlightError::Tonic(Box::new(status)));
        // Read until the first non-empty batch; more than one row is refused without reading
        // the rest (a client streaming a huge DoPut cannot fill the server's memory).
        let mut stream = FlightRecordBatchStream::new_from_flight_data(data);
        // Empty batches are bounded too: an endless stream of them would hold the call open.
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut rows = 0usize;
        while let Some(batch) = stream.try_next().await.map_err(Status::from)? {
            rows += batch.num_rows();
            if rows > 1 {
                return Err(Status::invalid_argument(
                    "more than one parameter row: a query binds one row of parameters",
                ));
            }
            if batches.len() >= PARAM_BATCHES {
                return Err(Status::invalid_argument(format!(
                    "more than {PARAM_BATCHES} parameter batches: a query binds one row of parameters"
                )));
            }
            batches.push(batch);
        }
        handle.params = match batches.iter().find(|b| b.num_rows() == 1) {
            Some(batch) => Some(encode_params(batch)?),
            None => None,
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode()?.into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: nothing to free.
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let tables = self.tables().await?;
        let mut builder = query.into_builder();
        for (name, kind, schema) in tables {
            builder
                .append(CATALOG, SCHEMA, name, kind, &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for kind in ["TABLE", "VIEW"] {
            builder.append(kind);
        }
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&XDBC_INFO).schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&XDBC_INFO);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "tally serve does not answer {}",
            message.type_url
        )))
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("an update statement"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("a prepared update"))
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("bulk ingest"))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn read_only(what: &str) -> Status {
    let e = TallyError::ServeReadOnly {
        statement: what.to_string(),
    };
    status_of(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn planned(sql: &str) -> Planned {
        let df = datafusion::prelude::SessionContext::new()
            .sql(sql)
            .await
            .unwrap();
        let wire_schema = statement::wire_schema(df.schema().as_arrow());
        Planned { df, wire_schema }
    }

    fn owner(peer: &str, sql: &str) -> Owner {
        Owner {
            peer: Some(peer.parse().unwrap()),
            sql: sql.into(),
            params: None,
        }
    }

    #[tokio::test]
    async fn a_kept_plan_goes_only_to_its_caller_for_its_sql() {
        let cache = PlanCache::default();
        let a = owner("127.0.0.1:40000", "SELECT 1");
        let id = cache.put(a.clone(), planned("SELECT 1").await);
        let other = cache.put(a.clone(), planned("SELECT 1").await);
        assert_eq!(id.len(), 32, "128 random bits");
        assert_ne!(id, other);
        // Another connection, or the same id with other SQL or parameters: not handed out.
        assert!(cache
            .take(&id, &owner("127.0.0.1:40001", "SELECT 1"))
            .is_none());
        assert!(cache
            .take(&id, &owner("127.0.0.1:40000", "SELECT 2"))
            .is_none());
        let with_params = Owner {
            params: Some("x".into()),
            ..a.clone()
        };
        assert!(cache.take(&id, &with_params).is_none());
        // The caller still gets it, once.
        assert!(cache.take(&id, &a).is_some());
        assert!(cache.take(&id, &a).is_none());
    }
}
