//! `tally serve`: one long-running, read-only process that serves the lake to BI tools
//! (Arrow Flight SQL, the Postgres wire protocol) and to monitoring (HTTP).
//!
//! Every endpoint runs on the caller's tokio runtime and shares one [`Shared`] state: the
//! [`catalog::FreshCatalog`] (tables kept open and brought up to date per query), one memory
//! pool for all queries (`--memory-limit`), the query timeout, the token and the metrics.
//! Module map: [`auth`] (the token), [`catalog`] (fresh snapshots), [`statement`] (planning
//! and running one statement the same way on every wire), [`flight_sql`], [`postgres`],
//! [`http`] (with [`dashboard`] and [`live_api`], the operations side), [`metrics`].

pub mod admission;
pub mod auth;
pub mod catalog;
pub mod dashboard;
pub mod flight_sql;
pub mod fresh_schema;
pub mod http;
pub mod live_api;
pub mod metrics;
pub mod pg_params;
pub mod postgres;
pub mod result_cache;
pub mod statement;
pub mod tls;

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
    /// One memory pool for every query of the server; operators spill beyond it. `None`:
    /// [`default_memory_limit`].
    pub memory_limit: Option<usize>,
    /// Queries running at once; more wait in a queue (within their timeout).
    pub max_concurrent_queries: usize,
    /// Open Postgres connections; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// A query running longer is stopped.
    pub query_timeout: Duration,
    /// `TALLY_TOKEN`, if set.
    pub token: Token,
    /// Serve every endpoint over TLS with this certificate and key.
    pub tls: Option<tls::TlsFiles>,
    /// Allow a non-loopback bind without TLS (`--insecure`).
    pub insecure: bool,
    /// Bytes of answers kept for repeated queries (see [`result_cache`]); 0 turns it off.
    pub result_cache: usize,
}

/// State every endpoint shares.
pub struct Shared {
    pub(crate) catalog: Arc<FreshCatalog>,
    pub(crate) token: Token,
    pub(crate) query_timeout: Duration,
    pub(crate) metrics: ServeMetrics,
    pub(crate) admission: admission::Admission,
    pub(crate) registry: Registry,
    /// The live loop running in this process (`serve --live`): its series and alerts.
    pub(crate) ops: Option<Arc<crate::ops::LiveOps>>,
    /// The live loop's last batch, from `live_view`'s log, when it runs elsewhere.
    pub(crate) commits: live_api::CommitReader,
}

/// The memory pool a server gets without `--memory-limit`: a quarter of the machine's memory
/// (2 GiB where that cannot be read), so a burst of queries cannot take the host down with it.
pub fn default_memory_limit() -> usize {
    const FALLBACK: usize = 2 << 30;
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    });
    total_kib.map_or(FALLBACK, |kib| kib.saturating_mul(1024) / 4)
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

