//! One micro-batch's rows: reading the new files, routing each row, aggregating.
//!
//! Routing is a pure function of (dedup state, clock, rows in file order), so a batch redone
//! after a crash routes every row the same way and writes the same totals. Each row is:
//! - a *duplicate* when its `txn_id` is already in its minute's set: dropped, counted;
//! - *late* when first seen but behind the watermark: `live_late`. When it is even older than
//!   the dedup horizon (`watermark - ttl`) its minute was forgotten, so a copy processed in an
//!   earlier batch goes unrecognised (counted as `untracked_late_rows`; reconciliation treats
//!   late events as possibly re-sent);
//! - *applied* otherwise: `live_view`.
//!
//! A row without `txn_id`, `event_time` or `ingest_time`, or whose `event_time` is more than
//! [`MAX_EVENT_AHEAD_US`] after its own `ingest_time` (an event cannot happen after its copy
//! landed, beyond clock skew), is a *bad row*: counted, not applied, and it does not move the
//! watermark — one event stamped 2099 would otherwise make every later row late.
//!
//! The watermark is fixed for the whole batch (newest event time of earlier batches minus the
//! grace), so the order of files inside a batch cannot change the outcome of a row. A row moves
//! it at most to its own `ingest_time` plus [`WATERMARK_SKEW_US`]: a partner whose clock runs
//! ahead (within the hour a row may be ahead) still has its rows applied, but cannot push the
//! watermark past the time the data actually landed and so send every other partner's rows to
//! `live_late`.

use super::checkpoint::FileRecord;
use super::dedup::{key_of, minute_of, DedupState};
use crate::error::{Result, TallyError};
use crate::lake::{one_line, Lake};
use crate::schema;
use arrow::array::{Array, AsArray, BooleanBuilder, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::sync::Arc;

/// How far an `event_time` may be ahead of its row's `ingest_time` (partner clock skew) before
/// the row is bad: one hour.
pub const MAX_EVENT_AHEAD_US: i64 = 3_600_000_000;

/// How far ahead of its own `ingest_time` a row may move the watermark (µs): 5 s of clock skew
/// between a partner and the lander.
pub const WATERMARK_SKEW_US: i64 = 5_000_000;

/// The event-time clock a batch runs with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// Rows with an `event_time` before this are late (µs); `None` before any event.
    pub watermark: Option<i64>,
    /// Rows before this are older than the dedup state remembers (µs).
    pub horizon: Option<i64>,
}

impl Clock {
    /// The clock for a batch after `max_event` was the newest event time seen.
    pub fn after(max_event: Option<i64>, grace_us: i64, ttl_us: i64) -> Self {
        let watermark = max_event.map(|m| m.saturating_sub(grace_us));
        Self {
            watermark,
            horizon: watermark.map(|w| w.saturating_sub(ttl_us)),
        }
    }
}

/// A file's rows, or why it was quarantined.
pub enum FileRows {
    /// Rows in the live input schema.
    Rows(Vec<RecordBatch>),
    /// The file cannot be read as raw payments; the message names what is wrong.
    Quarantined(String),
    /// The file is gone from the store (a lifecycle rule, an operator).
    Missing,
}

/// Reads the files of a batch (a few at a time), in order, as `columns` (a projection of
/// [`schema::LIVE_INPUT`]: all of it for a batch, only the keys to rebuild the dedup state).
pub async fn read_files(
    lake: &Lake,
    files: &[FileRecord],
    columns: &SchemaRef,
) -> Result<Vec<FileRows>> {
    futures::stream::iter(files.iter().cloned())
        .map(|f| read_file(lake.clone(), f, Arc::clone(columns)))
        .buffered(4)
        .try_collect()
        .await
}

