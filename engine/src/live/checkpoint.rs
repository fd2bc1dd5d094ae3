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
//! batches since come from the key files each batch wrote ([`super::batch_keys`]) or from
//! their raw files (immutable).
//!
//! Most batches write a [`Delta`]: the batch's own record, the files it took, and what left
//! the horizon, so a batch's write is proportional to the batch. The full state (every file
//! taken in the tracked partitions: tens of thousands of names a day at one file a second) is
//! written every [`FULL_EVERY`] batches, and a delta names the full checkpoint its chain starts
//! from, so a restart fetches the chain's files concurrently and applies them in order. A
//! chain's files are deleted once a later full checkpoint is committed.

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use futures::{StreamExt, TryStreamExt};
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

/// What a batch changed in the checkpoint before it: written instead of the whole state by
/// all but every [`FULL_EVERY`]th batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delta {
    /// The full checkpoint this delta's chain starts from (the chain is `base..=batch`).
    pub base: u64,
    /// The batch (the previous checkpoint is `batch - 1`).
    pub batch: u64,
    pub max_event_time: Option<i64>,
    #[serde(default)]
    pub start_partition: Option<String>,
    #[serde(default)]
    pub raw_version: Option<u64>,
    /// The batch's own record.
    pub record: Option<BatchRecord>,
    /// Batches before this one are no longer kept.
    pub batches_from: u64,
    /// Files this batch took, by partition.
    #[serde(default)]
    pub tracked_added: Tracked,
    /// Tracked partitions before this one are no longer followed (`None`: none is tracked).
    pub tracked_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_snapshot: Option<super::key_snapshot::KeySnapshot>,
}

impl Delta {
    /// What turns `previous` into `next` (`next` being `previous` plus one batch).
    pub fn between(base: u64, previous: &Checkpoint, next: &Checkpoint) -> Self {
        debug_assert_eq!(previous.batch + 1, next.batch);
        let record = next
            .batches
            .last()
            .filter(|b| b.batch == next.batch)
            .cloned();
        // A batch tracks the files it took (and nothing else): proportional to the batch.
        let mut tracked_added = Tracked::new();
        for f in record.iter().flat_map(|r| &r.files) {
            let Some((partition, name)) = partition_and_name(&f.path) else {
                continue;
            };
            if let Some(size) = next.tracked.get(partition).and_then(|p| p.get(name)) {
                tracked_added
                    .entry(partition.to_string())
                    .or_default()
                    .insert(name.to_string(), *size);
            }
        }
        Delta {
            base,
            batch: next.batch,
            max_event_time: next.max_event_time,
            start_partition: next.start_partition.clone(),
            raw_version: next.raw_version,
            record,
            batches_from: next.batches.first().map_or(next.batch + 1, |b| b.batch),
            tracked_added,
            tracked_from: next.tracked.keys().next().cloned(),
            key_snapshot: next.key_snapshot.clone(),
        }
    }

    /// Applies the delta to the checkpoint of the batch before it.
    fn apply(self, cp: &mut Checkpoint) -> Result<()> {
        if self.batch != cp.batch + 1 {
            return Err(TallyError::Internal(format!(
                "live checkpoint {} follows checkpoint {}, not {}",
                self.batch,
                self.batch.saturating_sub(1),
                cp.batch
            )));
        }
        cp.batch = self.batch;
        cp.max_event_time = self.max_event_time;
        cp.start_partition = self.start_partition;
        cp.raw_version = self.raw_version;
        cp.batches.extend(self.record);
        cp.batches.retain(|b| b.batch >= self.batches_from);
        for (partition, files) in self.tracked_added {
            cp.tracked.entry(partition).or_default().extend(files);
        }
        match self.tracked_from {
            Some(first) => cp.tracked.retain(|p, _| *p >= first),
            None => cp.tracked.clear(),
        }
        cp.key_snapshot = self.key_snapshot;
        Ok(())
    }
}

/// A checkpoint file: the whole state, or what one batch changed.
#[derive(Debug)]
enum Stored {
    Delta(Delta),
    Full(Checkpoint),
}

