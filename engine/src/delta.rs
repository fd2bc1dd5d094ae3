//! Opening, creating and committing to the lake's Delta tables.
//!
//! delta-rs builds its own object store from a URL plus options; this module hands it the same
//! endpoint, credentials and retry settings the lake uses, so Delta and Parquet access to one
//! lake never disagree about how to reach it. It also holds the one commit path tally's jobs
//! use for a day-partition replacement: remove the day's files, add the new ones, in one
//! version, with tally's own metadata in the commit info.

use crate::error::{Result, TallyError};
use crate::lake::Lake;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, MetadataExt, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use std::collections::HashMap;
use url::Url;

/// Opens the Delta table at `url` (inside or beside `lake`'s storage).
pub async fn open(lake: &Lake, url: &Url) -> Result<DeltaTable> {
    if url.scheme() == "file"
        && url
            .to_file_path()
            .is_ok_and(|p| !p.join("_delta_log").is_dir())
    {
        return Err(TallyError::Delta(DeltaTableError::NotATable(
            url.to_string(),
        )));
    }
    let table = if url.scheme() == "file" {
        deltalake::open_table(url.clone()).await?
    } else {
        deltalake::open_table_with_storage_options(url.clone(), lake.storage_options().clone())
            .await?
    };
    Ok(table)
}

/// Opens the table at `url`, creating it with `schema` and `partition_by` if it does not exist.
/// Two processes creating it at once is fine: the loser of the race opens the winner's table.
pub async fn open_or_create(
    lake: &Lake,
    url: &Url,
    name: &str,
    schema: &SchemaRef,
    partition_by: &[&str],
    properties: &[(&str, &str)],
) -> Result<DeltaTable> {
    let local_missing = url.scheme() == "file"
        && url
            .to_file_path()
            .is_ok_and(|p| !p.join("_delta_log").is_dir());
    if !local_missing {
        match open(lake, url).await {
            Ok(t) => return Ok(t),
            Err(TallyError::Delta(DeltaTableError::NotATable(_))) => {}
            Err(e) => return Err(e),
        }
    }
    if url.scheme() == "file" {
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(path)?;
        }
    }
    let kernel: StructType = schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| TallyError::Internal(format!("schema of {name}: {e}")))?;
    let builder = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(lake.storage_options().clone())
        .build()?;
    let created = builder
        .create()
        .with_table_name(name)
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(partition_by.iter().map(|s| s.to_string()))
        .with_configuration(properties.iter().map(|(k, v)| (*k, Some(*v))))
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        // Another process created it between our check and our commit.
        Err(_) => open(lake, url).await,
    }
}

/// The files of one value of a partition column in `table`'s snapshot, with their rows.
pub(crate) async fn partition_files(
    table: &DeltaTable,
    column: &str,
    value: &str,
) -> Result<Vec<(Action, Option<usize>)>> {
    Ok(table
        .get_active_add_actions_by_partitions(&[])
        .try_filter(|f| {
            let hit = f
                .partition_values_map()
                .get(column)
                .is_some_and(|v| v.as_deref() == Some(value));
            futures::future::ready(hit)
        })
        .map_ok(|f| (Action::Remove(f.remove_action(true)), f.num_records()))
        .try_collect()
        .await?)
}

/// Whether one value of a partition column has files in `table`'s snapshot (a ledger day
/// that was built with rows).
pub async fn partition_exists(table: &DeltaTable, column: &str, value: &str) -> Result<bool> {
    Ok(!partition_files(table, column, value).await?.is_empty())
}

/// Rows of one partition in `table`'s snapshot, from the `numRecords` of its files; `None`
/// when a file does not say.
pub async fn partition_rows(table: &DeltaTable, column: &str, value: &str) -> Result<Option<u64>> {
    Ok(partition_files(table, column, value)
        .await?
        .iter()
        .map(|(_, n)| n.map(|n| n as u64))
        .sum())
}

/// Replaces one value of a partition column in a single commit: removes every file of that
/// partition and adds `adds`.
///
/// The commit is made against `table`'s snapshot as the caller read it (at the start of its
/// run), not the newest one, so a run that stalled cannot replace what a newer run of the same
/// day committed. When Delta's conflict checker rejects it, the commits made since are read:
/// if one of them added or removed files of this partition (a newer run of the same day) or
/// changed the partitioning, nothing is committed ([`TallyError::Busy`]); if they
/// only touched other partitions or the table's metadata (another day's run creating the
/// table or adding a column at the same moment), the same replacement is committed on the
/// newest snapshot. Parallel days therefore all commit, as a scheduler expects. A schema
/// change goes in its own commit first ([`ensure_columns`]), never inside a day's.
pub async fn replace_partition(
    table: &DeltaTable,
    column: &str,
    value: &str,
    adds: Vec<Add>,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<(u64, usize)> {
    replace_partition_as(table, column, value, adds, app_metadata, Replacement::Data).await
}

/// What a partition replacement does to the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// New rows (a ledger run): a Delta `WRITE` whose files change data.
    Data,
    /// The same rows in other files (`tally optimize`): a Delta `OPTIMIZE` whose adds and
    /// removes say `dataChange: false`, so readers of the log's changes skip them.
    Compaction { target_size: i64 },
}

