//! Scale-out (SPEC "Scale-out"): the same plans across machines, on datafusion-distributed.
//!
//! The calling process plans with tally's own tables and functions; [`coordinate`] adds
//! datafusion-distributed's planner, which cuts the physical plan into stages at its shuffles
//! and runs each stage's tasks on workers over Arrow Flight (gRPC), streaming the last stage
//! back to the caller. A worker is a `tally worker` process ([`worker`]): DataFusion with
//! tally's functions compiled in, reading the lake through the same settings as the caller.
//! Module map: [`workers`] (the list a run may use and the check that they answer),
//! [`worker`] (the worker process), [`auth`] (the shared token on the wire).
//!
//! What crosses the wire is DataFusion's own plan protobuf: tally's query sessions use only
//! operators it can encode (plain Parquet scans, also for Delta tables; DataFusion's
//! aggregates), so a worker needs no tally-specific codec.

pub mod auth;
pub mod worker;
pub mod workers;

use crate::error::{Result, TallyError};
use crate::lake::one_line;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::config::{ConfigExtension, ExtensionOptions};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion_distributed::{
    display_plan_ascii, DistributedConfig, DistributedExt, SessionStateBuilderExt,
};
use std::sync::Arc;
pub use workers::Workers;

/// `builder` with datafusion-distributed's planner over `workers`: every query's plan is
/// split into stages that run on them. The token (if any) goes with every request.
pub fn coordinate(builder: SessionStateBuilder, workers: &Workers) -> Result<SessionStateBuilder> {
    let builder = builder
        .with_distributed_worker_resolver(workers.clone())
        .with_distributed_planner();
    let mut builder = match auth::headers(workers.token()) {
        Some(headers) => builder
            .with_distributed_passthrough_headers(headers)
            .map_err(TallyError::Query)?,
        None => builder,
    };
    apply_env_overrides(&mut builder)?;
    Ok(builder)
}

/// True when `state` plans with datafusion-distributed ([`coordinate`]).
pub fn is_distributed(state: &SessionState) -> bool {
    DistributedConfig::from_config_options(state.config().options()).is_ok()
}

/// `EXPLAIN` of a distributed session: the logical plan, and the physical plan as the
/// distributed planner cut it into stages and tasks (DataFusion's own `EXPLAIN` shows the plan
/// before that cut). Workers are picked for the tasks only when the plan runs.
pub async fn explain(state: &SessionState, logical: &LogicalPlan) -> Result<RecordBatch> {
    let physical = state.create_physical_plan(logical).await?;
    let stages = display_plan_ascii(physical.as_ref(), false);
    let plan_type = StringArray::from(vec!["logical_plan", "distributed_plan"]);
    let plan = StringArray::from(vec![logical.display_indent().to_string(), stages]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(plan_type), Arc::new(plan)],
    )?)
}

/// `DISTRIBUTED_<OPTION>` variables tune datafusion-distributed's planner as
/// `DATAFUSION_<OPTION>` ones tune DataFusion: `DISTRIBUTED_FILE_SCAN_CONFIG_BYTES_PER_PARTITION=1`
/// spreads even a small scan over every worker. (An extension's entries carry no prefix, so
/// DataFusion's own environment handling cannot reach them.)
fn apply_env_overrides(builder: &mut SessionStateBuilder) -> Result<()> {
    let Some(config) = builder.config().as_mut() else {
        return Ok(());
    };
    let options = DistributedConfig::from_config_options_mut(config.options_mut())?;
    for entry in options.entries() {
        let var = format!("{}_{}", DistributedConfig::PREFIX, entry.key)
            .to_uppercase()
            .replace('.', "_");
        if let Ok(value) = std::env::var(&var) {
            options
                .set(&entry.key, &value)
                .map_err(|e| TallyError::InvalidArgument {
                    what: var.clone(),
                    message: one_line(&e.to_string()),
                })?;
        }
    }
    Ok(())
}