impl Stored {
    /// A delta has a `base`; a full checkpoint does not. (Not a serde untagged enum: its
    /// buffering cannot read the snapshot's integer map keys back from JSON strings.)
    fn parse(bytes: &[u8]) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        struct Probe {
            base: Option<u64>,
        }
        Ok(match serde_json::from_slice::<Probe>(bytes)?.base {
            Some(_) => Stored::Delta(serde_json::from_slice(bytes)?),
            None => Stored::Full(serde_json::from_slice(bytes)?),
        })
    }
}

/// Batches between full checkpoints: a restart reads at most this many files (concurrently).
pub const FULL_EVERY: u64 = 60;

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

/// Reads checkpoint `batch` (resolving a delta's chain from its full checkpoint) and the
/// batch of that full checkpoint; `None` if it does not exist.
pub async fn read(lake: &Lake, batch: u64) -> Result<Option<(Checkpoint, u64)>> {
    let delta = match read_stored(lake, batch).await? {
        None => return Ok(None),
        Some(Stored::Full(cp)) => return Ok(Some((cp, batch))),
        Some(Stored::Delta(d)) => d,
    };
    let base = delta.base;
    let chain: Vec<(u64, Option<Stored>)> = futures::stream::iter(base..batch)
        .map(|b| async move { Ok::<_, TallyError>((b, read_stored(lake, b).await?)) })
        .buffered(16)
        .try_collect()
        .await?;
    let missing = |b: u64| {
        TallyError::Internal(format!(
            "live checkpoint {batch} builds on checkpoint {b}, which is missing or not part of its chain"
        ))
    };
    let mut chain = chain.into_iter();
    let mut cp = match chain.next() {
        Some((_, Some(Stored::Full(cp)))) => cp,
        _ => return Err(missing(base)),
    };
    for (b, stored) in chain {
        match stored {
            Some(Stored::Delta(d)) if d.base == base => d.apply(&mut cp)?,
            _ => return Err(missing(b)),
        }
    }
    delta.apply(&mut cp)?;
    Ok(Some((cp, base)))
}

/// The checkpoint after `cp` when one was written (a batch whose commit may be missing):
/// only its own file is read, a delta being applied to `cp` (the chain is not read again).
pub async fn read_next(lake: &Lake, cp: &Checkpoint) -> Result<Option<Checkpoint>> {
    Ok(match read_stored(lake, cp.batch + 1).await? {
        None => None,
        Some(Stored::Full(next)) => Some(next),
        Some(Stored::Delta(d)) => {
            let mut next = cp.clone();
            d.apply(&mut next)?;
            Some(next)
        }
    })
}

async fn read_stored(lake: &Lake, batch: u64) -> Result<Option<Stored>> {
    let path = lake.file_path(&relative(batch))?;
    match lake.store().get(&path).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| lake.storage_error(e))?;
            let stored = Stored::parse(&bytes).map_err(|e| {
                TallyError::Internal(format!("live checkpoint {} is unreadable: {e}", path))
            })?;
            Ok(Some(stored))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(lake.storage_error(e)),
    }
}

/// Writes checkpoint `cp` (overwriting a leftover of a crashed attempt at the same batch): as
/// `delta` when it is given and its chain is shorter than [`FULL_EVERY`], else whole. Returns
/// the batch of the full checkpoint the written one builds on (itself when whole), and the
/// bytes written.
pub async fn write(lake: &Lake, cp: &Checkpoint, delta: Option<&Delta>) -> Result<(u64, u64)> {
    let path = lake.file_path(&relative(cp.batch))?;
    let (body, base) = match delta.filter(|d| cp.batch - d.base < FULL_EVERY) {
        Some(d) => (serde_json::to_vec(d), d.base),
        None => (serde_json::to_vec(cp), cp.batch),
    };
    let body = body.map_err(|e| TallyError::Internal(e.to_string()))?;
    let bytes = body.len() as u64;
    lake.store()
        .put(&path, PutPayload::from(body))
        .await
        .map_err(|e| lake.storage_error(e))?;
    Ok((base, bytes))
}

