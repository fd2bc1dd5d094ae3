//! How a restart gets the dedup state back: the snapshot's minutes, then the batches past its
//! boundary replayed in order, each from the key file it wrote when it committed or else from
//! its raw files, fetched a couple of batches ahead of the one being applied.

use super::batch::{self, FileRows};
use super::checkpoint::{BatchRecord, FileRecord};
use super::dedup::{minute_of, MINUTE_US};
use super::{batch_keys, key_snapshot};
use crate::error::{Result, TallyError};
use crate::lake::Lake;
use crate::schema;
use futures::StreamExt;
use std::time::Instant;

/// Batches whose inputs a restart fetches ahead of the one it applies.
const REPLAY_AHEAD: usize = 2;

/// Whether a restart whose state keeps minutes from `kept` on, loaded from `snapshot`, replays
/// batch `b`: its keys may still be alive, and the snapshot does not hold them (it holds the
/// minutes before its boundary as of its batch). Monotone in the batch number, as the newest
/// event time only grows: the replayed batches are the last ones.
fn replays(b: &BatchRecord, kept: i64, snapshot: Option<&key_snapshot::KeySnapshot>) -> bool {
    b.max_event_after.is_some_and(|m| m >= kept * MINUTE_US)
        && snapshot.is_none_or(|s| {
            b.batch > s.batch
                || b.max_event_after
                    .is_some_and(|m| m >= s.boundary_minute * MINUTE_US)
        })
}

/// What a restart replays a batch from.
enum ReplayInput {
    /// The keys it added, from its key file.
    Keys(batch_keys::MinuteKeys),
    /// Its raw files (those not quarantined) and what reading each gave.
    Files(Vec<FileRecord>, Vec<FileRows>),
}

/// Batch `b`'s key file when it is there and sound, else its raw files. A damaged key file is
/// logged and replaced by the raw files, so it can only cost time.
async fn replay_input(lake: Lake, b: BatchRecord) -> Result<(BatchRecord, ReplayInput)> {
    match batch_keys::read(&lake, b.batch).await {
        Ok(Some(keys)) => return Ok((b, ReplayInput::Keys(keys))),
        Ok(None) => {}
        Err(e @ TallyError::Internal(_)) => {
            tracing::warn!(error = %e, "live: a batch key file is unusable; replaying the batch from its raw files");
        }
        Err(e) => return Err(e),
    }
    let files: Vec<FileRecord> = b.files.iter().filter(|f| !f.quarantined).cloned().collect();
    let read = batch::read_files(&lake, &files, &schema::LIVE_KEYS).await?;
    Ok((b, ReplayInput::Files(files, read)))
}

/// How a restart got its dedup state back.
#[derive(Debug, Default)]
pub(super) struct Rebuilt {
    pub(super) from_snapshot: bool,
    pub(super) loaded_keys: usize,
    pub(super) replayed_batches: usize,
    /// Of those, batches replayed from their key files.
    pub(super) replayed_from_keys: usize,
    /// Raw files re-read for the others.
    pub(super) replayed_files: usize,
    pub(super) missing_files: usize,
    /// Time spent loading the snapshot (ms).
    pub(super) load_ms: u64,
}

impl super::Runner {
    /// Loads the dedup state's snapshot, then replays the batches whose dedup keys may still
    /// be alive and are not in it. A snapshot that cannot be read as the checkpoint lists it (a
    /// part missing, torn, altered, of another version) is set aside with a warning and every
    /// batch is replayed, as without one.
    pub(super) async fn rebuild_state(&mut self) -> Result<Rebuilt> {
        let mut rebuilt = Rebuilt::default();
        let Some(kept) = self.kept_minute(self.cp.max_event_time) else {
            return Ok(rebuilt);
        };
        let mut loaded = None;
        let started = Instant::now();
        if let Some(snap) = self.cp.key_snapshot.clone() {
            match key_snapshot::load(&self.lake, &snap, kept).await {
                Ok(state) => {
                    rebuilt.from_snapshot = true;
                    rebuilt.loaded_keys = state.keys();
                    self.state = state;
                    self.snapshot = snap.clone();
                    loaded = Some(snap);
                }
                Err(e @ TallyError::Internal(_)) => {
                    tracing::warn!(error = %e, "live: the dedup snapshot is unusable; rebuilding the state from the raw files");
                }
                Err(e) => return Err(e),
            }
        }
        rebuilt.load_ms = started.elapsed().as_millis() as u64;
        let replay: Vec<BatchRecord> = self
            .cp
            .batches
            .iter()
            .filter(|b| replays(b, kept, loaded.as_ref()))
            .cloned()
            .collect();
        // Each batch's input is fetched (and raw files decoded) a couple of batches ahead of
        // the one being applied, which the state needs in order.
        let lake = self.lake.clone();
        let mut inputs = futures::stream::iter(replay)
            .map(move |b| replay_input(lake.clone(), b))
            .buffered(REPLAY_AHEAD);
        while let Some(input) = inputs.next().await {
            let (b, input) = input?;
            rebuilt.replayed_batches += 1;
            match input {
                ReplayInput::Keys(minutes) => {
                    rebuilt.replayed_from_keys += 1;
                    for (minute, keys) in minutes {
                        for key in keys {
                            self.state.insert(minute, key);
                        }
                    }
                }
                ReplayInput::Files(files, read) => {
                    rebuilt.replayed_files += files.len();
                    let clock = self.clock(b.max_event_before);
                    for (file, rows) in files.iter().zip(read) {
                        match rows {
                            FileRows::Rows(rows) => {
                                batch::route(&mut self.state, clock, &rows, false)?;
                            }
                            // Its copies are in the view already; only later copies of its
                            // transactions can no longer be recognised.
                            FileRows::Missing => {
                                rebuilt.missing_files += 1;
                                tracing::warn!(file = %file.path, batch = b.batch, "live: a raw file of a retained batch is gone; rebuilding the dedup state without it");
                            }
                            FileRows::Quarantined(_) => {}
                        }
                    }
                }
            }
            if let Some(m) = self.kept_minute(b.max_event_after) {
                self.state.evict_before(m);
            }
            if let Some(newest) = b.max_event_after {
                self.state.seal_before(minute_of(newest));
            }
        }
        Ok(rebuilt)
    }

    /// The first batch a restart from the committed checkpoint replays: the key files of
    /// earlier batches are no longer needed.
    pub(super) fn first_replayed_batch(&self) -> u64 {
        let Some(kept) = self.kept_minute(self.cp.max_event_time) else {
            return 0;
        };
        self.cp
            .batches
            .iter()
            .find(|b| replays(b, kept, self.cp.key_snapshot.as_ref()))
            .map_or(self.cp.batch + 1, |b| b.batch)
    }
}
