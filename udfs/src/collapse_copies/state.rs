//! The per-group state: each group's first payload (its totals and a picked copy) and a side
//! entry for every other payload. Kept apart from the DataFusion trait impls (`accumulator`)
//! that drive it and from the list building (`variants`) that reads it.

use super::{Types, NO_TIME};
use crate::group_blocks::GroupBlocks;
use crate::picks::{compact, Picks};
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::EmitTo;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// A payload of a group other than the first one it saw.
pub(super) struct Variant {
    pub(super) group: usize,
    pub(super) payload: i64,
    pub(super) copies: i64,
    pub(super) first: i64,
    pub(super) copy: ScalarValue,
}

/// A group's first payload: its hash, how many copies carried it and when the first arrived.
#[derive(Debug, Clone, Copy)]
pub(super) struct Totals {
    pub(super) payload: i64,
    /// 0 = the group has no copy yet.
    pub(super) copies: i64,
    pub(super) first: i64,
}

/// A group with no copy yet.
const NO_COPY: Totals = Totals {
    payload: 0,
    copies: 0,
    first: NO_TIME,
};

/// Per group: the first payload seen (hash, count, first arrival, a copy) and side entries.
pub(super) struct CollapseGroups {
    pub(super) types: Types,
    /// Kept in blocks: a day's millions of groups would otherwise regrow (and copy) a `Vec`.
    pub(super) totals: GroupBlocks<Totals>,
    pub(super) picks: Picks,
    pub(super) others: Vec<Variant>,
    /// (group, payload) → position in `others`.
    pub(super) other_at: HashMap<(usize, i64), usize>,
}

impl CollapseGroups {
    pub(super) fn new(types: Types) -> Self {
        Self {
            picks: Picks::new(types.copy.clone()),
            types,
            totals: GroupBlocks::default(),
            others: Vec::new(),
            other_at: HashMap::new(),
        }
    }

    pub(super) fn resize(&mut self, total_num_groups: usize) {
        self.totals.grow(total_num_groups, NO_COPY);
        self.picks.resize(total_num_groups);
    }

    /// `copies` copies of `payload` for group `g`, the first arriving at `first`; the copy
    /// itself is row `row` of `copy` (picked only if it becomes the group's first payload).
    pub(super) fn add(
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

    pub(super) fn add_other(
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
    pub(super) fn take_groups(&mut self, emit_to: EmitTo) -> Result<Taken> {
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
}

/// Row `row` of `array` as a value that owns its bytes. A plain `try_from_array` would be a
/// one-row slice still holding every buffer of `array` (a whole batch's string pages), and a
/// list built from many such values would drag all of them along.
pub(super) fn own_row(array: &ArrayRef, row: usize) -> Result<ScalarValue> {
    let one = compact(take(
        array.as_ref(),
        &UInt32Array::from(vec![row as u32]),
        None,
    )?);
    ScalarValue::try_from_array(&one, 0)
}

/// The columns of the groups being emitted.
pub(super) struct Taken {
    pub(super) copy: ArrayRef,
    pub(super) totals: GroupBlocks<Totals>,
    /// Side entries of the emitted groups, sorted by group.
    pub(super) others: Vec<Variant>,
}
