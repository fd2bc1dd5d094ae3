//! `txn_key(txn_id)`: the 64-bit key the ledger deduplicates on.
//!
//! Grouping ten million string ids is the costliest part of a ledger day; grouping one
//! integer per transaction is not. `txn_key` is the full XXH3-64 (seed 0) of the id's UTF-8
//! bytes — the hash behind `txn_bucket`, before the modulo — as a BIGINT (the same 64 bits,
//! read as two's complement), so `txn_bucket(txn_id, n)` is `txn_key(txn_id)` taken unsigned,
//! modulo `n`. Like `txn_bucket` it is stable across platforms, runs and versions.
//!
//! Two different ids can share a key (about once in 2^64 pairs; ~3 in a million for a day of
//! ten million ids): the ledger's plan therefore hashes `txn_id` into its payload fingerprint, so
//! a shared key shows up as a disagreement and is settled by comparing the ids themselves.

use crate::txn_bucket::txn_hash64;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

/// `txn_key(txn_id) -> BIGINT`; NULL when `txn_id` is NULL.
///
/// ```sql
/// SELECT txn_key(txn_id) AS key, count(*) AS copies FROM raw_payments GROUP BY 1;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TxnKey {
    signature: Signature,
}

impl Default for TxnKey {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnKey {
    /// The function with its signature: one string.
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The key of one id: XXH3-64's bits as a signed integer.
pub fn txn_key(txn_id: &str) -> i64 {
    txn_hash64(txn_id) as i64
}

impl ScalarUDFImpl for TxnKey {
    fn name(&self) -> &str {
        "txn_key"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8] => Ok(arg_types.to_vec()),
            [DataType::Null] => Ok(vec![DataType::Utf8]),
            [other] => plan_err!("txn_key: txn_id must be a string, got {other}"),
            _ => plan_err!("txn_key takes one argument: (txn_id)"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ids] = args.args.as_slice() else {
            return exec_err!("txn_key takes one argument: (txn_id)");
        };
        match ids {
            ColumnarValue::Scalar(s) => {
                let v = match s {
                    ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => {
                        v.as_deref().map(txn_key)
                    }
                    ScalarValue::Null => None,
                    other => return exec_err!("txn_key: txn_id must be a string, got {other}"),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Int64(v)))
            }
            ColumnarValue::Array(a) => {
                let out: Int64Array = match a.data_type() {
                    DataType::Utf8 => a
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.map(txn_key))
                        .collect(),
                    DataType::LargeUtf8 => a
                        .as_string::<i64>()
                        .iter()
                        .map(|v| v.map(txn_key))
                        .collect(),
                    DataType::Utf8View => {
                        a.as_string_view().iter().map(|v| v.map(txn_key)).collect()
                    }
                    other => return exec_err!("txn_key: txn_id must be a string, got {other}"),
                };
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key and the bucket are one hash: `txn_bucket(id, n)` is the unsigned key mod n.
    #[test]
    fn key_is_the_bucket_hash_before_the_modulo() {
        for id in ["", "tx-0001", "tx73d2a6048f44f775"] {
            let key = txn_key(id);
            assert_eq!(key as u64, txn_hash64(id));
            assert_eq!((key as u64) % 16, txn_hash64(id) % 16);
        }
        assert_eq!(txn_key(""), 0x2d06800538d394c2_u64 as i64);
    }
}
