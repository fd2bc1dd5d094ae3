//! `txn_bucket(txn_id, n)`: the stable bucket a transaction id belongs to.
//!
//! The ledger partitions its dedup by this bucket (never by partner), so a few huge partners
//! cannot create stragglers and each bucket can be processed on its own. The bucket must be the
//! same on every platform, run and version, because buckets are how work is split and resumed:
//! it is XXH3-64 (seed 0) of the id's UTF-8 bytes, modulo `n`. XXH3 is a published, frozen
//! algorithm (the `xxhash-rust` crate implements it bit-exactly), unlike Rust's `DefaultHasher`
//! or DataFusion's internal hash, which may change between releases.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

/// The 64-bit hash behind `txn_bucket`: XXH3-64 with seed 0 over the UTF-8 bytes.
pub fn txn_hash64(txn_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(txn_id.as_bytes())
}

/// `txn_bucket(txn_id, n) -> BIGINT` in `[0, n)`; NULL when `txn_id` is NULL.
///
/// ```sql
/// SELECT txn_bucket(txn_id, 64) AS bucket, count(*) FROM raw_payments GROUP BY 1;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TxnBucket {
    signature: Signature,
}

impl Default for TxnBucket {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnBucket {
    /// The function with its signature: a string and an integer bucket count.
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn bucket_count(value: &ColumnarValue) -> Result<u64> {
    match value {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) if *n > 0 => Ok(*n as u64),
        ColumnarValue::Scalar(other) => {
            exec_err!("txn_bucket: bucket count must be a positive integer, got {other}")
        }
        ColumnarValue::Array(_) => exec_err!("txn_bucket: bucket count must be a constant"),
    }
}

impl ScalarUDFImpl for TxnBucket {
    fn name(&self) -> &str {
        "txn_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [id, n] = arg_types else {
            return plan_err!("txn_bucket takes two arguments: (txn_id, n)");
        };
        let id = match id {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => id.clone(),
            DataType::Null => DataType::Utf8,
            other => return plan_err!("txn_bucket: txn_id must be a string, got {other}"),
        };
        if !n.is_integer() && *n != DataType::Null {
            return plan_err!("txn_bucket: n must be an integer, got {n}");
        }
        Ok(vec![id, DataType::Int64])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ids, n] = args.args.as_slice() else {
            return exec_err!("txn_bucket takes two arguments: (txn_id, n)");
        };
        let n = bucket_count(n)?;
        let bucket = |s: &str| (txn_hash64(s) % n) as i64;
        match ids {
            ColumnarValue::Scalar(s) => {
                let v = match s {
                    ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => {
                        v.as_deref().map(bucket)
                    }
                    ScalarValue::Null => None,
                    other => return exec_err!("txn_bucket: txn_id must be a string, got {other}"),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Int64(v)))
            }
            ColumnarValue::Array(a) => {
                let out: Int64Array = match a.data_type() {
                    DataType::Utf8 => a.as_string::<i32>().iter().map(|v| v.map(bucket)).collect(),
                    DataType::LargeUtf8 => {
                        a.as_string::<i64>().iter().map(|v| v.map(bucket)).collect()
                    }
                    DataType::Utf8View => {
                        a.as_string_view().iter().map(|v| v.map(bucket)).collect()
                    }
                    other => return exec_err!("txn_bucket: txn_id must be a string, got {other}"),
                };
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the hash: if these change, every bucket assignment on disk changes meaning.
    #[test]
    fn hash_is_stable_across_versions() {
        assert_eq!(txn_hash64(""), 0x2d06800538d394c2);
        assert_eq!(txn_hash64("tx-0001"), txn_hash64("tx-0001"));
        assert_ne!(txn_hash64("tx-0001"), txn_hash64("tx-0002"));
    }

    #[test]
    fn buckets_spread_evenly() {
        let n = 16u64;
        let mut counts = vec![0usize; n as usize];
        for i in 0..160_000 {
            counts[(txn_hash64(&format!("tx{i:012x}")) % n) as usize] += 1;
        }
        for c in counts {
            assert!(
                (9_000..11_000).contains(&c),
                "bucket count {c} is far from 10000"
            );
        }
    }
}
