//! tally's own physical operators for analysts' queries, and the optimizer rule that places them.
//!
//! DataFusion's plans are kept as they are; a rule swaps one operator for a cheaper one only
//! where the answer is the same by construction. Today that is [`run_groups`]: the partial
//! half of a `GROUP BY` on one string column, which hashes runs of equal keys once instead of
//! every row. The ledger and the raw lake are written clustered by partner (the ledger's files
//! are sorted by `partner_id`, then `txn_id`), so the per-partner aggregates a dashboard or
//! an analyst runs meet a few runs per batch where DataFusion hashes 8,192 keys.

mod run_groups;
mod run_groups_stream;
#[cfg(test)]
mod tests;

pub use run_groups::{RunGroupsExec, RunGroupsRule};

use datafusion::execution::session_state::SessionStateBuilder;
use std::sync::Arc;

/// Adds tally's query rules after DataFusion's own (so they see the plan DataFusion chose,
/// repartitions and all).
pub fn with_query_rules(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder.with_physical_optimizer_rule(Arc::new(RunGroupsRule))
}
