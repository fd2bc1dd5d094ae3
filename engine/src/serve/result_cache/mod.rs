//! Answers of repeated queries, kept while the tables they read are unchanged.
//!
//! Dashboards and BI tools send the same statements again and again (every panel, every
//! refresh, every viewer), and a Delta table only changes by a commit. An answer is therefore
//! exact for as long as every table its plan reads is still at the version it was computed
//! on: the key is the optimized plan (with its parameters bound, as literals) together with the
//! location and version of each Delta snapshot it scans ([`key`]). A commit moves the version,
//! so the next query misses and computes the new answer; nothing is ever invalidated by time.
//!
//! Only plans whose every table is a Delta snapshot read as plain files (the server's
//! [`crate::delta_files::DeltaFiles`]) are kept: a Parquet folder or the raw landing zone has no
//! version to key on. Plans with a volatile function (`random()`) are never kept. The cache
//! holds at most `--result-cache` bytes of Arrow batches (least recently used leave first) and
//! no single answer above a sixteenth of that, so a big export never pushes out the
//! dashboards' answers.

mod fill;
mod key;
mod planner;

pub use planner::CachingQueryPlanner;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};

/// The default `--result-cache`: room for thousands of dashboard answers.
pub const DEFAULT_BYTES: usize = 64 << 20;

/// One kept answer: the batches of a finished plan, in its output schema.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) bytes: usize,
}

struct Entries {
    lru: lru::LruCache<String, Arc<Answer>>,
    bytes: usize,
}

/// Answers keyed by plan and table versions, bounded in bytes.
pub struct ResultCache {
    entries: Mutex<Entries>,
    max_bytes: usize,
    hits: Counter,
    misses: Counter,
    held: Gauge,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl ResultCache {
    /// A cache of at most `max_bytes`, its series (`tally_serve_result_cache_*`) in `registry`.
    pub fn register(registry: &mut Registry, max_bytes: usize) -> Arc<Self> {
        let cache = Self {
            entries: Mutex::new(Entries {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
            hits: Counter::default(),
            misses: Counter::default(),
            held: Gauge::default(),
        };
        registry.register(
            "tally_serve_result_cache_hits",
            "Queries answered from the result cache (their tables unchanged since)",
            cache.hits.clone(),
        );
        registry.register(
            "tally_serve_result_cache_misses",
            "Cacheable queries that ran (first time, or a table changed since)",
            cache.misses.clone(),
        );
        registry.register_with_unit(
            "tally_serve_result_cache",
            "Bytes of answers the result cache holds",
            Unit::Bytes,
            cache.held.clone(),
        );
        Arc::new(cache)
    }

    /// The largest answer kept.
    pub(crate) fn entry_limit(&self) -> usize {
        self.max_bytes / 16
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Answer>> {
        let found = self
            .entries
            .lock()
            .ok()
            .and_then(|mut e| e.lru.get(key).cloned());
        match &found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        };
        found
    }

    pub(crate) fn put(&self, key: String, answer: Answer) {
        if answer.bytes > self.entry_limit() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let bytes = answer.bytes;
        if let Some(old) = entries.lru.put(key, Arc::new(answer)) {
            entries.bytes -= old.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > self.max_bytes {
            match entries.lru.pop_lru() {
                Some((_, old)) => entries.bytes -= old.bytes,
                None => break,
            }
        }
        self.held
            .set(i64::try_from(entries.bytes).unwrap_or(i64::MAX));
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.lru.len()).unwrap_or(0)
    }

    /// True when no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
