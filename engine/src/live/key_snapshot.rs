//! The dedup state's finished minutes on the store, so a restart loads them instead of
//! re-reading every raw file of the TTL.
//!
//! Once a batch's commit moves the newest event into a new minute, every earlier minute's keys
//! are sealed (sorted) and the keys each gained since its last part are written as one more
//! part, `live_view/_tally_live/keys/m<minute>-b<batch>.keys`: a minute is written about once,
//! then a small part per late first copy. The next checkpoint carries the list of parts
//! ([`KeySnapshot`]), so a snapshot is trusted exactly when its checkpoint is. A restart loads
//! the parts of the minutes still inside the TTL and replays only the batches that may hold keys
//! of later minutes (the last minute or two of a 10-minute TTL), from the keys each wrote when
//! it committed ([`super::batch_keys`]) or else from their raw files.
//!
//! A part is `TLK1`, the format version (u32), the minute (i64), the key count (u64), the
//! sorted keys (u64 each, little-endian) and an xxh3-64 of all of that. A part that is missing,
//! torn, altered or of another version makes the restart rebuild everything from raw, as
//! before snapshots existed; never an empty state. Parts no checkpoint can need any more (their
//! minute left the TTL, a full rewrite replaced them, a crashed batch wrote them) are deleted
//! at the next snapshot.

use super::checkpoint::DIR;
use super::dedup::{DedupState, Sealed};
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const MAGIC: &[u8; 4] = b"TLK1";
/// The part format's version; a part of another version is not read.
pub const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 8 + 8;

/// Which parts hold the state's finished minutes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeySnapshot {
    /// The batch after whose commit the parts were written.
    pub batch: u64,
    /// Every key of a minute before this one, as of `batch`, is in `minutes`' parts.
    pub boundary_minute: i64,
    /// Minute → its parts, oldest first.
    pub minutes: BTreeMap<i64, Vec<KeyPart>>,
}

/// One written part of a minute's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyPart {
    /// File name in the keys directory.
    pub name: String,
    /// Keys it holds.
    pub keys: u64,
}

impl KeySnapshot {
    fn persisted(&self, minute: i64) -> u64 {
        self.minutes
            .get(&minute)
            .map_or(0, |parts| parts.iter().map(|p| p.keys).sum())
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.minutes.values().flatten().map(|p| p.name.as_str())
    }
}

pub(super) fn dir() -> String {
    format!("{}/{DIR}/keys", layout::LIVE_VIEW)
}

/// After batch `batch` committed with its newest event in minute `newest`: seals the minutes
/// before it (all of them when `newest` is a minute the snapshot has not reached yet, so the
/// snapshot then holds every key before it; otherwise those whose recent keys are worth it, as
/// [`DedupState::seal_before`] decides) and writes a part for each minute whose sorted keys are
/// not all written yet (the keys it gained, or the whole minute when an earlier write failed).
/// Parts of minutes the state no longer holds leave `snapshot`. Returns the parts and bytes
/// written. A failed write is logged and leaves that minute to be written whole next time; the
/// batch is committed either way.
pub async fn write(
    lake: &Lake,
    state: &mut DedupState,
    snapshot: &mut KeySnapshot,
    batch: u64,
    newest: i64,
) -> (usize, u64) {
    let boundary = (newest > snapshot.boundary_minute).then_some(newest);
    let gained: BTreeMap<i64, Sealed> = match boundary {
        Some(b) => state.seal_all_before(b),
        None => state.seal_before(newest),
    }
    .into_iter()
    .collect();
    if gained.is_empty() && boundary.is_none() {
        return (0, 0);
    }
    let held: BTreeMap<i64, usize> = state.minutes_before(i64::MAX).into_iter().collect();
    let mut minutes: BTreeSet<i64> = gained.keys().copied().collect();
    if let Some(b) = boundary {
        minutes.extend(held.range(..b).map(|(m, _)| *m));
    }
    snapshot.minutes.retain(|m, _| held.contains_key(m));
    let (mut parts, mut bytes, mut complete) = (0, 0u64, true);
    for minute in minutes {
        let Some(&len) = held.get(&minute) else {
            continue;
        };
        let persisted = snapshot.persisted(minute);
        if persisted == len as u64 {
            continue;
        }
        let Some(all) = state.sorted_keys(minute) else {
            // Not sealed (a minute at or after the newest): nothing to write yet.
            continue;
        };
        // The keys it gained extend what is written; otherwise the minute is written whole.
        let (keys, whole) = match gained.get(&minute) {
            Some(Sealed::New(new)) if persisted + new.len() as u64 == len as u64 => {
                (new.as_slice(), false)
            }
            _ => (all, true),
        };
        let name = format!("m{minute}-b{batch}.keys");
        match put_part(lake, &name, minute, keys).await {
            Ok(n) => {
                let part = KeyPart {
                    name,
                    keys: keys.len() as u64,
                };
                let list = snapshot.minutes.entry(minute).or_default();
                if whole {
                    list.clear();
                }
                list.push(part);
                parts += 1;
                bytes += n;
            }
            Err(e) => {
                complete = false;
                tracing::warn!(error = %e, minute, "live: could not write a dedup snapshot part; the minute is written whole next time");
            }
        }
    }
    if let (Some(b), true) = (boundary, complete) {
        snapshot.batch = batch;
        snapshot.boundary_minute = b;
    }
    (parts, bytes)
}

