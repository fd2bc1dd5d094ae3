//! `tally serve`: one long-running, read-only process that serves the lake to BI tools
//! (Arrow Flight SQL, the Postgres wire protocol) and to monitoring (HTTP).
//!
//! Every endpoint runs on the caller's tokio runtime and shares one [`Shared`] state: the
//! [`catalog::FreshCatalog`] (tables kept open and brought up to date per query), one memory
//! pool for all queries (`--memory-limit`), the query timeout, the token and the metrics.
//! Module map: [`auth`] (the token), [`catalog`] (fresh snapshots), [`statement`] (planning
//! and running one statement the same way on every wire), [`flight_sql`], [`postgres`],
//! [`http`], [`metrics`].

pub mod auth;
pub mod catalog;
pub mod flight_sql;
pub mod fresh_schema;
pub mod http;
pub mod metrics;
pub mod postgres;
pub mod statement;

use crate::config::Config;
use crate::error::{Result, TallyError};
use crate::lake::Lake;
use crate::session::SessionOptions;
use auth::Token;
use catalog::FreshCatalog;
use metrics::ServeMetrics;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The SPEC's default addresses.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Arrow Flight SQL's default (the port Flight SQL servers conventionally use).
pub const DEFAULT_FLIGHT_SQL: &str = "127.0.0.1:50051";
/// Postgres wire, one above Postgres's own 5432 so both can run on one host.
pub const DEFAULT_PG: &str = "127.0.0.1:5433";

/// How long running queries get to finish after SIGTERM before they are cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `tally serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// HTTP endpoint (`None`: off).
    pub http: Option<SocketAddr>,
    /// Arrow Flight SQL endpoint (`None`: off).
    pub flight_sql: Option<SocketAddr>,
    /// Postgres wire endpoint (`None`: off).
    pub pg: Option<SocketAddr>,
    /// One memory pool for every query of the server; operators spill beyond it.
    pub memory_limit: Option<usize>,
    /// A query running longer is stopped.
    pub query_timeout: Duration,
    /// `TALLY_TOKEN`, if set.
    pub token: Token,
}

/// State every endpoint shares.
pub struct Shared {
    pub(crate) catalog: Arc<FreshCatalog>,
    pub(crate) token: Token,
    pub(crate) query_timeout: Duration,
    pub(crate) metrics: ServeMetrics,
    pub(crate) registry: Registry,
}

/// Parses an endpoint address: `HOST:PORT` (port 0 picks a free one) or `off`.
pub fn parse_addr(what: &str, value: &str) -> Result<Option<SocketAddr>> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Some)
        .ok_or_else(|| TallyError::InvalidArgument {
            what: what.into(),
            message: format!("{value:?} is not HOST:PORT or off"),
        })
}

/// Without a token, only loopback addresses may be bound: an open lake on a network is a
/// data leak, so this is refused before anything listens.
fn check_exposure(opts: &ServeOptions) -> Result<()> {
    if opts.token.is_required() {
        return Ok(());
    }
    for (name, addr) in [
        ("--http", opts.http),
        ("--flight-sql", opts.flight_sql),
        ("--pg", opts.pg),
    ] {
        if let Some(addr) = addr {
            if !addr.ip().is_loopback() {
                return Err(TallyError::Usage {
                    message: format!(
                        "refusing to serve {name} {addr} without TALLY_TOKEN: set TALLY_TOKEN, or bind a loopback address such as 127.0.0.1"
                    ),
                });
            }
        }
    }
    Ok(())
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| TallyError::InvalidArgument {
            what: format!("{name} address"),
            message: format!("cannot listen on {addr}: {e}"),
        })
}

