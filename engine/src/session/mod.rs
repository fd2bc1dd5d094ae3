//! The one place a DataFusion session is built.
//!
//! Every command (SQL, ledger, live, reconcile) gets its session from [`TallySession::open`], so
//! the lake's object store, tally's UDFs and every table are registered the same way on every
//! path. Tables that do not exist yet are simply absent; a table configured in `tally.toml` that
//! cannot be opened is an error naming it.

use crate::config::{Config, TableFormat};
use crate::error::{Result, TallyError};
use crate::lake::{layout, location_to_url, one_line, Lake};
use crate::raw_table::RawPaymentsTable;
use crate::schema;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::collections::HashMap;
use std::sync::Arc;

/// Knobs for a session that differ between commands.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Memory limit in bytes for query execution; operators spill to disk beyond it.
    pub memory_limit: Option<usize>,
    /// Number of partitions plans are split into (default: the number of cores).
    pub target_partitions: Option<usize>,
    /// Rows per batch (default: DataFusion's 8192). `DATAFUSION_EXECUTION_BATCH_SIZE` wins.
    pub batch_size: Option<usize>,
    /// List table folders on every query instead of caching the listing for the life of the
    /// session (DataFusion's default): long-lived sessions (`tally shell`, the server) must see
    /// raw files that land while they run.
    pub fresh_listings: bool,
    /// Plan with DataFusion's physical optimizer rules only, without tally's query rules
    /// ([`crate::plan`]): the ledger's plans are tuned and benchmarked as DataFusion plans them.
    pub datafusion_plans_only: bool,
    /// Run plans' stages on these workers ([`crate::cluster`]). Delta tables are then read
    /// as plain Parquet scans (see [`crate::delta_files`]): delta-rs's scan operator cannot
    /// be sent to a worker.
    pub workers: Option<crate::cluster::Workers>,
}

/// Rows per batch of a ledger run without a memory limit.
const LEDGER_BATCH_ROWS: usize = 16_384;

impl SessionOptions {
    /// A ledger run's session: one partition per `txn_id` bucket and, without a memory limit,
    /// batches of 16k rows. The ledger is a scan, a shuffle of every raw copy and an aggregate
    /// into one group per transaction, all of it per batch: twice the rows per batch halves
    /// the batches each step handles and the pieces the shuffle cuts them into. On the
    /// 10M-transaction bench day that was 4% less CPU (median of 4 alternating runs, 9.49 s
    /// at 8192 rows, 9.06 s at 16384, 9.16 s at 32768). Under `--memory-limit 1GiB` the
    /// larger batches in flight (outside the pool) raised the peak RSS from 1.29–1.33 GiB to
    /// 1.43–1.64 GiB, so a limited run keeps 8192.
    pub fn for_ledger(memory_limit: Option<usize>, buckets: u32) -> Self {
        Self {
            memory_limit,
            target_partitions: Some(buckets.max(1) as usize),
            batch_size: memory_limit.is_none().then_some(LEDGER_BATCH_ROWS),
            fresh_listings: false,
            datafusion_plans_only: true,
            workers: None,
        }
    }
}

/// What a registered table is and where it lives, for `tally tables` and `\d`.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The SQL name.
    pub name: String,
    /// `parquet` or `delta`.
    pub format: &'static str,
    /// Its location URL.
    pub location: String,
    /// A short description (partitioning, Delta version).
    pub detail: String,
}

/// A session over one lake, with every table registered.
pub struct TallySession {
    ctx: SessionContext,
    lake: Lake,
    tables: Vec<TableInfo>,
    /// The lake's top-level folders when the session was opened (tables that exist).
    top_dirs: Vec<String>,
    /// Read Delta tables as plain Parquet scans where their protocol allows (see
    /// [`crate::delta_files`]): the server's sessions, where the cost per query counts.
    plain_delta_scans: bool,
    /// Tables this session could not open, with why (see [`crate::unreadable`]).
    unreadable: std::collections::BTreeMap<String, String>,
    /// A server's or shell's session (through a [`TableCache`]): an unreadable table is
    /// logged as it is found, not only when a statement names it.
    long_lived: bool,
}

impl TallySession {
    /// Builds a session over `lake`: object store, UDFs, the lake's tables and the configured ones.
    pub async fn open(lake: &Lake, config: &Config, opts: &SessionOptions) -> Result<Self> {
        let ctx = new_context(opts, new_runtime(opts)?, None)?;
        Self::open_on(ctx, lake, config, None, opts.workers.is_some()).await
    }

    /// Builds a session whose tables come from `cache`, brought up to date first: the session
    /// sees every commit made before this call, and keeps that one snapshot of each table for
    /// as long as it lives (a query on it reads one consistent version).
    pub async fn open_cached(
        lake: &Lake,
        config: &Config,
        opts: &SessionOptions,
        cache: &mut TableCache,
    ) -> Result<Self> {
        let ctx = new_context(
            opts,
            Arc::clone(&cache.runtime),
            cache.query_planner.clone(),
        )?;
        Self::open_on(ctx, lake, config, Some(cache), true).await
    }

