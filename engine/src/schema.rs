//! Table schemas, defined once.
//!
//! Every other place (the generator, the session's table registrations, the ledger's checks of
//! raw files, the tests) takes its schema from here, so the copies cannot drift.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};

/// Precision of money columns: Decimal128(18, 2), exact to the cent.
pub const AMOUNT_PRECISION: u8 = 18;
/// Scale of money columns.
pub const AMOUNT_SCALE: i8 = 2;

/// The money type.
pub fn amount_type() -> DataType {
    DataType::Decimal128(AMOUNT_PRECISION, AMOUNT_SCALE)
}

/// Timestamps: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Name of the hive partition column of `raw_payments`.
pub const INGEST_DATE: &str = "ingest_date";

/// Columns of a raw payment file (the `ingest_date` partition column is in the path, not here).
pub static RAW_PAYMENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8View, false),
        Field::new("partner_id", DataType::Utf8View, true),
        Field::new("event_time", timestamp_type(), true),
        Field::new("ingest_time", timestamp_type(), true),
        Field::new("amount", amount_type(), true),
        Field::new("currency", DataType::Utf8View, true),
        Field::new("status", DataType::Utf8View, true),
    ]))
});

/// The same columns as written to raw files: plain `Utf8` strings, as most writers produce.
/// (The table reads them as `Utf8View`, DataFusion's faster string form.)
pub static RAW_PAYMENTS_FILE: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = RAW_PAYMENTS
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
});

/// Checks a raw file's schema against [`RAW_PAYMENTS`]; `Err` names the first difference.
///
/// String columns may be `Utf8`, `LargeUtf8` or `Utf8View`; nullability of `txn_id` in the file
/// is not required (null values are caught by the jobs), everything else must match exactly.
pub fn check_raw_schema(found: &Schema) -> Result<(), String> {
    for want in RAW_PAYMENTS.fields() {
        let Ok(got) = found.field_with_name(want.name()) else {
            return Err(format!("missing column {}", want.name()));
        };
        let ok = match want.data_type() {
            DataType::Utf8 | DataType::Utf8View => matches!(
                got.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            DataType::Timestamp(unit, Some(_)) => matches!(
                got.data_type(),
                DataType::Timestamp(u, Some(tz))
                    if u == unit && matches!(tz.as_ref(), "UTC" | "+00:00" | "Z")
            ),
            other => got.data_type() == other,
        };
        if !ok {
            return Err(format!(
                "column {} has type {}, expected {}",
                want.name(),
                got.data_type(),
                want.data_type()
            ));
        }
    }
    Ok(())
}

/// Partition column of the ledger and its conflicts.
pub const EVENT_DATE: &str = "event_date";

/// The ledger: one row per transaction of an event day.
pub static LEDGER: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8, false),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("event_time", timestamp_type(), true),
        Field::new(EVENT_DATE, DataType::Date32, false),
        Field::new("amount", amount_type(), true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("first_ingest_time", timestamp_type(), true),
        Field::new("copies", DataType::Int64, false),
    ]))
});

/// Conflicting copies: one row per distinct payload of a disputed transaction.
pub static LEDGER_CONFLICTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8, false),
        Field::new(EVENT_DATE, DataType::Date32, false),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("amount", amount_type(), true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("first_ingest_time", timestamp_type(), true),
        Field::new("copies", DataType::Int64, false),
        Field::new("is_winner", DataType::Boolean, false),
        // Why the transaction is listed: `payload` (its copies disagree on the payload),
        // `owned_here` or `owned_by_other_day` (its copies name different days; the winning
        // copy's day owns it). Nullable: tables of older versions lack it.
        Field::new("reason", DataType::Utf8, true),
        // The UTC day this payload's copies name.
        Field::new("copy_event_date", DataType::Date32, true),
    ]))
});

/// Money sums in the live tables: wide enough for years of a firehose, still exact.
pub fn amount_sum_type() -> DataType {
    DataType::Decimal128(38, AMOUNT_SCALE)
}

/// `live_view` and `live_late`: per minute of `event_time` and partner, partial counts that a
/// reader sums (tally's session registers both as views that do it).
pub static LIVE_WINDOW: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("window_start", timestamp_type(), false),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("events", DataType::Int64, false),
        Field::new("errors", DataType::Int64, false),
        Field::new("amount", amount_sum_type(), true),
    ]))
});

/// `runs`: one row per ledger day run (by `tally ledger` or `tally backfill`).
pub static RUNS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("command", DataType::Utf8, false),
        Field::new("day", DataType::Date32, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("finished_at", timestamp_type(), false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("inputs_key", DataType::Utf8, true),
        Field::new("input_files", DataType::Int64, true),
        Field::new("rows_read", DataType::Int64, true),
        Field::new("ledger_rows", DataType::Int64, true),
        Field::new("ledger_amount", amount_sum_type(), true),
        Field::new("row_hash", DataType::Utf8, true),
        Field::new("ledger_version", DataType::Int64, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("tally_version", DataType::Utf8, false),
        // Added later (nullable: older rows lack them).
        // Rows of arrival day D without an `event_time` (billable on no day).
        Field::new("rows_without_event_time", DataType::Int64, true),
        // The `ledger_conflicts` version holding the day's conflicts.
        Field::new("conflicts_version", DataType::Int64, true),
    ]))
});

