//! Admission: how many queries run at once and how many connections are open.
//!
//! A burst of heavy queries must wait, not fail: with every query admitted at once, 64 psycopg
//! clients each running a self-join drove the server to 6.4 GiB, and under a memory limit most
//! of them failed "Resources exhausted". Queries beyond `--max-concurrent-queries` queue (their
//! wait counts toward `--query-timeout`, and a cancel or a closed connection leaves the queue),
//! so those running share the memory pool among few. Connections beyond `--max-connections`
//! (Postgres wire and Flight SQL together) are refused at once: on the Postgres wire with
//! Postgres's own `too_many_connections`, on Flight SQL by closing the socket (gRPC clients
//! see UNAVAILABLE and retry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default cap on queries running at once: two per core (each query already runs on every
/// core; more at once only divides memory further).
pub fn default_max_queries() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The default cap on open connections (Postgres's own default is 100).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The server's admission limits and their gauges.
pub struct Admission {
    queries: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    max_queries: usize,
    max_connections: usize,
    queued: Gauge,
    running: Gauge,
    open: Family<Wire, Gauge>,
    refused: Family<Wire, Counter>,
}

/// The `endpoint` label of the connection metrics (as in `tally_serve_queries_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Wire {
    endpoint: &'static str,
}

impl Wire {
    /// The Postgres wire.
    pub const PG: Wire = Wire { endpoint: "pg" };
    /// Arrow Flight SQL.
    pub const FLIGHT_SQL: Wire = Wire {
        endpoint: "flight-sql",
    };
}

/// One admitted query; its slot is freed when this is dropped.
pub struct QueryPermit {
    _permit: OwnedSemaphorePermit,
    running: Gauge,
}

impl Drop for QueryPermit {
    fn drop(&mut self) {
        self.running.dec();
    }
}

/// One open connection; its slot is freed when this is dropped.
pub struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Counts a query in the queue until it is admitted or gives up.
struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Admission {
    /// Limits of at least one each; registers the gauges in `registry`.
    pub fn register(registry: &mut Registry, max_queries: usize, max_connections: usize) -> Self {
        let (max_queries, max_connections) = (max_queries.max(1), max_connections.max(1));
        let queued = Gauge::default();
        let running = Gauge::default();
        let open = Family::<Wire, Gauge>::default();
        let refused = Family::<Wire, Counter>::default();
        registry.register(
            "tally_serve_queries_queued",
            "Queries waiting for a slot (--max-concurrent-queries)",
            queued.clone(),
        );
        registry.register(
            "tally_serve_queries_running",
            "Queries admitted and not yet finished",
            running.clone(),
        );
        registry.register(
            "tally_serve_connections",
            "Open connections by endpoint (--max-connections covers them all)",
            open.clone(),
        );
        registry.register(
            "tally_serve_connections_refused",
            "Connections refused because --max-connections were open",
            refused.clone(),
        );
        Self {
            queries: Arc::new(Semaphore::new(max_queries)),
            connections: Arc::new(Semaphore::new(max_connections)),
            max_queries,
            max_connections,
            queued,
            running,
            open,
            refused,
        }
    }

    /// Waits for a query slot (first come, first served). Dropping the future leaves the queue.
    pub async fn query(&self) -> crate::Result<QueryPermit> {
        self.queued.inc();
        let waiting = Waiting(self.queued.clone());
        let permit = Arc::clone(&self.queries)
            .acquire_owned()
            .await
            .map_err(|_| crate::TallyError::Internal("query admission closed".into()))?;
        drop(waiting);
        self.running.inc();
        Ok(QueryPermit {
            _permit: permit,
            running: self.running.clone(),
        })
    }

    /// A connection slot, or `None` (counted) when every slot is taken.
    pub fn connection(&self, wire: Wire) -> Option<ConnectionPermit> {
        match Arc::clone(&self.connections).try_acquire_owned() {
            Ok(permit) => {
                let open = self.open.get_or_create(&wire).clone();
                open.inc();
                Some(ConnectionPermit {
                    _permit: permit,
                    open,
                })
            }
            Err(_) => {
                self.refused.get_or_create(&wire).inc();
                None
            }
        }
    }

    /// `io` holding a connection slot, or `None` (counted; `io` is closed) when every slot
    /// is taken.
    pub fn hold<IO>(&self, io: IO, wire: Wire) -> Option<Held<IO>> {
        Some(Held::new(io, self.connection(wire)?))
    }

    /// The cap on running queries.
    pub fn max_queries(&self) -> usize {
        self.max_queries
    }

    /// The cap on open connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

/// A connection holding its slot for as long as it is open (Flight SQL's sockets, handed to
/// tonic).
pub struct Held<IO> {
    io: IO,
    _slot: ConnectionPermit,
}

impl<IO> Held<IO> {
    /// `io` with its slot.
    pub fn new(io: IO, slot: ConnectionPermit) -> Self {
        Self { io, _slot: slot }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Held<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Held<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn queries_beyond_the_cap_wait_and_a_dropped_wait_leaves_the_queue() {
        let mut registry = Registry::default();
        let admission = Admission::register(&mut registry, 2, 1);
        let a = admission.query().await.unwrap();
        let _b = admission.query().await.unwrap();
        assert_eq!(admission.running.get(), 2);
        // A third waits...
        let third = tokio::time::timeout(Duration::from_millis(50), admission.query()).await;
        assert!(third.is_err(), "admitted beyond the cap");
        assert_eq!(admission.queued.get(), 0, "a timed-out wait left the queue");
        // ...and is admitted when a slot frees.
        let waiter = admission.query();
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        assert_eq!(admission.queued.get(), 1);
        drop(a);
        let _c = waiter.await.unwrap();
        assert_eq!((admission.queued.get(), admission.running.get()), (0, 2));
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_and_counted() {
        let mut registry = Registry::default();
        let admission = Admission::register(&mut registry, 1, 2);
        let a = admission.connection(Wire::PG);
        let b = admission.connection(Wire::FLIGHT_SQL);
        assert!(a.is_some() && b.is_some());
        assert!(admission.connection(Wire::PG).is_none());
        assert_eq!(admission.refused.get_or_create(&Wire::PG).get(), 1);
        assert_eq!(admission.open.get_or_create(&Wire::FLIGHT_SQL).get(), 1);
        drop(a);
        assert!(admission.connection(Wire::FLIGHT_SQL).is_some());
    }
}
