//! Each raw file's transaction keys, computed once and kept beside the lake.
//!
//! The neighbour lookup ([`super::neighbours`]) asks, of every raw row naming a day near D,
//! whether its `txn_id` is one of D's. Answered from the raw files, every run decodes and
//! hashes the ids of four days of arrivals: on a 10M-transaction day, more work than the day's
//! own deduplication. The answer's input is a pure function of an immutable raw file, so it is
//! computed once per file: each row's UTC event day, `txn_key(txn_id)` and row number, sorted
//! by day and key, as a small Parquet file under [`DIR`] (the raw file's lake-relative path plus
//! `.keys.parquet`, 12 bytes a row). A later run reads that instead of the ids, walks each
//! wanted day's keys in order against the day's ([`super::day_keys`]), and reads from the raw
//! file only the rows whose key is one of D's (a row selection), which its SQL then filters
//! exactly as before: an index can only leave rows out of the reading, never decide.
//!
//! An index records the raw file's size and row count and is rebuilt when they differ (a raw
//! file is immutable by contract; this only guards against one replaced under the same name).
//! An index that cannot be read is rebuilt, one that cannot be written is only logged: the run
//! uses the keys it just computed. Deleting the folder is always safe.

use super::day_keys;
use crate::error::{Result, TallyError};
use crate::lake::{one_line, Lake};
use crate::ledger::inputs::CheckedFile;
use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, UInt32Array};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{
    DataType, Field, Int32Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType, UInt32Type,
};
use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    DefaultParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::KeyValue;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::ChunkReader;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

/// Where the indexes live, under the lake root.
pub const DIR: &str = "_tally/key_index";

/// Version of the index's content: bump when the key function or the layout changes.
const FORMAT: &str = "2 txn_key=xxh3-64 day=utc sorted=day,key-unsigned";

/// Event day of a row with no `event_time` (no day's lookup ever wants it).
pub const NO_DAY: i32 = i32::MIN;

const MICROS_PER_DAY: i64 = 86_400_000_000;

static SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_day", DataType::Int32, false),
        Field::new("txn_key", DataType::Int64, false),
        Field::new("row", DataType::UInt32, false),
    ]))
});

/// One raw file's rows: UTC event day (days since 1970, [`NO_DAY`] when `event_time` is
/// NULL), `txn_key(txn_id)` and row number in the file, sorted by day, then key as
/// [`day_keys::order`] orders it.
#[derive(Debug, Default)]
pub struct FileKeys {
    days: ScalarBuffer<i32>,
    keys: ScalarBuffer<i64>,
    rows: ScalarBuffer<u32>,
}

impl FileKeys {
    /// Only the rows naming one of `days` (ascending, each once), still in order: what a lookup
    /// keeps of an index between the passes of one run.
    pub fn only_days(&self, days: &[i32]) -> FileKeys {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for &d in days {
            let (keys, rows) = self.segment(d);
            out.0.extend(std::iter::repeat_n(d, keys.len()));
            out.1.extend_from_slice(keys);
            out.2.extend_from_slice(rows);
        }
        FileKeys {
            days: out.0.into(),
            keys: out.1.into(),
            rows: out.2.into(),
        }
    }

    /// Bytes the index takes in memory.
    pub fn memory_size(&self) -> usize {
        self.days.len() * 4 + self.keys.len() * 8 + self.rows.len() * 4
    }

    /// The keys of the rows naming `day`, in order, with their row numbers.
    pub fn segment(&self, day: i32) -> (&[i64], &[u32]) {
        let lo = self.days.partition_point(|d| *d < day);
        let hi = self.days.partition_point(|d| *d <= day);
        (&self.keys[lo..hi], &self.rows[lo..hi])
    }

    /// Whether the rows are in the order the lookup relies on, and every row number is in
    /// the file (an index that says otherwise is rebuilt).
    fn is_well_formed(&self, rows: usize) -> bool {
        self.days.len() == rows
            && self.keys.len() == rows
            && self.rows.len() == rows
            && self.rows.iter().all(|r| (*r as usize) < rows)
            && self
                .days
                .iter()
                .zip(&self.keys)
                .map(|(d, k)| (*d, day_keys::order(*k)))
                .is_sorted()
    }
}

/// Whether the index was read or had to be computed from the raw file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from [`DIR`].
    Read,
    /// Computed from the raw file (and written for the next run when the store let it).
    Built,
}

/// The day of `micros` since 1970 (UTC).
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

