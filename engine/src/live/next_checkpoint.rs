//! Building the checkpoint a batch writes: which batches it keeps (for their dedup keys) and
//! which files it tracks (every file taken, per partition inside the horizon).

use super::checkpoint::{partition_and_name, BatchRecord, Checkpoint, FileRecord};
use super::dedup::MINUTE_US;

impl super::Runner {
    /// The checkpoint after batch `n`: the new batch appended, old ones dropped once neither
    /// their dedup keys nor their files can matter any more.
    pub(super) fn next_checkpoint(
        &self,
        n: u64,
        before: Option<i64>,
        after: Option<i64>,
        files: Vec<FileRecord>,
    ) -> Checkpoint {
        // Every file taken is tracked in its partition until the partition leaves the
        // horizon (a Delta raw table is followed by versions instead).
        let mut tracked = self.cp.tracked.clone();
        if !self.discovery.follows_delta() {
            for f in &files {
                if let Some((partition, name)) = partition_and_name(&f.path) {
                    tracked
                        .entry(partition.to_string())
                        .or_default()
                        .insert(name.to_string(), f.size);
                }
            }
            if let Some(first) = self.discovery.first_followed(&self.cp) {
                let first = first.to_string();
                tracked.retain(|p, _| *p >= first);
            }
        }
        let mut batches = self.cp.batches.clone();
        batches.push(BatchRecord {
            batch: n,
            max_event_before: before,
            max_event_after: after,
            files,
        });
        let kept = self.kept_minute(after).map(|m| m * MINUTE_US);
        batches.retain(|b| match (kept, b.max_event_after) {
            (Some(k), Some(m)) => m >= k,
            (None, _) => true,
            (Some(_), None) => false,
        });
        let start_partition = self
            .cp
            .start_partition
            .clone()
            .or_else(|| self.discovery.start_partition().map(|d| d.to_string()));
        Checkpoint {
            batch: n,
            max_event_time: after,
            start_partition,
            raw_version: self.cp.raw_version,
            batches,
            tracked,
            key_snapshot: (!self.snapshot.minutes.is_empty()).then(|| self.snapshot.clone()),
        }
    }
}
