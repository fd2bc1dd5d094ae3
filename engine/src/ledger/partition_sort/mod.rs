//! Orders one hash partition of the ledger by (`partner_id`, `txn_id`) on its way into Parquet.
//!
//! Why not DataFusion's `SortExec`: it sorts every batch, converts the keys of both string
//! columns to the row format and merges the sorted batches, holding a second copy of the
//! partition; on a 10M-transaction day that sort cost about as much as the dedup itself. Here
//! each row gets one 128-bit integer key — the partner's rank among the partition's partners,
//! the first 8 bytes of `txn_id`, the row's position — the keys are sorted as plain integers,
//! and only rows whose partner and 8-byte prefix tie are compared on the full `txn_id`. Each
//! column is then concatenated once (one column at a time) and the rows are taken from it one
//! row group at a time, so the sorted copy never exceeds a row group. Short strings stay string
//! views (their bytes are inline); `txn_id`'s bytes are copied into each sorted chunk, so the
//! Parquet writer reads them in order (see `concat_column`).
//!
//! The order is total and deterministic: `txn_id` is unique within a ledger day, and equal keys
//! (impossible there) fall back to arrival order. Null partners sort first, as in SQL's
//! `ORDER BY partner_id` with NULLS FIRST.

mod order;

use crate::error::{Result, TallyError};
use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringBuilder, StringViewArray, UInt32Array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{cast, concat, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use order::sort_order;
use std::sync::Arc;

/// Rows of one partition, collected until they are written as one sorted run.
#[derive(Default)]
pub struct SortedRun {
    batches: Vec<RecordBatch>,
    /// Per batch, the rows that belong to the run (all when `None`).
    keep: Vec<Option<BooleanBuffer>>,
    rows: usize,
}

impl SortedRun {
    /// Adds a batch to the run (empty batches are dropped: row positions map to batches).
    #[cfg(test)]
    pub fn push(&mut self, batch: RecordBatch) {
        self.push_selected(batch, None);
    }

    /// Adds the rows of `batch` that `keep` selects (all when `None`). The batch is held whole
    /// and the others are left out of the order: cheaper than copying the selected rows out.
    pub fn push_selected(&mut self, batch: RecordBatch, keep: Option<BooleanBuffer>) {
        let selected = keep
            .as_ref()
            .map_or(batch.num_rows(), |k| k.count_set_bits());
        if selected == 0 {
            return;
        }
        self.rows += selected;
        self.batches.push(batch);
        self.keep.push(keep);
    }

    /// Rows selected.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes out of the run every selected row for which `drop(batch, row)` holds, and
    /// returns them (one batch per held batch that had any).
    pub fn deselect(
        &mut self,
        mut drop: impl FnMut(usize, usize) -> bool,
    ) -> Result<Vec<RecordBatch>> {
        let mut taken = Vec::new();
        for (b, (batch, keep)) in self.batches.iter().zip(self.keep.iter_mut()).enumerate() {
            let n = batch.num_rows();
            let hit: BooleanBuffer = (0..n)
                .map(|r| keep.as_ref().is_none_or(|k| k.value(r)) && drop(b, r))
                .collect();
            let hits = hit.count_set_bits();
            if hits == 0 {
                continue;
            }
            let mask = arrow::array::BooleanArray::new(hit.clone(), None);
            taken.push(arrow::compute::filter_record_batch(batch, &mask)?);
            let left = match keep.take() {
                Some(k) => &k & &!&hit,
                None => !&hit,
            };
            *keep = Some(left);
            self.rows -= hits;
        }
        Ok(taken)
    }

    /// The run's rows in (`partner_id`, `txn_id`) order, `chunk` rows per batch; empties the run.
    ///
    /// Each column is first concatenated across the run's batches (see [`concat_column`]), then
    /// the chunks are taken from it by row position: one indirection per value, where
    /// gathering from the batches needed a batch lookup per row and per column. `partner_id` is
    /// not gathered at all: the sorted rows come in runs of one partner, so it is rebuilt from
    /// the partners' ranks.
    pub fn into_sorted_chunks(
        self,
        chunk: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
        let sorted = sort_order(&self.batches, &self.keep)?;
        let schema = self
            .batches
            .first()
            .ok_or_else(|| TallyError::Internal("sorting a run of no batches".into()))?
            .schema();
        let partner = schema.index_of("partner_id")?;
        let columns = concat_columns(self.batches, schema.fields().len(), partner)?;
        // The names by rank, typed as the rows' partner_id column.
        let names = cast(&sorted.partner_names, schema.field(partner).data_type())?;
        // The chunks' schema: a column's type may have changed in `concat_column`.
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| {
                let t = c.as_ref().map_or(f.data_type(), |c| c.data_type());
                f.as_ref().clone().with_data_type(t.clone())
            })
            .collect();
        let schema: SchemaRef =
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let chunk = chunk.max(1);
        let mut next = 0;
        Ok(std::iter::from_fn(move || {
            if next >= sorted.rows.len() {
                return None;
            }
            let end = (next + chunk).min(sorted.rows.len());
            let rows = UInt32Array::from(sorted.rows[next..end].to_vec());
            let ranks = UInt32Array::from(sorted.partner_ranks[next..end].to_vec());
            next = end;
            Some(take_rows(&schema, &columns, &rows, (&names, &ranks)))
        }))
    }
}

