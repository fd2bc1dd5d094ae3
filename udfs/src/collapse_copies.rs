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

use crate::group_blocks::GroupBlocks;
use crate::picks::{compact, Picks};
use datafusion::arrow::array::NullBufferBuilder;
use datafusion::arrow::array::{
    new_empty_array, new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray,
    StructArray, UInt32Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{format_state_name, AggregateOrderSensitivity};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
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

/// A payload of a group other than the first one it saw.
struct Variant {
    group: usize,
    payload: i64,
    copies: i64,
    first: i64,
    copy: ScalarValue,
}

/// A group's first payload: its hash, how many copies carried it and when the first arrived.
#[derive(Debug, Clone, Copy)]
struct Totals {
    payload: i64,
    /// 0 = the group has no copy yet.
    copies: i64,
    first: i64,
}

/// A group with no copy yet.
const NO_COPY: Totals = Totals {
    payload: 0,
    copies: 0,
    first: NO_TIME,
};

/// Per group: the first payload seen (hash, count, first arrival, a copy) and side entries.
struct CollapseGroups {
    types: Types,
    /// Kept in blocks: a day's millions of groups would otherwise regrow (and copy) a `Vec`.
    totals: GroupBlocks<Totals>,
    picks: Picks,
    others: Vec<Variant>,
    /// (group, payload) → position in `others`.
    other_at: HashMap<(usize, i64), usize>,
}

impl CollapseGroups {
    fn new(types: Types) -> Self {
        Self {
            picks: Picks::new(types.copy.clone()),
            types,
            totals: GroupBlocks::default(),
            others: Vec::new(),
            other_at: HashMap::new(),
        }
    }

    fn resize(&mut self, total_num_groups: usize) {
        self.totals.grow(total_num_groups, NO_COPY);
        self.picks.resize(total_num_groups);
    }

    /// `copies` copies of `payload` for group `g`, the first arriving at `first`; the copy
    /// itself is row `row` of `copy` (picked only if it becomes the group's first payload).
    fn add(
        &mut self,
        g: usize,
        payload: i64,
        copies: i64,
        first: i64,
        copy: &ArrayRef,
        row: usize,
    ) -> Result<()> {
        let t = self.totals.get_mut(g);
        if t.copies == 0 {
            *t = Totals {
                payload,
                copies,
                first,
            };
            if !self.picks.has(g) {
                self.picks.pick(g, row);
            }
            return Ok(());
        }
        if t.payload == payload {
            t.copies += copies;
            t.first = t.first.min(first);
            return Ok(());
        }
        self.add_other(g, payload, copies, first, || own_row(copy, row))
    }

    fn add_other(
        &mut self,
        g: usize,
        payload: i64,
        copies: i64,
        first: i64,
        copy: impl FnOnce() -> Result<ScalarValue>,
    ) -> Result<()> {
        match self.other_at.entry((g, payload)) {
            Entry::Occupied(at) => {
                let v = &mut self.others[*at.get()];
                v.copies += copies;
                v.first = v.first.min(first);
            }
            Entry::Vacant(at) => {
                at.insert(self.others.len());
                self.others.push(Variant {
                    group: g,
                    payload,
                    copies,
                    first,
                    copy: copy()?,
                });
            }
        }
        Ok(())
    }

    /// The first `n` groups' columns and side entries; the rest are renumbered from 0.
    fn take_groups(&mut self, emit_to: EmitTo) -> Result<Taken> {
        let copy = self.picks.emit(emit_to)?;
        let totals = self.totals.take_first(match emit_to {
            EmitTo::All => usize::MAX,
            EmitTo::First(n) => n,
        });
        let n = totals.len();
        let mut emitted = Vec::new();
        if !self.others.is_empty() {
            let mut rest = Vec::new();
            for mut v in std::mem::take(&mut self.others) {
                if v.group < n {
                    emitted.push(v);
                } else {
                    v.group -= n;
                    rest.push(v);
                }
            }
            self.other_at = rest
                .iter()
                .enumerate()
                .map(|(i, v)| ((v.group, v.payload), i))
                .collect();
            self.others = rest;
        }
        emitted.sort_by_key(|v| v.group);
        Ok(Taken {
            copy,
            totals,
            others: emitted,
        })
    }

    fn arrival_array(&self, values: impl Iterator<Item = i64>) -> Result<ArrayRef> {
        let a: Int64Array = values.map(|t| (t != NO_TIME).then_some(t)).collect();
        Ok(cast(&a, &self.types.arrival)?)
    }

    /// A list for each of `n` groups: the entries `lists` gives it (sorted by group, each
    /// group once), NULL for a group it does not name.
    fn variants_list(
        &self,
        n: usize,
        lists: Vec<(usize, Vec<ListEntry>)>,
        with_payload: bool,
    ) -> Result<ArrayRef> {
        let fields = self.types.variant_fields(with_payload);
        if lists.is_empty() {
            return Ok(new_null_array(&self.types.variants_type(with_payload), n));
        }
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0i32);
        let mut nulls = NullBufferBuilder::new(n);
        let (mut payloads, mut copies, mut firsts, mut copy) = (vec![], vec![], vec![], vec![]);
        let mut lists = lists.into_iter().peekable();
        for g in 0..n {
            match lists.next_if(|(lg, _)| *lg == g) {
                Some((_, list)) => {
                    for (p, c, f, v) in list {
                        payloads.push(p);
                        copies.push(c);
                        firsts.push(f);
                        copy.push(v);
                    }
                    nulls.append_non_null();
                }
                None => nulls.append_null(),
            }
            offsets.push(i32::try_from(copies.len()).map_err(|_| {
                datafusion::common::DataFusionError::Execution(
                    "collapse_copies: too many variants for one batch".into(),
                )
            })?);
        }
        let copy_array = if copy.is_empty() {
            new_empty_array(&self.types.copy)
        } else {
            compact(ScalarValue::iter_to_array(copy)?)
        };
        let mut columns: Vec<ArrayRef> = Vec::new();
        if with_payload {
            columns.push(Arc::new(Int64Array::from(payloads)));
        }
        columns.push(copy_array);
        columns.push(Arc::new(Int64Array::from(copies)));
        columns.push(self.arrival_array(firsts.into_iter())?);
        let values = StructArray::try_new(fields.clone(), columns, None)?;
        let item = Arc::new(Field::new("item", DataType::Struct(fields), true));
        Ok(Arc::new(ListArray::try_new(
            item,
            OffsetBuffer::new(offsets.into()),
            Arc::new(values),
            nulls.finish(),
        )?))
    }
}

