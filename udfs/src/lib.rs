//! SQL functions tally adds to DataFusion.
//!
//! Every session tally builds calls [`register_all`], so a function that works in `tally sql`
//! also works inside the jobs' SQL (`sql/*.sql`) and, later, on a distributed runner that
//! registers the same list. One function per file; each documents the SQL a user would type.

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

mod any_copy;
mod collapse_copies;
mod group_blocks;
mod payload_hash;
mod picks;
mod txn_bucket;
mod txn_key;

pub use any_copy::AnyCopy;
pub use collapse_copies::CollapseCopies;
pub use payload_hash::PayloadHash;
pub use txn_bucket::{txn_hash64, TxnBucket};
pub use txn_key::{txn_key, TxnKey};

/// Every scalar function tally provides.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(TxnBucket::new()),
        ScalarUDF::from(TxnKey::new()),
        ScalarUDF::from(PayloadHash::new()),
    ]
}

/// Every aggregate function tally provides.
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(AnyCopy::new()),
        AggregateUDF::from(CollapseCopies::new()),
    ]
}

/// Registers [`functions`] and [`aggregate_functions`] into a session.
pub fn register_all(ctx: &SessionContext) {
    for f in functions() {
        ctx.register_udf(f);
    }
    for f in aggregate_functions() {
        ctx.register_udaf(f);
    }
}
