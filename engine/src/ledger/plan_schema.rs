//! The schemas of the rows the run takes out of the main plan's partitions to settle them.

use crate::error::Result;
use crate::schema::{self, EVENT_DATE};
use arrow::datatypes::SchemaRef;
use std::sync::Arc;

/// `schema` reduced to `names`.
pub(super) fn project(schema: &SchemaRef, names: &[&str]) -> Result<SchemaRef> {
    let idx = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Arc::new(schema.project(&idx)?))
}

/// The schema of rows taken out of the partitions (the file columns of the plan's rows);
/// rows read back from early-written files are cast to it.
pub(super) fn schema_of(plan: &SchemaRef) -> Result<SchemaRef> {
    let names: Vec<&str> = schema::LEDGER
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| *n != EVENT_DATE)
        .collect();
    project(plan, &names)
}