/// Row `row` of `array` as a value that owns its bytes. A plain `try_from_array` would be a
/// one-row slice still holding every buffer of `array` (a whole batch's string pages), and a
/// list built from many such values would drag all of them along.
fn own_row(array: &ArrayRef, row: usize) -> Result<ScalarValue> {
    let one = compact(take(
        array.as_ref(),
        &UInt32Array::from(vec![row as u32]),
        None,
    )?);
    ScalarValue::try_from_array(&one, 0)
}

/// The columns of the groups being emitted.
struct Taken {
    copy: ArrayRef,
    totals: GroupBlocks<Totals>,
    /// Side entries of the emitted groups, sorted by group.
    others: Vec<Variant>,
}

/// One variant in a list: (payload hash, copies, first arrival, the copy).
type ListEntry = (i64, i64, i64, ScalarValue);

/// One list per group named by `others` (sorted by group): the entries `start` gives the
/// group, then its side entries in order.
fn lists_by_group(
    others: Vec<Variant>,
    mut start: impl FnMut(usize) -> Result<Vec<ListEntry>>,
) -> Result<Vec<(usize, Vec<ListEntry>)>> {
    let mut lists: Vec<(usize, Vec<ListEntry>)> = Vec::new();
    for v in others {
        if lists.last().map(|(g, _)| *g) != Some(v.group) {
            lists.push((v.group, start(v.group)?));
        }
        if let Some((_, list)) = lists.last_mut() {
            list.push((v.payload, v.copies, v.first, v.copy));
        }
    }
    Ok(lists)
}