/// The run's `width` columns, each concatenated across `batches`, except column `skip`
/// (`None`). A column's pieces are dropped as soon as it is concatenated, so the copy in
/// flight is one column, not the run.
fn concat_columns(
    batches: Vec<RecordBatch>,
    width: usize,
    skip: usize,
) -> Result<Vec<Option<ArrayRef>>> {
    let mut pieces: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(batches.len()); width];
    for batch in batches {
        for (c, column) in batch.columns().iter().enumerate() {
            if c != skip {
                pieces[c].push(Arc::clone(column));
            }
        }
    }
    let columns = pieces
        .into_iter()
        .enumerate()
        .map(|(c, column)| {
            if c == skip {
                return Ok(None);
            }
            Ok(Some(concat_column(&column)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(columns)
}

/// One column of the run: its pieces concatenated (a sequential copy of the fixed-width part).
///
/// String views whose bytes live out of line (`txn_id`) become a plain `Utf8` array instead,
/// their bytes copied once, in run order. Taking a chunk from it then copies each row's bytes
/// into sorted order, so the Parquet writer's three passes over them (min/max statistics,
/// bloom filter, encoding) read them in sequence. Taken as views, the bytes stayed where the
/// aggregate left them and each of those passes read them at random: 4% more CPU and wall
/// time on the 10M-transaction bench day (median of 5 runs each).
fn concat_column(pieces: &[ArrayRef]) -> Result<ArrayRef> {
    let views: Option<Vec<&StringViewArray>> =
        pieces.iter().map(|a| a.as_string_view_opt()).collect();
    if let Some(views) = views.filter(|v| v.iter().any(|a| !a.data_buffers().is_empty())) {
        let rows: usize = views.iter().map(|a| a.len()).sum();
        // A view's low 32 bits are its string's length.
        let bytes: usize = views
            .iter()
            .flat_map(|a| a.views().iter())
            .map(|&v| v as u32 as usize)
            .sum();
        // Utf8 offsets are i32: a column past 2 GiB of bytes stays views.
        if i32::try_from(bytes).is_ok() {
            let mut out = StringBuilder::with_capacity(rows, bytes);
            for a in views {
                out.extend(a.iter());
            }
            return Ok(Arc::new(out.finish()));
        }
    }
    let arrays: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
    Ok(concat(&arrays)?)
}

/// The rows at `positions` (in that order) of the concatenated columns, as one batch; the
/// skipped column is `values` taken at `indices`.
fn take_rows(
    schema: &SchemaRef,
    columns: &[Option<ArrayRef>],
    positions: &UInt32Array,
    (values, indices): (&ArrayRef, &UInt32Array),
) -> Result<RecordBatch> {
    let taken = columns
        .iter()
        .map(|c| match c {
            Some(c) => take(c.as_ref(), positions, None),
            None => take(values.as_ref(), indices, None),
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), taken)?)
}

#[cfg(test)]
mod tests;