async fn read_file(lake: Lake, file: FileRecord, columns: SchemaRef) -> Result<FileRows> {
    let location = lake.file_path(&file.path)?;
    // One GET per file: a micro-batch's files are small, and on S3 one request beats the
    // footer-then-ranges dance of a streaming reader.
    let bytes = match lake.store().get(&location).await {
        Ok(got) => got.bytes().await.map_err(|e| lake.storage_error(e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(FileRows::Missing),
        Err(e) => return Err(lake.storage_error(e)),
    };
    let path = file.path.clone();
    let decoded = tokio::task::spawn_blocking(move || decode(bytes, &columns))
        .await
        .map_err(|e| TallyError::Internal(format!("decoding {path}: {e}")))?;
    Ok(match decoded {
        Ok(rows) => FileRows::Rows(rows),
        Err(why) => FileRows::Quarantined(format!("{}: {why}", file.path)),
    })
}

/// Decodes a raw file into the live input schema; `Err` says why it is not a raw file.
fn decode(
    bytes: bytes::Bytes,
    columns: &SchemaRef,
) -> std::result::Result<Vec<RecordBatch>, String> {
    let text = |e: &dyn std::fmt::Display| one_line(&e.to_string());
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("not a readable Parquet file ({})", text(&e)))?;
    schema::check_raw_schema(builder.schema())?;
    let mask = ProjectionMask::columns(
        builder.parquet_schema(),
        columns.fields().iter().map(|f| f.name().as_str()),
    );
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| text(&e))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| text(&e))?;
        let b = schema::conform(&b, columns).map_err(|e| text(&e))?;
        let nulls = b.column_by_name("txn_id").map_or(0, |c| c.null_count());
        if nulls > 0 {
            return Err(format!("{nulls} rows have a null txn_id (the dedup key)"));
        }
        out.push(b);
    }
    Ok(out)
}

/// What routing did with a batch's rows.
#[derive(Debug, Default, Clone)]
pub struct Routed {
    /// Rows for `live_view`.
    pub applied: Vec<RecordBatch>,
    /// Rows for `live_late`.
    pub late: Vec<RecordBatch>,
    /// Rows read.
    pub rows: u64,
    /// Rows dropped as copies of a `txn_id` seen within the TTL.
    pub deduped: u64,
    /// Rows routed to `live_late`.
    pub late_rows: u64,
    /// Of those, rows older than the dedup horizon (not checked for copies).
    pub untracked_late_rows: u64,
    /// Rows without an `event_time`, `txn_id` or `ingest_time` (cannot be windowed or placed
    /// in time), or with an `event_time` too far ahead of their `ingest_time`; counted, not
    /// applied.
    pub bad_rows: u64,
    /// Newest event time among the rows, each capped at its `ingest_time` plus
    /// [`WATERMARK_SKEW_US`] (µs): what the watermark follows.
    pub max_event: Option<i64>,
    /// Newest `ingest_time` among applied rows (µs): freshness.
    pub newest_ingest: Option<i64>,
}

/// Routes `batches` (in order) through `state` under `clock`. With `keep_rows` false only the
/// state and counts are updated (rebuilding the state on restart).
pub fn route(
    state: &mut DedupState,
    clock: Clock,
    batches: &[RecordBatch],
    keep_rows: bool,
) -> Result<Routed> {
    let mut out = Routed::default();
    for batch in batches {
        let txn = batch
            .column_by_name("txn_id")
            .ok_or_else(|| TallyError::Internal("live input lacks txn_id".into()))?
            .as_string::<i32>();
        let event = batch
            .column_by_name("event_time")
            .ok_or_else(|| TallyError::Internal("live input lacks event_time".into()))?
            .as_primitive::<TimestampMicrosecondType>();
        let ingest = batch
            .column_by_name("ingest_time")
            .map(|c| c.as_primitive::<TimestampMicrosecondType>());
        let n = batch.num_rows();
        let mut applied = BooleanBuilder::with_capacity(n);
        let mut late = BooleanBuilder::with_capacity(n);
        for i in 0..n {
            out.rows += 1;
            let unplaced = |ing: &arrow::array::PrimitiveArray<TimestampMicrosecondType>| {
                ing.is_null(i) || event.value(i) > ing.value(i).saturating_add(MAX_EVENT_AHEAD_US)
            };
            if txn.is_null(i) || event.is_null(i) || ingest.is_some_and(unplaced) {
                out.bad_rows += 1;
                applied.append_value(false);
                late.append_value(false);
                continue;
            }
            let e = event.value(i);
            let mark = ingest.map_or(e, |ing| {
                e.min(ing.value(i).saturating_add(WATERMARK_SKEW_US))
            });
            out.max_event = Some(out.max_event.map_or(mark, |m| m.max(mark)));
            let (to_view, to_late) = if !state.insert(minute_of(e), key_of(txn.value(i).as_bytes()))
            {
                out.deduped += 1;
                (false, false)
            } else if clock.horizon.is_some_and(|h| e < h) {
                // Its minute was already forgotten: a copy from an earlier batch goes unseen.
                out.untracked_late_rows += 1;
                (false, true)
            } else if clock.watermark.is_some_and(|w| e < w) {
                (false, true)
            } else {
                (true, false)
            };
            out.late_rows += u64::from(to_late);
            if let Some(ingest) = ingest.filter(|a| to_view && !a.is_null(i)) {
                let t = ingest.value(i);
                out.newest_ingest = Some(out.newest_ingest.map_or(t, |m| m.max(t)));
            }
            applied.append_value(to_view);
            late.append_value(to_late);
        }
        if keep_rows {
            let applied = filter_record_batch(batch, &applied.finish())?;
            if applied.num_rows() > 0 {
                out.applied.push(applied);
            }
            let late = filter_record_batch(batch, &late.finish())?;
            if late.num_rows() > 0 {
                out.late.push(late);
            }
        }
    }
    Ok(out)
}

