//! Admission: how many queries run at once and how many Postgres connections are open.
//!
//! A burst of heavy queries must wait, not fail: with every query admitted at once, 64 psycopg
//! clients each running a self-join drove the server to 6.4 GiB, and under a memory limit most
//! of them failed "Resources exhausted". Queries beyond `--max-concurrent-queries` queue (their
//! wait counts toward `--query-timeout`, and a cancel or a closed connection leaves the queue),
//! so those running share the memory pool among few. Connections beyond `--max-connections`
//! are refused at once with Postgres's own `too_many_connections`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default cap on queries running at once: two per core (each query already runs on every
/// core; more at once only divides memory further).
pub fn default_max_queries() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The default cap on open Postgres connections (Postgres's own default is 100).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The server's admission limits and their gauges.
pub struct Admission {
    queries: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    max_queries: usize,
    max_connections: usize,
    queued: Gauge,
    running: Gauge,
    open: Gauge,
    refused: Counter,
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
        let open = Gauge::default();
        let refused = Counter::default();
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
            "tally_serve_pg_connections",
            "Open Postgres wire connections (--max-connections)",
            open.clone(),
        );
        registry.register(
            "tally_serve_pg_connections_refused",
            "Postgres connections refused because --max-connections were open",
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
    pub fn connection(&self) -> Option<ConnectionPermit> {
        match Arc::clone(&self.connections).try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(ConnectionPermit {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// The cap on running queries.
    pub fn max_queries(&self) -> usize {
        self.max_queries
    }

    /// The cap on open Postgres connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
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
        let a = admission.connection();
        let b = admission.connection();
        assert!(a.is_some() && b.is_some());
        assert!(admission.connection().is_none());
        assert_eq!(admission.refused.get(), 1);
        drop(a);
        assert!(admission.connection().is_some());
    }
}
