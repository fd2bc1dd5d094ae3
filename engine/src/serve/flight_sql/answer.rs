//! Planning, running and streaming a statement for Flight SQL, and errors as gRPC statuses.

use super::*;

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

pub(super) type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

pub(super) fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

pub(super) fn info_for(
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

pub(super) fn batch_stream(
    schema: Arc<Schema>,
    batch: Result<RecordBatch, FlightError>,
) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Box::pin(stream)
}

impl FlightSql {
    /// Plans `handle` on a fresh snapshot for its schema. A failure counts as a query (the
    /// client never reaches DoGet); a success does not, since DoGet counts the run.
    pub(super) async fn plan(&self, handle: &Handle) -> Result<Planned, Status> {
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
    pub(super) async fn plan_fresh(
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
    pub(super) async fn info(
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

    pub(super) async fn run(
        &self,
        handle: Handle,
        owner: Owner,
    ) -> Result<Response<DoGetStream>, Status> {
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
    pub(super) async fn tables(&self) -> Result<Vec<(String, &'static str, Arc<Schema>)>, Status> {
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