/// [`replace_partition`], saying what the replacement is.
pub async fn replace_partition_as(
    table: &DeltaTable,
    column: &str,
    value: &str,
    adds: Vec<Add>,
    app_metadata: HashMap<String, serde_json::Value>,
    kind: Replacement,
) -> Result<(u64, usize)> {
    /// Other days' commits can keep arriving; each retry needs one to have landed.
    const ATTEMPTS: usize = 16;
    let read_version = table.snapshot()?.version();
    let mut current = table.clone();
    for _ in 0..ATTEMPTS {
        let conflict =
            match commit_replacement(&current, column, value, &adds, &app_metadata, kind).await? {
                Ok(done) => return Ok(done),
                Err(conflict) => conflict,
            };
        let mut newest = current.clone();
        newest.update_state().await?;
        let from = current.snapshot()?.version() + 1;
        let to = newest.snapshot()?.version();
        if let Some(why) = touches_partition(&newest, from, to, column, value).await? {
            return Err(TallyError::Busy {
                message: format!(
                    "{column}={value} was committed by another run after this one read version {read_version} ({why}; {conflict}); nothing was committed: run again to build from the newer state"
                ),
            });
        }
        tracing::info!(%column, %value, from, to, "commits of other partitions or metadata since the read: committing on the newest snapshot");
        current = newest;
    }
    Err(TallyError::Busy {
        message: format!(
            "{column}={value}: other commits kept landing first ({ATTEMPTS} attempts since version {read_version}); nothing was committed: run again"
        ),
    })
}

/// One replacement commit against `table`'s snapshot; `Ok(Err(conflict))` when Delta's
/// conflict checker rejected it.
async fn commit_replacement(
    table: &DeltaTable,
    column: &str,
    value: &str,
    adds: &[Add],
    app_metadata: &HashMap<String, serde_json::Value>,
    kind: Replacement,
) -> Result<std::result::Result<(u64, usize), String>> {
    let snapshot = table.snapshot()?;
    let data_change = kind == Replacement::Data;
    let mut actions: Vec<Action> = partition_files(table, column, value)
        .await?
        .into_iter()
        .map(|(a, _)| match a {
            Action::Remove(mut r) => {
                r.data_change = data_change;
                Action::Remove(r)
            }
            other => other,
        })
        .collect();
    let removed = actions.len();
    actions.extend(adds.iter().cloned().map(|mut a| {
        a.data_change = data_change;
        Action::Add(a)
    }));
    let predicate = Some(format!("{column} = '{value}'"));
    let operation = match kind {
        Replacement::Data => DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: Some(vec![column.to_string()]),
            predicate,
        },
        Replacement::Compaction { target_size } => DeltaOperation::Optimize {
            predicate,
            target_size,
        },
    };
    let commit = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .with_app_metadata(app_metadata.clone())
        .build(Some(snapshot), table.log_store(), operation)
        .await;
    match commit {
        Ok(c) => Ok(Ok((c.version(), removed))),
        Err(DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(conflict),
        }) => Ok(Err(conflict.to_string())),
        Err(other) => Err(TallyError::Delta(other)),
    }
}