    async fn open_on(
        ctx: SessionContext,
        lake: &Lake,
        config: &Config,
        mut cache: Option<&mut TableCache>,
        plain_delta_scans: bool,
    ) -> Result<Self> {
        ctx.register_object_store(&lake.store_url(), lake.store());
        tally_udfs::register_all(&ctx);
        let top = lake.top_level_dirs().await?;

        let mut session = Self {
            ctx,
            lake: lake.clone(),
            tables: Vec::new(),
            top_dirs: {
                let mut sorted = top.clone();
                sorted.sort();
                sorted
            },
            plain_delta_scans,
            unreadable: Default::default(),
            long_lived: cache.is_some(),
        };
        // A table that cannot be opened fails only the statements that name it (by name,
        // with why); the session serves the others.
        if top.iter().any(|d| d == "raw") {
            let opened = session.register_raw_payments(cache.as_deref_mut()).await;
            session.keep_unreadable(crate::lake::layout::RAW_PAYMENTS, opened)?;
        }
        let present: Vec<&str> = layout::DELTA_TABLES
            .into_iter()
            .filter(|name| top.iter().any(|d| d == name))
            .collect();
        if cache.is_none() {
            // A one-shot command opens its tables at once: each is a log listing and reads.
            let opened = futures::future::join_all(present.iter().map(|name| async {
                let url = lake.url_of(name)?;
                let table = session.open_delta_uncached(name, &url).await;
                Ok::<_, TallyError>((url, table))
            }))
            .await;
            for (name, opened) in present.iter().zip(opened) {
                let registered = match opened? {
                    (url, Ok(table)) => session.register_opened_delta(name, &url, table).await,
                    (_, Err(TallyError::Delta(deltalake::DeltaTableError::NotATable(_)))) => Ok(()),
                    (_, Err(e)) => Err(e),
                };
                session.keep_unreadable(name, registered)?;
            }
        } else {
            for name in present {
                let url = lake.url_of(name)?;
                let opened = session
                    .register_delta_if_present(name, url, cache.as_deref_mut())
                    .await;
                session.keep_unreadable(name, opened)?;
            }
        }
        for (name, table) in &config.tables {
            if session.tables.iter().any(|t| &t.name == name) {
                return Err(TallyError::Config {
                    message: format!("table {name} in tally.toml clashes with a lake table"),
                });
            }
            let url = location_to_url(&table.location)?;
            let opened = match table.format {
                TableFormat::Parquet => {
                    session
                        .register_parquet_dir(name, url, cache.as_deref_mut())
                        .await
                }
                TableFormat::Delta => {
                    session
                        .register_delta(name, url, cache.as_deref_mut())
                        .await
                }
            };
            session.keep_unreadable(name, opened)?;
        }
        if !session.unreadable.is_empty() {
            let catalog = session
                .ctx
                .catalog("datafusion")
                .ok_or_else(|| TallyError::Internal("no default catalog".into()))?;
            let inner = catalog
                .schema("public")
                .ok_or_else(|| TallyError::Internal("no default schema".into()))?;
            let wrapped = crate::unreadable::WithUnreadable::new(inner, session.unreadable.clone());
            catalog.register_schema("public", Arc::new(wrapped))?;
        }
        Ok(session)
    }

    /// Records a table that failed to open (logged once per session) instead of failing the
    /// session: only statements naming it fail. A bad configuration still fails at once.
    fn keep_unreadable(&mut self, name: &str, opened: Result<()>) -> Result<()> {
        match opened {
            Err(e) if !matches!(e, TallyError::Config { .. }) => {
                let message = one_line(&e.to_string());
                // A server logs it; a command says it only if a statement names the table.
                if self.long_lived {
                    tracing::warn!(table = name, error = %message, "table cannot be read; serving the others");
                } else {
                    tracing::debug!(table = name, error = %message, "table cannot be read");
                }
                self.unreadable.insert(name.to_string(), message);
                Ok(())
            }
            other => other,
        }
    }

    /// Tables this session could not open, with why.
    pub fn unreadable(&self) -> &std::collections::BTreeMap<String, String> {
        &self.unreadable
    }

    /// The DataFusion context (for running SQL or DataFrames).
    pub fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    /// A context for one step of a job, sharing this session's runtime (its memory pool and
    /// object stores) and its UDFs, with `target_partitions` partitions and no tables: e.g.
    /// the ledger's settlement of a sliver of the day on one partition.
    pub fn job_context(&self, target_partitions: usize) -> Result<SessionContext> {
        let mut config = self
            .ctx
            .copied_config()
            .with_target_partitions(target_partitions.max(1));
        // A job step's sorts work on slivers; each sort's reserved merge memory (10 MB by
        // default) would otherwise take a large share of a tight --memory-limit per sort.
        config.options_mut().execution.sort_spill_reservation_bytes = 2 << 20;
        Ok(self.sibling_context(config))
    }

    /// A context with no tables on this session's runtime (memory pool, object stores), query
    /// planner (a server's result cache) and UDFs, configured by `config`.
    pub fn sibling_context(&self, config: SessionConfig) -> SessionContext {
        let state = self.ctx.state();
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.ctx.runtime_env())
            .with_default_features()
            .with_physical_optimizer_rules(state.physical_optimizers().to_vec())
            .with_query_planner(Arc::clone(state.query_planner()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        tally_udfs::register_all(&ctx);
        ctx
    }

    /// The lake this session reads.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The registered tables, in registration order.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// Looks up a registered table by name.
    pub fn table(&self, name: &str) -> Result<&TableInfo> {
        if let Some(message) = self.unreadable.get(name) {
            return Err(TallyError::Unreadable {
                name: name.into(),
                message: message.clone(),
            });
        }
        self.tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TallyError::TableNotFound { name: name.into() })
    }
}

mod cache;
mod fresh;
mod runtime;
mod tables;

pub use cache::TableCache;
pub use fresh::FreshSession;
use runtime::*;