impl GroupsAccumulator for CollapseGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [payload, arrival, copy] = values else {
            return exec_err!("collapse_copies takes 3 arguments");
        };
        let payload = payload.as_primitive::<Int64Type>();
        let arrival = cast(arrival, &DataType::Int64)?;
        let arrival = arrival.as_primitive::<Int64Type>();
        self.resize(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            if opt_filter.is_some_and(|f| !f.value(row) || f.is_null(row)) {
                continue;
            }
            let p = if payload.is_null(row) {
                0
            } else {
                payload.value(row)
            };
            let t = if arrival.is_null(row) {
                NO_TIME
            } else {
                arrival.value(row)
            };
            self.add(g, p, 1, t, copy, row)?;
        }
        self.picks.finish_batch(copy)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let Taken {
            copy,
            mut totals,
            others,
        } = self.take_groups(emit_to)?;
        let n = totals.len();
        // A disagreeing group lists its first payload, then every other one; its totals are
        // those of its whole list.
        let lists = lists_by_group(others, |g| {
            let t = totals.get(g);
            Ok(if t.copies > 0 {
                vec![(t.payload, t.copies, t.first, own_row(&copy, g)?)]
            } else {
                Vec::new()
            })
        })?;
        for (g, list) in &lists {
            let t = totals.get_mut(*g);
            t.copies = list.iter().map(|e| e.1).sum();
            t.first = list.iter().map(|e| e.2).fold(t.first, i64::min);
        }
        let valid: Vec<bool> = totals.iter().map(|t| t.copies > 0).collect();
        let variants = self.variants_list(n, lists, false)?;
        let columns = vec![
            copy,
            Arc::new(Int64Array::from_iter_values(
                totals.iter().map(|t| t.copies),
            )) as ArrayRef,
            self.arrival_array(totals.iter().map(|t| t.first))?,
            variants,
        ];
        let nulls = NullBuffer::from(valid);
        Ok(Arc::new(StructArray::try_new(
            self.types.output_fields(),
            columns,
            Some(nulls).filter(|n| n.null_count() > 0),
        )?))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let taken = self.take_groups(emit_to)?;
        let totals = &taken.totals;
        let n = totals.len();
        let lists = lists_by_group(taken.others, |_| Ok(Vec::new()))?;
        let copies: Int64Array = totals
            .iter()
            .map(|t| (t.copies > 0).then_some(t.copies))
            .collect();
        Ok(vec![
            Arc::new(Int64Array::from_iter_values(
                totals.iter().map(|t| t.payload),
            )),
            Arc::new(copies),
            self.arrival_array(totals.iter().map(|t| t.first))?,
            taken.copy,
            self.variants_list(n, lists, true)?,
        ])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let [payload, copies, first, copy, others] = values else {
            return exec_err!("collapse_copies state has 5 columns");
        };
        let payload = payload.as_primitive::<Int64Type>();
        let copies = copies.as_primitive::<Int64Type>();
        let first = cast(first, &DataType::Int64)?;
        let first = first.as_primitive::<Int64Type>();
        let others = others.as_list::<i32>();
        self.resize(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            if copies.is_valid(row) && copies.value(row) > 0 {
                let t = if first.is_null(row) {
                    NO_TIME
                } else {
                    first.value(row)
                };
                self.add(g, payload.value(row), copies.value(row), t, copy, row)?;
            }
            if others.is_valid(row) {
                let list = others.value(row);
                let list = list.as_struct();
                let [p, v, c, f] = list.columns() else {
                    return exec_err!("collapse_copies: malformed side entries");
                };
                let p = p.as_primitive::<Int64Type>();
                let c = c.as_primitive::<Int64Type>();
                let f = cast(f, &DataType::Int64)?;
                let f = f.as_primitive::<Int64Type>();
                for i in 0..list.len() {
                    let t = if f.is_null(i) { NO_TIME } else { f.value(i) };
                    let totals = self.totals.get_mut(g);
                    if totals.copies > 0 && totals.payload == p.value(i) {
                        totals.copies += c.value(i);
                        totals.first = totals.first.min(t);
                    } else {
                        self.add_other(g, p.value(i), c.value(i), t, || own_row(v, i))?;
                    }
                }
            }
        }
        self.picks.finish_batch(copy)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let [payload, arrival, copy] = values else {
            return exec_err!("collapse_copies takes 3 arguments");
        };
        let n = payload.len();
        let copies: ArrayRef = match opt_filter {
            None => Arc::new(Int64Array::from_value(1, n)),
            Some(f) => Arc::new(
                (0..n)
                    .map(|i| (f.is_valid(i) && f.value(i)).then_some(1i64))
                    .collect::<Int64Array>(),
            ),
        };
        Ok(vec![
            Arc::clone(payload),
            copies,
            Arc::clone(arrival),
            Arc::clone(copy),
            new_null_array(&self.types.variants_type(true), n),
        ])
    }

    fn size(&self) -> usize {
        self.totals.allocated_size()
            + self.picks.size()
            + self
                .others
                .iter()
                .map(|v| std::mem::size_of::<Variant>() + v.copy.size())
                .sum::<usize>()
            + self.other_at.capacity() * 24
    }
}