/// Once full checkpoint `base` is committed, deletes the checkpoints before it (the previous
/// chain). Best effort: a leftover (a failed delete, a crashed run) is collected later.
pub async fn prune(lake: &Lake, batch: u64, base: u64) {
    if batch == base {
        collect(lake, base).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Options;

    fn file(path: &str, size: u64) -> FileRecord {
        FileRecord {
            path: path.into(),
            mtime_ms: 0,
            size,
            quarantined: false,
            reason: None,
        }
    }

    /// The state after batch `n`: batches kept from `n - 2`, partitions tracked from the day
    /// of batch `n - 3` (so both lists drop their oldest entries as batches go).
    fn state(n: u64) -> Checkpoint {
        let day = |b: u64| format!("2026-11-{:02}", 1 + b / 2);
        let mut cp = Checkpoint {
            batch: n,
            max_event_time: Some(n as i64 * 1_000),
            start_partition: Some(day(0)),
            raw_version: None,
            // Integer map keys, as JSON strings: what a serde untagged enum cannot read back.
            key_snapshot: Some(super::super::key_snapshot::KeySnapshot {
                batch: n,
                boundary_minute: n as i64,
                minutes: [(
                    n as i64,
                    vec![super::super::key_snapshot::KeyPart {
                        name: format!("m{n}"),
                        keys: n,
                    }],
                )]
                .into(),
            }),
            ..Default::default()
        };
        for b in n.saturating_sub(2).max(1)..=n {
            cp.batches.push(BatchRecord {
                batch: b,
                max_event_before: Some(b as i64 * 1_000 - 1_000),
                max_event_after: Some(b as i64 * 1_000),
                files: vec![file(
                    &format!("raw/payments/ingest_date={}/f{b}.parquet", day(b)),
                    b,
                )],
            });
        }
        let first = day(n.saturating_sub(3).max(1));
        for b in 1..=n {
            if day(b) >= first {
                cp.tracked
                    .entry(day(b))
                    .or_default()
                    .insert(format!("f{b}.parquet"), b);
            }
        }
        cp
    }

    #[tokio::test]
    async fn a_chain_of_deltas_reads_back_as_the_whole_state() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&dir.path().to_string_lossy(), &S3Options::default()).unwrap();
        let mut base = None;
        let mut previous = Checkpoint::default();
        for n in 1..=FULL_EVERY + 5 {
            let next = state(n);
            let delta = base.map(|b| Delta::between(b, &previous, &next));
            base = Some(write(&lake, &next, delta.as_ref()).await.unwrap().0);
            let (read, read_base) = read(&lake, n).await.unwrap().unwrap();
            assert_eq!(read, next, "batch {n}");
            // A pending checkpoint is read as the committed state plus its own file.
            assert_eq!(
                read_next(&lake, &previous).await.unwrap(),
                Some(next.clone())
            );
            assert_eq!(Some(read_base), base);
            previous = next;
        }
        // Full at 1 and at 1 + FULL_EVERY; the rest are deltas.
        assert_eq!(base, Some(1 + FULL_EVERY));
        let bytes = |n: u64| {
            std::fs::metadata(dir.path().join(relative(n)))
                .unwrap()
                .len()
        };
        assert!(
            bytes(FULL_EVERY) < bytes(1 + FULL_EVERY),
            "a delta is smaller than the state"
        );
        // A missing link is an error naming it, never a partial state.
        std::fs::remove_file(dir.path().join(relative(FULL_EVERY + 3))).unwrap();
        let err = read(&lake, FULL_EVERY + 5).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("checkpoint {}", FULL_EVERY + 3)),
            "{err}"
        );
        // Pruning at a committed full checkpoint drops the chain before it.
        prune(&lake, 1 + FULL_EVERY, 1 + FULL_EVERY).await;
        assert!(read(&lake, FULL_EVERY).await.unwrap().is_none());
        assert!(read(&lake, 1 + FULL_EVERY).await.unwrap().is_some());
    }
}
