//! One SQL statement as every endpoint runs it: read-only, with bound parameters, on one fresh
//! snapshot, bounded by the query timeout, in the SPEC's wire types.
//!
//! Flight SQL and the Postgres wire differ in framing, not in meaning: both go through
//! [`plan`] (which refuses anything but a read before planning and checks the plan again with
//! DataFusion's `SQLOptions`) and [`execute`] (which stops the plan at the deadline and when
//! the client goes away, since dropping the stream drops every task of the plan).

use crate::error::{Result, TallyError};
use crate::query::{self, Access};
use crate::session::TallySession;
use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, Value};
use futures::{Stream, StreamExt};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A planned statement and the schema its rows cross the wire in.
pub struct Planned {
    /// The plan, with parameters bound.
    pub df: DataFrame,
    /// The result schema with view types replaced by their plain forms.
    pub wire_schema: SchemaRef,
}

/// Parses one statement, numbering `?` placeholders as `$1, $2, …` (ADBC and JDBC send `?`;
/// DataFusion would read every `?` as the same named parameter).
pub fn parse_one(sql: &str) -> Result<DFStatement> {
    let mut statements = query::parse(sql)?;
    if statements.len() != 1 {
        return Err(TallyError::InvalidArgument {
            what: "statement".into(),
            message: format!(
                "expected exactly one SQL statement, got {}",
                statements.len()
            ),
        });
    }
    let mut stmt = statements.remove(0);
    if let DFStatement::Statement(inner) = &mut stmt {
        let mut n = 0usize;
        let _ = visit_expressions_mut(inner.as_mut(), |expr: &mut Expr| {
            if let Expr::Value(v) = expr {
                if let Value::Placeholder(p) = &mut v.value {
                    if p == "?" {
                        n += 1;
                        *p = format!("${n}");
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Ok(stmt)
}

/// Plans `sql` read-only on `session`, binding `params` to `$1, $2, …` when given.
pub async fn plan(
    session: &TallySession,
    sql: &str,
    params: Option<Vec<ScalarValue>>,
) -> Result<Planned> {
    let stmt = parse_one(sql)?;
    // The read-only decision is made on the plan that will run (see `query::write_in_plan`).
    let mut df = query::plan(session, stmt, Access::ReadOnly)
        .await
        .map_err(|e| match e {
            TallyError::ReadOnly { statement } => TallyError::ServeReadOnly { statement },
            other => other,
        })?;
    if let Some(params) = params {
        df = df.with_param_values(params)?;
    }
    let wire_schema = wire_schema(df.schema().as_arrow());
    Ok(Planned { df, wire_schema })
}

/// The parameters a statement takes, in order (`$1`, `$2`, …), with their types where the
/// plan determines them.
pub fn parameter_types(planned: &Planned) -> Result<Vec<(String, Option<DataType>)>> {
    let mut params: Vec<(String, Option<DataType>)> = planned
        .df
        .logical_plan()
        .get_parameter_types()?
        .into_iter()
        .collect();
    params.sort_by_key(|(name, _)| {
        name.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    Ok(params)
}

/// The schema rows are sent in: `Utf8View`/`BinaryView` (what DataFusion's Parquet scan yields)
/// become `Utf8`/`Binary`, which every client reads (the Flight SQL JDBC driver rejects views).
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            Field::new(f.name(), wire_type(f.data_type()), true).with_metadata(f.metadata().clone())
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}

/// Converts a batch to `schema` (the wire schema of its plan).
pub fn to_wire(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

/// Runs a planned statement: its batches in the wire schema, ending with
/// [`TallyError::QueryTimeout`] if `timeout` passes first. Dropping the stream stops the plan
/// and frees its memory.
pub async fn execute(
    planned: Planned,
    timeout: Duration,
) -> Result<impl Stream<Item = Result<RecordBatch>> + Send + 'static> {
    let deadline = Instant::now() + timeout;
    let schema = planned.wire_schema;
    let stream = tokio::time::timeout_at(deadline, planned.df.execute_stream())
        .await
        .map_err(|_| TallyError::QueryTimeout {
            seconds: timeout.as_secs(),
        })??;
    let state = Some(stream);
    Ok(futures::stream::unfold(state, move |state| {
        let schema = Arc::clone(&schema);
        async move {
            let mut stream = state?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => Some((
                    Err(TallyError::QueryTimeout {
                        seconds: timeout.as_secs(),
                    }),
                    None,
                )),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(e.into()), None)),
                Ok(Some(Ok(batch))) => Some((to_wire(&batch, &schema), Some(stream))),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_in_order() {
        let stmt = parse_one("SELECT * FROM t WHERE a = ? AND b > ? OR c = $9").unwrap();
        assert_eq!(
            stmt.to_string(),
            "SELECT * FROM t WHERE a = $1 AND b > $2 OR c = $9"
        );
    }

    #[test]
    fn more_than_one_statement_is_refused() {
        assert!(parse_one("SELECT 1; SELECT 2").is_err());
        assert!(parse_one("").is_err());
    }

    #[test]
    fn view_types_cross_the_wire_as_plain_types() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8View, false),
            Field::new("d", DataType::Decimal128(18, 2), false),
        ]);
        let wire = wire_schema(&schema);
        assert_eq!(wire.field(0).data_type(), &DataType::Utf8);
        assert_eq!(wire.field(1).data_type(), &DataType::Decimal128(18, 2));
    }
}
