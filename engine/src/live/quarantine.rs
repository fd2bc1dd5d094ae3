//! `live_quarantine`: every raw file the live mode did not read, with why, for good.
//!
//! A quarantined file is otherwise remembered only in recent checkpoints and in batch
//! metadata of a Delta log kept one hour. Each batch appends its quarantined files here under
//! the same application transaction as `live_view` (`tally-live`, batch), so a redo after a
//! crash does not record them twice.

use super::checkpoint::FileRecord;
use super::sink;
use crate::delta;
use crate::error::Result;
use crate::lake::{layout, Lake};
use crate::schema::LIVE_QUARANTINE;
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::DeltaTable;
use std::collections::HashMap;
use std::sync::Arc;

/// Opens (creating if needed) `live_quarantine`.
pub async fn open(lake: &Lake) -> Result<DeltaTable> {
    let url = lake.url_of(layout::LIVE_QUARANTINE)?;
    delta::open_or_create(
        lake,
        &url,
        layout::LIVE_QUARANTINE,
        &LIVE_QUARANTINE,
        &[],
        &[],
    )
    .await
}

/// Appends batch `n`'s quarantined files (`(file, reason)`); nothing when there are none or
/// the batch is already recorded.
pub async fn record(
    lake: &Lake,
    table: &mut DeltaTable,
    n: u64,
    files: &[(FileRecord, String)],
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(files.len());
    for (f, _) in files {
        rows.push(footer_rows(lake, f).await);
    }
    let now = chrono::Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            files.iter().map(|(f, _)| f.path.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            files.iter().map(|(_, r)| r.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(files.iter().map(|_| now))
                .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(
            files.iter().map(|_| i64::try_from(n).unwrap_or(i64::MAX)),
        )),
        Arc::new(Int64Array::from_iter_values(
            files
                .iter()
                .map(|(f, _)| i64::try_from(f.size).unwrap_or(i64::MAX)),
        )),
        Arc::new(Int64Array::from(rows)),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&LIVE_QUARANTINE), columns)?;
    sink::append(
        lake,
        layout::LIVE_QUARANTINE,
        table,
        n,
        &[batch],
        HashMap::new(),
    )
    .await?;
    Ok(())
}

/// The row count in `file`'s Parquet footer, when it has a readable one (quarantined files
/// are few: a HEAD and two ranged reads each).
async fn footer_rows(lake: &Lake, file: &FileRecord) -> Option<i64> {
    use object_store::ObjectStoreExt;
    let location = lake.file_path(&file.path).ok()?;
    let store = lake.store();
    let meta = store.head(&location).await.ok()?;
    let md = crate::raw_files::read_footer(&store, &meta).await.ok()?;
    Some(md.file_metadata().num_rows())
}
