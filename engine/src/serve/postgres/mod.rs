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

mod catalog_arrays;
mod catalog_lookups;
mod connection;
mod cursors;
mod in_subquery_values;
mod information_schema;
mod like_escape;
mod pg_functions;
mod queries;
mod read_only;
mod server_identity;
mod set_returning;

use super::fresh_schema::{FreshSchema, PINNED};
use super::metrics::{Endpoint, Outcome, QueryRecord};
use super::Shared;
use crate::error::{Result, TallyError};
use crate::query;
use crate::session::TallySession;
use connection::*;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    setup_pg_catalog, PgCatalogSchemaProvider, PgCatalogStaticTables,
};
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
use queries::*;
use read_only::*;
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
                    let Some(permit) = shared.admission.connection(super::admission::Wire::PG) else {
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
    // The sessions' runtime and planner: one memory pool, and the result cache on both wires.
    let mut config = newest.ctx().copied_config();
    // `information_schema` is ours (Postgres type names), registered below as a schema.
    config.options_mut().catalog.information_schema = false;
    let ctx = newest.sibling_context(config);
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| TallyError::Internal("no default catalog".into()))?;
    let information_schema: Arc<dyn datafusion::catalog::SchemaProvider> = Arc::new(
        information_schema::PgInformationSchema::new(ctx.state().catalog_list().clone()),
    );
    catalog.register_schema("information_schema", Arc::clone(&information_schema))?;
    catalog.register_schema(
        "public",
        Arc::new(FreshSchema::new(Arc::clone(&shared.catalog))),
    )?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider)
        .map_err(|e| TallyError::Internal(format!("pg_catalog: {e}")))?;
    // The crate's pg_catalog (its functions are registered above), over the lake's catalogs
    // without our information_schema, with its vector columns as arrays.
    let internal = |e| TallyError::Internal(format!("pg_catalog: {e}"));
    let pg_catalog = PgCatalogSchemaProvider::try_new(
        information_schema::WithoutInformationSchema(ctx.state().catalog_list().clone()),
        Arc::new(PgCatalogStaticTables::try_new().map_err(internal)?),
        EmptyContextProvider,
    )
    .map_err(internal)?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(catalog_arrays::PgCatalogArrays::new(
            Arc::new(pg_catalog),
            information_schema,
        )),
    )?;
    // DataFusion's own version() names no Postgres release; clients parse this one.
    let version = ScalarValue::Utf8(Some(server_identity::version_text()));
    ctx.register_udf(pg_functions::Constant::udf("version", 0, version));
    let no_sequence = ScalarValue::Utf8(None);
    ctx.register_udf(pg_functions::Constant::udf(
        "pg_get_serial_sequence",
        2,
        no_sequence,
    ));
    // No index is on a lake table; the catalog's own indexes are never asked for by oid.
    ctx.register_udf(pg_functions::Constant::udf(
        "pg_get_indexdef",
        3,
        ScalarValue::Utf8(None),
    ));
    let visible = ScalarValue::Boolean(Some(true));
    ctx.register_udf(pg_functions::Constant::udf(
        "pg_collation_is_visible",
        1,
        visible,
    ));
    ctx.register_udf(pg_functions::ToRegtype::udf());
    ctx.register_udf(pg_functions::JsonBuildObject::udf());
    ctx.register_udf(pg_functions::CurrentSetting::udf());
    ctx.add_analyzer_rule(Arc::new(like_escape::LikeEscape));
    ctx.add_analyzer_rule(Arc::new(catalog_lookups::CatalogLookups));
    ctx.add_analyzer_rule(Arc::new(in_subquery_values::InSubqueryValues));
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
            // Before the crate's SET/SHOW and transaction hooks: savepoints and the version.
            Arc::new(server_identity::ServerIdentityHook),
            // Ours declares (with a query slot and a deadline); the crate's fetches and closes.
            Arc::new(cursors::CursorHook {
                shared: Arc::clone(&shared),
            }),
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
        params.server_version = server_identity::server_version();
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
