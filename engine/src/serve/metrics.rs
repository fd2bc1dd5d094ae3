//! The server's own series (SPEC: `tally_serve_queries_total{endpoint,outcome}`,
//! `tally_serve_query_duration_seconds`), in the Prometheus project's client: an explicit
//! registry the HTTP `/metrics` endpoint encodes, bounded labels (endpoint × outcome).

use crate::error::TallyError;
use arrow::array::RecordBatch;
use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Which wire a query came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Arrow Flight SQL.
    FlightSql,
    /// The Postgres wire protocol.
    Pg,
    /// The HTTP API.
    Http,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::FlightSql => "flight-sql",
            Endpoint::Pg => "pg",
            Endpoint::Http => "http",
        }
    }
}

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every row was sent.
    Ok,
    /// It failed (bad SQL, a bad file, storage down, out of memory).
    Error,
    /// It would have written and was refused.
    Refused,
    /// It ran past `--query-timeout`.
    Timeout,
    /// The client went away or cancelled it before the last row.
    Cancelled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome a failed query had.
    pub fn of(e: &TallyError) -> Self {
        match e {
            TallyError::ServeReadOnly { .. } | TallyError::ReadOnly { .. } => Outcome::Refused,
            TallyError::QueryTimeout { .. } => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

/// Counters and the latency histogram of served queries.
#[derive(Clone)]
pub struct ServeMetrics {
    queries: Family<QueryLabels, Counter>,
    duration: Histogram,
    reserved: Gauge,
}

impl ServeMetrics {
    /// Registers the series in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let queries = Family::<QueryLabels, Counter>::default();
        // 1 ms .. ~65 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "tally_serve_queries",
            "Queries served, by endpoint and outcome",
            queries.clone(),
        );
        registry.register_with_unit(
            "tally_serve_query_duration",
            "Wall time of served queries, from arrival to the last row",
            Unit::Seconds,
            duration.clone(),
        );
        let reserved = Gauge::default();
        registry.register_with_unit(
            "tally_serve_memory_reserved",
            "Memory reserved by running queries in the shared pool (--memory-limit)",
            Unit::Bytes,
            reserved.clone(),
        );
        Self {
            queries,
            duration,
            reserved,
        }
    }

    /// Sets the memory gauge (read from the pool when metrics are scraped).
    pub fn set_reserved(&self, bytes: usize) {
        self.reserved.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts one query.
    pub fn record(&self, endpoint: Endpoint, outcome: Outcome, started: Instant) {
        self.queries
            .get_or_create(&QueryLabels {
                endpoint: endpoint.label(),
                outcome: outcome.label(),
            })
            .inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }

    /// A record that counts the query once: with the outcome given to
    /// [`QueryRecord::finish`], or as cancelled if dropped first.
    pub fn start(&self, endpoint: Endpoint) -> QueryRecord {
        QueryRecord {
            metrics: self.clone(),
            endpoint,
            started: Instant::now(),
            done: false,
            permit: None,
        }
    }
}

/// One query being served; counted exactly once.
pub struct QueryRecord {
    metrics: ServeMetrics,
    endpoint: Endpoint,
    started: Instant,
    done: bool,
    /// The query's admission slot, held until it is counted (its last row, error or drop).
    permit: Option<super::admission::QueryPermit>,
}

impl QueryRecord {
    /// Counts the query with `outcome` (later calls do nothing) and frees its slot.
    pub fn finish(&mut self, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.metrics.record(self.endpoint, outcome, self.started);
        }
        self.permit = None;
    }

    /// Keeps the query's admission slot until the query is counted.
    pub fn hold(&mut self, permit: super::admission::QueryPermit) {
        self.permit = Some(permit);
    }

    /// Drops the record without counting (the work it tracked was not a query of its own).
    pub fn discard(mut self) {
        self.done = true;
    }

    /// Wraps a result stream so the query is counted when it ends, fails or is dropped.
    pub fn observe<S>(self, stream: S) -> Observed<S>
    where
        S: Stream<Item = crate::Result<RecordBatch>>,
    {
        Observed {
            inner: Box::pin(stream),
            record: self,
        }
    }
}

impl Drop for QueryRecord {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

/// A result stream that counts its query (see [`QueryRecord::observe`]).
pub struct Observed<S> {
    inner: Pin<Box<S>>,
    record: QueryRecord,
}

impl<S> Stream for Observed<S>
where
    S: Stream<Item = crate::Result<RecordBatch>>,
{
    type Item = crate::Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => this.record.finish(Outcome::Ok),
            Poll::Ready(Some(Err(e))) => this.record.finish(Outcome::of(e)),
            _ => {}
        }
        polled
    }
}
