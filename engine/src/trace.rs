//! `tally trace --txn ID`: every raw copy of a transaction, which one won and why, and which
//! ledger day and Delta version hold it — the answer finance needs for a disputed charge.
//!
//! The ledger row comes first (its Parquet files carry a `txn_id` bloom filter, so the lookup
//! reads little). Its event day bounds where the raw copies can be: the ledger run's read
//! window `[D − 3, D + 2 + late_days]` (its own arrivals from D − 1, and the copies of the
//! days within two of D it checks, since a transaction belongs to the day of its winning
//! copy; [`crate::ledger::window`]). Each
//! raw file of that window is searched on its own, so every copy
//! is reported with the file it came from. A transaction not in any ledger is searched in all
//! of `raw_payments` first, to find its arrival days. The winner is recomputed with the
//! ledger's rule — earliest `ingest_time`, ties broken by the smallest
//! (`partner_id`, `amount`, `currency`, `status`, `event_time`; NULLs last, as in SQL) — and
//! compared with the ledger's row.

use crate::error::{Result, TallyError};
use crate::lake::layout;
use crate::ledger::window::{DayWindow, SPREAD_DAYS};
use crate::raw_files;
use crate::schema;
use crate::session::TallySession;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType};
use chrono::{Days, NaiveDate};
use datafusion::execution::options::ParquetReadOptions;
use datafusion::logical_expr::{col, lit};
use datafusion::scalar::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::cmp::Ordering;

/// One raw copy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Copy {
    /// The raw file, relative to the lake.
    pub file: String,
    /// When this copy landed (µs).
    pub ingest_time: Option<i64>,
    /// When the transaction happened (µs).
    pub event_time: Option<i64>,
    /// Payload.
    pub partner_id: Option<String>,
    /// Amount in cents.
    pub amount_cents: Option<i128>,
    /// Currency.
    pub currency: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// This copy is the one the ledger rule picks.
    pub winner: bool,
}

/// The ledger's row for the transaction.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    /// The event day partition.
    pub event_date: NaiveDate,
    /// The ledger's copy count.
    pub copies: i64,
    /// The ledger's amount in cents.
    pub amount_cents: Option<i128>,
    /// The ledger's status.
    pub status: Option<String>,
    /// The ledger table version that wrote the day (from `runs`), if known.
    pub version: Option<i64>,
}

/// Everything known about one transaction.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The id.
    pub txn_id: String,
    /// Raw copies, in the ledger rule's order (winner first).
    pub copies: Vec<Copy>,
    /// Why the winner won, in words.
    pub why: String,
    /// Distinct payloads among the copies (more than one: a dispute, in `ledger_conflicts`).
    pub payloads: usize,
    /// The ledger row, if the day was built.
    pub ledger: Option<LedgerEntry>,
}

