//! A raw landing zone kept as a Delta table (SPEC allows it; `tally ingest` writes one) is read
//! through its log: exactly the newest snapshot's active files, as `tally sql` and Spark read
//! it. A directory listing would also find files a `DELETE` or `OPTIMIZE` replaced (their rows
//! counted twice, deleted rows billed) and the uncommitted files of a crashed writer.

use crate::error::{Result, TallyError};
use crate::lake::{layout, one_line, Lake};
use crate::schema;
use chrono::NaiveDate;
use object_store::ObjectMeta;

/// True when `raw_payments` is a Delta table.
pub async fn is_delta(lake: &Lake) -> Result<bool> {
    Ok(lake
        .list_dirs(layout::RAW_PAYMENTS)
        .await?
        .iter()
        .any(|d| d == "_delta_log"))
}

/// The active files of the raw Delta table whose `ingest_date` is one of `days`, sorted by
/// path, or `None` when `raw_payments` is plain Parquet folders (then they are listed).
///
/// Refused, naming the table: a protocol that asks readers for more than plain files
/// (deletion vectors, column mapping: their rows are not what the files hold), a table not
/// partitioned by `ingest_date` (a file's arrival day is the ledger's window), and a file
/// outside the lake root.
pub async fn files_of_days(
    lake: &Lake,
    days: &[NaiveDate],
) -> Result<Option<Vec<(ObjectMeta, NaiveDate)>>> {
    if !is_delta(lake).await? {
        return Ok(None);
    }
    let url = lake.url_of(layout::RAW_PAYMENTS)?;
    let refuse = |message: String| TallyError::TableOpen {
        name: "raw_payments".into(),
        location: url.to_string(),
        message,
    };
    let table = crate::delta::open(lake, &url)
        .await
        .map_err(|e| refuse(one_line(&e.to_string())))?;
    let snapshot = table
        .snapshot()
        .map_err(|e| refuse(one_line(&e.to_string())))?;
    if snapshot.protocol().min_reader_version() > 1 {
        return Err(refuse(format!(
            "its Delta protocol (reader version {}) asks readers for features tally does not apply (deletion vectors, column mapping); rewrite it without them",
            snapshot.protocol().min_reader_version()
        )));
    }
    if !snapshot
        .metadata()
        .partition_columns()
        .iter()
        .any(|c| c == schema::INGEST_DATE)
    {
        return Err(refuse(format!(
            "the raw Delta table is not partitioned by {}; the ledger reads files by arrival day",
            schema::INGEST_DATE
        )));
    }
    let root = lake.root().as_str().to_string();
    let mut files = Vec::new();
    for view in snapshot.log_data().iter() {
        let path = view.path().to_string();
        let day = view
            .partition_values_map()
            .get(schema::INGEST_DATE)
            .cloned()
            .flatten()
            .and_then(|v| NaiveDate::parse_from_str(&v, "%Y-%m-%d").ok())
            .ok_or_else(|| {
                refuse(format!(
                    "{path}: no valid {} partition value",
                    schema::INGEST_DATE
                ))
            })?;
        if !days.contains(&day) {
            continue;
        }
        let relative = lake_relative(&root, &path).map_err(refuse)?;
        files.push((
            ObjectMeta {
                location: lake.file_path(&relative)?,
                last_modified: chrono::DateTime::from_timestamp_millis(view.modification_time())
                    .unwrap_or_default(),
                size: u64::try_from(view.size()).unwrap_or(0),
                e_tag: None,
                version: None,
            },
            day,
        ));
    }
    files.sort_by(|a, b| a.0.location.cmp(&b.0.location));
    Ok(Some(files))
}

/// The lake-relative path of a raw Delta table's `add` (as delta-rs gives it, decoded):
/// relative paths are under the table; an absolute URL (Delta allows them, e.g. after a
/// shallow clone) is read when it is under the lake root. An absolute URL under another
/// root that still names this table's folder (`…/raw/payments/…`) is the same file in a lake
/// that was copied or restored under another prefix (to S3, another bucket or folder): it is
/// read at that place in this lake. Anything else is `Err(reason)`.
pub(crate) fn lake_relative(lake_root: &str, path: &str) -> std::result::Result<String, String> {
    let Ok(url) = url::Url::parse(path) else {
        return Ok(format!("{}/{path}", layout::RAW_PAYMENTS));
    };
    let decode = |p: &str| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .to_string()
    };
    let root = lake_root.trim_end_matches('/');
    if let Some(rest) = url
        .as_str()
        .strip_prefix(root)
        .and_then(|r| r.strip_prefix('/'))
    {
        return Ok(decode(rest));
    }
    let table = format!("/{}/", layout::RAW_PAYMENTS);
    match url.path().rfind(&table) {
        Some(at) => Ok(format!(
            "{}/{}",
            layout::RAW_PAYMENTS,
            decode(&url.path()[at + table.len()..])
        )),
        None => Err(format!(
            "{path}: an absolute path outside the lake ({root}) and outside any raw/payments folder; tally reads only files under the lake root"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::lake_relative;

    #[test]
    fn add_paths_relative_absolute_inside_and_outside_the_lake() {
        let root = "file:///data/lake/";
        assert_eq!(
            lake_relative(root, "ingest_date=2026-11-20/part one.parquet").unwrap(),
            "raw/payments/ingest_date=2026-11-20/part one.parquet"
        );
        assert_eq!(
            lake_relative(
                root,
                "file:///data/lake/raw/payments/ingest_date=2026-11-20/part one.parquet"
            )
            .unwrap(),
            "raw/payments/ingest_date=2026-11-20/part one.parquet"
        );
        let outside = lake_relative(root, "s3://elsewhere/raw/a.parquet").unwrap_err();
        assert!(outside.contains("outside the lake"), "{outside}");
        // A sibling directory sharing the root's prefix is outside too.
        assert!(lake_relative(root, "file:///data/lake2/a.parquet").is_err());
        // The same lake copied from elsewhere: its raw table's files are read here.
        assert_eq!(
            lake_relative(
                root,
                "s3://old-bucket/prod/lake/raw/payments/ingest_date=2026-11-20/part%20two.parquet"
            )
            .unwrap(),
            "raw/payments/ingest_date=2026-11-20/part two.parquet"
        );
        assert_eq!(
            lake_relative(
                root,
                "file:///restored/lake/raw/payments/ingest_date=2026-11-20/a.parquet"
            )
            .unwrap(),
            "raw/payments/ingest_date=2026-11-20/a.parquet"
        );
    }
}
