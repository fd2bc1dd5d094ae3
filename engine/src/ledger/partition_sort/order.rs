//! The sort kernel: the permutation that orders a run's selected rows by (`partner_id`,
//! `txn_id`), from one 128-bit integer key per row and a full-`txn_id` tie-break. Separate
//! from `SortedRun`, which only holds the rows and gathers them in this order.

use crate::error::{Result, TallyError};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringViewArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::HashMap;
use std::sync::Arc;

/// The position of each batch's first row in the run.
fn batch_starts(batches: &[RecordBatch]) -> Vec<usize> {
    let mut at = 0;
    batches
        .iter()
        .map(|b| {
            let start = at;
            at += b.num_rows();
            start
        })
        .collect()
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

/// The selected rows of a run in (`partner_id`, `txn_id`) order.
pub(super) struct SortOrder {
    /// Row positions across the run's batches.
    pub(super) rows: Vec<u32>,
    /// Each sorted row's partner rank: an index into `partner_names`.
    pub(super) partner_ranks: Vec<u32>,
    /// The run's partners by rank (a string view array); rank 0 is the null partner.
    pub(super) partner_names: ArrayRef,
}

/// The permutation (row positions across `batches`) that orders the selected rows by
/// (`partner_id`, `txn_id`), with each sorted row's partner rank.
pub(super) fn sort_order(
    batches: &[RecordBatch],
    keep: &[Option<BooleanBuffer>],
) -> Result<SortOrder> {
    let partners = string_views(batches, "partner_id")?;
    let txns = string_views(batches, "txn_id")?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if u32::try_from(rows).is_err() {
        return Err(TallyError::Internal(format!(
            "a ledger partition of {rows} rows is too large to sort; use more buckets"
        )));
    }

    // Number the distinct partners (a few hundred) as they come, then rank them by name, so
    // rows compare by one integer. A partner name of up to 12 bytes is its whole string view
    // (length and bytes inline), so it is looked up by that one integer. Rank 0 is reserved
    // for a null partner (sorts first).
    let mut ids_inline: HashMap<u128, u32> = HashMap::new();
    let mut ids_long: HashMap<&str, u32> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    let mut row_ids: Vec<u32> = Vec::with_capacity(rows);
    for p in &partners {
        for (ri, &view) in p.views().iter().enumerate() {
            let id = if p.is_null(ri) {
                0
            } else {
                let name = p.value(ri);
                let next = names.len() as u32 + 1;
                let id = if (view as u32) <= 12 {
                    *ids_inline.entry(view).or_insert(next)
                } else {
                    *ids_long.entry(name).or_insert(next)
                };
                if id == next {
                    names.push(name);
                }
                id
            };
            row_ids.push(id);
        }
    }
    let mut by_name: Vec<u32> = (1..=names.len() as u32).collect();
    by_name.sort_unstable_by_key(|&id| names[id as usize - 1]);
    let mut rank_of = vec![0u32; names.len() + 1];
    for (r, &id) in by_name.iter().enumerate() {
        rank_of[id as usize] = r as u32 + 1;
    }
    let partner_names: ArrayRef = Arc::new(StringViewArray::from_iter(
        std::iter::once(None).chain(by_name.iter().map(|&id| Some(names[id as usize - 1]))),
    ));

    // key = partner rank (32 bits) | txn_id prefix (64 bits) | row position (32 bits).
    let mut keys: Vec<u128> = Vec::with_capacity(rows);
    let mut position = 0usize;
    for (t, k) in txns.iter().zip(keep) {
        for ri in 0..t.len() {
            let at = position;
            position += 1;
            if k.as_ref().is_some_and(|k| !k.value(ri)) {
                continue;
            }
            let partner_rank = rank_of[row_ids[at] as usize];
            let txn_prefix = if t.is_null(ri) {
                0
            } else {
                prefix8(t.value(ri).as_bytes())
            };
            keys.push(((partner_rank as u128) << 96) | ((txn_prefix as u128) << 32) | at as u128);
        }
    }
    keys.sort_unstable();
    let partner_ranks: Vec<u32> = keys.iter().map(|&k| (k >> 96) as u32).collect();

    // Rows whose partner and 8-byte prefix tie are ordered by the whole txn_id.
    let starts = batch_starts(batches);
    let txn_bytes = |position: u32| -> &[u8] {
        let i = position as usize;
        let b = starts.partition_point(|&s| s <= i) - 1;
        let t = &txns[b];
        let r = i - starts[b];
        if t.is_null(r) {
            &[]
        } else {
            t.value(r).as_bytes()
        }
    };
    let mut order: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    let mut i = 0;
    while i < keys.len() {
        let group = keys[i] >> 32;
        let mut j = i + 1;
        while j < keys.len() && keys[j] >> 32 == group {
            j += 1;
        }
        if j - i > 1 {
            order[i..j].sort_unstable_by(|&a, &b| txn_bytes(a).cmp(txn_bytes(b)).then(a.cmp(&b)));
        }
        i = j;
    }
    Ok(SortOrder {
        rows: order,
        partner_ranks,
        partner_names,
    })
}
