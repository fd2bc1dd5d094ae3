//! The day's transactions looked up among the neighbouring days' copies.
//!
//! A copy of one of D's transactions may name D − 1 or D + 1 (a partner resending with a
//! shifted timestamp, a clock near midnight). The transaction then belongs to the day its
//! winning copy names, and both days must see the same copies to agree on it. Reading the
//! neighbours' copies of *every* transaction would cost a second ledger; instead D's keys go
//! into a split-block Bloom filter (Parquet's own, 1% false positives: about 12 MiB for ten
//! million keys), and `sql/ledger_neighbours.sql` keeps only the neighbours' rows whose key
//! it may hold. The filter is a SQL function evaluated inside the Parquet reader on `txn_id`
//! alone, so the rest of a row is decoded only for the few that pass.

use crate::error::{Result, TallyError};
use crate::jobs_sql;
use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{DataFrame, SessionContext};
use parquet::bloom_filter::Sbbf;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// False-positive rate of the day's key filter: a false positive costs one row decoded and
/// dropped by the settlement, so a larger filter would not pay for its memory.
const FALSE_POSITIVES: f64 = 0.01;

/// The day's keys, as a Bloom filter. `parts` holds each hash partition's keys (as slices);
/// the partitions are inserted on all cores, each thread into its own filter of the same
/// size, and the filters are OR-ed: the same bits as one filter filled key by key.
pub fn day_keys(parts: Vec<Vec<&[i64]>>, count: usize) -> Result<Arc<Sbbf>> {
    let bytes = Sbbf::new_with_ndv_fpp(count.max(1) as u64, FALSE_POSITIVES)?.num_blocks() * 32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, parts.len().max(1));
    let mut groups: Vec<Vec<&[i64]>> = vec![Vec::new(); threads];
    for (i, part) in parts.into_iter().enumerate() {
        groups[i % threads].extend(part);
    }
    let bitsets: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|slices| {
                scope.spawn(move || -> Result<Vec<u8>> {
                    let mut bloom = Sbbf::new_with_num_of_bytes(bytes);
                    for k in slices.iter().flat_map(|s| s.iter()) {
                        bloom.insert(k);
                    }
                    let mut out = Vec::with_capacity(bytes);
                    bloom.write_bitset(&mut out)?;
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| TallyError::Internal("key filter thread panicked".into()))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut merged = bitsets.first().cloned().unwrap_or_default();
    for other in bitsets.iter().skip(1) {
        for (a, b) in merged.iter_mut().zip(other) {
            *a |= *b;
        }
    }
    Ok(Arc::new(Sbbf::new(&merged)))
}

/// `ledger_day_has(txn_key) -> BOOLEAN`: whether the key may be one of the day's.
#[derive(Debug)]
pub struct LedgerDayHas {
    keys: Arc<Sbbf>,
    signature: Signature,
}

impl LedgerDayHas {
    /// The function over `keys`.
    pub fn new(keys: Arc<Sbbf>) -> Self {
        Self {
            keys,
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

impl PartialEq for LedgerDayHas {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }
}

impl Eq for LedgerDayHas {}

impl Hash for LedgerDayHas {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.keys).hash(state);
    }
}

impl ScalarUDFImpl for LedgerDayHas {
    fn name(&self) -> &str {
        "ledger_day_has"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return exec_err!("ledger_day_has takes one argument");
        };
        match arg {
            ColumnarValue::Scalar(ScalarValue::Int64(k)) => Ok(ColumnarValue::Scalar(
                ScalarValue::Boolean(k.map(|k| self.keys.check(&k))),
            )),
            ColumnarValue::Array(a) => {
                let Some(keys) = a.as_primitive_opt::<Int64Type>() else {
                    return exec_err!("ledger_day_has takes a BIGINT key");
                };
                let hits: BooleanArray = keys
                    .iter()
                    .map(|k| k.map(|k| self.keys.check(&k)))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(hits) as ArrayRef))
            }
            other => exec_err!(
                "ledger_day_has takes a BIGINT key, got {}",
                other.data_type()
            ),
        }
    }
}

/// What the lookup found.
pub struct Found {
    /// The neighbours' copies whose key may be one of the day's (`sql/ledger_neighbours.sql`).
    pub copies: Vec<RecordBatch>,
    /// Their keys: the transactions to settle.
    pub keys: HashSet<i64>,
    /// The copies' schema.
    pub schema: arrow::datatypes::SchemaRef,
}

/// Runs `sql/ledger_neighbours.sql` on `ctx` (which has `neighbour_arrivals` registered) with
/// the day's keys.
pub async fn find(
    ctx: &SessionContext,
    keys: Arc<Sbbf>,
    params: Vec<ScalarValue>,
) -> Result<Found> {
    ctx.register_udf(ScalarUDF::from(LedgerDayHas::new(keys)));
    let df: DataFrame = ctx
        .sql(jobs_sql::LEDGER_NEIGHBOURS)
        .await?
        .with_param_values(params)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let copies: Vec<RecordBatch> = df
        .collect()
        .await?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    let mut found = HashSet::new();
    for b in &copies {
        let k = b
            .column_by_name("txn_key")
            .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned())
            .ok_or_else(|| TallyError::Internal("neighbour copies lack txn_key".into()))?;
        found.extend(k.iter().flatten());
    }
    Ok(Found {
        copies,
        keys: found,
        schema,
    })
}
