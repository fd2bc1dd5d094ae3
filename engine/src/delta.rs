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
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType};
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

/// Replaces one value of a partition column in a single commit: removes every file of that
/// partition and adds `adds`. Other partitions keep their files; a concurrent commit to another
/// partition does not conflict (the read predicate names only this partition).
pub async fn replace_partition(
    table: &DeltaTable,
    column: &str,
    value: &str,
    adds: Vec<Add>,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<(u64, usize)> {
    // Commit on the newest snapshot: the table may have moved since the job opened it (another
    // day's commit, or a concurrent first creation that landed as a second metadata version).
    let mut table = table.clone();
    table.update_state().await?;
    let snapshot = table.snapshot()?;
    let removes: Vec<Action> = table
        .get_active_add_actions_by_partitions(&[])
        .try_filter(|f| {
            let hit = f
                .partition_values_map()
                .get(column)
                .is_some_and(|v| v.as_deref() == Some(value));
            futures::future::ready(hit)
        })
        .map_ok(|f| Action::Remove(f.remove_action(true)))
        .try_collect()
        .await?;
    let removed = removes.len();
    let mut actions = removes;
    actions.extend(adds.into_iter().map(Action::Add));
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: Some(vec![column.to_string()]),
        predicate: Some(format!("{column} = '{value}'")),
    };
    let commit = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .with_app_metadata(app_metadata)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    Ok((commit.version(), removed))
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