/// Traces `txn_id` through the raw lake and the ledger.
pub async fn trace(session: &TallySession, txn_id: &str, late_days: u32) -> Result<Trace> {
    if session.table("raw_payments").is_err() {
        return Err(TallyError::TableNotFound {
            name: "raw_payments".into(),
        });
    }
    let ledger = ledger_entry(session, txn_id).await?;
    let days: Vec<NaiveDate> = match &ledger {
        Some(l) => DayWindow::new(l.event_date, late_days)?.read_days(),
        None => arrival_days(session, txn_id).await?,
    };
    let lake = session.lake();
    let mut files = Vec::new();
    match crate::raw_delta::files_of_days(lake, &days).await? {
        Some(active) => files.extend(active.into_iter().map(|(meta, _)| meta)),
        None => {
            for d in &days {
                let dir = format!("{}/{}={d}", layout::RAW_PAYMENTS, schema::INGEST_DATE);
                files.extend(raw_files::list_parquet(lake, &dir).await?);
            }
        }
    }
    let found: Vec<Vec<Copy>> = futures::stream::iter(files)
        .map(|meta| async move {
            let rel = lake.relative_path(&meta.location);
            let url = lake
                .url_of("")?
                .join(&rel)
                .map_err(|e| TallyError::Internal(e.to_string()))?;
            let batches = session
                .ctx()
                .read_parquet(url.as_str(), ParquetReadOptions::default())
                .await?
                .filter(col("txn_id").eq(lit(txn_id)))?
                .collect()
                .await?;
            copies_in(&rel, &batches)
        })
        .buffered(8)
        .try_collect()
        .await?;
    let mut copies: Vec<Copy> = found.into_iter().flatten().collect();
    if copies.is_empty() && ledger.is_none() {
        return Err(TallyError::InvalidArgument {
            what: "transaction".into(),
            message: format!("{txn_id} is in no raw file and no ledger"),
        });
    }
    // Copies that count for the ledger day: event_time on D or a day within the bound (the
    // copies the winner is chosen from); all copies if not in a ledger.
    let spread = Days::new(SPREAD_DAYS as u64);
    let on_day = |c: &Copy| match (&ledger, c.event_time) {
        (Some(l), Some(t)) => chrono::DateTime::from_timestamp_micros(t).is_some_and(|t| {
            let d = t.date_naive();
            l.event_date
                .checked_sub_days(spread)
                .is_some_and(|lo| d >= lo)
                && l.event_date
                    .checked_add_days(spread)
                    .is_some_and(|hi| d <= hi)
        }),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let days_named = {
        let mut d: Vec<_> = copies
            .iter()
            .filter(|c| on_day(c))
            .filter_map(|c| c.event_time)
            .filter_map(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.date_naive())
            .collect();
        d.sort();
        d.dedup();
        d.len()
    };
    copies.sort_by(|a, b| {
        (!on_day(a))
            .cmp(&!on_day(b))
            .then_with(|| ledger_order(a, b))
    });
    let counted: Vec<&Copy> = copies.iter().filter(|c| on_day(c)).collect();
    let payloads = {
        let mut p: Vec<_> = counted
            .iter()
            .map(|c| (&c.partner_id, c.amount_cents, &c.currency, &c.status))
            .collect();
        p.sort();
        p.dedup();
        p.len()
    };
    let mut why = match counted.as_slice() {
        [] => "no copy has an event_time on the ledger day".to_string(),
        [_] => "the only copy".to_string(),
        [first, second, ..] if first.ingest_time != second.ingest_time => format!(
            "earliest ingest_time of {} copies{}",
            counted.len(),
            if payloads > 1 { "; the copies disagree on payload (see ledger_conflicts)" } else { "" }
        ),
        _ => format!(
            "{} copies share the earliest ingest_time; the tie is broken by the smallest (partner_id, amount, currency, status)",
            counted.len()
        ),
    };
    if days_named > 1 {
        why.push_str(&format!(
            "; the copies name {days_named} event days, and the transaction belongs to the day of the winning copy only (see ledger_conflicts)"
        ));
    }
    if let Some(first) = copies.first_mut() {
        first.winner = on_day(first);
    }
    Ok(Trace {
        txn_id: txn_id.to_string(),
        copies,
        why,
        payloads,
        ledger,
    })
}

/// The ledger's order of copies (ledger_disputed.sql's `ORDER BY ingest_time, partner_id,
/// amount, currency, status, event_time`): SQL's ascending order puts NULLs last, while
/// `Option`'s puts `None` first, so every key compares NULL as the largest value.
fn ledger_order(a: &Copy, b: &Copy) -> Ordering {
    nulls_last(&a.ingest_time, &b.ingest_time)
        .then_with(|| nulls_last(&a.partner_id, &b.partner_id))
        .then_with(|| nulls_last(&a.amount_cents, &b.amount_cents))
        .then_with(|| nulls_last(&a.currency, &b.currency))
        .then_with(|| nulls_last(&a.status, &b.status))
        .then_with(|| nulls_last(&a.event_time, &b.event_time))
}

/// Ascending with NULLS LAST.
fn nulls_last<T: Ord>(a: &Option<T>, b: &Option<T>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

async fn ledger_entry(session: &TallySession, txn_id: &str) -> Result<Option<LedgerEntry>> {
    if session.table(layout::LEDGER).is_err() {
        return Ok(None);
    }
    let batches = session
        .ctx()
        .table(layout::LEDGER)
        .await?
        .filter(col("txn_id").eq(lit(txn_id)))?
        .select(vec![
            col("event_date"),
            col("copies"),
            col("amount"),
            col("status"),
        ])?
        .collect()
        .await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let date = b.column(0).as_primitive::<Date32Type>().value(0);
    let event_date = schema::from_date32(date)
        .ok_or_else(|| TallyError::Internal(format!("bad event_date {date}")))?;
    let amount = b.column(2).as_primitive::<Decimal128Type>();
    let status = arrow::compute::cast(b.column(3), &DataType::Utf8)?;
    let status = status.as_string::<i32>();
    Ok(Some(LedgerEntry {
        event_date,
        copies: b.column(1).as_primitive::<Int64Type>().value(0),
        amount_cents: (!amount.is_null(0)).then(|| amount.value(0)),
        status: (!status.is_null(0)).then(|| status.value(0).to_string()),
        version: ledger_version(session, event_date).await?,
    }))
}

/// The ledger version that last wrote `day`, from the `runs` log.
async fn ledger_version(session: &TallySession, day: NaiveDate) -> Result<Option<i64>> {
    if session.table(layout::RUNS).is_err() {
        return Ok(None);
    }
    let batches = session
        .ctx()
        .table(layout::RUNS)
        .await?
        .filter(
            col("day")
                .eq(lit(ScalarValue::Date32(Some(schema::date32(day)))))
                .and(col("outcome").eq(lit("ok"))),
        )?
        .sort(vec![col("finished_at").sort(false, true)])?
        .limit(0, Some(1))?
        .select(vec![col("ledger_version")])?
        .collect()
        .await?;
    Ok(batches.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        let v = b.column(0).as_primitive::<Int64Type>();
        (!v.is_null(0)).then(|| v.value(0))
    }))
}

