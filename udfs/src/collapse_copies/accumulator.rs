//! The DataFusion side: `GroupsAccumulator` for `CollapseGroups` (update, emit, state, merge)
//! and `OneGroup`, its row-at-a-time `Accumulator` form. Separate from the state it drives.

use super::state::{CollapseGroups, Taken, Variant};
use super::variant_copies::Slot;
use super::variants::{lists_by_group, CopyAt};
use super::NO_TIME;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, StructArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use std::sync::Arc;

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
            self.add(g, p, 1, t, row)?;
        }
        self.variant_copies.finish_batch([Some(copy), None])?;
        self.picks.finish_batch(copy)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let Taken {
            copy,
            mut totals,
            others,
            other_copies,
        } = self.take_groups(emit_to)?;
        let n = totals.len();
        // A disagreeing group lists its first payload, then every other one; its totals are
        // those of its whole list.
        let lists = lists_by_group(others, |g| {
            let t = totals.get(g);
            Ok(if t.copies > 0 {
                vec![(t.payload, t.copies, t.first, (CopyAt::Group, g))]
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
        let variants = self.variants_list(n, lists, false, [&copy, &other_copies])?;
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
        let others = self.variants_list(n, lists, true, [&taken.copy, &taken.other_copies])?;
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
            others,
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
        // The side entries of every row, flattened: row `r`'s are `offsets[r]..offsets[r + 1]`.
        let entries = others.values().as_struct();
        let [p, v, c, f] = entries.columns() else {
            return exec_err!("collapse_copies: malformed side entries");
        };
        let p = p.as_primitive::<Int64Type>();
        let c = c.as_primitive::<Int64Type>();
        let f = cast(f, &DataType::Int64)?;
        let f = f.as_primitive::<Int64Type>();
        let offsets = others.value_offsets();
        self.resize(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            if copies.is_valid(row) && copies.value(row) > 0 {
                let t = if first.is_null(row) {
                    NO_TIME
                } else {
                    first.value(row)
                };
                self.add(g, payload.value(row), copies.value(row), t, row)?;
            }
            if others.is_valid(row) {
                for i in offsets[row] as usize..offsets[row + 1] as usize {
                    let t = if f.is_null(i) { NO_TIME } else { f.value(i) };
                    let totals = self.totals.get_mut(g);
                    if totals.copies > 0 && totals.payload == p.value(i) {
                        totals.copies += c.value(i);
                        totals.first = totals.first.min(t);
                    } else {
                        self.add_other(g, p.value(i), c.value(i), t, Slot::ListValues, i);
                    }
                }
            }
        }
        self.variant_copies.finish_batch([Some(copy), Some(v)])?;
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
            + self.others.capacity() * std::mem::size_of::<Variant>()
            + self.variant_copies.size()
            + self.other_at.capacity() * 24
    }
}

/// The row-at-a-time form (an aggregate without GROUP BY): one group.
pub(super) struct OneGroup(pub(super) CollapseGroups);

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
