//! Writing the live tables: one commit per batch, exactly once; roll-up and log upkeep.
//!
//! Each batch's rows go into one small Parquet file and one Delta commit carrying the
//! application transaction (`tally-live`, batch number) and the batch's metrics, as Spark's
//! Delta sink does. delta-rs records the transaction but does not refuse a repeated one, so
//! [`append`] checks the table's transaction version itself and skips a batch already there.
//!
//! One commit per second is 86,400 a day. To keep the table fast to open and read, every
//! `compact_every` batches [`rollup`] rewrites the table as one file with one row per
//! (minute, partner, currency), dropping windows past the retention, in one commit; delta-rs writes a
//! log checkpoint every 100 commits, expired log files (older than the table's
//! `delta.logRetentionDuration`, set to 1 hour) are cleaned up, and `vacuum` deletes files
//! removed more than `delta.deletedFileRetentionDuration` (10 minutes) ago.

use crate::delta;
use crate::error::{Result, TallyError};
use crate::lake::Lake;
use crate::schema::{self, LIVE_WINDOW};
use arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use std::collections::HashMap;
use std::sync::Arc;

/// The application id of the live mode's Delta transactions.
pub const APP_ID: &str = "tally-live";

/// Table properties of the live tables (see the module docs).
const PROPERTIES: &[(&str, &str)] = &[
    ("delta.logRetentionDuration", "interval 1 hours"),
    ("delta.deletedFileRetentionDuration", "interval 10 minutes"),
];

/// Opens (creating if needed) the live table under `dir`.
///
/// A table written before the view was keyed by currency (no `currency` column) summed amounts
/// across currencies: its rows cannot be split again, so it is refused with the one step that
/// fixes it (the live view is derived data and rebuilds from the raw lake) rather than mixed
/// with per-currency rows.
pub async fn open(lake: &Lake, dir: &str) -> Result<DeltaTable> {
    let url = lake.url_of(dir)?;
    let table = delta::open_or_create(lake, &url, dir, &LIVE_WINDOW, &[], PROPERTIES).await?;
    if table.snapshot()?.schema().field("currency").is_none() {
        return Err(TallyError::Refused {
            message: format!(
                "{dir} was written by an older tally that added amounts across currencies; \
                 delete live_view/ and live_late/ under the lake and rerun `tally live` to rebuild them per currency"
            ),
        });
    }
    Ok(table)
}

/// The last batch committed to `table` (0 if none).
pub async fn committed_batch(table: &DeltaTable) -> Result<u64> {
    let v = table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), APP_ID)
        .await?;
    Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
}

/// Appends one batch's rows in one commit carrying transaction (`tally-live`, `batch`).
/// Returns `false` (and writes nothing) if that batch is already committed.
pub async fn append(
    lake: &Lake,
    dir: &str,
    table: &mut DeltaTable,
    batch: u64,
    rows: &[RecordBatch],
    metadata: HashMap<String, serde_json::Value>,
) -> Result<bool> {
    table.update_state().await?;
    let committed = committed_batch(table).await?;
    if committed >= batch {
        return Ok(false);
    }
    let mut actions = Vec::new();
    if rows.iter().any(|b| b.num_rows() > 0) {
        let name = format!("part-b{batch:012}.parquet");
        actions.push(Action::Add(write_file(lake, dir, &name, rows).await?));
    }
    let epoch = i64::try_from(batch).map_err(|e| TallyError::Internal(e.to_string()))?;
    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new(APP_ID, epoch))
        .with_metadata(metadata);
    let operation = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Append,
        query_id: APP_ID.into(),
        epoch_id: epoch,
    };
    CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    table.update_state().await?;
    Ok(true)
}

