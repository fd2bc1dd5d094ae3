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
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
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
    /// Tables a server's session could not open, with why (see [`crate::unreadable`]).
    unreadable: std::collections::BTreeMap<String, String>,
}

/// Tables a long-running process (`tally serve`) opens once and brings up to date before each
/// session: a Delta table reads only the log entries committed since (its log tail), and a
/// configured Parquet directory keeps the schema inferred from its footers. Every session built
/// from the cache shares one runtime, so one memory pool bounds all concurrent queries.
pub struct TableCache {
    runtime: Arc<RuntimeEnv>,
    delta: HashMap<String, deltalake::DeltaTable>,
    parquet: HashMap<String, Arc<dyn TableProvider>>,
}

impl TableCache {
    /// An empty cache whose sessions share one runtime (memory pool) built from `opts`.
    pub fn new(opts: &SessionOptions) -> Result<Self> {
        let opts = SessionOptions {
            fresh_listings: true,
            ..opts.clone()
        };
        Ok(Self {
            runtime: new_runtime(&opts)?,
            delta: HashMap::new(),
            parquet: HashMap::new(),
        })
    }

    /// The runtime every session from this cache runs on.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// True when `session` (built from this cache) still shows the lake as it is: no table has
    /// appeared and no Delta table has a commit past the version the session reads. One listing
    /// of the lake root and one HEAD per Delta table (of its next commit file), in parallel: a
    /// server's query pays this instead of opening a new session.
    pub async fn is_current(&self, session: &TallySession) -> Result<bool> {
        if !session.unreadable.is_empty() {
            return Ok(false); // try again: a repaired table comes back
        }
        let mut top = session.lake.top_level_dirs().await?;
        top.sort();
        if top != session.top_dirs {
            return Ok(false);
        }
        use object_store::ObjectStoreExt;
        let checks = self.delta.values().map(|table| async move {
            let Some(version) = table.version() else {
                return Ok(false);
            };
            let next =
                object_store::path::Path::from(format!("_delta_log/{:020}.json", version + 1));
            match table.log_store().object_store(None).head(&next).await {
                Ok(_) => Ok(false),
                Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(TallyError::Storage(e)),
            }
        });
        for current in futures::future::join_all(checks).await {
            if !current? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl TallySession {
    /// Builds a session over `lake`: object store, UDFs, the lake's tables and the configured ones.
    pub async fn open(lake: &Lake, config: &Config, opts: &SessionOptions) -> Result<Self> {
        let ctx = new_context(opts, new_runtime(opts)?)?;
        Self::open_on(ctx, lake, config, None).await
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
        let ctx = new_context(opts, Arc::clone(&cache.runtime))?;
        Self::open_on(ctx, lake, config, Some(cache)).await
    }

    async fn open_on(
        ctx: SessionContext,
        lake: &Lake,
        config: &Config,
        mut cache: Option<&mut TableCache>,
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
            plain_delta_scans: cache.is_some(),
            unreadable: Default::default(),
        };
        // A server (the cached path) keeps serving the other tables when one cannot be
        // opened; a one-shot command fails on it.
        let serving = cache.is_some();
        if top.iter().any(|d| d == "raw") {
            let opened = session.register_raw_payments(cache.as_deref_mut()).await;
            session.keep_unreadable(serving, crate::lake::layout::RAW_PAYMENTS, opened)?;
        }
        for name in [
            layout::LEDGER,
            layout::LEDGER_CONFLICTS,
            layout::LIVE_VIEW,
            layout::LIVE_LATE,
            layout::RECONCILIATIONS,
            layout::RUNS,
            layout::ALERTS,
        ] {
            if top.iter().any(|d| d == name) {
                let url = lake.url_of(name)?;
                let opened = session
                    .register_delta_if_present(name, url, cache.as_deref_mut())
                    .await;
                session.keep_unreadable(serving, name, opened)?;
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
            session.keep_unreadable(serving, name, opened)?;
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

    /// On a server, records a table that failed to open (logged once per session) instead of
    /// failing the session; elsewhere passes the error on.
    fn keep_unreadable(&mut self, serving: bool, name: &str, opened: Result<()>) -> Result<()> {
        match opened {
            Err(e) if serving && !matches!(e, TallyError::Config { .. }) => {
                let message = one_line(&e.to_string());
                tracing::warn!(table = name, error = %message, "table cannot be read; serving the others");
                self.unreadable.insert(name.to_string(), message);
                Ok(())
            }
            other => other,
        }
    }

    /// Tables this session could not open, with why (servers only; empty elsewhere).
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
        let ctx = SessionContext::new_with_config_rt(config, self.ctx.runtime_env());
        tally_udfs::register_all(&ctx);
        Ok(ctx)
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
        self.tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TallyError::TableNotFound { name: name.into() })
    }

    async fn register_raw_payments(&mut self, cache: Option<&mut TableCache>) -> Result<()> {
        let url = self.lake.url_of(layout::RAW_PAYMENTS)?;
        let parts = self.lake.list_dirs(layout::RAW_PAYMENTS).await?;
        if parts.is_empty() {
            return Ok(());
        }
        if parts.iter().any(|p| p == "_delta_log") {
            return self.register_delta("raw_payments", url, cache).await;
        }
        // Data files only, by the rule tally's own listing follows.
        let data_files = crate::raw_files::data_file_pattern()?;
        let table_url = ListingTableUrl::try_new(url.clone(), Some(data_files))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![(schema::INGEST_DATE.to_string(), DataType::Date32)]);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(Arc::clone(&schema::RAW_PAYMENTS));
        let table = ListingTable::try_new(config)?;
        self.ctx
            .register_table("raw_payments", Arc::new(RawPaymentsTable::new(table)))?;
        self.tables.push(TableInfo {
            name: "raw_payments".into(),
            format: "parquet",
            location: url.to_string(),
            detail: format!("{} ingest_date partitions", parts.len()),
        });
        Ok(())
    }

    /// Registers a Delta table if the location holds one; absent otherwise.
    async fn register_delta_if_present(
        &mut self,
        name: &str,
        url: url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        match self.open_delta(name, &url, cache).await {
            Ok(table) => self.register_opened_delta(name, &url, table).await,
            Err(TallyError::Delta(deltalake::DeltaTableError::NotATable(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn register_delta(
        &mut self,
        name: &str,
        url: url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        let table = self
            .open_delta(name, &url, cache)
            .await
            .map_err(|e| match e {
                TallyError::Delta(deltalake::DeltaTableError::NotATable(_)) => {
                    TallyError::TableOpen {
                        name: name.into(),
                        location: url.to_string(),
                        message: "not a Delta table (no _delta_log)".into(),
                    }
                }
                other => other,
            })?;
        self.register_opened_delta(name, &url, table).await
    }

    async fn open_delta(
        &self,
        name: &str,
        url: &url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<deltalake::DeltaTable> {
        let Some(cache) = cache else {
            return self.open_delta_uncached(name, url).await;
        };
        if let Some(table) = cache.delta.get_mut(url.as_str()) {
            table
                .update_incremental(None)
                .await
                .map_err(|e| TallyError::TableOpen {
                    name: name.into(),
                    location: url.to_string(),
                    message: one_line(&e.to_string()),
                })?;
            return Ok(table.clone());
        }
        let table = self.open_delta_uncached(name, url).await?;
        cache.delta.insert(url.to_string(), table.clone());
        Ok(table)
    }

    async fn open_delta_uncached(
        &self,
        name: &str,
        url: &url::Url,
    ) -> Result<deltalake::DeltaTable> {
        crate::delta::open(&self.lake, url)
            .await
            .map_err(|e| match e {
                TallyError::Delta(deltalake::DeltaTableError::NotATable(_)) => e,
                other => TallyError::TableOpen {
                    name: name.into(),
                    location: url.to_string(),
                    message: one_line(&other.to_string()),
                },
            })
    }

    async fn register_opened_delta(
        &mut self,
        name: &str,
        url: &url::Url,
        table: deltalake::DeltaTable,
    ) -> Result<()> {
        table.update_datafusion_session(&self.ctx.state())?;
        let mut provider: Arc<dyn TableProvider> = table.table_provider().await?;
        if self.plain_delta_scans {
            if let Some(plain) = crate::delta_files::DeltaFiles::try_new(&table, provider.schema())
            {
                // Its file paths are relative to the table root: the store delta-rs scopes
                // to it, under the URL delta-rs names it by.
                let log_store = table.log_store();
                self.ctx.runtime_env().register_object_store(
                    log_store.object_store_url().as_ref(),
                    log_store.object_store(None),
                );
                provider = Arc::new(plain);
            }
        }
        let mut detail = table
            .version()
            .map(|v| format!("version {v}"))
            .unwrap_or_default();
        if name == layout::LIVE_VIEW || name == layout::LIVE_LATE {
            // The live tables hold partial rows per batch; readers get one row per key.
            let view = crate::live::sink::totals(&self.ctx, provider)?.into_view();
            self.ctx.register_table(name, view)?;
            detail.push_str(", one row per (window_start, partner_id, currency)");
        } else {
            self.ctx.register_table(name, provider)?;
        }
        self.tables.push(TableInfo {
            name: name.into(),
            format: "delta",
            location: url.to_string(),
            detail,
        });
        Ok(())
    }

    async fn register_parquet_dir(
        &mut self,
        name: &str,
        url: url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        let cached = cache.as_ref().and_then(|c| c.parquet.get(name).cloned());
        let table = match cached {
            Some(table) => table,
            None => {
                let table = self.open_parquet_dir(name, &url).await?;
                if let Some(cache) = cache {
                    cache.parquet.insert(name.to_string(), Arc::clone(&table));
                }
                table
            }
        };
        self.ctx.register_table(name, table)?;
        self.tables.push(TableInfo {
            name: name.into(),
            format: "parquet",
            location: url.to_string(),
            detail: String::new(),
        });
        Ok(())
    }

    async fn open_parquet_dir(&self, name: &str, url: &url::Url) -> Result<Arc<dyn TableProvider>> {
        let table_url = listing_url(url)?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let state = self.ctx.state();
        // Hive directories (`key=value/`) become string columns.
        let partition_cols = options
            .infer_partitions(&state, &table_url)
            .await
            .map_err(|e| self.table_open_error(name, url, e))?
            .into_iter()
            .map(|c| (c, DataType::Utf8))
            .collect();
        let options = options.with_table_partition_cols(partition_cols);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .infer_schema(&state)
            .await
            .map_err(|e| self.table_open_error(name, url, e))?;
        Ok(Arc::new(ListingTable::try_new(config)?))
    }

    fn table_open_error(
        &self,
        name: &str,
        url: &url::Url,
        e: datafusion::error::DataFusionError,
    ) -> TallyError {
        TallyError::TableOpen {
            name: name.into(),
            location: url.to_string(),
            message: one_line(&e.to_string()),
        }
    }
}

fn listing_url(url: &url::Url) -> Result<ListingTableUrl> {
    Ok(ListingTableUrl::parse(url.as_str())?)
}

/// The runtime of a session: a fair spilling memory pool when limited.
fn new_runtime(opts: &SessionOptions) -> Result<Arc<RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new();
    if opts.fresh_listings {
        // DataFusion caches folder listings with no expiry by default.
        runtime = runtime.with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_list_files_cache_limit(0),
        );
    }
    if let Some(limit) = opts.memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    Ok(runtime.build_arc()?)
}

/// A context with tally's defaults (information_schema on) on `runtime`.
fn new_context(opts: &SessionOptions, runtime: Arc<RuntimeEnv>) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(true);
    if let Some(n) = opts.target_partitions {
        config = config.with_target_partitions(n.max(1));
    }
    if let Some(n) = opts.batch_size {
        config = config.with_batch_size(n.max(1));
    }
    // Filter pushdown into the Parquet decoder: analysts' selective queries skip most pages.
    config.options_mut().execution.parquet.pushdown_filters = true;
    config.options_mut().execution.parquet.reorder_filters = true;
    apply_env_overrides(&mut config)?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// DataFusion settings from the environment, as datafusion-cli takes them:
/// `DATAFUSION_EXECUTION_BATCH_SIZE=16384` sets `datafusion.execution.batch_size`. They apply on
/// top of tally's defaults, so an operator can tune or turn off any of them for one run
/// (DataFusion's `ConfigOptions::from_env` starts from its own defaults, dropping tally's).
fn apply_env_overrides(config: &mut SessionConfig) -> Result<()> {
    let keys: Vec<String> = config
        .options()
        .entries()
        .into_iter()
        .map(|e| e.key)
        .collect();
    for key in keys {
        let var = key.to_uppercase().replace('.', "_");
        if let Ok(value) = std::env::var(&var) {
            config
                .options_mut()
                .set(&key, &value)
                .map_err(|e| TallyError::InvalidArgument {
                    what: var.clone(),
                    message: one_line(&e.to_string()),
                })?;
        }
    }
    Ok(())
}
