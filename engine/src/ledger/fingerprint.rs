//! The content fingerprint of a ledger day: what a re-run must reproduce.
//!
//! Row count, the exact amount sum, and an order-independent hash of the rows (the wrapping sum
//! of one 64-bit hash per row, built from the XXH3-64 of each of its values, NULLs included).
//! File names, file order and row order do not matter; any changed value, lost row or extra row
//! does.

use crate::error::{Result, TallyError};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringViewArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Fingerprint of a set of ledger rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Number of rows.
    pub rows: u64,
    /// Sum of `amount` in cents (exact).
    pub amount_cents: i128,
    /// Wrapping sum of per-row hashes.
    pub row_hash: u64,
}

impl Fingerprint {
    /// Folds a batch with the ledger schema into the fingerprint.
    ///
    /// Column by column: each value is hashed (XXH3-64 of its bytes; NULL is its own value)
    /// and folded into its row's state, then each finished row hash is added to the sum. A
    /// column at a time keeps the loops tight and the columns' memory read in order.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        self.update_selected(batch, None)
    }

    /// Like [`Fingerprint::update`], over only the rows `keep` selects (all when `None`): the
    /// ledger writer keeps disputed rows in place instead of copying the batch without them.
    pub fn update_selected(
        &mut self,
        batch: &RecordBatch,
        keep: Option<&BooleanBuffer>,
    ) -> Result<()> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("fingerprint: no column {name}")))
        };
        let n = batch.num_rows();
        let mut rows = vec![0u64; n];
        let amount = col("amount")?.as_primitive::<Decimal128Type>();
        for name in ["txn_id", "partner_id"] {
            Strings::of(col(name)?)?.fold(&mut rows);
        }
        fold_primitive(
            &mut rows,
            col("event_time")?.as_primitive::<TimestampMicrosecondType>(),
        );
        fold_primitive(&mut rows, col("event_date")?.as_primitive::<Date32Type>());
        fold_primitive(&mut rows, amount);
        for name in ["currency", "status"] {
            Strings::of(col(name)?)?.fold(&mut rows);
        }
        fold_primitive(
            &mut rows,
            col("first_ingest_time")?.as_primitive::<TimestampMicrosecondType>(),
        );
        fold_primitive(&mut rows, col("copies")?.as_primitive::<Int64Type>());
        match keep {
            None => {
                for h in rows {
                    self.row_hash = self.row_hash.wrapping_add(finish(h));
                }
                self.amount_cents += amount.iter().flatten().sum::<i128>();
                self.rows += n as u64;
            }
            Some(keep) => {
                for i in keep.set_indices() {
                    self.row_hash = self.row_hash.wrapping_add(finish(rows[i]));
                    if amount.is_valid(i) {
                        self.amount_cents += amount.value(i);
                    }
                    self.rows += 1;
                }
            }
        }
        Ok(())
    }

    /// Takes rows folded in earlier back out: `batch` holds exactly those rows (a
    /// transaction that turned out to belong to its settlement, not to the file).
    pub fn remove(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut part = Fingerprint::default();
        part.update(batch)?;
        self.rows -= part.rows;
        self.amount_cents -= part.amount_cents;
        self.row_hash = self.row_hash.wrapping_sub(part.row_hash);
        Ok(())
    }

    /// Combines fingerprints of disjoint row sets.
    pub fn merge(&mut self, other: &Fingerprint) {
        self.rows += other.rows;
        self.amount_cents += other.amount_cents;
        self.row_hash = self.row_hash.wrapping_add(other.row_hash);
    }

    /// The amount sum as decimal text (`1234` → `12.34`).
    pub fn amount_text(&self) -> String {
        let a = self.amount_cents.unsigned_abs();
        let sign = if self.amount_cents < 0 { "-" } else { "" };
        format!("{sign}{}.{:02}", a / 100, a % 100)
    }

    /// The commit-info form.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows": self.rows,
            "amount_sum": self.amount_text(),
            "row_hash": format!("{:016x}", self.row_hash),
        })
    }
}

/// What a NULL contributes: a fixed value, which a real value's XXH3 matches only by chance.
const NULL_HASH: u64 = 0x6e75_6c6c_6e75_6c6c;

