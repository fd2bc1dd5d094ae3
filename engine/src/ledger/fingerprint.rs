//! The content fingerprint of a ledger day: what a re-run must reproduce.
//!
//! Row count, the exact amount sum, and an order-independent hash of the rows (the wrapping sum
//! of each row's XXH3-64 over a canonical encoding of every column). File names, file order and
//! row order do not matter; any changed value, lost row or extra row does.

use crate::error::{Result, TallyError};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringViewArray};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Fingerprint of a set of ledger rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Number of rows.
    pub rows: u64,
    /// Sum of `amount` in cents (exact).
    pub amount_cents: i128,
    /// Wrapping sum of per-row hashes.
    pub row_hash: u64,
}

impl Fingerprint {
    /// Folds a batch with the ledger schema into the fingerprint.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| TallyError::Internal(format!("fingerprint: no column {name}")))
        };
        let txn = Strings::of(col("txn_id")?)?;
        let partner = Strings::of(col("partner_id")?)?;
        let event = col("event_time")?.as_primitive::<TimestampMicrosecondType>();
        let day = col("event_date")?.as_primitive::<Date32Type>();
        let amount = col("amount")?.as_primitive::<Decimal128Type>();
        let currency = Strings::of(col("currency")?)?;
        let status = Strings::of(col("status")?)?;
        let first = col("first_ingest_time")?.as_primitive::<TimestampMicrosecondType>();
        let copies = col("copies")?.as_primitive::<Int64Type>();
        // One reusable buffer per batch: a canonical encoding of the row, hashed once.
        let mut buf: Vec<u8> = Vec::with_capacity(128);
        for i in 0..batch.num_rows() {
            buf.clear();
            let s = |buf: &mut Vec<u8>, a: &Strings| match a.get(i) {
                None => buf.push(0),
                Some(v) => {
                    buf.push(1);
                    buf.extend_from_slice(v);
                    buf.push(0xff);
                }
            };
            let n = |buf: &mut Vec<u8>, valid: bool, bytes: &[u8]| {
                buf.push(valid as u8);
                if valid {
                    buf.extend_from_slice(bytes);
                }
            };
            s(&mut buf, &txn);
            s(&mut buf, &partner);
            n(&mut buf, event.is_valid(i), &event.value(i).to_le_bytes());
            n(&mut buf, day.is_valid(i), &day.value(i).to_le_bytes());
            n(&mut buf, amount.is_valid(i), &amount.value(i).to_le_bytes());
            s(&mut buf, &currency);
            s(&mut buf, &status);
            n(&mut buf, first.is_valid(i), &first.value(i).to_le_bytes());
            n(&mut buf, copies.is_valid(i), &copies.value(i).to_le_bytes());
            self.row_hash = self.row_hash.wrapping_add(xxh3_64(&buf));
            if amount.is_valid(i) {
                self.amount_cents += amount.value(i);
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Combines fingerprints of disjoint row sets.
    pub fn merge(&mut self, other: &Fingerprint) {
        self.rows += other.rows;
        self.amount_cents += other.amount_cents;
        self.row_hash = self.row_hash.wrapping_add(other.row_hash);
    }

    /// The amount sum as decimal text (`1234` → `12.34`).
    pub fn amount_text(&self) -> String {
        let a = self.amount_cents.unsigned_abs();
        let sign = if self.amount_cents < 0 { "-" } else { "" };
        format!("{sign}{}.{:02}", a / 100, a % 100)
    }

    /// The commit-info form.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows": self.rows,
            "amount_sum": self.amount_text(),
            "row_hash": format!("{:016x}", self.row_hash),
        })
    }
}

/// A string column as the plan produced it: the same rows hash the same either way.
enum Strings<'a> {
    Plain(&'a StringArray),
    View(&'a StringViewArray),
}

impl<'a> Strings<'a> {
    fn of(array: &'a ArrayRef) -> Result<Self> {
        match array.data_type() {
            DataType::Utf8 => Ok(Self::Plain(array.as_string::<i32>())),
            DataType::Utf8View => Ok(Self::View(array.as_string_view())),
            other => Err(TallyError::Internal(format!(
                "fingerprint: a string column has type {other}"
            ))),
        }
    }

    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            Self::Plain(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
            Self::View(a) => a.is_valid(i).then(|| a.value(i).as_bytes()),
        }
    }
}
