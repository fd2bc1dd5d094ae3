//! `collapse_copies(payload, arrival, copy)`: the copies of one transaction, collapsed in one
//! pass, with every disagreeing variant kept.
//!
//! The ledger groups each transaction's raw copies. Nearly always they carry the same payload
//! (a partner's retry or replay), and the ledger needs only one copy, how many there were and
//! when the first arrived. Rarely they disagree, and finance needs every distinct payload with
//! its own count and first arrival, to pick the winner and report the conflict. Doing the
//! common case with `count`/`min`/`any_copy` and then re-reading the raw lake for the rare
//! case cost a second scan of the whole arrival window. This aggregate keeps, per group, the
//! first payload it saw (its `payload_hash`, count, first arrival and one copy, picked without
//! comparing values, as `any_copy` does) and, for any other payload, a side entry with the
//! same. Disagreement costs memory only for the transactions that disagree.
//!
//! Result: a struct
//! - `copy`: one copy (the first payload's; meaningful when `variants` is NULL),
//! - `copies`: how many copies in all,
//! - `first_arrival`: the earliest `arrival` of any copy,
//! - `variants`: NULL when every copy has the same payload; otherwise one entry per payload
//!   (`copy`, `copies`, `first_arrival`). The same payload may appear in more than one entry
//!   after a spill or a distributed merge: group the entries by their fields to settle them.
//!
//! `payload` is a BIGINT fingerprint of the copy (`payload_hash(…)`): equal means identical.
//! `arrival` is a timestamp (or BIGINT); NULL arrivals are ignored by `first_arrival`.
//! The state (the first payload's hash, count, first arrival, copy, and the side entries as a
//! list) merges, spills and can be shipped like any other aggregate state.

mod accumulator;
mod state;
mod variant_copies;
mod variants;

use accumulator::OneGroup;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{format_state_name, AggregateOrderSensitivity};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, GroupsAccumulator, Signature, Volatility,
};
use state::CollapseGroups;
use std::sync::Arc;

/// `collapse_copies(payload BIGINT, arrival TIMESTAMP, copy ANY) -> STRUCT`.
///
/// ```sql
/// SELECT txn_id,
///        c['copies'] AS copies, c['variants'] IS NULL AS agree, c['copy']['amount'] AS amount
/// FROM (
///   SELECT txn_id, collapse_copies(payload_hash(amount, status), ingest_time,
///                                  named_struct('amount', amount, 'status', status)) AS c
///   FROM raw_payments GROUP BY txn_id
/// );
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CollapseCopies {
    signature: Signature,
}

impl Default for CollapseCopies {
    fn default() -> Self {
        Self::new()
    }
}

impl CollapseCopies {
    /// The function: (payload hash, arrival time, the copy).
    pub fn new() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

/// An arrival time not seen (all NULL so far).
const NO_TIME: i64 = i64::MAX;

/// The column types the function works with.
#[derive(Debug, Clone)]
struct Types {
    arrival: DataType,
    copy: DataType,
}

impl Types {
    fn check(args: &[DataType]) -> Result<Self> {
        let [payload, arrival, copy] = args else {
            return plan_err!("collapse_copies takes (payload, arrival, copy)");
        };
        if payload != &DataType::Int64 {
            return plan_err!(
                "collapse_copies: payload must be BIGINT (payload_hash), not {payload}"
            );
        }
        if !matches!(arrival, DataType::Timestamp(_, _) | DataType::Int64) {
            return plan_err!(
                "collapse_copies: arrival must be a TIMESTAMP or BIGINT, not {arrival}"
            );
        }
        Ok(Self {
            arrival: arrival.clone(),
            copy: copy.clone(),
        })
    }

    fn from_fields(fields: &[FieldRef]) -> Result<Self> {
        let types: Vec<DataType> = fields.iter().map(|f| f.data_type().clone()).collect();
        Self::check(&types)
    }

    /// One variant: its copy, count and first arrival (and, in the state, its payload hash).
    fn variant_fields(&self, with_payload: bool) -> Fields {
        let mut fields = Vec::new();
        if with_payload {
            fields.push(Field::new("payload", DataType::Int64, false));
        }
        fields.push(Field::new("copy", self.copy.clone(), true));
        fields.push(Field::new("copies", DataType::Int64, false));
        fields.push(Field::new("first_arrival", self.arrival.clone(), true));
        fields.into()
    }

    fn variants_type(&self, with_payload: bool) -> DataType {
        DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(self.variant_fields(with_payload)),
            true,
        )))
    }

    fn output_fields(&self) -> Fields {
        vec![
            Field::new("copy", self.copy.clone(), true),
            Field::new("copies", DataType::Int64, false),
            Field::new("first_arrival", self.arrival.clone(), true),
            Field::new("variants", self.variants_type(false), true),
        ]
        .into()
    }
}

impl AggregateUDFImpl for CollapseCopies {
    fn name(&self) -> &str {
        "collapse_copies"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(Types::check(arg_types)?.output_fields()))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(CollapseGroups::new(Types::from_fields(
            args.expr_fields,
        )?))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let t = Types::from_fields(args.input_fields)?;
        let name = |s: &str| format_state_name(args.name, s);
        Ok(vec![
            Arc::new(Field::new(name("payload"), DataType::Int64, true)),
            Arc::new(Field::new(name("copies"), DataType::Int64, true)),
            Arc::new(Field::new(name("first_arrival"), t.arrival.clone(), true)),
            Arc::new(Field::new(name("copy"), t.copy.clone(), true)),
            Arc::new(Field::new(name("others"), t.variants_type(true), true)),
        ])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(CollapseGroups::new(Types::from_fields(
            args.expr_fields,
        )?)))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        AggregateOrderSensitivity::Insensitive
    }
}

#[cfg(test)]
mod tests;
