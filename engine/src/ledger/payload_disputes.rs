//! Disputes a partition settles on its own: copies that disagree on the payload, all naming D.
//!
//! A partner bug can make most of a day's transactions disagree (a resend with amounts off by
//! a cent). `sql/ledger_settle.sql` settles any transaction, but as one window plan over the
//! whole sliver, and a "sliver" of millions of transactions made it most of the day's time.
//! Most disputes need none of its generality: one `txn_id`, no copy on a neighbouring day, one
//! variant arriving strictly first, and variants that differ in (partner, amount, currency,
//! status). For those the settlement's answer is fixed, and this module gives it directly,
//! row for row the same as the SQL:
//! - the ledger row is the first-arriving variant, with the transaction's total copies and its
//!   first arrival;
//! - `ledger_conflicts` gets every variant (its copies, its first arrival, whether it won),
//!   reason `payload`, naming D.
//!
//! Everything else (a key with neighbouring copies, ids sharing a key, a tie on the first
//! arrival, variants equal but for `event_time`) is left to the SQL, which breaks ties on
//! content. The e2e test `a_day_resent_with_changed_amounts_is_settled_in_full_…` checks
//! both paths (resends arriving later, earlier and at the same instant as the original)
//! against an independent model of the rule.

use crate::error::{Result, TallyError};
use crate::schema;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int64Array, ListArray, RecordBatch,
    StringArray, UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use std::collections::HashSet;
use std::sync::Arc;

/// What a partition settled itself out of its disputed `[txn_key, variants]` batches.
pub struct SettledHere {
    /// Ledger rows (schema [`schema::LEDGER`]).
    pub ledger_rows: RecordBatch,
    /// Their `txn_key`s, aligned with `ledger_rows`.
    pub keys: Int64Array,
    /// `ledger_conflicts` rows (schema [`schema::LEDGER_CONFLICTS`]).
    pub conflicts: RecordBatch,
    /// The disputed rows left to the settlement SQL.
    pub rest: RecordBatch,
}

/// The columns of the variants' copies, flattened.
struct Variants<'a> {
    offsets: &'a [i32],
    txn_id: StringArray,
    partner: StringArray,
    currency: StringArray,
    status: StringArray,
    amount: arrow::array::PrimitiveArray<Decimal128Type>,
    copies: Int64Array,
    first: Int64Array,
    /// The copies' own columns, for the output rows.
    event_time: ArrayRef,
    first_arrival: ArrayRef,
}

impl Variants<'_> {
    /// The settled variant of list `row`, or `None` when the SQL must decide.
    fn winner(&self, row: usize) -> Option<usize> {
        let (start, end) = (self.offsets[row] as usize, self.offsets[row + 1] as usize);
        if end - start < 2 {
            return None;
        }
        let id = self.txn_id.value(start);
        let mut winner = start;
        let mut tied = false;
        for i in start..end {
            if self.first.is_null(i) || self.txn_id.value(i) != id {
                return None;
            }
            if i > start {
                let (f, w) = (self.first.value(i), self.first.value(winner));
                if f < w {
                    winner = i;
                    tied = false;
                } else if f == w {
                    tied = true;
                }
            }
            for j in start..i {
                if self.same_payload(i, j) {
                    return None;
                }
            }
        }
        (!tied).then_some(winner)
    }

    /// The SQL's payload: (partner, amount, currency, status), NULL equal to NULL.
    fn same_payload(&self, i: usize, j: usize) -> bool {
        fn eq(a: &dyn Array, i: usize, j: usize, values_equal: bool) -> bool {
            match (a.is_null(i), a.is_null(j)) {
                (true, true) => true,
                (false, false) => values_equal,
                _ => false,
            }
        }
        let s = |a: &StringArray| eq(a, i, j, a.value(i) == a.value(j));
        s(&self.partner)
            && s(&self.currency)
            && s(&self.status)
            && eq(
                &self.amount,
                i,
                j,
                self.amount.value(i) == self.amount.value(j),
            )
    }
}

