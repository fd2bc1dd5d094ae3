//! Checking raw Parquet files one by one, from their footers.
//!
//! Finance must never get a ledger with data silently left out, and an analyst whose query hits
//! a broken file must learn which file it is. Both use [`check`]: two ranged reads per file (the
//! tail, then the footer), the schema compared with the raw schema, and the footer statistics
//! of `txn_id` searched for nulls.

use crate::error::{Result, TallyError};
use crate::lake::{one_line, Lake};
use crate::schema::check_raw_schema;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::parquet_to_arrow_schema;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use serde::Serialize;
use std::sync::Arc;

/// One raw file, as recorded in a ledger commit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct InputFile {
    /// Path relative to the lake root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Rows in the file (from its footer).
    pub rows: u64,
    /// Rows with a NULL `event_time` (from the footer's statistics; `None` when a row group
    /// has none): rows no ledger day can bill, counted so they are never dropped unseen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_without_event_time: Option<u64>,
}

/// Checks one raw file; the error names it (relative to the lake root).
pub async fn check(lake: &Lake, meta: ObjectMeta) -> Result<InputFile> {
    Ok(check_with_range(lake, meta).await?.0)
}

/// [`check`], with the file's `event_time` range from its footer statistics (microseconds
/// since 1970, min and max; `None` when a row group lacks the statistic): which days the file
/// can hold, known without reading a row.
pub async fn check_with_range(
    lake: &Lake,
    meta: ObjectMeta,
) -> Result<(InputFile, Option<(i64, i64)>)> {
    let rel = lake.relative_path(&meta.location);
    let bad = |message: String| TallyError::BadRawFile {
        file: rel.clone(),
        message,
    };
    let md = match read_footer(&lake.store(), &meta).await {
        Ok(md) => md,
        Err(Footer::Store(object_store::Error::NotFound { .. })) => {
            return Err(bad("disappeared while it was being checked".into()))
        }
        // The store failed, not the file: the error names the endpoint and says to retry.
        Err(Footer::Store(e)) => return Err(lake.storage_error(e)),
        Err(Footer::Bad(e)) => {
            return Err(bad(format!(
                "not a readable Parquet file ({})",
                one_line(&e)
            )))
        }
    };
    let arrow_schema = parquet_to_arrow_schema(
        md.file_metadata().schema_descr(),
        md.file_metadata().key_value_metadata(),
    )
    .map_err(|e| bad(one_line(&e.to_string())))?;
    check_raw_schema(&arrow_schema).map_err(bad)?;
    // A column's null count per row group (`None` where a row group has no statistic).
    let null_counts = |name: &str| -> Vec<Option<u64>> {
        let Some(i) = md
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == name)
        else {
            return Vec::new();
        };
        md.row_groups()
            .iter()
            .map(|rg| rg.column(i).statistics().and_then(|s| s.null_count_opt()))
            .collect()
    };
    let nulls: u64 = null_counts("txn_id").into_iter().flatten().sum();
    if nulls > 0 {
        return Err(bad(format!(
            "{nulls} rows have a null txn_id (the dedup key)"
        )));
    }
    let event_time_nulls = null_counts("event_time");
    let rows_without_event_time = (!event_time_nulls.is_empty())
        .then(|| event_time_nulls.into_iter().sum::<Option<u64>>())
        .flatten();
    let input = InputFile {
        path: rel.clone(),
        size: meta.size,
        rows: md.file_metadata().num_rows() as u64,
        rows_without_event_time,
    };
    Ok((input, event_time_range(&md)))
}