/// Arrival days of a transaction not in any ledger (a scan of `raw_payments`).
async fn arrival_days(session: &TallySession, txn_id: &str) -> Result<Vec<NaiveDate>> {
    let batches = session
        .ctx()
        .table("raw_payments")
        .await?
        .filter(col("txn_id").eq(lit(txn_id)))?
        .select(vec![col(schema::INGEST_DATE)])?
        .distinct()?
        .collect()
        .await?;
    let mut days = Vec::new();
    for b in &batches {
        let a = b.column(0).as_primitive::<Date32Type>();
        for i in 0..a.len() {
            if let Some(d) = schema::from_date32(a.value(i)) {
                days.push(d);
            }
        }
    }
    days.sort();
    days.dedup();
    Ok(days)
}

fn copies_in(file: &str, batches: &[RecordBatch]) -> Result<Vec<Copy>> {
    let mut out = Vec::new();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        let text = |name: &str| -> Result<arrow::array::ArrayRef> {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("raw file lacks {name}")))?;
            Ok(arrow::compute::cast(c, &DataType::Utf8)?)
        };
        // A raw file of the wrong schema is bad input, named, never a panic.
        let wrong = |name: &str, c: &dyn arrow::array::Array, want: &str| TallyError::BadInput {
            message: format!(
                "raw file {file}: column {name} is {}, expected {want}",
                c.data_type()
            ),
        };
        let ts = |name: &str| -> Result<arrow::array::PrimitiveArray<TimestampMicrosecondType>> {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("raw file lacks {name}")))?;
            c.as_primitive_opt::<TimestampMicrosecondType>()
                .cloned()
                .ok_or_else(|| wrong(name, c.as_ref(), "Timestamp(µs)"))
        };
        let (partner, currency, status) = (text("partner_id")?, text("currency")?, text("status")?);
        let (partner, currency, status) = (
            partner.as_string::<i32>(),
            currency.as_string::<i32>(),
            status.as_string::<i32>(),
        );
        let (ingest, event) = (ts("ingest_time")?, ts("event_time")?);
        let amount = b
            .column_by_name("amount")
            .ok_or_else(|| TallyError::Internal("raw file lacks amount".into()))?;
        let amount = amount
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(|| wrong("amount", amount.as_ref(), "Decimal128(18,2)"))?;
        let s = |a: &arrow::array::StringArray, i: usize| {
            (!a.is_null(i)).then(|| a.value(i).to_string())
        };
        for i in 0..b.num_rows() {
            out.push(Copy {
                file: file.to_string(),
                ingest_time: (!ingest.is_null(i)).then(|| ingest.value(i)),
                event_time: (!event.is_null(i)).then(|| event.value(i)),
                partner_id: s(partner, i),
                amount_cents: (!amount.is_null(i)).then(|| amount.value(i)),
                currency: s(currency, i),
                status: s(status, i),
                winner: false,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(ingest: Option<i64>, partner: Option<&str>, cents: Option<i128>) -> Copy {
        Copy {
            file: String::new(),
            ingest_time: ingest,
            event_time: Some(0),
            partner_id: partner.map(str::to_string),
            amount_cents: cents,
            currency: Some("EUR".into()),
            status: Some("ok".into()),
            winner: false,
        }
    }

    #[test]
    fn a_null_sorts_after_every_value_as_in_sql() {
        let named = copy(Some(5), Some("p1"), Some(100));
        let unnamed = copy(Some(5), None, Some(100));
        assert_eq!(ledger_order(&named, &unnamed), Ordering::Less);
        assert_eq!(ledger_order(&unnamed, &named), Ordering::Greater);
        let no_amount = copy(Some(5), Some("p1"), None);
        assert_eq!(ledger_order(&named, &no_amount), Ordering::Less);
        let never_arrived = copy(None, Some("a"), Some(1));
        assert_eq!(ledger_order(&named, &never_arrived), Ordering::Less);
    }

    #[test]
    fn arrival_decides_before_content() {
        let early = copy(Some(1), Some("z"), Some(999));
        let late = copy(Some(2), Some("a"), Some(1));
        assert_eq!(ledger_order(&early, &late), Ordering::Less);
        let cheap = copy(Some(1), Some("z"), Some(1));
        assert_eq!(ledger_order(&cheap, &early), Ordering::Less);
    }
}
