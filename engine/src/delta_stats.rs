//! Per-file column statistics for Delta `add` actions, from the Parquet footer just written.
//!
//! Spark, DuckDB and deltalake-python skip files by the `minValues`/`maxValues`/`nullCount`
//! of the Delta log, without opening them; an `add` with only `numRecords` makes every reader
//! open every file of a day to find one partner or one transaction. The values are folded
//! from the row groups' statistics, in the Delta protocol's JSON forms: timestamps as
//! ISO-8601 with milliseconds (the minimum rounded down, the maximum up, so the bounds stay
//! bounds), dates as `YYYY-MM-DD`, decimals as JSON numbers written digit for digit (never
//! through a float, which would move an 18-digit bound), strings up to 32 characters as they
//! are and longer ones cut to 32 the way Delta and Parquet writers do: the minimum truncated
//! (a prefix sorts first), the maximum truncated with its last character incremented (so it
//! still sorts after every value sharing the prefix). Columns a row group has no statistics
//! for are left out.

use arrow::datatypes::{DataType, Schema, TimeUnit};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde_json::value::{to_raw_value, RawValue};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Longest string kept as a bound (Delta's default prefix length for string statistics).
const MAX_STRING_BOUND: usize = 32;

/// The `stats` JSON of a file with `rows` rows, written with `schema` (the file's columns).
pub fn stats_json(schema: &Schema, md: &ParquetMetaData, rows: u64) -> String {
    // Every bound as JSON text: decimals must stay exact, and `Value` holds numbers as f64.
    let mut min: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    let mut max: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
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
        let found = match field.data_type() {
            DataType::Decimal128(_, scale) => decimal_bounds(*scale, &stats),
            other => bounds(other, &stats)
                .and_then(|(lo, hi)| Some((to_raw_value(&lo).ok()?, to_raw_value(&hi).ok()?))),
        };
        if let Some((lo, hi)) = found {
            min.insert(field.name().clone(), lo);
            max.insert(field.name().clone(), hi);
        }
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Stats {
        num_records: u64,
        min_values: BTreeMap<String, Box<RawValue>>,
        max_values: BTreeMap<String, Box<RawValue>>,
        null_count: Map<String, Value>,
    }
    let stats = Stats {
        num_records: rows,
        min_values: min,
        max_values: max,
        null_count: nulls,
    };
    serde_json::to_string(&stats).unwrap_or_else(|_| format!("{{\"numRecords\":{rows}}}"))
}

/// A decimal column's (min, max) as exact JSON numbers.
fn decimal_bounds(scale: i8, stats: &[&Statistics]) -> Option<(Box<RawValue>, Box<RawValue>)> {
    let (lo, hi) = fold(stats, |s| match s {
        Statistics::Int64(v) => Some((i128::from(*v.min_opt()?), i128::from(*v.max_opt()?))),
        Statistics::Int32(v) => Some((i128::from(*v.min_opt()?), i128::from(*v.max_opt()?))),
        Statistics::FixedLenByteArray(v) => {
            Some((be_i128(v.min_opt()?.data())?, be_i128(v.max_opt()?.data())?))
        }
        _ => None,
    })?;
    Some((decimal(lo, scale)?, decimal(hi, scale)?))
}

/// A big-endian two's-complement integer of up to 16 bytes (Parquet's decimal bytes).
fn be_i128(bytes: &[u8]) -> Option<i128> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut full = [fill; 16];
    full[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(full))
}

