//! The day's transactions looked up among the neighbouring days' copies.
//!
//! A copy of one of D's transactions may name D − 2 … D + 2 (a partner resending with a
//! shifted timestamp, a clock near midnight). The transaction then belongs to the day its
//! winning copy names, and every day named must see the same copies to agree on it. Reading
//! the neighbours' copies of *every* transaction would cost a second ledger; instead:
//! 1. D's keys go into an exact set laid out for ordered probes ([`DayKeys`]);
//! 2. each file's keys come from its key index ([`key_index`]: read, or computed once from the
//!    file's ids), sorted by event day and key; the keys of each neighbouring day the file is
//!    eligible for (and, by its footer, holds) are walked in order against the set;
//! 3. only the rows whose key is one of D's are read from the raw files (a row selection per
//!    file), through `sql/ledger_neighbours.sql`, which filters them exactly as a full scan
//!    would.

use super::day_keys::{order, DayKeys};
use super::inputs::{CheckedFile, Inputs};
use super::key_index;
use super::scan::CheckedFiles;
use super::tasks::join;
use super::window::DayWindow;
use crate::error::{Result, TallyError};
use crate::jobs_sql;
use crate::lake::Lake;
use crate::schema;
use crate::session::TallySession;
use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::DataFrame;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::RowSelection;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// `ledger_day_has(txn_key) -> BOOLEAN`: whether the key is one of the day's.
#[derive(Debug)]
pub struct LedgerDayHas {
    keys: Arc<DayKeys>,
    signature: Signature,
}

impl LedgerDayHas {
    /// The function over `keys`.
    pub fn new(keys: Arc<DayKeys>) -> Self {
        Self {
            keys,
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

impl PartialEq for LedgerDayHas {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }
}

impl Eq for LedgerDayHas {}

impl Hash for LedgerDayHas {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.keys).hash(state);
    }
}

impl ScalarUDFImpl for LedgerDayHas {
    fn name(&self) -> &str {
        "ledger_day_has"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return exec_err!("ledger_day_has takes one argument");
        };
        match arg {
            ColumnarValue::Scalar(ScalarValue::Int64(k)) => Ok(ColumnarValue::Scalar(
                ScalarValue::Boolean(k.map(|k| self.keys.contains(k))),
            )),
            ColumnarValue::Array(a) => {
                let Some(keys) = a.as_primitive_opt::<Int64Type>() else {
                    return exec_err!("ledger_day_has takes a BIGINT key");
                };
                let hits: BooleanArray = keys
                    .iter()
                    .map(|k| k.map(|k| self.keys.contains(k)))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(hits) as ArrayRef))
            }
            other => exec_err!(
                "ledger_day_has takes a BIGINT key, got {}",
                other.data_type()
            ),
        }
    }
}

/// What the lookup found.
pub struct Found {
    /// The neighbours' copies of the day's transactions (`sql/ledger_neighbours.sql`).
    pub copies: Vec<RecordBatch>,
    /// Their keys: the transactions to settle.
    pub keys: HashSet<i64>,
    /// The copies' schema.
    pub schema: arrow::datatypes::SchemaRef,
    /// Files whose key index was read, and those whose keys were computed from the raw file.
    pub indexes_read: usize,
    /// See `indexes_read`.
    pub indexes_built: usize,
    /// Raw rows read back from the files (the rows whose key is one of the day's).
    pub rows_selected: usize,
}

/// The event days (days since 1970) whose copies in `file` the day's lookup wants: the
/// neighbouring days the file's arrival day is eligible for, that its footer says it holds.
fn wanted_days(window: &DayWindow, file: &CheckedFile) -> Vec<i32> {
    let ingest = schema::date32(file.ingest_date);
    let range = file
        .event_time_range
        .map(|(lo, hi)| (key_index::day_of(lo), key_index::day_of(hi)));
    window
        .neighbour_days()
        .into_iter()
        .map(schema::date32)
        .filter(|d| *d >= ingest - window.late_days as i32 && *d <= ingest + 1)
        .filter(|d| range.is_none_or(|(lo, hi)| *d >= lo && *d <= hi))
        .collect()
}

/// Raw rows whose key indexes are loaded and probed together (about 12 bytes each in memory).
const BATCH_ROWS: u64 = 8 * 1024 * 1024;

