//! Building the emitted columns from the state: the arrival column and the per-group lists
//! of variants (the output's `variants`, the state's side entries). Pure array building, shared
//! by `evaluate` and `state`.

use super::state::{CollapseGroups, Variant};
use super::NO_TIME;
use crate::picks::compact;
use datafusion::arrow::array::NullBufferBuilder;
use datafusion::arrow::array::{
    new_empty_array, new_null_array, Array, ArrayRef, Int64Array, ListArray, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::Result;
use std::sync::Arc;

impl CollapseGroups {
    pub(super) fn arrival_array(&self, values: impl Iterator<Item = i64>) -> Result<ArrayRef> {
        let a: Int64Array = values.map(|t| (t != NO_TIME).then_some(t)).collect();
        Ok(cast(&a, &self.types.arrival)?)
    }

    /// A list for each of `n` groups: the entries `lists` gives it (sorted by group, each
    /// group once), NULL for a group it does not name. Entries' copies are rows of `sources`.
    pub(super) fn variants_list(
        &self,
        n: usize,
        lists: Vec<(usize, Vec<ListEntry>)>,
        with_payload: bool,
        sources: [&ArrayRef; 2],
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
            let sources: Vec<&dyn Array> = sources.iter().map(|a| a.as_ref()).collect();
            let at: Vec<(usize, usize)> = copy.iter().map(|c| (c.0 as usize, c.1)).collect();
            compact(interleave(&sources, &at)?)
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

/// Where a list entry's copy is: a row of the emitted groups' copy column, or of their side
/// entries' copies.
#[derive(Clone, Copy)]
pub(super) enum CopyAt {
    Group = 0,
    Other = 1,
}

/// One variant in a list: (payload hash, copies, first arrival, where its copy is).
pub(super) type ListEntry = (i64, i64, i64, (CopyAt, usize));

/// One list per group named by `others` (sorted by group): the entries `start` gives the
/// group, then its side entries in order.
pub(super) fn lists_by_group(
    others: Vec<Variant>,
    mut start: impl FnMut(usize) -> Result<Vec<ListEntry>>,
) -> Result<Vec<(usize, Vec<ListEntry>)>> {
    let mut lists: Vec<(usize, Vec<ListEntry>)> = Vec::new();
    for v in others {
        if lists.last().map(|(g, _)| *g) != Some(v.group) {
            lists.push((v.group, start(v.group)?));
        }
        if let Some((_, list)) = lists.last_mut() {
            list.push((v.payload, v.copies, v.first, (CopyAt::Other, v.copy)));
        }
    }
    Ok(lists)
}