/// Per-minute, per-partner totals of `rows` (`sql/live_window.sql`), in the live table schema.
pub async fn window_totals(
    ctx: &SessionContext,
    rows: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let table = MemTable::try_new(Arc::clone(&schema::LIVE_INPUT), vec![rows])?;
    ctx.deregister_table("batch_rows")?;
    ctx.register_table("batch_rows", Arc::new(table))?;
    let totals = ctx
        .sql(crate::jobs_sql::LIVE_WINDOW)
        .await?
        .collect()
        .await?;
    ctx.deregister_table("batch_rows")?;
    totals
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| Ok(schema::conform(b, &schema::LIVE_WINDOW)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, StringArray, TimestampMicrosecondArray};

    const MIN: i64 = 60_000_000;

    /// Rows of (txn_id, partner, event_time, ingest_time) in the live input schema.
    fn rows(rows: &[(&str, &str, i64, Option<i64>)]) -> RecordBatch {
        let n = rows.len();
        let ts = |v: Vec<Option<i64>>| {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
                as arrow::array::ArrayRef
        };
        let strings = |f: &dyn Fn(usize) -> String| {
            Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>())) as arrow::array::ArrayRef
        };
        let schema = Arc::clone(&schema::LIVE_INPUT);
        let columns = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "txn_id" => strings(&|i| rows[i].0.to_string()),
                "partner_id" => strings(&|i| rows[i].1.to_string()),
                "event_time" => ts(rows.iter().map(|r| Some(r.2)).collect()),
                "ingest_time" => ts(rows.iter().map(|r| r.3).collect()),
                "amount" => Arc::new(
                    Decimal128Array::from(vec![100i128; n])
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ) as arrow::array::ArrayRef,
                "currency" => strings(&|_| "EUR".into()),
                _ => strings(&|_| "ok".into()),
            })
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
        schema::conform(&batch, &schema).unwrap()
    }

    #[test]
    fn a_partner_ahead_cannot_move_the_watermark_past_the_landing_time() {
        let t = 1_000 * MIN;
        let mut state = DedupState::default();
        // Partner "fast" stamps its events 50 minutes ahead of when they land: applied (within
        // the hour), but the watermark follows the landing time plus the skew.
        let first = rows(&[
            ("a", "fast", t + 50 * MIN, Some(t)),
            ("b", "slow", t, Some(t)),
        ]);
        let r = route(&mut state, Clock::default(), &[first], true).unwrap();
        assert_eq!(r.applied.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(r.max_event, Some(t + WATERMARK_SKEW_US));
        // The next batch's on-time rows of the other partner are applied, not late.
        let clock = Clock::after(r.max_event, 2 * MIN, 60 * MIN);
        let next = rows(&[("c", "slow", t + MIN / 2, Some(t + MIN))]);
        let r = route(&mut state, clock, &[next], true).unwrap();
        assert_eq!((r.late_rows, r.applied.len()), (0, 1));
    }

    #[test]
    fn a_row_without_ingest_time_is_bad_and_moves_nothing() {
        let t = 1_000 * MIN;
        let mut state = DedupState::default();
        let batch = rows(&[("a", "p", 4_000_000 * MIN, None), ("b", "p", t, Some(t))]);
        let r = route(&mut state, Clock::default(), &[batch], true).unwrap();
        assert_eq!(r.bad_rows, 1);
        assert_eq!(r.max_event, Some(t));
    }
}