/// Files to look up together: (position in the inputs, the file, its wanted days).
type Batch = Vec<(usize, CheckedFile, Vec<i32>)>;

/// A batch with its key indexes loaded.
type Loaded = Vec<(usize, Arc<key_index::FileKeys>, Vec<i32>, key_index::Origin)>;

/// The wanted part of the key indexes a run has loaded, kept for its later passes (each pass
/// looks up another range of the day's keys in the same indexes) while they fit in `budget`
/// bytes; past it, a pass loads what is not kept again.
#[derive(Debug)]
pub struct KeptIndexes {
    /// The kept indexes by input file, and the bytes they take.
    kept: std::sync::Mutex<(
        std::collections::HashMap<usize, Arc<key_index::FileKeys>>,
        usize,
    )>,
    budget: usize,
}

impl KeptIndexes {
    /// Keeps up to `budget` bytes of indexes (0: none, for a run of one pass).
    pub fn new(budget: usize) -> Self {
        Self {
            kept: Default::default(),
            budget,
        }
    }

    fn get(&self, file: usize) -> Option<Arc<key_index::FileKeys>> {
        self.kept.lock().ok()?.0.get(&file).cloned()
    }

    /// `keys` of input `file`, kept (only the `wanted` days) if they fit.
    fn keep(
        &self,
        file: usize,
        keys: key_index::FileKeys,
        wanted: &[i32],
    ) -> Arc<key_index::FileKeys> {
        if self.budget == 0 {
            return Arc::new(keys);
        }
        let wanted_part = Arc::new(keys.only_days(wanted));
        if let Ok(mut kept) = self.kept.lock() {
            let (files, used) = &mut *kept;
            let size = wanted_part.memory_size();
            if *used + size <= self.budget && files.insert(file, Arc::clone(&wanted_part)).is_none()
            {
                *used += size;
            }
        }
        wanted_part
    }
}

/// Loads (or builds) the key indexes of a batch, a few files at a time per core.
async fn load(lake: Lake, batch: Batch, kept: Arc<KeptIndexes>) -> Result<Loaded> {
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    futures::stream::iter(batch)
        .map(|(i, file, wanted)| {
            let lake = lake.clone();
            let kept = Arc::clone(&kept);
            join(tokio::spawn(async move {
                if let Some(keys) = kept.get(i) {
                    return Ok::<_, TallyError>((i, keys, wanted, key_index::Origin::Read));
                }
                let (keys, origin) = key_index::load_or_build(&lake, &file).await?;
                let keys = kept.keep(i, keys, &wanted);
                Ok::<_, TallyError>((i, keys, wanted, origin))
            }))
        })
        .buffer_unordered(parallel * 2)
        .map(|joined| joined?)
        .try_collect()
        .await
}

/// The rows of a loaded batch whose key is one of the day's.
fn probe(day: &DayKeys, loaded: Loaded) -> Vec<FileHits> {
    let mut owners = Vec::new();
    let mut segments: Vec<&[i64]> = Vec::new();
    let mut numbers: Vec<&[u32]> = Vec::new();
    // An empty set trims every segment to nothing.
    let (lowest, highest) = day.bounds().unwrap_or((u64::MAX, 0));
    for (n, (_, keys, wanted, _)) in loaded.iter().enumerate() {
        for d in wanted {
            // A segment is sorted in the set's order: only the part within the day's keys'
            // range can hold one of them (one range of keys per pass).
            let (k, r) = keys.segment(*d);
            let lo = k.partition_point(|x| order(*x) < lowest);
            let hi = k.partition_point(|x| order(*x) <= highest).max(lo);
            let (k, r) = (&k[lo..hi], &r[lo..hi]);
            owners.push(n);
            segments.push(k);
            numbers.push(r);
        }
    }
    let positions = day.positions_in(&segments);
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); loaded.len()];
    for ((owner, found), numbers) in owners.iter().zip(positions).zip(numbers) {
        rows[*owner].extend(found.iter().map(|p| numbers[*p as usize]));
    }
    loaded
        .iter()
        .zip(rows)
        .map(|((i, _, _, origin), mut rows)| {
            rows.sort_unstable();
            FileHits {
                file: *i,
                rows,
                origin: *origin,
            }
        })
        .collect()
}

