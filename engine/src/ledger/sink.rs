//! Streams one hash partition of the ledger plan into its Parquet file, in two steps.
//!
//! [`collect`] drains the partition's stream: transactions whose copies disagree are set
//! aside (their `variants`, to be settled), the others are held with their keys. Under a
//! `--memory-limit` the held rows are counted in the session's pool; when it refuses more,
//! what is held is written as a sorted run and holding starts again, so the file holds several
//! sorted runs instead of one (the same rows; row groups that prune a little less).
//!
//! [`finish`] runs once the day knows which transactions also have copies on a neighbouring
//! day: it takes those out (they are settled with their neighbours' copies), writes the rest
//! in (`partner_id`, `txn_id`) order, and, if one of them was already written in an early
//! run, rewrites the file without it.

use super::disputed_rows::{slice_memory_size, DisputedRows};
use super::fingerprint::Fingerprint;
use super::held_rows::HeldRows;
use super::part_writer::PartWriter;
use super::partition_sort::SortedRun;
use super::payload_disputes;
use super::ROW_GROUP_ROWS;
use crate::error::{Result, TallyError};
use crate::schema::{self, EVENT_DATE};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::HashSet;
use std::sync::Arc;

/// One partition after [`collect`]: what it holds and what it has written so far.
pub struct Collected {
    /// The partition's file.
    pub writer: PartWriter,
    /// Rows not written yet.
    pub held: HeldRows,
    /// Keys of rows already written in early sorted runs.
    pub early_keys: Vec<i64>,
    /// Fingerprint of every agreeing row (held or written).
    pub fingerprint: Fingerprint,
    /// `[txn_key, variants]` of transactions whose copies disagree.
    pub disputed: DisputedRows,
    /// The memory the held rows take, in the session's pool.
    pub reservation: MemoryReservation,
}

/// Drains one partition of the ledger plan (see the module docs).
pub async fn collect(
    mut stream: SendableRecordBatchStream,
    mut writer: PartWriter,
    reservation: MemoryReservation,
    mut disputed: DisputedRows,
) -> Result<Collected> {
    let mut fingerprint = Fingerprint::default();
    let mut held = HeldRows::default();
    let mut early_keys = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| TallyError::Internal(format!("ledger plan lost {name}")))
        };
        if column("txn_id")?.null_count() > 0 {
            return Err(TallyError::BadInput {
                message: "raw rows with a null txn_id (the dedup key) in the day's window".into(),
            });
        }
        let keys = column("txn_key")?;
        let agree = column("agree")?.as_boolean().clone();
        // Disputed rows (a few per batch) stay in the batch and are left out of the fingerprint
        // and the held rows, instead of copying every other row into a new batch.
        let agreeing = agree.true_count();
        let keep = if agreeing < agree.len() {
            let not_agree = arrow::compute::not(&agree)?;
            let others = filter_record_batch(&batch, &not_agree)?;
            let schema = others.schema();
            let variants =
                others.project(&[schema.index_of("txn_key")?, schema.index_of("variants")?])?;
            disputed.push(variants)?;
            if agreeing == 0 {
                continue;
            }
            Some(agree.values() & &agree_valid(&agree))
        } else {
            None
        };
        // The fingerprint is order-independent: take it while the rows are still in memory
        // order (after the sort every row is a random access).
        fingerprint.update_selected(&batch, keep.as_ref())?;
        let rows = batch.project(&writer.file_column_indices(&batch.schema())?)?;
        let size = slice_memory_size(&rows) + keys.get_array_memory_size();
        if reservation.try_grow(size).is_err() && held.rows() > 0 {
            early_keys.extend(held.keys());
            write_run(held.take_run(), &mut writer).await?;
            reservation.free();
        }
        // A single batch is always taken, even past the limit: progress over purity.
        if reservation.size() == 0 {
            reservation.grow(size);
        }
        held.push(rows, keep, keys.as_ref())?;
    }
    early_keys.sort_unstable();
    Ok(Collected {
        writer,
        held,
        early_keys,
        fingerprint,
        disputed,
        reservation,
    })
}

/// What one partition wrote.
pub struct Finished {
    /// Its file, if it has rows.
    pub adds: Vec<deltalake::kernel::Add>,
    /// Fingerprint of the rows written.
    pub fingerprint: Fingerprint,
    /// The rows of transactions in `settle` taken out of the file (ledger file columns).
    pub taken: Vec<RecordBatch>,
    /// `[txn_key, variants]` of disputed transactions left for the settlement SQL.
    pub disputed: Vec<RecordBatch>,
    /// The `ledger_conflicts` file of the disputes the partition settled itself, and its rows.
    pub conflicts: Option<deltalake::kernel::Add>,
    pub conflict_rows: u64,
    /// How many disputed transactions the partition settled itself.
    pub settled_here: u64,
    /// How many disputed transactions went to disk before they were settled.
    pub spilled: u64,
}