/// The file's (min, max) of one column, as Delta JSON values.
fn bounds(data_type: &DataType, stats: &[&Statistics]) -> Option<(Value, Value)> {
    match data_type {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            let (lo, hi) = fold(stats, |s| Some((s.min_bytes_opt()?, s.max_bytes_opt()?)))?;
            let (lo, hi) = (std::str::from_utf8(lo).ok()?, std::str::from_utf8(hi).ok()?);
            Some((truncated_min(lo).into(), truncated_max(hi)?.into()))
        }
        DataType::Int64 | DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let (lo, hi) = fold(stats, |s| match s {
                Statistics::Int64(v) => Some((*v.min_opt()?, *v.max_opt()?)),
                _ => None,
            })?;
            Some(match data_type {
                DataType::Timestamp(_, tz) => (
                    timestamp(lo.div_euclid(1000) * 1000, tz.is_some())?,
                    timestamp((hi + 999).div_euclid(1000) * 1000, tz.is_some())?,
                ),
                _ => (lo.into(), hi.into()),
            })
        }
        DataType::Date32 => {
            let (lo, hi) = fold(stats, |s| match s {
                Statistics::Int32(v) => Some((*v.min_opt()?, *v.max_opt()?)),
                _ => None,
            })?;
            let day = |d: i32| crate::schema::from_date32(d).map(|d| Value::from(d.to_string()));
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

/// The first [`MAX_STRING_BOUND`] characters: a prefix sorts before the string.
fn truncated_min(s: &str) -> &str {
    match s.char_indices().nth(MAX_STRING_BOUND) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// `s` if short enough, else its first [`MAX_STRING_BOUND`] characters with the last one that
/// can be incremented incremented (and the rest dropped): greater than every string with that
/// prefix. `None` when no character can be (all are U+10FFFF): no bound then.
fn truncated_max(s: &str) -> Option<String> {
    if s.chars().nth(MAX_STRING_BOUND).is_none() {
        return Some(s.to_string());
    }
    let mut prefix: Vec<char> = s.chars().take(MAX_STRING_BOUND).collect();
    while let Some(last) = prefix.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            prefix.push(next);
            return Some(prefix.into_iter().collect());
        }
    }
    None
}

/// `unscaled × 10^-scale` as a JSON number, digit for digit.
fn decimal(unscaled: i128, scale: i8) -> Option<Box<RawValue>> {
    let text = if scale > 0 {
        let p = 10u128.checked_pow(scale as u32)?;
        let sign = if unscaled < 0 { "-" } else { "" };
        let a = unscaled.unsigned_abs();
        format!("{sign}{}.{:0width$}", a / p, a % p, width = scale as usize)
    } else {
        unscaled.to_string()
    };
    RawValue::from_string(text).ok()
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
        assert_eq!(decimal(-12_345, 2).unwrap().get(), "-123.45");
        assert_eq!(decimal(5, 2).unwrap().get(), "0.05");
        assert_eq!(decimal(-5, 2).unwrap().get(), "-0.05");
    }

    #[test]
    fn decimal_bounds_are_written_digit_for_digit() {
        // 18 significant digits: an f64 would print 1e16 for the first.
        assert_eq!(
            decimal(999_999_999_999_999_999, 2).unwrap().get(),
            "9999999999999999.99"
        );
        assert_eq!(
            decimal(-999_999_999_999_999_999, 2).unwrap().get(),
            "-9999999999999999.99"
        );
        assert_eq!(be_i128(&[0xff, 0x85]), Some(-123));
        assert_eq!(be_i128(&[0x01, 0x00]), Some(256));
    }

    #[test]
    fn long_strings_get_truncated_bounds_that_stay_bounds() {
        let a = "0b5e9c1e-4f7a-4c3e-9d2b-8a1f3e6c7d90";
        let b = "0b5e9c1e-4f7a-4c3e-9d2b-8a1f3e6cffff";
        let lo = truncated_min(a);
        let hi = truncated_max(b).unwrap();
        assert_eq!(lo.chars().count(), 32);
        assert_eq!(hi.chars().count(), 32);
        for v in [a, b] {
            assert!(lo <= v && v < hi.as_str(), "{lo} <= {v} < {hi}");
        }
        assert_eq!(truncated_max("short").unwrap(), "short");
        let maxed: String = std::iter::repeat_n(char::MAX, 40).collect();
        assert!(truncated_max(&maxed).is_none());
        // The last character that can be incremented is, the ones after it go.
        let mut tail: String = "x".repeat(31);
        tail.push(char::MAX);
        tail.push_str("zz");
        assert_eq!(
            truncated_max(&tail).unwrap(),
            format!("{}y", "x".repeat(30))
        );
    }
}