/// The row-at-a-time form (an aggregate without GROUP BY): one group.
struct OneGroup(CollapseGroups);

impl std::fmt::Debug for OneGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("collapse_copies")
    }
}

impl OneGroup {
    /// Evaluates without losing the state (a window may evaluate more than once).
    fn keep<T>(&mut self, f: impl FnOnce(&mut CollapseGroups) -> Result<T>) -> Result<T> {
        let saved = self.0.state(EmitTo::All)?;
        self.0.merge_batch(&saved, &[0], 1)?;
        let out = f(&mut self.0)?;
        self.0.merge_batch(&saved, &[0], 1)?;
        Ok(out)
    }
}

impl Accumulator for OneGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        self.0.update_batch(values, &vec![0; n], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.resize(1);
        let out = self.keep(|g| g.evaluate(EmitTo::All))?;
        ScalarValue::try_from_array(&out, 0)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.resize(1);
        let out = self.keep(|g| g.state(EmitTo::All))?;
        out.iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |v| v.len());
        self.0.merge_batch(states, &vec![0; n], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringViewArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::TimeUnit;

    fn types() -> Types {
        Types {
            arrival: DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            copy: DataType::Struct(vec![Field::new("v", DataType::Utf8View, true)].into()),
        }
    }

    /// (payload, arrival, value) rows as the function's three arguments.
    fn args(rows: &[(i64, i64, &str)]) -> Vec<ArrayRef> {
        let copy = StructArray::new(
            vec![Field::new("v", DataType::Utf8View, true)].into(),
            vec![Arc::new(StringViewArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )) as ArrayRef],
            None,
        );
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(copy),
        ]
    }

    /// Per group: (copies, first arrival, agreeing copy's value or None, sorted variants as
    /// (value, copies, first arrival) with equal values summed).
    type Summary = (i64, i64, Option<String>, Vec<(String, i64, i64)>);

    fn summarize(out: &ArrayRef) -> Vec<Summary> {
        let s = out.as_struct();
        let copy = s.column(0).as_struct().column(0).as_string_view().clone();
        let copies = s.column(1).as_primitive::<Int64Type>().clone();
        let first = cast(s.column(2), &DataType::Int64).unwrap();
        let first = first.as_primitive::<Int64Type>().clone();
        let variants = s.column(3).as_list::<i32>().clone();
        (0..s.len())
            .map(|g| {
                let mut vs: Vec<(String, i64, i64)> = Vec::new();
                if variants.is_valid(g) {
                    let l = variants.value(g);
                    let l = l.as_struct();
                    let val = l.column(0).as_struct().column(0).as_string_view().clone();
                    let c = l.column(1).as_primitive::<Int64Type>().clone();
                    let f = cast(l.column(2), &DataType::Int64).unwrap();
                    let f = f.as_primitive::<Int64Type>().clone();
                    for i in 0..l.len() {
                        let v = val.value(i).to_string();
                        match vs.iter_mut().find(|e| e.0 == v) {
                            Some(e) => {
                                e.1 += c.value(i);
                                e.2 = e.2.min(f.value(i));
                            }
                            None => vs.push((v, c.value(i), f.value(i))),
                        }
                    }
                    vs.sort();
                }
                let agreed = (!variants.is_valid(g)).then(|| copy.value(g).to_string());
                (copies.value(g), first.value(g), agreed, vs)
            })
            .collect()
    }

    /// Rows of three transactions: 0 agrees (3 copies), 1 disagrees (a, a, b), 2 has one copy.
    fn rows() -> Vec<(usize, (i64, i64, &'static str))> {
        vec![
            (0, (7, 30, "x")),
            (1, (1, 50, "a")),
            (0, (7, 10, "x")),
            (2, (9, 5, "only")),
            (1, (2, 20, "b")),
            (0, (7, 40, "x")),
            (1, (1, 45, "a")),
        ]
    }

    fn expected() -> Vec<Summary> {
        vec![
            (3, 10, Some("x".into()), vec![]),
            (3, 20, None, vec![("a".into(), 2, 45), ("b".into(), 1, 20)]),
            (1, 5, Some("only".into()), vec![]),
        ]
    }

    #[test]
    fn counts_agreeing_copies_and_keeps_every_variant_of_disagreeing_ones() {
        let mut acc = CollapseGroups::new(types());
        let rows = rows();
        // Two batches; group numbers in first-seen order, as DataFusion assigns them.
        for part in [&rows[..4], &rows[4..]] {
            let groups: Vec<usize> = part.iter().map(|r| r.0).collect();
            let data: Vec<_> = part.iter().map(|r| r.1).collect();
            acc.update_batch(&args(&data), &groups, None, 3).unwrap();
        }
        assert_eq!(summarize(&acc.evaluate(EmitTo::All).unwrap()), expected());
    }

    #[test]
    fn merged_partial_states_give_the_same_result_whichever_copy_each_saw_first() {
        // Split the rows between two partial accumulators (even and odd rows): the first sees
        // payload "b" of transaction 1 first, the second only "a". Merge their states.
        let rows = rows();
        let mut final_acc = CollapseGroups::new(types());
        for keep in [0, 1] {
            let mut partial = CollapseGroups::new(types());
            let mine: Vec<_> = rows
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == keep)
                .map(|(_, r)| *r)
                .collect();
            // Local group numbers follow first appearance in this partial.
            let mut local: Vec<usize> = Vec::new();
            let groups: Vec<usize> = mine
                .iter()
                .map(|r| match local.iter().position(|&g| g == r.0) {
                    Some(p) => p,
                    None => {
                        local.push(r.0);
                        local.len() - 1
                    }
                })
                .collect();
            let data: Vec<_> = mine.iter().map(|r| r.1).collect();
            partial
                .update_batch(&args(&data), &groups, None, local.len())
                .unwrap();
            let state = partial.state(EmitTo::All).unwrap();
            // Each state row is one local group; `local` maps it to the final group number.
            final_acc.merge_batch(&state, &local, 3).unwrap();
        }
        assert_eq!(
            summarize(&final_acc.evaluate(EmitTo::All).unwrap()),
            expected()
        );
    }

    #[test]
    fn skipped_partial_aggregation_and_a_partial_emit_keep_every_group_whole() {
        // convert_to_state (the partial step skipped) feeds the final step row by row; the
        // final step emits its first group early (as a spill merge does), then the rest.
        let rows = rows();
        let helper = CollapseGroups::new(types());
        let mut acc = CollapseGroups::new(types());
        let data: Vec<_> = rows.iter().map(|r| r.1).collect();
        let state = helper.convert_to_state(&args(&data), None).unwrap();
        let groups: Vec<usize> = rows.iter().map(|r| r.0).collect();
        acc.merge_batch(&state, &groups, 3).unwrap();
        let first = summarize(&acc.evaluate(EmitTo::First(1)).unwrap());
        // Groups 1 and 2 are now 0 and 1; another copy of transaction 1 ("b", earlier).
        let more = helper
            .convert_to_state(&args(&[(2, 15, "b")]), None)
            .unwrap();
        acc.merge_batch(&more, &[0], 2).unwrap();
        let rest = summarize(&acc.evaluate(EmitTo::All).unwrap());
        let mut want = expected();
        want[1].0 = 4;
        want[1].1 = 15;
        want[1].3[1] = ("b".into(), 2, 15);
        assert_eq!(first, want[..1].to_vec());
        assert_eq!(rest, want[1..].to_vec());
    }

    #[test]
    fn a_filtered_row_counts_for_nothing() {
        let helper = CollapseGroups::new(types());
        let mut acc = CollapseGroups::new(types());
        let filter = BooleanArray::from(vec![false, true]);
        let state = helper
            .convert_to_state(&args(&[(1, 1, "skip"), (2, 2, "keep")]), Some(&filter))
            .unwrap();
        acc.merge_batch(&state, &[0, 0], 1).unwrap();
        let got = summarize(&acc.evaluate(EmitTo::All).unwrap());
        assert_eq!(got, vec![(1, 2, Some("keep".into()), vec![])]);
    }

    #[test]
    fn without_group_by_the_one_group_survives_repeated_evaluation() {
        let mut acc = OneGroup(CollapseGroups::new(types()));
        acc.update_batch(&args(&[(1, 5, "a"), (2, 3, "b")]))
            .unwrap();
        let once = acc.evaluate().unwrap();
        let twice = acc.evaluate().unwrap();
        assert_eq!(once, twice);
        let out = summarize(&once.to_array().unwrap());
        assert_eq!(
            out,
            vec![(2, 3, None, vec![("a".into(), 1, 5), ("b".into(), 1, 3)])]
        );
    }
}