/// One row per (minute, partner, currency) of a live table: the view readers get.
pub fn totals(
    ctx: &SessionContext,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<DataFrame> {
    // A table from before the currency key still opens for reading (reconcile and `tally
    // live` refuse it with the fix), so one old table does not take the whole session down.
    let mut keys = vec![col("window_start"), col("partner_id")];
    if provider.schema().field_with_name("currency").is_ok() {
        keys.push(col("currency"));
    }
    Ok(ctx.read_table(provider)?.aggregate(
        keys,
        vec![
            sum(col("events")).alias("events"),
            sum(col("errors")).alias("errors"),
            sum(col("amount")).alias("amount"),
        ],
    )?)
}

/// What a roll-up did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rollup {
    /// Files replaced.
    pub files_before: usize,
    /// Rows after (one per minute, partner and currency).
    pub rows_after: usize,
}

/// Rewrites `table` as one file of totals per (minute, partner, currency), dropping windows before
/// `keep_from_us`, in one commit; then vacuums files removed long enough ago.
pub async fn rollup(
    lake: &Lake,
    dir: &str,
    table: &mut DeltaTable,
    keep_from_us: Option<i64>,
) -> Result<Rollup> {
    table.update_state().await?;
    let removes: Vec<Action> = table
        .get_active_add_actions_by_partitions(&[])
        .map_ok(|f| Action::Remove(f.remove_action(true)))
        .try_collect()
        .await?;
    let files_before = removes.len();
    if files_before == 0 {
        return Ok(Rollup {
            files_before,
            rows_after: 0,
        });
    }
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let mut df = totals(&ctx, table.table_provider().await?)?;
    if let Some(from) = keep_from_us {
        let cutoff = ScalarValue::TimestampMicrosecond(Some(from), Some("UTC".into()));
        df = df.filter(col("window_start").gt_eq(lit(cutoff)))?;
    }
    let df = df.sort(vec![
        col("window_start").sort(true, false),
        col("partner_id").sort(true, false),
        col("currency").sort(true, false),
    ])?;
    let rows: Vec<RecordBatch> = df
        .collect()
        .await?
        .iter()
        .map(|b| schema::conform(b, &LIVE_WINDOW))
        .collect::<std::result::Result<_, _>>()?;
    let rows_after = rows.iter().map(|b| b.num_rows()).sum();
    let version = table.version().unwrap_or_default();
    let mut actions = removes;
    if rows_after > 0 {
        let name = format!("rollup-v{:012}.parquet", version + 1);
        actions.push(Action::Add(write_file(lake, dir, &name, &rows).await?));
    }
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: None,
        predicate: None,
    };
    let props = CommitProperties::default().with_metadata(HashMap::from([(
        "tally.live.rollup".to_string(),
        serde_json::json!({ "files_before": files_before, "rows_after": rows_after, "keep_from_us": keep_from_us }),
    )]));
    CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    table.update_state().await?;
    let (vacuumed, _) = table.clone().vacuum().await?;
    *table = vacuumed;
    Ok(Rollup {
        files_before,
        rows_after,
    })
}

/// Writes `rows` as one Parquet file in the table directory and returns its `Add`.
async fn write_file(lake: &Lake, dir: &str, name: &str, rows: &[RecordBatch]) -> Result<Add> {
    let mut buf = Vec::new();
    let Some(schema) = rows.first().map(|b| b.schema()) else {
        return Err(TallyError::Internal(format!("{dir}: no rows to write")));
    };
    let mut writer = ArrowWriter::try_new(&mut buf, schema, None)?;
    let mut count = 0usize;
    for b in rows {
        writer.write(b)?;
        count += b.num_rows();
    }
    writer.close()?;
    let size = buf.len() as i64;
    let path = lake.file_path(&format!("{dir}/{name}"))?;
    lake.store()
        .put(&path, PutPayload::from(buf))
        .await
        .map_err(|e| lake.storage_error(e))?;
    Ok(Add {
        path: name.to_string(),
        partition_values: HashMap::new(),
        size,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(serde_json::json!({ "numRecords": count }).to_string()),
        ..Default::default()
    })
}
