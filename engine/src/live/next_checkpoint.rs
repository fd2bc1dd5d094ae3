//! Building the checkpoint a batch writes: which batches it keeps, and the newest file mark
//! and `ingest_date` partition it records.

use super::checkpoint::{BatchRecord, Checkpoint, FileRecord};
use super::dedup::MINUTE_US;
use super::FILE_WINDOW;

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
        // Capped so that files left for a later batch stay within the window of the mark: a
        // backlog taken in name order cannot strand older files.
        let window_ms = FILE_WINDOW.as_millis() as i64;
        let newest_mtime_ms = files
            .iter()
            .map(|f| f.mtime_ms)
            .chain(self.cp.newest_mtime_ms)
            .max()
            .map(|m| self.mark_cap_ms.map_or(m, |cap| m.min(cap)));
        let newest_partition = files
            .iter()
            .filter_map(|f| partition_of(&f.path))
            .chain(self.cp.newest_partition.clone())
            .max();
        let mut batches = self.cp.batches.clone();
        batches.push(BatchRecord {
            batch: n,
            max_event_before: before,
            max_event_after: after,
            files,
        });
        let kept = self.kept_minute(after).map(|m| m * MINUTE_US);
        let recent = newest_mtime_ms.map(|m| m - window_ms);
        batches.retain(|b| {
            let keys_alive = match (kept, b.max_event_after) {
                (Some(k), Some(m)) => m >= k,
                (None, _) => true,
                (Some(_), None) => false,
            };
            let files_recent = recent.is_none_or(|r| b.files.iter().any(|f| f.mtime_ms >= r));
            keys_alive || files_recent
        });
        let start_partition = self
            .cp
            .start_partition
            .clone()
            .or_else(|| self.discovery.start_partition().map(|d| d.to_string()));
        Checkpoint {
            batch: n,
            max_event_time: after,
            newest_mtime_ms,
            newest_partition,
            start_partition,
            raw_version: self.cp.raw_version,
            batches,
        }
    }
}

/// The `ingest_date` partition (`YYYY-MM-DD`) in a raw file's path.
fn partition_of(path: &str) -> Option<String> {
    path.split('/')
        .find_map(|p| p.strip_prefix("ingest_date="))
        .map(str::to_string)
}