/// The smallest and largest `event_time` of a file's row groups (see [`check_with_range`]).
fn event_time_range(md: &ParquetMetaData) -> Option<(i64, i64)> {
    let i = md
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "event_time")?;
    let mut range: Option<(i64, i64)> = None;
    for rg in md.row_groups() {
        if rg.num_rows() == 0 {
            continue;
        }
        let (lo, hi) = match rg.column(i).statistics()? {
            Statistics::Int64(s) => (*s.min_opt()?, *s.max_opt()?),
            _ => return None,
        };
        range = Some(match range {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }
    range
}

/// Whether a file or directory name below a raw table's root can hold data. As in Hive and
/// Spark, names starting with `_` or `.` cannot: a writer's `_temporary/` attempt or a hidden
/// file being written is skipped, not read half-written. [`data_file_pattern`] is the same
/// rule for DataFusion's listing.
fn is_data_name(name: &str) -> bool {
    !name.starts_with('_') && !name.starts_with('.')
}

/// The raw table's data files as the glob DataFusion's `ListingTableUrl` matches file names
/// with (it skips nested directories itself): [`is_data_name`] and a `.parquet` extension.
pub fn data_file_pattern() -> Result<glob::Pattern> {
    glob::Pattern::new("[!._]*.parquet")
        .map_err(|e| TallyError::Internal(format!("raw file pattern: {e}")))
}

/// The Parquet data files under a directory of the lake (recursively, see [`is_data_name`]),
/// sorted by path.
pub async fn list_parquet(lake: &Lake, relative: &str) -> Result<Vec<ObjectMeta>> {
    let prefix = lake.path_of(relative)?;
    let is_data = |m: &ObjectMeta| {
        m.location.extension() == Some("parquet")
            && m.location
                .prefix_match(&prefix)
                .is_some_and(|mut parts| parts.all(|p| is_data_name(p.as_ref())))
    };
    let mut metas: Vec<ObjectMeta> = lake
        .store()
        .list(Some(&prefix))
        .try_filter(|m| futures::future::ready(is_data(m)))
        .try_collect()
        .await
        .map_err(|e| lake.storage_error(e))?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(metas)
}

/// After a query failed inside the Parquet reader: finds the first of `files` (the failing
/// scan's files, relative to the lake) that fails [`check`], so the error can name it. Only
/// runs on the failure path, and reads only those files' footers.
pub async fn find_bad_file(lake: &Lake, files: &[object_store::path::Path]) -> Option<TallyError> {
    let store = lake.store();
    let mut checks = futures::stream::iter(files.iter().cloned())
        .map(|location| {
            let store = Arc::clone(&store);
            async move {
                let meta = store
                    .head(&location)
                    .await
                    .map_err(|e| lake.storage_error(e))?;
                check(lake, meta).await
            }
        })
        .buffered(16);
    while let Some(r) = checks.next().await {
        if let Err(e) = r {
            return Some(e);
        }
    }
    None
}

/// What is wrong with the footer of `meta`'s file, if its bytes are not Parquet (a store
/// failure is not the file's fault and gives `None`). For callers without a [`Lake`].
pub(crate) async fn footer_problem(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
) -> Option<String> {
    match read_footer(store, meta).await {
        Err(Footer::Bad(message)) => Some(message),
        _ => None,
    }
}

/// Why a footer could not be read: the store failed, or the bytes are not Parquet.
pub(crate) enum Footer {
    Store(object_store::Error),
    Bad(String),
}

/// Reads a Parquet footer with two ranged reads (the 8-byte tail, then the metadata).
pub(crate) async fn read_footer(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
) -> Result<ParquetMetaData, Footer> {
    let size = meta.size;
    if size < 12 {
        return Err(Footer::Bad(format!(
            "{size} bytes is too small for Parquet"
        )));
    }
    let tail = store
        .get_range(&meta.location, size - 8..size)
        .await
        .map_err(Footer::Store)?;
    if &tail[4..8] != b"PAR1" {
        return Err(Footer::Bad("no PAR1 magic at the end of the file".into()));
    }
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if len + 12 > size {
        return Err(Footer::Bad(format!(
            "footer length {len} exceeds the file size {size}"
        )));
    }
    let footer = store
        .get_range(&meta.location, size - 8 - len..size - 8)
        .await
        .map_err(Footer::Store)?;
    ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| Footer::Bad(e.to_string()))
}
