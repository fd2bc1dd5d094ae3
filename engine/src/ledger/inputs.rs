//! The raw files a ledger day reads, checked before any work starts.
//!
//! Finance must never get a ledger with data silently left out, so every Parquet file in the
//! day's arrival window is opened (footer only) before the plan runs: a corrupt file, a file
//! with the wrong schema, or a `txn_id` column with nulls (per the footer statistics) fails the
//! run, naming the file, before anything is written. The list is also the run's recorded input.

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::raw_files::{self, InputFile};
use crate::schema;
use chrono::{Days, NaiveDate};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;

/// The raw files with `ingest_date` in `[day, day + late_days]`, without opening them (rows 0):
/// enough to tell whether a day's inputs changed since its last run.
pub async fn list(lake: &Lake, day: NaiveDate, late_days: u32) -> Result<Vec<InputFile>> {
    let mut files: Vec<InputFile> = list_metas(lake, day, late_days)
        .await?
        .into_iter()
        .map(|m| InputFile {
            path: lake.relative_path(&m.location),
            size: m.size,
            rows: 0,
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Lists and checks the raw files with `ingest_date` in `[day, day + late_days]`.
pub async fn collect(lake: &Lake, day: NaiveDate, late_days: u32) -> Result<Vec<InputFile>> {
    let metas = list_metas(lake, day, late_days).await?;
    let mut checked: Vec<InputFile> = futures::stream::iter(metas)
        .map(|meta| raw_files::check(lake, meta))
        .buffer_unordered(16)
        .try_collect()
        .await?;
    checked.sort();
    Ok(checked)
}

async fn list_metas(lake: &Lake, day: NaiveDate, late_days: u32) -> Result<Vec<ObjectMeta>> {
    let mut metas: Vec<ObjectMeta> = Vec::new();
    for offset in 0..=late_days {
        let d = day
            .checked_add_days(Days::new(offset as u64))
            .ok_or_else(|| TallyError::InvalidArgument {
                what: "date".into(),
                message: format!("{day} + {offset} days is out of range"),
            })?;
        let partition = format!("{}/{}={d}", layout::RAW_PAYMENTS, schema::INGEST_DATE);
        metas.extend(raw_files::list_parquet(lake, &partition).await?);
    }
    Ok(metas)
}
