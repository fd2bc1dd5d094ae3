//! A session's runtime and context: memory pool, tally's defaults, DataFusion settings from the environment.

use super::*;

/// The runtime of a session: a fair spilling memory pool when limited.
pub(super) fn new_runtime(opts: &SessionOptions) -> Result<Arc<RuntimeEnv>> {
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
pub(super) fn new_context(
    opts: &SessionOptions,
    runtime: Arc<RuntimeEnv>,
    planner: Option<Arc<dyn QueryPlanner + Send + Sync>>,
) -> Result<SessionContext> {
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
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features();
    // tally's own operators cannot be sent to a worker: a distributed session plans with
    // DataFusion's.
    if !opts.datafusion_plans_only && opts.workers.is_none() {
        state = crate::plan::with_query_rules(state);
    }
    if let Some(planner) = planner {
        state = state.with_query_planner(planner);
    }
    if let Some(workers) = &opts.workers {
        state = crate::cluster::coordinate(state, workers)?;
    }
    Ok(SessionContext::new_with_state(state.build()))
}

/// DataFusion settings from the environment, as datafusion-cli takes them:
/// `DATAFUSION_EXECUTION_BATCH_SIZE=16384` sets `datafusion.execution.batch_size`. They apply on
/// top of tally's defaults, so an operator can tune or turn off any of them for one run
/// (DataFusion's `ConfigOptions::from_env` starts from its own defaults, dropping tally's).
pub(super) fn apply_env_overrides(config: &mut SessionConfig) -> Result<()> {
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