async fn put_part(lake: &Lake, name: &str, minute: i64, keys: &[u64]) -> Result<u64> {
    let mut body = Vec::with_capacity(HEADER + keys.len() * 8 + 8);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&VERSION.to_le_bytes());
    body.extend_from_slice(&minute.to_le_bytes());
    body.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for k in keys {
        body.extend_from_slice(&k.to_le_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    let len = body.len() as u64;
    let path = lake.file_path(&format!("{}/{name}", dir()))?;
    lake.store()
        .put(&path, PutPayload::from(body))
        .await
        .map_err(|e| lake.storage_error(e))?;
    Ok(len)
}

/// Reads the parts of every minute of `snapshot` from `kept` on into a state; an error names
/// the first part that is missing or not what the snapshot says.
pub async fn load(lake: &Lake, snapshot: &KeySnapshot, kept: i64) -> Result<DedupState> {
    let wanted: Vec<(i64, KeyPart)> = snapshot
        .minutes
        .range(kept..)
        .flat_map(|(m, parts)| parts.iter().map(|p| (*m, p.clone())))
        .collect();
    let read: Vec<(i64, Vec<u64>)> = futures::stream::iter(wanted)
        .map(|(minute, part)| async move {
            let keys = read_part(lake, &part, minute).await?;
            Ok::<_, TallyError>((minute, keys))
        })
        .buffered(4)
        .try_collect()
        .await?;
    let mut state = DedupState::default();
    // Parts are sorted and hold no key twice; a minute's parts are merged into its keys.
    for (minute, keys) in read {
        state.load_minute(minute, keys);
    }
    Ok(state)
}

async fn read_part(lake: &Lake, part: &KeyPart, minute: i64) -> Result<Vec<u64>> {
    let bad =
        |why: String| TallyError::Internal(format!("dedup snapshot part {}: {why}", part.name));
    let path = lake.file_path(&format!("{}/{}", dir(), part.name))?;
    let body = match lake.store().get(&path).await {
        Ok(got) => got.bytes().await.map_err(|e| lake.storage_error(e))?,
        Err(object_store::Error::NotFound { .. }) => return Err(bad("missing".into())),
        Err(e) => return Err(lake.storage_error(e)),
    };
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    // The header first: another version may lay out the rest differently.
    if body.len() < HEADER || &body[..4] != MAGIC {
        return Err(bad("not a key part".into()));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&body[4..8]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {VERSION}"
        )));
    }
    let expected = HEADER + part.keys as usize * 8 + 8;
    if body.len() != expected {
        return Err(bad(format!("{} bytes, expected {expected}", body.len())));
    }
    let (data, sum) = body.split_at(body.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(data) != u64_at(sum, 0) {
        return Err(bad("checksum mismatch".into()));
    }
    if u64_at(data, 8) as i64 != minute || u64_at(data, 16) != part.keys {
        return Err(bad("header does not match the checkpoint".into()));
    }
    Ok(data[HEADER..]
        .chunks_exact(8)
        .map(|c| u64_at(c, 0))
        .collect())
}

/// Deletes every part that neither `committed` (the checkpoint a restart would read) nor
/// `next` (the one the next batch writes) lists, and the batch key files
/// ([`super::batch_keys`]) of batches before `first_replayed` (those a restart from
/// `committed` no longer replays), in one listing of the folder. Best effort: a leftover is
/// only bytes.
pub async fn collect(
    lake: &Lake,
    committed: Option<&KeySnapshot>,
    next: &KeySnapshot,
    first_replayed: u64,
) {
    let keep: BTreeSet<&str> = committed
        .into_iter()
        .flat_map(KeySnapshot::names)
        .chain(next.names())
        .collect();
    let Ok(prefix) = lake.file_path(&dir()) else {
        return;
    };
    let store = lake.store();
    let listed: Vec<object_store::ObjectMeta> = match store.list(Some(&prefix)).try_collect().await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "live: could not list dedup snapshot parts to collect");
            return;
        }
    };
    for meta in listed {
        let name = meta.location.filename().unwrap_or_default();
        let stale = match super::batch_keys::batch_of(name) {
            Some(batch) => batch < first_replayed,
            None => !keep.contains(name),
        };
        if stale {
            if let Err(e) = store.delete(&meta.location).await {
                tracing::warn!(error = %e, part = name, "live: could not delete a dedup snapshot part");
            }
        }
    }
}