/// Why the commits `from..=to` of `table` stand in the way of replacing `column=value`: one
/// added or removed a file of that partition, or changed the partition columns. `None` when
/// they touched only other partitions or the metadata (the retry commits on the newest
/// snapshot, so delta-rs checks its schema and protocol then).
async fn touches_partition(
    table: &DeltaTable,
    from: u64,
    to: u64,
    column: &str,
    value: &str,
) -> Result<Option<String>> {
    let partitioning = table.snapshot()?.metadata().partition_columns().to_vec();
    for version in from..=to {
        let Some(bytes) = table.log_store().read_commit_entry(version).await? else {
            return Ok(Some(format!("version {version} of the log cannot be read")));
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| TallyError::Internal(format!("Delta log version {version}: {e}")))?;
            for kind in ["add", "remove"] {
                let Some(file) = action.get(kind) else {
                    continue;
                };
                let part = file
                    .get("partitionValues")
                    .and_then(|p| p.get(column))
                    .and_then(|v| v.as_str());
                if part.is_none_or(|p| p == value) {
                    return Ok(Some(format!(
                        "version {version} {}s files of {column}={value}",
                        if kind == "add" { "add" } else { "remove" }
                    )));
                }
            }
            if let Some(meta) = action.get("metaData") {
                let columns: Vec<String> = meta
                    .get("partitionColumns")
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .unwrap_or_default();
                if columns != partitioning || columns != [column.to_string()] {
                    return Ok(Some(format!(
                        "version {version} changed the partition columns to {columns:?}"
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// The schema update that gives `table` every column of `wanted` it lacks (as nullable
/// columns, so existing rows read as NULL), or `None` when it has them all. Old lakes keep
/// working when tally adds a column to one of its tables.
fn added_columns(table: &DeltaTable, wanted: &SchemaRef) -> Result<Option<Action>> {
    let snapshot = table.snapshot()?;
    let current = snapshot.schema();
    let missing: Vec<_> = wanted
        .fields()
        .iter()
        .filter(|f| current.field(f.name()).is_none())
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    let extra: StructType = (&arrow::datatypes::Schema::new(missing))
        .try_into_kernel()
        .map_err(|e| TallyError::Internal(format!("schema update: {e}")))?;
    let fields: Vec<_> = current.fields().chain(extra.fields()).cloned().collect();
    let schema = StructType::try_new(fields)
        .map_err(|e| TallyError::Internal(format!("schema update: {e}")))?;
    let metadata = snapshot
        .metadata()
        .clone()
        .with_schema(&schema)
        .map_err(|e| TallyError::Internal(format!("schema update: {e}")))?;
    Ok(Some(Action::Metadata(metadata)))
}

/// Adds the columns of `wanted` that `table` lacks, in their own commit (see
/// [`added_columns`]), and returns the table at the new version.
pub async fn ensure_columns(table: DeltaTable, wanted: &SchemaRef) -> Result<DeltaTable> {
    let Some(update) = added_columns(&table, wanted)? else {
        return Ok(table);
    };
    let operation = DeltaOperation::AddColumn { fields: Vec::new() };
    let committed = CommitBuilder::from(CommitProperties::default())
        .with_actions(vec![update])
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await;
    let mut table = table;
    if let Err(e) = committed {
        // Another process may have added the same columns first.
        table.update_state().await?;
        if added_columns(&table, wanted)?.is_some() {
            return Err(e.into());
        }
        return Ok(table);
    }
    table.update_state().await?;
    Ok(table)
}

/// Appends `batches` (conformed to the table's schema) in one commit with `app_metadata` in
/// the commit info. Blind appends from concurrent writers do not conflict. Returns the version.
pub async fn append(
    table: &DeltaTable,
    batches: Vec<arrow::array::RecordBatch>,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<u64> {
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    let mut table = table.clone();
    table.update_state().await?;
    let mut writer = RecordBatchWriter::for_table(&table)?;
    for b in batches {
        let b = crate::schema::conform(&b, &writer.arrow_schema())?;
        writer.write(b).await?;
    }
    let adds = writer.flush().await?;
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let commit = CommitBuilder::from(CommitProperties::default())
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .with_app_metadata(app_metadata)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    Ok(commit.version())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Options;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn add(day: &str, name: &str) -> Add {
        Add {
            path: format!("day={day}/{name}.parquet"),
            partition_values: HashMap::from([("day".to_string(), Some(day.to_string()))]),
            size: 1,
            modification_time: 0,
            data_change: true,
            stats: Some(r#"{"numRecords":1}"#.into()),
            ..Default::default()
        }
    }

    /// Replaces partition `day` of `table` (as the handle last read it) with one file `name`.
    async fn put(table: &DeltaTable, day: &str, name: &str) -> Result<(u64, usize)> {
        replace_partition(table, "day", day, vec![add(day, name)], HashMap::new()).await
    }

    /// A run that read version v cannot replace a partition that a newer run replaced after
    /// v; a replace of another partition from the same old snapshot still commits.
    #[tokio::test]
    async fn a_replace_from_a_stale_snapshot_of_the_same_partition_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&dir.path().to_string_lossy(), &S3Options::default()).unwrap();
        let url = lake.url_of("t").unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("day", DataType::Utf8, true),
        ]));
        let table = open_or_create(&lake, &url, "t", &schema, &["day"], &[])
            .await
            .unwrap();
        let stale = table.clone();
        put(&table, "a", "newer").await.unwrap();
        let e = put(&stale, "a", "stale").await.unwrap_err();
        assert!(matches!(e, TallyError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("committed by another run"), "{e}");
        put(&stale, "b", "other").await.unwrap();
        let now = open(&lake, &url).await.unwrap();
        let mut paths: Vec<String> = now
            .get_active_add_actions_by_partitions(&[])
            .map_ok(|f| f.path().to_string())
            .try_collect()
            .await
            .unwrap();
        paths.sort();
        assert_eq!(paths, vec!["day=a/newer.parquet", "day=b/other.parquet"]);
    }
}