/// Takes the transactions in `settle` out of the partition, settles the disputes it can on
/// its own ([`payload_disputes`]) and writes the rest (see the module docs). `store` and
/// `rewrite` name the table's store and the file to write in place of one that must lose
/// rows it already holds; `held_schema` is the schema of the held rows; `conflicts` opens the
/// partition's `ledger_conflicts` file, written only if it settles a dispute itself (as it
/// goes, so a day of mass disputes never holds its conflict rows).
pub async fn finish(
    mut part: Collected,
    settle: &HashSet<i64>,
    day: chrono::NaiveDate,
    held_schema: SchemaRef,
    rewrite: PartWriter,
    store: Arc<dyn ObjectStore>,
    conflicts: impl FnOnce() -> Result<PartWriter>,
) -> Result<Finished> {
    let mut fingerprint = part.fingerprint;
    let mut taken = part.held.take_keys(settle)?;
    for t in &taken {
        fingerprint.remove(&with_event_date(t, day)?)?;
    }
    let mut disputed = Vec::new();
    let mut settled_here = 0;
    let mut conflicts_writer = None;
    let mut conflict_rows = 0;
    let mut conflicts = Some(conflicts);
    let spilled = part.disputed.spilled_rows();
    if spilled > 0 {
        tracing::debug!(spilled, "ledger: disputed variants read back from disk");
    }
    let batches = part.disputed.into_batches()?;
    for batch in batches {
        let batch = batch?;
        let s = payload_disputes::settle_here(&batch, settle, day)?;
        drop(batch);
        if s.ledger_rows.num_rows() > 0 {
            settled_here += s.ledger_rows.num_rows() as u64;
            fingerprint.update(&s.ledger_rows)?;
            let rows = schema::conform(&s.ledger_rows, &held_schema)?;
            part.held.push(rows, None, &s.keys)?;
            if conflicts_writer.is_none() {
                if let Some(open) = conflicts.take() {
                    conflicts_writer = Some(open()?);
                }
            }
            if let Some(w) = conflicts_writer.as_mut() {
                w.write(&s.conflicts).await?;
                conflict_rows += s.conflicts.num_rows() as u64;
            }
        }
        if s.rest.num_rows() > 0 {
            disputed.push(s.rest);
        }
    }
    let conflicts = match conflicts_writer {
        Some(w) => w.finish().await?,
        None => None,
    };
    write_run(part.held.take_run(), &mut part.writer).await?;
    part.reservation.free();
    let mut adds: Vec<_> = part.writer.finish().await?.into_iter().collect();
    let early_hit = settle
        .iter()
        .any(|k| part.early_keys.binary_search(k).is_ok());
    if early_hit {
        if let Some(old) = adds.pop() {
            let (add, removed) = rewrite_without(&store, &old, settle, rewrite).await?;
            for t in &removed {
                fingerprint.remove(&with_event_date(t, day)?)?;
            }
            taken.extend(removed);
            adds.extend(add);
        }
    }
    Ok(Finished {
        adds,
        fingerprint,
        taken,
        disputed,
        conflicts,
        conflict_rows,
        settled_here,
        spilled: spilled as u64,
    })
}

/// Copies the file of `old` into `writer` without the rows of `settle`, deletes it, and
/// returns the new file's `Add` with the rows left out. The copy streams row group by row
/// group, and keeps the file's order (it is a subsequence of it).
// parquet 59 deprecates `ParquetObjectReader` in favour of hand-written `AsyncFileReader`s;
// this rare path (a file written early under a memory limit that holds a settled key) reads
// one file we wrote, which the reader still does correctly.
#[allow(deprecated)]
async fn rewrite_without(
    store: &Arc<dyn ObjectStore>,
    old: &deltalake::kernel::Add,
    settle: &HashSet<i64>,
    mut writer: PartWriter,
) -> Result<(Option<deltalake::kernel::Add>, Vec<RecordBatch>)> {
    use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
    let path = object_store::path::Path::from(old.path.as_str());
    let reader = ParquetObjectReader::new(Arc::clone(store), path.clone());
    let mut rows = ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .build()?;
    let mut removed = Vec::new();
    while let Some(batch) = rows.next().await {
        let batch = batch?;
        let ids = batch
            .column_by_name("txn_id")
            .ok_or_else(|| TallyError::Internal("ledger file lacks txn_id".into()))?;
        let hit: arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|i| Some(settle.contains(&tally_udfs::txn_key(&string_at(ids.as_ref(), i)))))
            .collect();
        if hit.true_count() > 0 {
            removed.push(filter_record_batch(&batch, &hit)?);
        }
        writer
            .write(&filter_record_batch(&batch, &arrow::compute::not(&hit)?)?)
            .await?;
    }
    let add = writer.finish().await?;
    if let Err(e) = store.delete(&path).await {
        tracing::warn!(file = %old.path, error = %e, "could not delete a rewritten ledger file (vacuum removes it)");
    }
    Ok((add, removed))
}

fn string_at(a: &dyn Array, i: usize) -> String {
    match a.as_string_view_opt() {
        Some(v) => v.value(i).to_string(),
        None => a.as_string::<i32>().value(i).to_string(),
    }
}

/// `batch` (ledger file columns) with the `event_date` column the fingerprint covers.
pub fn with_event_date(batch: &RecordBatch, day: chrono::NaiveDate) -> Result<RecordBatch> {
    let date = ScalarValue::Date32(Some(schema::date32(day))).to_array_of_size(batch.num_rows())?;
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        EVENT_DATE,
        arrow::datatypes::DataType::Date32,
        false,
    )));
    columns.push(date);
    let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(fields));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Writes a run of rows in (`partner_id`, `txn_id`) order, a row group at a time.
pub async fn write_run(run: SortedRun, writer: &mut PartWriter) -> Result<()> {
    if run.rows() == 0 {
        return Ok(());
    }
    for chunk in run.into_sorted_chunks(ROW_GROUP_ROWS)? {
        writer.write(&chunk?).await?;
    }
    Ok(())
}

/// The rows where `agree` is not NULL (a NULL `agree` is not a ledger row). Arrow's
/// `prep_null_mask_filter` would do, but it panics on an array without a null buffer.
fn agree_valid(agree: &arrow::array::BooleanArray) -> arrow::buffer::BooleanBuffer {
    agree.nulls().map_or_else(
        || arrow::buffer::BooleanBuffer::new_set(agree.len()),
        |n| n.inner().clone(),
    )
}
