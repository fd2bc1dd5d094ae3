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
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::mpsc;

/// Batch inputs a restart fetches at once.
const REPLAY_AHEAD: usize = 4;
/// Batch inputs a restart holds fetched ahead of the one it applies (at 200,000 events/s a
/// batch's key file is ~1.6 MB).
const PREFETCH: usize = 32;

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

/// Batch inputs being fetched in order by a task of their own.
struct Prefetch {
    rx: mpsc::Receiver<Result<(BatchRecord, ReplayInput)>>,
    /// How many batches the task fetches: the receiver must see them all.
    expected: usize,
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
    /// Time spent replaying batches after it (ms).
    pub(super) replay_ms: u64,
}

impl super::Runner {
    /// Loads the dedup state's snapshot, then replays the batches whose dedup keys may still
    /// be alive and are not in it. A snapshot that cannot be read as the checkpoint lists it (a
    /// part missing, torn, altered, of another version) is set aside with a warning and every
    /// batch is replayed, as without one.
    ///
    /// The batches to replay after a sound snapshot are known before it loads, so their key
    /// files are fetched while it does (on S3 both are mostly waiting on the store). Key files
    /// hold each minute's keys sorted: their runs are gathered per minute and merged into the
    /// state once at the end, instead of hashing every key in.
    pub(super) async fn rebuild_state(&mut self) -> Result<Rebuilt> {
        let mut rebuilt = Rebuilt::default();
        let Some(kept) = self.kept_minute(self.cp.max_event_time) else {
            return Ok(rebuilt);
        };
        let started = Instant::now();
        let snapshot = self.cp.key_snapshot.clone();
        let ahead = snapshot
            .as_ref()
            .map(|snap| self.prefetch(self.to_replay(kept, Some(snap))));
        let mut inputs = None;
        if let Some(snap) = snapshot {
            match key_snapshot::load(&self.lake, &snap, kept).await {
                Ok(state) => {
                    rebuilt.from_snapshot = true;
                    rebuilt.loaded_keys = state.keys();
                    self.state = state;
                    self.snapshot = snap;
                    inputs = ahead;
                }
                Err(e @ TallyError::Internal(_)) => {
                    tracing::warn!(error = %e, "live: the dedup snapshot is unusable; rebuilding the state from the raw files");
                }
                Err(e) => return Err(e),
            }
        }
        rebuilt.load_ms = started.elapsed().as_millis() as u64;
        let mut inputs = match inputs {
            Some(inputs) => inputs,
            None => self.prefetch(self.to_replay(kept, None)),
        };
        // Key file runs per minute, merged into the state at the end.
        let mut runs: BTreeMap<i64, Vec<Vec<u64>>> = BTreeMap::new();
        while let Some(input) = inputs.rx.recv().await {
            let (b, input) = input?;
            rebuilt.replayed_batches += 1;
            match input {
                ReplayInput::Keys(minutes) => {
                    rebuilt.replayed_from_keys += 1;
                    for (minute, keys) in minutes {
                        runs.entry(minute).or_default().push(keys);
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
                runs = runs.split_off(&m);
            }
        }
        if rebuilt.replayed_batches != inputs.expected {
            return Err(TallyError::Internal(format!(
                "the restart's replay stopped after {} of {} batches",
                rebuilt.replayed_batches, inputs.expected
            )));
        }
        for (minute, minute_runs) in runs {
            let mut keys = minute_runs.concat();
            // A run of sorted runs: the stable sort merges them rather than sorting afresh.
            keys.sort();
            keys.dedup();
            self.state.load_minute(minute, keys);
        }
        if let Some(newest) = self.cp.max_event_time {
            self.state.seal_before(minute_of(newest));
        }
        rebuilt.replay_ms = (started.elapsed().as_millis() as u64).saturating_sub(rebuilt.load_ms);
        Ok(rebuilt)
    }

    /// The batches a restart whose state keeps minutes from `kept` on replays after loading
    /// `snapshot`.
    fn to_replay(
        &self,
        kept: i64,
        snapshot: Option<&key_snapshot::KeySnapshot>,
    ) -> Vec<BatchRecord> {
        self.cp
            .batches
            .iter()
            .filter(|b| replays(b, kept, snapshot))
            .cloned()
            .collect()
    }

    /// Fetches the inputs of `batches` in a task of their own, in order, a bounded number
    /// ahead of the receiver. Dropping the receiver stops it.
    fn prefetch(&self, batches: Vec<BatchRecord>) -> Prefetch {
        let (tx, rx) = mpsc::channel(PREFETCH);
        let expected = batches.len();
        let lake = self.lake.clone();
        tokio::spawn(async move {
            let mut inputs = futures::stream::iter(batches)
                .map(move |b| replay_input(lake.clone(), b))
                .buffered(REPLAY_AHEAD);
            while let Some(input) = inputs.next().await {
                let failed = input.is_err();
                if tx.send(input).await.is_err() || failed {
                    break;
                }
            }
        });
        Prefetch { rx, expected }
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