fn index_path(lake: &Lake, file: &CheckedFile) -> Result<StorePath> {
    lake.path_of(&format!("{DIR}/{}.keys.parquet", file.input.path))
}

fn metadata(file: &CheckedFile) -> Vec<KeyValue> {
    vec![
        KeyValue::new("tally.key_index".into(), FORMAT.to_string()),
        KeyValue::new("tally.raw_size".into(), file.input.size.to_string()),
        KeyValue::new("tally.raw_rows".into(), file.input.rows.to_string()),
    ]
}

/// The keys of `file`: its index when one matches, else computed from the raw file and
/// written as its index.
pub async fn load_or_build(lake: &Lake, file: &CheckedFile) -> Result<(FileKeys, Origin)> {
    let store = lake.store();
    let path = index_path(lake, file)?;
    // `None`: no index; `Some(Ok(None))`: one for another file or format.
    let existing: Option<Result<Option<FileKeys>>> = if lake.is_local() {
        // Read in place on local disk (no copy of the whole file into a buffer first).
        let local = std::path::PathBuf::from(format!("/{}", path.as_ref()));
        let f = file.clone();
        tokio::task::spawn_blocking(move || match std::fs::File::open(&local) {
            Ok(handle) => Some(decode(handle, &f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e.into())),
        })
        .await
        .map_err(|e| TallyError::Internal(format!("key index task: {e}")))?
    } else {
        match store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| lake.storage_error(e))?;
                Some(decode(bytes, file))
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(lake.storage_error(e)),
        }
    };
    match existing {
        Some(Ok(Some(keys))) => return Ok((keys, Origin::Read)),
        Some(Err(e)) => {
            tracing::warn!(index = %path, error = %one_line(&e.to_string()), "ledger: unreadable key index, rebuilding it")
        }
        Some(Ok(None)) | None => {}
    }
    let keys = build(lake, file).await?;
    match encode(&keys, file) {
        Ok(bytes) => {
            if let Err(e) = store.put(&path, PutPayload::from(bytes)).await {
                tracing::warn!(index = %path, error = %one_line(&e.to_string()), "ledger: key index not written (the next run computes it again)");
            }
        }
        Err(e) => {
            tracing::warn!(index = %path, error = %one_line(&e.to_string()), "ledger: key index not encoded")
        }
    }
    Ok((keys, Origin::Built))
}

/// Reads an index; `None` when it belongs to another version of the file or of the format.
fn decode<R: ChunkReader + 'static>(reader: R, file: &CheckedFile) -> Result<Option<FileKeys>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader)?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let wanted = metadata(file);
    let matches = wanted.iter().all(|w| {
        kv.iter()
            .any(|k| k.key == w.key && k.value.as_deref() == w.value.as_deref())
    });
    if !matches {
        return Ok(None);
    }
    let rows = file.input.rows as usize;
    // One batch per row group (an index of up to 1M rows is one): the decoded buffers are
    // kept as they are, not copied.
    let batches = builder
        .with_batch_size(rows.max(1))
        .build()?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let column = |i: usize| -> Result<ArrayRef> {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
        Ok(match parts.as_slice() {
            [one] => one.slice(0, one.len()),
            _ => arrow::compute::concat(&parts)?,
        })
    };
    if batches.is_empty() {
        return Ok((rows == 0).then(FileKeys::default));
    }
    let (days, keys, numbers) = (column(0)?, column(1)?, column(2)?);
    let (Some(days), Some(keys), Some(numbers)) = (
        days.as_primitive_opt::<Int32Type>(),
        keys.as_primitive_opt::<Int64Type>(),
        numbers.as_primitive_opt::<UInt32Type>(),
    ) else {
        return Ok(None);
    };
    let out = FileKeys {
        days: days.values().clone(),
        keys: keys.values().clone(),
        rows: numbers.values().clone(),
    };
    Ok(out.is_well_formed(rows).then_some(out))
}

