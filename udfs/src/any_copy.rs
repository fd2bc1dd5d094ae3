//! `any_copy(col)`: one copy's value per group, without comparing values.
//!
//! When every copy in a group is known to carry the same value, any copy's value IS the
//! value, so comparing strings with `min()` is wasted work (on a 10M-transaction day the
//! string `min`s were most of the aggregate's CPU). `any_copy` picks, from each input batch,
//! the values of groups it has not seen (see [`crate::picks`]): no per-row string comparison
//! and no allocation per group. Which copy is picked depends on arrival order, so use it only
//! where the copies agree. The ledger itself uses `collapse_copies`, which also checks that
//! they do and keeps every variant when they do not.
//!
//! Given a struct (`any_copy(named_struct(…))`), it takes every field from the same copy with
//! one pick per group.
//!
//! The state is the value itself, so partial aggregation, spilling and a distributed runner
//! that registers the function all work.

use crate::picks::Picks;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::compute::{kernels::boolean::not, nullif};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{format_state_name, AggregateOrderSensitivity};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use std::sync::Arc;

/// `any_copy(x)`: the value of one (non-null) copy in the group.
///
/// ```sql
/// SELECT txn_id, any_copy(partner_id) FROM raw_payments GROUP BY txn_id;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AnyCopy {
    signature: Signature,
}

impl Default for AnyCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl AnyCopy {
    /// The function, taking one column of any type.
    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for AnyCopy {
    fn name(&self) -> &str {
        "any_copy"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(AnyCopyAccumulator {
            value: ScalarValue::try_from(acc_args.return_field.data_type())?,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "any_copy"),
            args.return_field.data_type().clone(),
            true,
        ))])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(AnyCopyGroups::new(
            args.return_field.data_type().clone(),
        )))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        AggregateOrderSensitivity::Insensitive
    }
}

/// The row-at-a-time form (used when DataFusion cannot use the groups form).
#[derive(Debug)]
struct AnyCopyAccumulator {
    value: ScalarValue,
}

impl Accumulator for AnyCopyAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if !self.value.is_null() {
            return Ok(());
        }
        let a = &values[0];
        if let Some(i) = (0..a.len()).find(|&i| a.is_valid(i)) {
            self.value = ScalarValue::try_from_array(a, i)?;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value.clone())
    }

    fn size(&self) -> usize {
        self.value.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value.clone()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
}

/// Per group: the row that holds its value.
struct AnyCopyGroups {
    picks: Picks,
}

impl AnyCopyGroups {
    fn new(data_type: DataType) -> Self {
        Self {
            picks: Picks::new(data_type),
        }
    }

    fn pick(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.picks.resize(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            if self.picks.has(g)
                || values.is_null(row)
                || filter.is_some_and(|f| !f.value(row) || f.is_null(row))
            {
                continue;
            }
            self.picks.pick(g, row);
        }
        self.picks.finish_batch(values)
    }
}

impl GroupsAccumulator for AnyCopyGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.pick(&values[0], group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.picks.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.pick(&values[0], group_indices, None, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let v = Arc::clone(&values[0]);
        Ok(vec![match opt_filter {
            None => v,
            Some(f) => nullif(&v, &not(f)?)?,
        }])
    }

    fn size(&self) -> usize {
        self.picks.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::array::{AsArray, StructArray};

    #[test]
    fn picks_the_first_non_null_value_of_each_group_across_batches() {
        let mut acc = AnyCopyGroups::new(DataType::Utf8);
        let a: ArrayRef = Arc::new(StringArray::from(vec![None, Some("x"), Some("y")]));
        acc.update_batch(&[a], &[0, 0, 1], None, 3).unwrap();
        let b: ArrayRef = Arc::new(StringArray::from(vec![Some("z"), Some("w")]));
        acc.update_batch(&[b], &[2, 0], None, 4).unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), "x");
        assert_eq!(out.value(1), "y");
        assert_eq!(out.value(2), "z");
        assert!(out.is_null(3), "a group that never saw a value is null");
    }

    #[test]
    fn a_struct_is_taken_whole_from_one_copy() {
        use datafusion::arrow::array::{Int64Array, StringViewArray};
        let fields = vec![
            Arc::new(Field::new("id", DataType::Utf8View, true)),
            Arc::new(Field::new("n", DataType::Int64, true)),
        ];
        let row = |ids: Vec<&str>, ns: Vec<Option<i64>>| -> ArrayRef {
            Arc::new(StructArray::new(
                fields.clone().into(),
                vec![
                    Arc::new(StringViewArray::from(ids)) as ArrayRef,
                    Arc::new(Int64Array::from(ns)) as ArrayRef,
                ],
                None,
            ))
        };
        let mut acc = AnyCopyGroups::new(row(vec![], vec![]).data_type().clone());
        let a = row(
            vec!["a-long-id-beyond-twelve-bytes", "b"],
            vec![None, Some(2)],
        );
        acc.update_batch(&[a], &[0, 1], None, 2).unwrap();
        let b = row(vec!["c", "d"], vec![Some(3), Some(4)]);
        acc.update_batch(&[b], &[0, 2], None, 3).unwrap();
        let first = acc.evaluate(EmitTo::First(1)).unwrap();
        let first = first.as_struct();
        assert_eq!(
            first.column(0).as_string_view().value(0),
            "a-long-id-beyond-twelve-bytes"
        );
        assert!(
            first.column(1).is_null(0),
            "a null field stays with its copy, not filled from another"
        );
        let rest = acc.evaluate(EmitTo::All).unwrap();
        let rest = rest.as_struct();
        let ids = rest.column(0).as_string_view();
        assert_eq!((ids.value(0), ids.value(1)), ("b", "d"));
    }

    #[test]
    fn emitting_the_first_groups_keeps_the_rest() {
        let mut acc = AnyCopyGroups::new(DataType::Utf8);
        let a: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        acc.update_batch(&[a], &[0, 1, 2], None, 3).unwrap();
        let first = acc.evaluate(EmitTo::First(2)).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(acc.picks.source_count(), 1, "the rest was compacted");
        let b: ArrayRef = Arc::new(StringArray::from(vec!["d", "e"]));
        acc.update_batch(&[b], &[0, 1], None, 2).unwrap();
        let rest = acc.evaluate(EmitTo::All).unwrap();
        let rest = rest.as_string::<i32>();
        assert_eq!((rest.value(0), rest.value(1)), ("c", "e"));
        assert_eq!(acc.picks.source_count(), 0);
    }
}
