//! The raw files a ledger day reads, checked before any work starts.
//!
//! Finance must never get a ledger with data silently left out, so every Parquet file in the
//! day's arrival window is opened (footer only) before the plan runs: a corrupt file, a file
//! with the wrong schema, or a `txn_id` column with nulls (per the footer statistics) fails the
//! run, naming the file, before anything is written. The checked list is then both what the
//! plan scans (see [`super::scan`]) and the run's recorded input: a file that lands after the
//! listing is neither read nor recorded, and the next run picks it up.

use super::window::DayWindow;
use crate::error::Result;
use crate::lake::{layout, Lake};
use crate::raw_files::{self, InputFile};
use crate::schema;
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;

/// One checked raw file.
#[derive(Debug, Clone)]
pub struct CheckedFile {
    /// What the commit records.
    pub input: InputFile,
    /// Where it is (what the scan reads).
    pub meta: ObjectMeta,
    /// Its arrival day (the `ingest_date=` directory).
    pub ingest_date: NaiveDate,
    /// Its smallest and largest `event_time` (microseconds), from the footer statistics.
    pub event_time_range: Option<(i64, i64)>,
}

/// The checked files of a ledger run, sorted by path.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Every file of the read window (the day's own arrivals and its neighbours').
    pub files: Vec<CheckedFile>,
}

impl Inputs {
    /// The recorded form, sorted by path.
    pub fn recorded(&self) -> Vec<InputFile> {
        self.files.iter().map(|f| f.input.clone()).collect()
    }

    /// Rows in every file read.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.input.rows).sum()
    }

    /// Files holding the day's own eligible copies.
    pub fn own(&self, window: &DayWindow) -> impl Iterator<Item = &CheckedFile> {
        let w = *window;
        self.files.iter().filter(move |f| w.is_own(f.ingest_date))
    }

    /// Rows of arrival day D with no `event_time`: billable on no day. Each such row is
    /// reported once, by the run of the day it arrived on. `None` when a footer lacks the
    /// statistic.
    pub fn rows_without_event_time(&self, window: &DayWindow) -> Option<u64> {
        self.files
            .iter()
            .filter(|f| f.ingest_date == window.day)
            .map(|f| f.input.rows_without_event_time)
            .sum()
    }

    /// The scan over files selected by `keep`, as `(meta, ingest_date)` pairs.
    pub fn scan_files(&self, keep: impl Fn(&CheckedFile) -> bool) -> Vec<(ObjectMeta, NaiveDate)> {
        self.files
            .iter()
            .filter(|f| keep(f))
            .map(|f| (f.meta.clone(), f.ingest_date))
            .collect()
    }
}

/// The raw files of the read window without opening them (rows 0): enough to tell whether a
/// day's inputs changed since its last run.
pub async fn list(lake: &Lake, window: &DayWindow) -> Result<Vec<InputFile>> {
    let mut files: Vec<InputFile> = list_metas(lake, window)
        .await?
        .into_iter()
        .map(|(m, _)| InputFile {
            path: lake.relative_path(&m.location),
            size: m.size,
            rows: 0,
            rows_without_event_time: None,
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Lists and checks the raw files of the read window.
pub async fn collect(lake: &Lake, window: &DayWindow) -> Result<Inputs> {
    let metas = list_metas(lake, window).await?;
    crate::failpoint::hit("ledger_after_listing");
    let mut files: Vec<CheckedFile> = futures::stream::iter(metas)
        .map(|(meta, ingest_date)| async move {
            let (input, event_time_range) = raw_files::check_with_range(lake, meta.clone()).await?;
            Ok::<_, crate::TallyError>(CheckedFile {
                input,
                meta,
                ingest_date,
                event_time_range,
            })
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.input.cmp(&b.input));
    Ok(Inputs { files })
}

/// The raw files of the read window: a raw Delta table's active files (never a listing, see
/// [`crate::raw_delta`]), else the Parquet files of each `ingest_date=` folder.
async fn list_metas(lake: &Lake, window: &DayWindow) -> Result<Vec<(ObjectMeta, NaiveDate)>> {
    let days = window.read_days();
    if let Some(files) = crate::raw_delta::files_of_days(lake, &days).await? {
        return Ok(files);
    }
    let mut metas = Vec::new();
    for d in window.read_days() {
        let partition = format!("{}/{}={d}", layout::RAW_PAYMENTS, schema::INGEST_DATE);
        metas.extend(
            raw_files::list_parquet(lake, &partition)
                .await?
                .into_iter()
                .map(|m| (m, d)),
        );
    }
    Ok(metas)
}