/// Folds one value's hash into its row's state (order-dependent: columns are not swappable).
fn fold(row: &mut u64, value: u64) {
    *row = (row.rotate_left(23) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
}

/// A row's final hash: the state, avalanched (MurmurHash3's finaliser).
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Folds a fixed-width column: XXH3 of each value's little-endian bytes.
fn fold_primitive<T>(rows: &mut [u64], a: &arrow::array::PrimitiveArray<T>)
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: HashLe,
{
    for (i, row) in rows.iter_mut().enumerate() {
        let h = if a.is_valid(i) {
            a.value(i).hash_le()
        } else {
            NULL_HASH
        };
        fold(row, h);
    }
}

/// The XXH3-64 of a number's little-endian bytes.
trait HashLe {
    fn hash_le(&self) -> u64;
}

macro_rules! hash_le {
    ($($t:ty),*) => {$(
        impl HashLe for $t {
            fn hash_le(&self) -> u64 {
                xxh3_64(&self.to_le_bytes())
            }
        }
    )*};
}
hash_le!(i32, i64, i128);

/// A string column as the plan produced it: the same rows hash the same either way.
enum Strings<'a> {
    Plain(&'a StringArray),
    View(&'a StringViewArray),
}

impl<'a> Strings<'a> {
    fn of(array: &'a ArrayRef) -> Result<Self> {
        match array.data_type() {
            DataType::Utf8 => Ok(Self::Plain(array.as_string::<i32>())),
            DataType::Utf8View => Ok(Self::View(array.as_string_view())),
            other => Err(TallyError::Internal(format!(
                "fingerprint: a string column has type {other}"
            ))),
        }
    }

    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            Self::Plain(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
            Self::View(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
        }
    }

    /// Folds XXH3-64 of each value into its row's state.
    fn fold(&self, rows: &mut [u64]) {
        for (i, row) in rows.iter_mut().enumerate() {
            fold(row, self.get(i).map_or(NULL_HASH, xxh3_64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use arrow::array::{
        Date32Array, Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use std::sync::Arc;

    fn ledger_rows(ids: &[&str], partners: &[Option<&str>], amounts: &[i128]) -> RecordBatch {
        let n = ids.len();
        let ts =
            || Arc::new(TimestampMicrosecondArray::from(vec![1_000_i64; n]).with_timezone("UTC"));
        RecordBatch::try_new(
            Arc::clone(&schema::LEDGER),
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(StringArray::from(partners.to_vec())),
                ts(),
                Arc::new(Date32Array::from(vec![20_000; n])),
                Arc::new(
                    Decimal128Array::from(amounts.to_vec())
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(vec!["EUR"; n])),
                Arc::new(StringArray::from(vec!["ok"; n])),
                ts(),
                Arc::new(Int64Array::from(vec![1_i64; n])),
            ],
        )
        .unwrap()
    }

    fn of(batch: &RecordBatch) -> Fingerprint {
        let mut fp = Fingerprint::default();
        fp.update(batch).unwrap();
        fp
    }

    #[test]
    fn row_order_and_batching_do_not_matter_but_values_do() {
        let ab = ledger_rows(&["a", "b"], &[Some("p1"), Some("p2")], &[100, 250]);
        let ba = ledger_rows(&["b", "a"], &[Some("p2"), Some("p1")], &[250, 100]);
        assert_eq!(of(&ab), of(&ba));
        let mut split = of(&ab.slice(0, 1));
        split.merge(&of(&ab.slice(1, 1)));
        assert_eq!(split, of(&ab));
        assert_eq!(
            (of(&ab).rows, of(&ab).amount_text()),
            (2, "3.50".to_string())
        );

        let cent = ledger_rows(&["a", "b"], &[Some("p1"), Some("p2")], &[100, 251]);
        assert_ne!(of(&ab).row_hash, of(&cent).row_hash);
        // Values that swap between rows or columns change the hash too.
        let swapped = ledger_rows(&["a", "b"], &[Some("p2"), Some("p1")], &[100, 250]);
        assert_ne!(of(&ab).row_hash, of(&swapped).row_hash);
        let null = ledger_rows(&["a", "b"], &[None, Some("p2")], &[100, 250]);
        let empty = ledger_rows(&["a", "b"], &[Some(""), Some("p2")], &[100, 250]);
        assert_ne!(of(&null).row_hash, of(&empty).row_hash);
    }

    #[test]
    fn a_selection_counts_only_the_selected_rows() {
        let abc = ledger_rows(
            &["a", "b", "c"],
            &[Some("p1"), None, Some("p3")],
            &[1, 20, 300],
        );
        let ac = ledger_rows(&["a", "c"], &[Some("p1"), Some("p3")], &[1, 300]);
        let mut fp = Fingerprint::default();
        fp.update_selected(&abc, Some(&BooleanBuffer::from(vec![true, false, true])))
            .unwrap();
        assert_eq!(fp, of(&ac));
        assert_ne!(fp, of(&abc));
    }

    #[test]
    fn string_views_hash_like_strings() {
        let plain = ledger_rows(&["a", "b"], &[Some("p1"), None], &[1, 2]);
        let mut cols = plain.columns().to_vec();
        let mut fields: Vec<_> = plain
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for i in [0, 1] {
            cols[i] = arrow::compute::cast(&cols[i], &DataType::Utf8View).unwrap();
            fields[i] = fields[i].clone().with_data_type(DataType::Utf8View);
        }
        let views =
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
        assert_eq!(of(&plain), of(&views));
    }
}
