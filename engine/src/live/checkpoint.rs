//! The live mode's checkpoint: what has been processed, kept beside `live_view`.
//!
//! One JSON file per batch, `live_view/_tally_live/checkpoint-<batch>.json`, holding the state
//! *after* that batch: the watermark input (newest `event_time`), the newest file time, and the
//! recent batches with their files. It is written before the batch's Delta commit and only
//! trusted once the commit carrying the same batch number as its application transaction
//! exists, so the pair (Delta `txn` version, checkpoint file) moves atomically:
//! - checkpoint `n` written, commit `n` missing → batch `n` is redone with exactly the files
//!   the checkpoint recorded (processing is deterministic, so the redo writes the same rows);
//! - commit `n` present → checkpoint `n` is the state.
//!
//! The dedup keys themselves are not in it: finished minutes are written once, as parts beside
//! it ([`super::key_snapshot`]), and the checkpoint lists them; on restart the keys of the
//! batches since are rebuilt by re-reading `txn_id`/`event_time` of their raw files (immutable).
//! That keeps each checkpoint small (file names of the last few minutes) instead of writing
//! hundreds of MB of hashes every second.

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// Directory of the checkpoint files, inside the `live_view` table directory (Delta ignores
/// `_`-prefixed directories; vacuum leaves them alone).
pub const DIR: &str = "_tally_live";

/// One raw file a batch read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Path relative to the lake root.
    pub path: String,
    /// Last-modified time, milliseconds since the epoch.
    pub mtime_ms: i64,
    /// Size in bytes.
    pub size: u64,
    /// The file could not be read as raw payments and was skipped (quarantined).
    #[serde(default)]
    pub quarantined: bool,
    /// Why it is quarantined before being read (a seen path whose file changed); files
    /// quarantined by reading carry their reason in the batch's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One committed micro-batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchRecord {
    /// The batch number (the Delta application transaction version).
    pub batch: u64,
    /// Newest `event_time` (µs) seen before this batch: the watermark input it ran with.
    pub max_event_before: Option<i64>,
    /// Newest `event_time` (µs) seen after it.
    pub max_event_after: Option<i64>,
    /// The files it read, in the order it read them.
    pub files: Vec<FileRecord>,
}

/// The state after a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last batch included (0: none yet).
    pub batch: u64,
    /// Newest `event_time` seen (µs).
    pub max_event_time: Option<i64>,
    /// Oldest partition the live mode follows (chosen on its first start).
    #[serde(default)]
    pub start_partition: Option<String>,
    /// When `raw_payments` is a Delta table: the last version whose added files were read.
    #[serde(default)]
    pub raw_version: Option<u64>,
    /// Recent batches, oldest first: those whose dedup keys may still be alive.
    pub batches: Vec<BatchRecord>,
    /// Every raw file taken (read or quarantined) in each `ingest_date` partition still
    /// followed (`YYYY-MM-DD` → file name → size): a file is new when its path is not here,
    /// whatever its mtime. A partition leaves with the tracking horizon (`track_days`).
    #[serde(default)]
    pub tracked: Tracked,
    /// The dedup state's finished minutes on the store (see [`super::key_snapshot`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_snapshot: Option<super::key_snapshot::KeySnapshot>,
}

/// Files taken, by `ingest_date` partition, then file name, with their size.
pub type Tracked = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

/// The `ingest_date` partition (`YYYY-MM-DD`) and file name of a raw file's path.
pub fn partition_and_name(path: &str) -> Option<(&str, &str)> {
    let (dir, name) = path.rsplit_once('/')?;
    let partition = dir
        .rsplit('/')
        .find_map(|p| p.strip_prefix("ingest_date="))?;
    Some((partition, name))
}

fn relative(batch: u64) -> String {
    format!("{}/{DIR}/checkpoint-{batch:020}.json", layout::LIVE_VIEW)
}

/// Reads checkpoint `batch`; `None` if it does not exist.
pub async fn read(lake: &Lake, batch: u64) -> Result<Option<Checkpoint>> {
    let path = lake.file_path(&relative(batch))?;
    match lake.store().get(&path).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| lake.storage_error(e))?;
            let cp = serde_json::from_slice(&bytes).map_err(|e| {
                TallyError::Internal(format!("live checkpoint {} is unreadable: {e}", path))
            })?;
            Ok(Some(cp))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(lake.storage_error(e)),
    }
}

/// Writes checkpoint `cp` (overwriting a leftover of a crashed attempt at the same batch).
pub async fn write(lake: &Lake, cp: &Checkpoint) -> Result<()> {
    let path = lake.file_path(&relative(cp.batch))?;
    let body = serde_json::to_vec(cp).map_err(|e| TallyError::Internal(e.to_string()))?;
    lake.store()
        .put(&path, PutPayload::from(body))
        .await
        .map_err(|e| lake.storage_error(e))?;
    Ok(())
}

/// Deletes the checkpoint before `batch` once `batch` is committed: one request a batch.
/// Best effort: a leftover (a failed delete, a crashed run) is collected by [`collect`].
pub async fn prune(lake: &Lake, batch: u64) {
    if let Some(previous) = batch.checked_sub(1) {
        if let Ok(path) = lake.file_path(&relative(previous)) {
            let _ = lake.store().delete(&path).await;
        }
    }
}

/// Deletes every checkpoint before `keep_from`, whatever its age: leftovers of deletes that
/// failed and of runs that crashed, which [`prune`] never reaches. Best effort, logged.
pub async fn collect(lake: &Lake, keep_from: u64) {
    let Ok(dir) = lake.file_path(&format!("{}/{DIR}", layout::LIVE_VIEW)) else {
        return;
    };
    let store = lake.store();
    let listed = match store.list_with_delimiter(Some(&dir)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "live: could not list checkpoints to collect");
            return;
        }
    };
    for meta in listed.objects {
        let stale = meta
            .location
            .filename()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|batch| batch < keep_from);
        if stale {
            if let Err(e) = store.delete(&meta.location).await {
                tracing::warn!(error = %e, path = %meta.location, "live: could not delete a stale checkpoint");
            }
        }
    }
}