/// Serves until `shutdown` completes, then stops accepting, gives running queries
/// [`SHUTDOWN_GRACE`] to finish and cancels the rest. `listening` is called once per endpoint
/// with its name (`http`, `flight-sql`, `pg`) and bound address, after it accepts connections.
pub async fn serve(
    lake: Lake,
    config: Config,
    opts: ServeOptions,
    mut listening: impl FnMut(&str, SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    check_exposure(&opts)?;
    // rustls is built with both ring (pgwire) and aws-lc-rs (the S3 client) here; without a
    // process default, code that builds a TLS config without naming a provider panics.
    let _ = datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::crypto::aws_lc_rs::default_provider()
        .install_default();
    let session_opts = SessionOptions {
        memory_limit: opts.memory_limit,
        ..Default::default()
    };
    let catalog = Arc::new(FreshCatalog::new(lake, config, session_opts)?);
    // Open every table now: a broken table or unreachable lake fails at start, not per query.
    catalog.session().await?;
    let mut registry = Registry::default();
    let metrics = ServeMetrics::register(&mut registry);
    let shared = Arc::new(Shared {
        catalog,
        token: opts.token.clone(),
        query_timeout: opts.query_timeout,
        metrics,
        registry,
    });

    // Bind everything before serving anything: a taken port fails the start as a whole.
    let http = match opts.http {
        Some(a) => Some(bind("--http", a).await?),
        None => None,
    };
    let flight = match opts.flight_sql {
        Some(a) => Some(bind("--flight-sql", a).await?),
        None => None,
    };
    let pg = match opts.pg {
        Some(a) => Some(bind("--pg", a).await?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = http {
        let addr = listener.local_addr()?;
        tasks.spawn(http::run(
            Arc::clone(&shared),
            listener,
            stopped(stop_rx.clone()),
        ));
        listening("http", addr);
    }
    if let Some(listener) = flight {
        let addr = listener.local_addr()?;
        let service = flight_sql::service(Arc::clone(&shared));
        // No Nagle: a prepared statement is four small calls in a row, and delayed ACKs
        // added ~90 ms to each point lookup.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop)
                .await
                .map_err(|e| TallyError::Internal(format!("flight-sql endpoint: {e}")))
        });
        listening("flight-sql", addr);
    }
    if let Some(listener) = pg {
        let addr = listener.local_addr()?;
        tasks.spawn(postgres::run(
            Arc::clone(&shared),
            listener,
            stopped(stop_rx.clone()),
        ));
        listening("pg", addr);
    }

    // An endpoint that dies on its own (it should not) stops the server with its error.
    let failed = tokio::select! {
        _ = shutdown => None,
        Some(done) = tasks.join_next() => Some(done),
    };
    let _ = stop_tx.send(true);
    if let Some(done) = failed {
        match done {
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(TallyError::Internal(format!("endpoint task: {e}"))),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("shutting down: waiting for running queries");
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "cancelling queries still running after the grace period"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Completes when the stop flag is raised.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pg: &str, token: Option<&str>) -> ServeOptions {
        ServeOptions {
            http: None,
            flight_sql: None,
            pg: parse_addr("--pg", pg).unwrap(),
            memory_limit: None,
            query_timeout: Duration::from_secs(1),
            token: Token::new(token.map(String::from)),
        }
    }

    #[test]
    fn only_loopback_without_a_token() {
        assert!(check_exposure(&opts("127.0.0.1:0", None)).is_ok());
        assert!(check_exposure(&opts("[::1]:0", None)).is_ok());
        let e = check_exposure(&opts("0.0.0.0:5433", None)).unwrap_err();
        assert!(e.to_string().contains("TALLY_TOKEN"), "{e}");
        assert!(check_exposure(&opts("0.0.0.0:5433", Some("t"))).is_ok());
        assert!(check_exposure(&opts("off", None)).is_ok());
    }

    #[test]
    fn addresses_parse_or_name_the_flag() {
        assert_eq!(parse_addr("--pg", "off").unwrap(), None);
        assert!(parse_addr("--pg", "localhost:0").unwrap().is_some());
        let e = parse_addr("--pg", "nowhere").unwrap_err();
        assert!(e.to_string().contains("--pg"), "{e}");
    }
}