/// Splits one of a partition's disputed `[txn_key, variants]` batches (see the module docs).
/// `settle` holds the keys with copies on a neighbouring day; `day` is D.
pub fn settle_here(
    batch: &RecordBatch,
    settle: &HashSet<i64>,
    day: chrono::NaiveDate,
) -> Result<SettledHere> {
    let internal = |what: &str| TallyError::Internal(format!("disputed variants: {what}"));
    let keys = batch
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| internal("txn_key"))?;
    let lists: &ListArray = batch
        .column(1)
        .as_list_opt::<i32>()
        .ok_or_else(|| internal("variants"))?;
    let entries = lists.values().as_struct();
    let field = |s: &arrow::array::StructArray, name: &str| {
        s.column_by_name(name)
            .cloned()
            .ok_or_else(|| internal(name))
    };
    let copy = field(entries, "copy")?;
    let copy = copy.as_struct();
    let text = |name: &str| -> Result<StringArray> {
        Ok(cast(&field(copy, name)?, &DataType::Utf8)?
            .as_string::<i32>()
            .clone())
    };
    let first_arrival = field(entries, "first_arrival")?;
    let v = Variants {
        offsets: lists.value_offsets(),
        txn_id: text("txn_id")?,
        partner: text("partner_id")?,
        currency: text("currency")?,
        status: text("status")?,
        amount: cast(&field(copy, "amount")?, &schema::amount_type())?
            .as_primitive::<Decimal128Type>()
            .clone(),
        copies: cast(&field(entries, "copies")?, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone(),
        first: cast(&first_arrival, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone(),
        event_time: cast(&field(copy, "event_time")?, &schema::timestamp_type())?,
        first_arrival: cast(&first_arrival, &schema::timestamp_type())?,
    };

    let mut rest = Vec::with_capacity(batch.num_rows());
    let (mut winners, mut totals, mut won_keys) = (Vec::new(), Vec::new(), Vec::new());
    let (mut listed, mut is_winner) = (Vec::new(), Vec::new());
    for row in 0..batch.num_rows() {
        let winner = if lists.is_valid(row) && !settle.contains(&keys.value(row)) {
            v.winner(row)
        } else {
            None
        };
        rest.push(winner.is_none());
        let Some(w) = winner else { continue };
        let range = v.offsets[row] as u32..v.offsets[row + 1] as u32;
        winners.push(w as u32);
        totals.push(
            range
                .clone()
                .map(|i| v.copies.value(i as usize))
                .sum::<i64>(),
        );
        won_keys.push(keys.value(row));
        for i in range {
            listed.push(i);
            is_winner.push(i as usize == w);
        }
    }

    let date = schema::date32(day);
    let pick = |a: &dyn Array, at: &[u32]| -> Result<ArrayRef> {
        Ok(take(a, &UInt32Array::from(at.to_vec()), None)?)
    };
    let n = winners.len();
    let ledger_rows = RecordBatch::try_new(
        Arc::clone(&schema::LEDGER),
        vec![
            pick(&v.txn_id, &winners)?,
            pick(&v.partner, &winners)?,
            pick(v.event_time.as_ref(), &winners)?,
            Arc::new(Date32Array::from_value(date, n)),
            pick(&v.amount, &winners)?,
            pick(&v.currency, &winners)?,
            pick(&v.status, &winners)?,
            pick(v.first_arrival.as_ref(), &winners)?,
            Arc::new(Int64Array::from(totals)),
        ],
    )?;
    let m = listed.len();
    let conflicts = RecordBatch::try_new(
        Arc::clone(&schema::LEDGER_CONFLICTS),
        vec![
            pick(&v.txn_id, &listed)?,
            Arc::new(Date32Array::from_value(date, m)),
            pick(&v.partner, &listed)?,
            pick(&v.amount, &listed)?,
            pick(&v.currency, &listed)?,
            pick(&v.status, &listed)?,
            pick(v.first_arrival.as_ref(), &listed)?,
            pick(&v.copies, &listed)?,
            Arc::new(BooleanArray::from(is_winner)),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "payload", m,
            ))),
            Arc::new(Date32Array::from_value(date, m)),
        ],
    )?;
    Ok(SettledHere {
        ledger_rows,
        keys: Int64Array::from(won_keys),
        conflicts,
        rest: filter_record_batch(batch, &BooleanArray::from(rest))?,
    })
}