/// Only loopback addresses may be bound without a token (an open lake on a network is a data
/// leak) and without TLS (a token in clear text is a token given away, unless `--insecure`);
/// refused before anything listens.
fn check_exposure(opts: &ServeOptions) -> Result<()> {
    for (name, addr) in [
        ("--http", opts.http),
        ("--flight-sql", opts.flight_sql),
        ("--pg", opts.pg),
    ] {
        let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) else {
            continue;
        };
        if !opts.token.is_required() {
            return Err(TallyError::Usage {
                message: format!(
                    "refusing to serve {name} {addr} without TALLY_TOKEN: set TALLY_TOKEN, or bind a loopback address such as 127.0.0.1"
                ),
            });
        }
        if opts.tls.is_none() && !opts.insecure {
            return Err(TallyError::Usage {
                message: format!(
                    "refusing to serve {name} {addr} without TLS: the token would cross the network in clear text; give --tls-cert and --tls-key, or --insecure"
                ),
            });
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
/// `ops` is the live loop running beside the server (`--live`), whose series `/metrics` adds
/// and whose alerts the dashboard shows.
pub async fn serve(
    lake: Lake,
    config: Config,
    opts: ServeOptions,
    ops: Option<Arc<crate::ops::LiveOps>>,
    mut listening: impl FnMut(&str, SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    check_exposure(&opts)?;
    // Certificates are read now: a bad file fails the start, not the first client.
    let tls_for = |alpn| {
        opts.tls
            .as_ref()
            .map(|f| tls::acceptor(f, alpn))
            .transpose()
    };
    let (http_tls, flight_tls, pg_tls) = (
        tls_for(tls::Alpn::Http)?,
        tls_for(tls::Alpn::Grpc)?,
        tls_for(tls::Alpn::None)?,
    );
    // rustls is built with both ring (pgwire) and aws-lc-rs (the S3 client) here; without a
    // process default, code that builds a TLS config without naming a provider panics.
    let _ = datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::crypto::aws_lc_rs::default_provider()
        .install_default();
    let memory_limit = opts.memory_limit.unwrap_or_else(default_memory_limit);
    tracing::info!(
        memory_limit_mib = memory_limit >> 20,
        max_concurrent_queries = opts.max_concurrent_queries,
        max_connections = opts.max_connections,
        "query limits (--memory-limit, --max-concurrent-queries, --max-connections)"
    );
    let session_opts = SessionOptions {
        memory_limit: Some(memory_limit),
        ..Default::default()
    };
    let mut registry = Registry::default();
    let planner = (opts.result_cache > 0).then(|| {
        let cache = result_cache::ResultCache::register(&mut registry, opts.result_cache);
        Arc::new(result_cache::CachingQueryPlanner::new(cache))
            as Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync>
    });
    let catalog = Arc::new(FreshCatalog::new(
        lake,
        config,
        session_opts,
        opts.query_timeout,
        planner,
    )?);
    // Open every table now: a broken table or unreachable lake fails at start, not per query.
    catalog.session().await?;
    let metrics = ServeMetrics::register(&mut registry);
    let admission = admission::Admission::register(
        &mut registry,
        opts.max_concurrent_queries,
        opts.max_connections,
    );
    let shared = Arc::new(Shared {
        catalog,
        token: opts.token.clone(),
        query_timeout: opts.query_timeout,
        metrics,
        admission,
        registry,
        ops,
        commits: live_api::CommitReader::default(),
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
            http_tls,
            stopped(stop_rx.clone()),
        ));
        listening("http", addr);
    }
    if let Some(listener) = flight {
        use futures::StreamExt;
        let addr = listener.local_addr()?;
        let service = flight_sql::service(Arc::clone(&shared));
        let stop = stopped(stop_rx.clone());
        let router = tonic::transport::Server::builder().add_service(service);
        // Each connection holds a slot of --max-connections while open; beyond it the socket
        // is closed at once.
        let slots = Arc::clone(&shared);
        let failed =
            |e: tonic::transport::Error| TallyError::Internal(format!("flight-sql endpoint: {e}"));
        match flight_tls {
            None => {
                // No Nagle: a prepared statement is four small calls in a row, and delayed
                // ACKs added ~90 ms to each point lookup.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                let incoming = incoming.filter_map(move |accepted| {
                    std::future::ready(match accepted {
                        Ok(io) => slots
                            .admission
                            .hold(io, admission::Wire::FLIGHT_SQL)
                            .map(Ok),
                        Err(e) => Some(Err(e)),
                    })
                });
                tasks.spawn(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                        .map_err(failed)
                });
            }
            Some(acceptor) => {
                let accepted = tls::accept_tls(listener, acceptor);
                let incoming = futures::stream::unfold(accepted, |mut rx| async move {
                    let (stream, _) = rx.recv().await?;
                    Some((stream, rx))
                })
                .filter_map(move |io| {
                    let held = slots.admission.hold(io, admission::Wire::FLIGHT_SQL);
                    std::future::ready(held.map(Ok::<_, std::io::Error>))
                });
                tasks.spawn(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                        .map_err(failed)
                });
            }
        }
        listening("flight-sql", addr);
    }
    if let Some(listener) = pg {
        let addr = listener.local_addr()?;
        tasks.spawn(postgres::run(
            Arc::clone(&shared),
            listener,
            pg_tls,
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
        opts_tls(pg, token, None, false)
    }

    fn opts_tls(
        pg: &str,
        token: Option<&str>,
        tls: Option<tls::TlsFiles>,
        insecure: bool,
    ) -> ServeOptions {
        ServeOptions {
            http: None,
            flight_sql: None,
            pg: parse_addr("--pg", pg).unwrap(),
            memory_limit: None,
            max_concurrent_queries: 4,
            max_connections: 8,
            query_timeout: Duration::from_secs(1),
            token: Token::new(token.map(String::from)),
            tls,
            insecure,
            result_cache: 0,
        }
    }

    #[test]
    fn only_loopback_without_a_token() {
        assert!(check_exposure(&opts("127.0.0.1:0", None)).is_ok());
        assert!(check_exposure(&opts("[::1]:0", None)).is_ok());
        let e = check_exposure(&opts("0.0.0.0:5433", None)).unwrap_err();
        assert!(e.to_string().contains("TALLY_TOKEN"), "{e}");
        assert!(check_exposure(&opts("off", None)).is_ok());
    }

    #[test]
    fn a_network_address_needs_tls_too_unless_insecure() {
        let e = check_exposure(&opts("0.0.0.0:5433", Some("t"))).unwrap_err();
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        let files = tls::TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        assert!(check_exposure(&opts_tls("0.0.0.0:5433", Some("t"), Some(files), false)).is_ok());
        assert!(check_exposure(&opts_tls("0.0.0.0:5433", Some("t"), None, true)).is_ok());
        assert!(check_exposure(&opts_tls("0.0.0.0:5433", None, None, true)).is_err());
    }

    #[test]
    fn addresses_parse_or_name_the_flag() {
        assert_eq!(parse_addr("--pg", "off").unwrap(), None);
        assert!(parse_addr("--pg", "localhost:0").unwrap().is_some());
        let e = parse_addr("--pg", "nowhere").unwrap_err();
        assert!(e.to_string().contains("--pg"), "{e}");
    }
}