/// `reconciliations`: one row per partner per `tally reconcile` run.
pub static RECONCILIATIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("run_time", timestamp_type(), false),
        Field::new("day", DataType::Date32, false),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("ledger_events", DataType::Int64, false),
        Field::new("ledger_errors", DataType::Int64, false),
        Field::new("ledger_amount", amount_sum_type(), false),
        Field::new("live_events", DataType::Int64, false),
        Field::new("live_errors", DataType::Int64, false),
        Field::new("live_amount", amount_sum_type(), false),
        Field::new("late_events", DataType::Int64, false),
        Field::new("late_amount", amount_sum_type(), false),
        Field::new("raw_drift", DataType::Float64, false),
        Field::new("unexplained_drift", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, false),
        Field::new("verdict", DataType::Utf8, false),
        Field::new("ledger_version", DataType::Int64, true),
        Field::new("live_view_version", DataType::Int64, true),
    ]))
});

/// `alerts`: one row per alert the live mode sent (or recorded, without a webhook).
pub static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("partner_id", DataType::Utf8, false),
        Field::new("window_start", timestamp_type(), false),
        Field::new("events", DataType::Int64, false),
        Field::new("errors", DataType::Int64, false),
        // A ratio of counts, never an amount.
        Field::new("error_rate", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, false),
        Field::new("detected_at", timestamp_type(), false),
        // `delivered`, `refused` (a 4xx), `pending` (not accepted when its loop stopped; a
        // restart sends it again and appends its outcome) or `no_webhook`.
        Field::new("delivery", DataType::Utf8, false),
        // Null unless delivered.
        Field::new("delivered_at", timestamp_type(), true),
        Field::new("attempts", DataType::Int64, false),
    ]))
});

/// `live_quarantine`: one row per raw file the live mode quarantined (not read), kept for
/// good, so reconcile and operations can name every file the view does not count.
pub static LIVE_QUARANTINE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("quarantined_at", timestamp_type(), false),
        // The live batch that took it (the Delta application transaction).
        Field::new("batch", DataType::Int64, false),
        Field::new("size", DataType::Int64, false),
        // From the file's footer when it has a readable one.
        Field::new("rows", DataType::Int64, true),
    ]))
});

/// The raw columns the live mode reads, as plain strings.
pub static LIVE_INPUT: LazyLock<SchemaRef> = LazyLock::new(|| {
    let keep = [
        "txn_id",
        "partner_id",
        "event_time",
        "ingest_time",
        "amount",
        "currency",
        "status",
    ];
    let fields: Vec<Field> = RAW_PAYMENTS_FILE
        .fields()
        .iter()
        .filter(|f| keep.contains(&f.name().as_str()))
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
});

/// The raw columns that rebuild the live mode's dedup state on restart: the key, its minute,
/// and `ingest_time`, which decides (as in the first run) whether an event is too far ahead.
pub static LIVE_KEYS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let idx =
        ["txn_id", "event_time", "ingest_time"].map(|n| LIVE_INPUT.index_of(n).unwrap_or_default());
    Arc::new(
        LIVE_INPUT
            .project(&idx)
            .unwrap_or_else(|_| LIVE_INPUT.as_ref().clone()),
    )
});

/// Casts a batch to `schema` by column name (e.g. `Utf8View` from a scan to `Utf8`).
pub fn conform(
    batch: &arrow::array::RecordBatch,
    schema: &SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let col = batch.column_by_name(f.name()).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("missing column {}", f.name()))
            })?;
            arrow::compute::cast(col, f.data_type())
        })
        .collect::<Result<Vec<_>, _>>()?;
    arrow::array::RecordBatch::try_new(Arc::clone(schema), columns)
}

/// Days since 1970-01-01: the Arrow `Date32` value of a date.
pub fn date32(day: chrono::NaiveDate) -> i32 {
    // NaiveDate::default() is the Unix epoch, 1970-01-01.
    day.signed_duration_since(chrono::NaiveDate::default())
        .num_days() as i32
}

/// The date of an Arrow `Date32` value; `None` outside chrono's calendar.
pub fn from_date32(days: i32) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::default().checked_add_signed(chrono::TimeDelta::try_days(days as i64)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_the_dedup_columns() {
        let names: Vec<&str> = LIVE_KEYS
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["txn_id", "event_time", "ingest_time"]);
    }

    #[test]
    fn raw_schema_accepts_itself() {
        check_raw_schema(&RAW_PAYMENTS).unwrap();
    }

    #[test]
    fn float_amount_is_refused_by_name() {
        let fields: Vec<Field> = RAW_PAYMENTS
            .fields()
            .iter()
            .map(|f| {
                if f.name() == "amount" {
                    Field::new("amount", DataType::Float64, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        let e = check_raw_schema(&Schema::new(fields)).unwrap_err();
        assert!(e.contains("amount") && e.contains("Float64"), "{e}");
    }
}
