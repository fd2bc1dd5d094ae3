//! `payload_hash(col, …)`: a 64-bit hash of a row's values, for telling whether copies agree.
//!
//! The ledger compares the copies of each transaction: `min(payload_hash(…)) =
//! max(payload_hash(…))` over a transaction's copies means every copy carries the same payload,
//! which replaces a min/max pair per payload column (two string accumulators each) with one
//! pair of integers. NULLs hash to a fixed value, so NULL = NULL for this purpose. The hash is
//! foldhash's quality hasher with seed 0: stable within a run (all it is used for), not
//! promised across versions — never store it. Two different payloads of one transaction
//! colliding has probability 2^-64 per pair of copies.

use datafusion::arrow::array::Array;
use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::hash_utils::{
    combine_hashes, create_hashes_with_hasher, QualityRandomState,
};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

/// What a NULL in the first column contributes (the i-th column's NULL adds i).
const NULL_MARKER: u64 = 0x9e37_79b9_7f4a_7c15;

/// `payload_hash(a, b, …) -> BIGINT`, never NULL.
///
/// ```sql
/// SELECT txn_id, min(payload_hash(amount, status)) = max(payload_hash(amount, status)) AS agree
/// FROM raw_payments GROUP BY txn_id;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PayloadHash {
    signature: Signature,
}

impl Default for PayloadHash {
    fn default() -> Self {
        Self::new()
    }
}

impl PayloadHash {
    /// The function, taking any number of columns of any type.
    pub fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PayloadHash {
    fn name(&self) -> &str {
        "payload_hash"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.is_empty() {
            return exec_err!("payload_hash needs at least one argument");
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let state = QualityRandomState::with_seed(0);
        let mut hashes = vec![0u64; args.number_rows];
        let mut column = vec![0u64; args.number_rows];
        // Column by column: DataFusion's row hashing leaves the hash unchanged on a NULL, so
        // ('USD', NULL) and (NULL, 'USD') in two neighbouring columns would hash alike. Here a
        // NULL in column i contributes its own marker.
        for (i, array) in arrays.iter().enumerate() {
            // The first (only) array of the call overwrites `column`, NULL rows aside.
            create_hashes_with_hasher([array], &state, &mut column)?;
            match array.logical_nulls() {
                None => {
                    for (h, &v) in hashes.iter_mut().zip(&column) {
                        *h = combine_hashes(v, *h);
                    }
                }
                Some(nulls) => {
                    let null_marker = NULL_MARKER.wrapping_add(i as u64);
                    for (row, h) in hashes.iter_mut().enumerate() {
                        let v = if nulls.is_null(row) {
                            null_marker
                        } else {
                            column[row]
                        };
                        *h = combine_hashes(v, *h);
                    }
                }
            }
        }
        let out: Int64Array = hashes.into_iter().map(|h| h as i64).collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    /// `payload_hash` over string columns of equal length.
    fn hash(columns: Vec<Vec<Option<&str>>>) -> Int64Array {
        let rows = columns.first().map_or(0, |c| c.len());
        let args = ScalarFunctionArgs {
            arg_fields: (0..columns.len())
                .map(|i| Arc::new(Field::new(format!("c{i}"), DataType::Utf8, true)))
                .collect(),
            args: columns
                .into_iter()
                .map(|c| ColumnarValue::Array(Arc::new(StringArray::from(c)) as ArrayRef))
                .collect(),
            number_rows: rows,
            return_field: Arc::new(Field::new("h", DataType::Int64, false)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ColumnarValue::Array(out) = PayloadHash::new().invoke_with_args(args).unwrap() else {
            panic!("expected an array");
        };
        out.as_any().downcast_ref::<Int64Array>().unwrap().clone()
    }

    #[test]
    fn equal_rows_hash_equal_and_null_differs_from_a_value() {
        let h = hash(vec![vec![Some("x"), Some("x"), None, Some("y")]]);
        assert_eq!(h.null_count(), 0);
        assert_eq!(h.value(0), h.value(1));
        assert_ne!(h.value(0), h.value(2));
        assert_ne!(h.value(0), h.value(3));
    }

    #[test]
    fn a_null_moving_between_neighbouring_columns_changes_the_hash() {
        // (currency, status) = ('USD', NULL) vs (NULL, 'USD'): different payloads.
        let h = hash(vec![vec![Some("USD"), None], vec![None, Some("USD")]]);
        assert_ne!(h.value(0), h.value(1));
    }
}
