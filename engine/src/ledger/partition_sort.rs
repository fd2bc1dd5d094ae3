//! Orders one hash partition of the ledger by (`partner_id`, `txn_id`) on its way into Parquet.
//!
//! Why not DataFusion's `SortExec`: it sorts every batch, converts the keys of both string
//! columns to the row format and merges the sorted batches, holding a second copy of the
//! partition; on a 10M-transaction day that sort cost about as much as the dedup itself. Here
//! the partition's rows are ordered once by a compact key — the partner's rank among the
//! partition's partners, then the first 8 bytes of `txn_id`, the full `txn_id` only when those
//! tie — and gathered one row group at a time, so the sorted copy never exceeds a row group.
//!
//! The order is total and deterministic: `txn_id` is unique within a ledger day, and equal keys
//! (impossible there) fall back to arrival order. Null partners sort first, as in SQL's
//! `ORDER BY partner_id` with NULLS FIRST.

use crate::error::{Result, TallyError};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringViewArray};
use arrow::compute::{cast, interleave};
use arrow::datatypes::DataType;
use std::cmp::Ordering;
use std::collections::HashMap;

/// Where a row lives: (batch index, row index), the form `interleave` takes.
type RowRef = (usize, usize);

/// The sort key of one row.
struct Key {
    partner_rank: u32,
    txn_prefix: u64,
    at: RowRef,
}

/// Rows of one partition, collected until they are written as one sorted run.
#[derive(Default)]
pub struct SortedRun {
    batches: Vec<RecordBatch>,
    rows: usize,
}

impl SortedRun {
    /// Adds a batch to the run.
    pub fn push(&mut self, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.batches.push(batch);
    }

    /// Rows collected.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The run's rows in (`partner_id`, `txn_id`) order, `chunk` rows per batch; empties the run.
    pub fn into_sorted_chunks(
        self,
        chunk: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
        let order = sort_order(&self.batches)?;
        let batches = self.batches;
        let chunk = chunk.max(1);
        let mut start = 0;
        Ok(std::iter::from_fn(move || {
            if start >= order.len() {
                return None;
            }
            let end = (start + chunk).min(order.len());
            let rows = &order[start..end];
            start = end;
            Some(gather(&batches, rows))
        }))
    }
}

/// Key columns as string views (the aggregate's output already is; anything else is cast once).
fn string_views(batches: &[RecordBatch], name: &str) -> Result<Vec<StringViewArray>> {
    batches
        .iter()
        .map(|b| {
            let col = b
                .column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("ledger rows lack {name}")))?;
            let view = match col.data_type() {
                DataType::Utf8View => col.as_string_view().clone(),
                _ => cast(col, &DataType::Utf8View)?.as_string_view().clone(),
            };
            Ok(view)
        })
        .collect()
}

/// The first 8 bytes of `s`, big-endian, zero-padded: comparing these as integers agrees with
/// comparing the strings byte-wise whenever they differ.
fn prefix8(s: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s[..n]);
    u64::from_be_bytes(b)
}

/// The permutation that orders the rows of `batches` by (`partner_id`, `txn_id`).
fn sort_order(batches: &[RecordBatch]) -> Result<Vec<RowRef>> {
    let partners = string_views(batches, "partner_id")?;
    let txns = string_views(batches, "txn_id")?;

    // Rank the distinct partners (a few hundred) so rows compare by one integer.
    let mut distinct: HashMap<&str, u32> = HashMap::new();
    for p in &partners {
        for v in p.iter().flatten() {
            let next = distinct.len() as u32;
            distinct.entry(v).or_insert(next);
        }
    }
    let mut names: Vec<&str> = distinct.keys().copied().collect();
    names.sort_unstable();
    for (rank, name) in names.iter().enumerate() {
        // Rank 0 is reserved for a null partner (sorts first).
        distinct.insert(name, rank as u32 + 1);
    }

    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut keys: Vec<Key> = Vec::with_capacity(rows);
    for (bi, (p, t)) in partners.iter().zip(&txns).enumerate() {
        for ri in 0..t.len() {
            let partner_rank = if p.is_null(ri) {
                0
            } else {
                distinct.get(p.value(ri)).copied().unwrap_or(0)
            };
            let txn_prefix = if t.is_null(ri) {
                0
            } else {
                prefix8(t.value(ri).as_bytes())
            };
            keys.push(Key {
                partner_rank,
                txn_prefix,
                at: (bi, ri),
            });
        }
    }
    let txn_bytes = |at: RowRef| -> &[u8] {
        let t = &txns[at.0];
        if t.is_null(at.1) {
            &[]
        } else {
            t.value(at.1).as_bytes()
        }
    };
    keys.sort_unstable_by(|a, b| {
        (a.partner_rank, a.txn_prefix)
            .cmp(&(b.partner_rank, b.txn_prefix))
            .then_with(|| match txn_bytes(a.at).cmp(txn_bytes(b.at)) {
                Ordering::Equal => a.at.cmp(&b.at),
                o => o,
            })
    });
    Ok(keys.into_iter().map(|k| k.at).collect())
}

/// Gathers `rows` (in that order) from `batches` into one batch.
fn gather(batches: &[RecordBatch], rows: &[RowRef]) -> Result<RecordBatch> {
    let first = batches
        .first()
        .ok_or_else(|| TallyError::Internal("gather from no batches".into()))?;
    let schema = first.schema();
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            interleave(&arrays, rows)
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(partners: Vec<Option<&str>>, txns: Vec<&str>, n: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("txn_id", DataType::Utf8, false),
            Field::new("partner_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(txns)),
                Arc::new(StringArray::from(partners)),
                Arc::new(Int64Array::from(n)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn orders_by_partner_then_txn_across_batches_like_a_plain_sort() {
        let mut run = SortedRun::default();
        // Same 8-byte prefixes ("tx000000") force the full comparison; a null partner and
        // txn ids that are prefixes of each other ("a" < "a\0" < "ab") test the edges.
        run.push(batch(
            vec![Some("p2"), Some("p1"), None, Some("p1")],
            vec!["tx0000009", "tx0000001z", "zz", "a"],
            vec![0, 1, 2, 3],
        ));
        run.push(batch(
            vec![Some("p1"), Some("p2"), Some("p1")],
            vec!["tx0000001a", "tx0000002", "ab"],
            vec![4, 5, 6],
        ));
        run.push(batch(vec![Some("p1")], vec!["a\0"], vec![7]));
        assert_eq!(run.rows(), 8);
        let out: Vec<RecordBatch> = run
            .into_sorted_chunks(3)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            out.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        let got: Vec<(Option<String>, String)> = out
            .iter()
            .flat_map(|b| {
                let p = b.column(1).as_string::<i32>().clone();
                let t = b.column(0).as_string::<i32>().clone();
                (0..b.num_rows())
                    .map(move |i| {
                        let partner = (!p.is_null(i)).then(|| p.value(i).to_string());
                        (partner, t.value(i).to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got[0], (None, "zz".to_string()));
        let p1: Vec<&str> = got
            .iter()
            .filter(|(p, _)| p.as_deref() == Some("p1"))
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(p1, vec!["a", "a\0", "ab", "tx0000001a", "tx0000001z"]);
    }
}
