//! Per-file column statistics for Delta `add` actions, from the Parquet footer just written.
//!
//! Spark, DuckDB and deltalake-python skip files by the `minValues`/`maxValues`/`nullCount`
//! of the Delta log, without opening them; an `add` with only `numRecords` makes every reader
//! open every file of a day to find one partner or one transaction. The values are folded
//! from the row groups' statistics, in the Delta protocol's JSON forms: timestamps as
//! ISO-8601 with milliseconds (the minimum rounded down, the maximum up, so the bounds stay
//! bounds), dates as `YYYY-MM-DD`, decimals as JSON numbers, strings as they are (strings
//! longer than 32 characters, and columns a row group has no statistics for, are left out).

use arrow::datatypes::{DataType, Schema, TimeUnit};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value};

/// Longest string kept as a bound (Delta's default prefix length for string statistics).
const MAX_STRING_BOUND: usize = 32;

/// The `stats` JSON of a file with `rows` rows, written with `schema` (the file's columns).
pub fn stats_json(schema: &Schema, md: &ParquetMetaData, rows: u64) -> String {
    let mut min = Map::new();
    let mut max = Map::new();
    let mut nulls = Map::new();
    let columns = md.file_metadata().schema_descr().columns();
    for field in schema.fields() {
        let Some(i) = columns.iter().position(|c| c.name() == field.name()) else {
            continue;
        };
        let stats: Option<Vec<&Statistics>> = md
            .row_groups()
            .iter()
            .map(|rg| rg.column(i).statistics())
            .collect();
        let Some(stats) = stats else { continue };
        if let Some(n) = stats
            .iter()
            .map(|s| s.null_count_opt())
            .sum::<Option<u64>>()
        {
            nulls.insert(field.name().clone(), n.into());
        }
        if let Some((lo, hi)) = bounds(field.data_type(), &stats) {
            min.insert(field.name().clone(), lo);
            max.insert(field.name().clone(), hi);
        }
    }
    serde_json::json!({
        "numRecords": rows,
        "minValues": min,
        "maxValues": max,
        "nullCount": nulls,
    })
    .to_string()
}

/// The file's (min, max) of one column, as Delta JSON values.
fn bounds(data_type: &DataType, stats: &[&Statistics]) -> Option<(Value, Value)> {
    match data_type {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            let (lo, hi) = fold(stats, |s| Some((s.min_bytes_opt()?, s.max_bytes_opt()?)))?;
            let (lo, hi) = (std::str::from_utf8(lo).ok()?, std::str::from_utf8(hi).ok()?);
            (lo.chars().count() <= MAX_STRING_BOUND && hi.chars().count() <= MAX_STRING_BOUND)
                .then(|| (lo.into(), hi.into()))
        }
        DataType::Int64
        | DataType::Timestamp(TimeUnit::Microsecond, _)
        | DataType::Decimal128(_, _) => {
            let (lo, hi) = fold(stats, |s| match s {
                Statistics::Int64(v) => Some((*v.min_opt()?, *v.max_opt()?)),
                _ => None,
            })?;
            Some(match data_type {
                DataType::Timestamp(_, tz) => (
                    timestamp(lo.div_euclid(1000) * 1000, tz.is_some())?,
                    timestamp((hi + 999).div_euclid(1000) * 1000, tz.is_some())?,
                ),
                DataType::Decimal128(_, scale) => (decimal(lo, *scale)?, decimal(hi, *scale)?),
                _ => (lo.into(), hi.into()),
            })
        }
        DataType::Date32 => {
            let (lo, hi) = fold(stats, |s| match s {
                Statistics::Int32(v) => Some((*v.min_opt()?, *v.max_opt()?)),
                _ => None,
            })?;
            let day = |d: i32| {
                chrono::NaiveDate::default()
                    .checked_add_signed(chrono::Duration::days(d as i64))
                    .map(|d| Value::from(d.to_string()))
            };
            Some((day(lo)?, day(hi)?))
        }
        _ => None,
    }
}

/// The smallest minimum and the largest maximum over the row groups; `None` when one row
/// group has no bounds (then the file has none).
fn fold<'a, T: Ord + Copy + 'a>(
    stats: &[&'a Statistics],
    bounds: impl Fn(&'a Statistics) -> Option<(T, T)>,
) -> Option<(T, T)> {
    let mut all = stats.iter().map(|s| bounds(s));
    let first = all.next()??;
    all.try_fold(first, |(lo, hi), b| {
        let (a, b) = b?;
        Some((lo.min(a), hi.max(b)))
    })
}

fn timestamp(micros: i64, utc: bool) -> Option<Value> {
    let t = chrono::DateTime::from_timestamp_micros(micros)?;
    Some(if utc {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.3f").to_string().into()
    })
}

fn decimal(unscaled: i64, scale: i8) -> Option<Value> {
    let text = if scale > 0 {
        let p = 10i64.checked_pow(scale as u32)?;
        let sign = if unscaled < 0 { "-" } else { "" };
        let a = unscaled.unsigned_abs();
        format!(
            "{sign}{}.{:0width$}",
            a / p as u64,
            a % p as u64,
            width = scale as usize
        )
    } else {
        unscaled.to_string()
    };
    serde_json::from_str::<serde_json::Number>(&text)
        .ok()
        .map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_of_timestamps_stay_bounds_after_rounding_to_milliseconds() {
        assert_eq!(
            timestamp(1_500, true).unwrap(),
            Value::from("1970-01-01T00:00:00.001Z")
        );
        assert_eq!(decimal(-12_345, 2).unwrap().to_string(), "-123.45");
        assert_eq!(decimal(5, 2).unwrap().to_string(), "0.05");
    }
}