fn encode(keys: &FileKeys, file: &CheckedFile) -> Result<Vec<u8>> {
    // Keys are random: neither a dictionary nor compression makes them smaller, and both cost
    // at every read. Days repeat and are dictionary-encoded to almost nothing.
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_dictionary_enabled("txn_key".into(), false)
        .set_column_encoding("txn_key".into(), Encoding::PLAIN)
        .set_column_dictionary_enabled("row".into(), false)
        .set_column_encoding("row".into(), Encoding::PLAIN)
        .set_max_row_group_row_count(Some(1024 * 1024))
        .set_key_value_metadata(Some(metadata(file)))
        .build();
    let mut out = Vec::with_capacity(keys.keys.len() * 9 + 1024);
    let mut writer = ArrowWriter::try_new(&mut out, Arc::clone(&SCHEMA), Some(props))?;
    const CHUNK: usize = 1024 * 1024;
    for start in (0..keys.keys.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(keys.keys.len());
        let batch = RecordBatch::try_new(
            Arc::clone(&SCHEMA),
            vec![
                Arc::new(Int32Array::new(keys.days.slice(start, end - start), None)) as ArrayRef,
                Arc::new(Int64Array::new(keys.keys.slice(start, end - start), None)) as ArrayRef,
                Arc::new(UInt32Array::new(keys.rows.slice(start, end - start), None)) as ArrayRef,
            ],
        )?;
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(out)
}

/// Computes a file's keys from its `txn_id` and `event_time` columns.
async fn build(lake: &Lake, file: &CheckedFile) -> Result<FileKeys> {
    let bad = |message: String| TallyError::BadRawFile {
        file: file.input.path.clone(),
        message,
    };
    // DataFusion's own reader over the object store: ranged reads of the two columns only.
    let reader = DefaultParquetFileReaderFactory::new(lake.store()).create_reader(
        0,
        PartitionedFile::new_from_meta(file.meta.clone()),
        None,
        &ExecutionPlanMetricsSet::new(),
    )?;
    let builder = ParquetRecordBatchStreamBuilder::new(SendReader(reader))
        .await
        .map_err(|e| bad(one_line(&e.to_string())))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["txn_id", "event_time"]);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| bad(one_line(&e.to_string())))?;
    let rows = file.input.rows as usize;
    if rows > u32::MAX as usize {
        return Err(bad(format!("{rows} rows: more than a key index numbers")));
    }
    let mut days: Vec<i32> = Vec::with_capacity(rows);
    let mut keys: Vec<i64> = Vec::with_capacity(rows);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| bad(one_line(&e.to_string())))?
    {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("no {name} column")))
        };
        push_ids(&column("txn_id")?, &mut keys).map_err(bad)?;
        let times = arrow::compute::cast(
            &column("event_time")?,
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        days.extend(times.iter().map(|t| t.map_or(NO_DAY, day_of)));
    }
    if keys.len() != rows || days.len() != rows {
        return Err(bad(format!(
            "{} rows read where the footer says {rows}",
            keys.len()
        )));
    }
    // Sorted by (day, key): a day's keys are then one run, probed in ascending order.
    let mut sorted: Vec<(i32, u64, u32)> = days
        .iter()
        .zip(&keys)
        .zip(0u32..)
        .map(|((d, k), r)| (*d, day_keys::order(*k), r))
        .collect();
    drop((days, keys));
    sorted.sort_unstable();
    Ok(FileKeys {
        days: sorted.iter().map(|t| t.0).collect(),
        keys: sorted.iter().map(|t| t.1 as i64).collect(),
        rows: sorted.iter().map(|t| t.2).collect(),
    })
}

/// DataFusion's reader as the `AsyncFileReader` Parquet's stream builder takes, keeping it
/// `Send` (Parquet implements the trait for `Box<dyn AsyncFileReader>` only).
struct SendReader(Box<dyn AsyncFileReader + Send>);

impl AsyncFileReader for SendReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        self.0.get_metadata(options)
    }
}

/// Appends `txn_key` of each id (0 for a NULL id: the footer check refuses files with any).
fn push_ids(ids: &ArrayRef, keys: &mut Vec<i64>) -> std::result::Result<(), String> {
    let key = |id: Option<&str>| id.map_or(0, tally_udfs::txn_key);
    match ids.data_type() {
        DataType::Utf8View => keys.extend(ids.as_string_view().iter().map(key)),
        DataType::Utf8 => keys.extend(ids.as_string::<i32>().iter().map(key)),
        DataType::LargeUtf8 => keys.extend(ids.as_string::<i64>().iter().map(key)),
        other => return Err(format!("txn_id has type {other}, expected a string")),
    }
    debug_assert!(ids.len() <= keys.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_days_since_1970_including_before_it() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(MICROS_PER_DAY - 1), 0);
        assert_eq!(day_of(MICROS_PER_DAY), 1);
        assert_eq!(day_of(-1), -1);
    }
}