/// What one file's key index says: the rows to read (the row numbers of D's keys, ascending).
struct FileHits {
    file: usize,
    rows: Vec<u32>,
    origin: key_index::Origin,
}

/// Looks the day's keys up among the copies of the neighbouring days in every file read, and
/// runs `sql/ledger_neighbours.sql` (over `neighbour_arrivals`: the rows found) for them.
pub async fn find(
    session: &TallySession,
    inputs: &Inputs,
    window: &DayWindow,
    day_parts: &[Vec<&[i64]>],
    kept: &Arc<KeptIndexes>,
) -> Result<Found> {
    let started = std::time::Instant::now();
    let lake = session.lake();
    // The files with a wanted day, in batches of about BATCH_ROWS rows: each batch's indexes
    // are loaded at once and probed together (see `DayKeys::positions_in`).
    let mut batches: Vec<Batch> = vec![Vec::new()];
    let mut batch_rows = 0;
    for (i, file) in inputs.files.iter().enumerate() {
        let wanted = wanted_days(window, file);
        if wanted.is_empty() {
            continue;
        }
        if batch_rows >= BATCH_ROWS {
            batches.push(Vec::new());
            batch_rows = 0;
        }
        batch_rows += file.input.rows;
        if let Some(b) = batches.last_mut() {
            b.push((i, file.clone(), wanted));
        }
    }
    // A pipeline: batch k + 1 loads while batch k is probed; the first one loads while the
    // day's key set is built.
    let mut batches = batches.into_iter();
    let mut loading = batches
        .next()
        .map(|b| tokio::spawn(load(lake.clone(), b, Arc::clone(kept))));
    let day = Arc::new(DayKeys::new(day_parts));
    tracing::info!(
        keys = day.len(),
        secs = started.elapsed().as_secs_f64(),
        "ledger: day's key set built"
    );
    let mut hits: Vec<FileHits> = Vec::new();
    let mut probing: Option<tokio::task::JoinHandle<Vec<FileHits>>> = None;
    while let Some(current) = loading.take() {
        let loaded = join(current).await??;
        loading = batches
            .next()
            .map(|b| tokio::spawn(load(lake.clone(), b, Arc::clone(kept))));
        let day = Arc::clone(&day);
        let next = tokio::task::spawn_blocking(move || probe(&day, loaded));
        if let Some(previous) = probing.replace(next) {
            hits.extend(join(previous).await?);
        }
    }
    if let Some(last) = probing {
        hits.extend(join(last).await?);
    }
    hits.sort_by_key(|h| h.file);
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        indexes = hits.len(),
        "ledger: key indexes walked"
    );
    let indexes_built = hits
        .iter()
        .filter(|h| h.origin == key_index::Origin::Built)
        .count();
    let indexes_read = hits.len() - indexes_built;
    let mut rows_selected = 0;
    let mut files = Vec::new();
    for h in hits.into_iter().filter(|h| !h.rows.is_empty()) {
        let file = &inputs.files[h.file];
        rows_selected += h.rows.len();
        let selection = RowSelection::from_consecutive_ranges(
            h.rows.iter().map(|r| *r as usize..*r as usize + 1),
            file.input.rows as usize,
        );
        files.push((file.meta.clone(), file.ingest_date, Some(selection)));
    }

    let ctx = session.ctx();
    let url = ObjectStoreUrl::parse(lake.store_url().as_str())?;
    ctx.deregister_table("neighbour_arrivals")?;
    ctx.register_table(
        "neighbour_arrivals",
        Arc::new(CheckedFiles::with_selections(url, files)),
    )?;
    ctx.register_udf(ScalarUDF::from(LedgerDayHas::new(day)));
    let df: DataFrame = ctx
        .sql(jobs_sql::LEDGER_NEIGHBOURS)
        .await?
        .with_param_values(window.neighbour_params())?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let copies: Vec<RecordBatch> = df
        .collect()
        .await?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    let mut found = HashSet::new();
    for b in &copies {
        let k = b
            .column_by_name("txn_key")
            .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned())
            .ok_or_else(|| TallyError::Internal("neighbour copies lack txn_key".into()))?;
        found.extend(k.iter().flatten());
    }
    Ok(Found {
        copies,
        keys: found,
        schema,
        indexes_read,
        indexes_built,
        rows_selected,
    })
}
