//! `tally worker`: a datafusion-distributed worker with tally's functions compiled in.
//!
//! It runs the plan stages a caller sends (see [`super::coordinate`]) and streams their
//! batches back. Each task gets a DataFusion session like the caller's: tally's UDFs
//! registered on top of DataFusion's built-ins (never in place of them), the lake's object
//! store, and the worker's own memory pool (`--memory-limit`). The lake is reached through the
//! same `--lake` / `AWS_*` / `tally.toml` settings as every other command, so the caller's
//! plan names files the worker can read.

use super::auth;
use crate::config::{Config, TableFormat};
use crate::error::{Result, TallyError};
use crate::lake::{layout, location_to_url, Lake};
use crate::ops::metrics_server::MetricsSource;
use crate::serve::auth::Token;
use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext, WorkerSessionBuilder};
use deltalake::DeltaTableBuilder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What `tally worker` was asked to do.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Where to accept work (port 0 picks a free one).
    pub bind: SocketAddr,
    /// `TALLY_TOKEN`: required from callers when set.
    pub token: Token,
    /// The worker's memory pool; its operators spill beyond it.
    pub memory_limit: Option<usize>,
}

/// The worker's series on `--metrics`.
pub struct WorkerMetrics {
    registry: Registry,
    tasks: Counter,
}

impl WorkerMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Counter::default();
        registry.register(
            "tally_worker_tasks",
            "Plan tasks this worker has been sent",
            tasks.clone(),
        );
        Self { registry, tasks }
    }

    /// Tasks received so far.
    pub fn tasks(&self) -> u64 {
        self.tasks.get()
    }
}

impl MetricsSource for WorkerMetrics {
    fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }
}

/// A bound worker, ready to serve.
pub struct BoundWorker {
    listener: TcpListener,
    worker: Worker,
    token: Token,
    metrics: Arc<WorkerMetrics>,
}

/// Binds the worker's address, refusing a non-loopback one without a token (a worker runs any
/// plan it is sent with the lake's credentials).
pub async fn bind(lake: &Lake, config: &Config, opts: WorkerOptions) -> Result<BoundWorker> {
    if !opts.token.is_required() && !opts.bind.ip().is_loopback() {
        return Err(TallyError::Usage {
            message: format!(
                "refusing to run a worker on {} without TALLY_TOKEN: set TALLY_TOKEN (the callers send the same), or bind a loopback address such as 127.0.0.1",
                opts.bind
            ),
        });
    }
    let listener = TcpListener::bind(opts.bind)
        .await
        .map_err(|e| TallyError::InvalidArgument {
            what: "--bind address".into(),
            message: format!("cannot listen on {}: {e}", opts.bind),
        })?;
    let metrics = Arc::new(WorkerMetrics::new());
    let sessions = TallyTaskSession {
        forward: auth::headers(&opts.token),
        metrics: Arc::clone(&metrics),
    };
    let worker =
        Worker::from_session_builder(sessions).with_runtime_env(runtime(lake, config, &opts)?);
    Ok(BoundWorker {
        listener,
        worker,
        token: opts.token,
        metrics,
    })
}

impl BoundWorker {
    /// The address it listens on (the port picked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Its series, for `--metrics`.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until `stop` completes.
    pub async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(auth::check(
                self.token,
            )))
            .add_service(self.worker.into_worker_server())
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| TallyError::Internal(format!("worker endpoint: {e}")))
    }
}

/// The runtime every task of the worker shares: one memory pool, the lake's store, and the
/// store of each Delta table under the URL delta-rs names it by (a caller's plain scan of a
/// Delta table names its files relative to that store; see [`crate::delta_files`]).
fn runtime(lake: &Lake, config: &Config, opts: &WorkerOptions) -> Result<Arc<RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = opts.memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    let runtime = runtime.build_arc()?;
    runtime.register_object_store(&lake.store_url(), lake.store());
    let mut tables = layout::DELTA_TABLES
        .iter()
        .map(|name| lake.url_of(name))
        .collect::<Result<Vec<_>>>()?;
    for table in config.tables.values() {
        if table.format == TableFormat::Delta {
            tables.push(location_to_url(&table.location)?);
        }
    }
    for url in tables {
        let log_store = DeltaTableBuilder::from_url(url)?
            .with_storage_options(lake.storage_options().clone())
            .build_storage()?;
        runtime.register_object_store(
            log_store.object_store_url().as_ref(),
            log_store.object_store(None),
        );
    }
    Ok(runtime)
}

/// Builds each task's session: DataFusion's defaults (from the worker library), tally's
/// functions added, the token forwarded to any worker this one calls.
struct TallyTaskSession {
    forward: Option<axum::http::HeaderMap>,
    metrics: Arc<WorkerMetrics>,
}

#[async_trait]
impl WorkerSessionBuilder for TallyTaskSession {
    async fn build_session_state(
        &self,
        ctx: WorkerQueryContext,
    ) -> std::result::Result<SessionState, DataFusionError> {
        self.metrics.tasks.inc();
        // Tests stop a worker dead as it takes a task: a worker lost mid-run.
        crate::failpoint::hit("worker_task");
        let mut builder = ctx.builder;
        if let Some(headers) = &self.forward {
            builder = builder.with_distributed_passthrough_headers(headers.clone())?;
        }
        // Registered into the built state: `with_scalar_functions` would replace
        // DataFusion's built-ins with tally's.
        let ctx = SessionContext::new_with_state(builder.build());
        tally_udfs::register_all(&ctx);
        Ok(ctx.state())
    }
}
