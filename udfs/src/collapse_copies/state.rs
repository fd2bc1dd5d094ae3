//! The per-group state: each group's first payload (its totals and a picked copy) and a side
//! entry for every other payload. Kept apart from the DataFusion trait impls (`accumulator`)
//! that drive it and from the list building (`variants`) that reads it.

use super::variant_copies::{Slot, VariantCopies};
use super::{Types, NO_TIME};
use crate::group_blocks::GroupBlocks;
use crate::picks::Picks;
use datafusion::arrow::array::ArrayRef;
use datafusion::common::Result;
use datafusion::logical_expr::EmitTo;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// (group, payload) → side entry. foldhash, not std's SipHash: on a day where most
/// transactions disagree this map takes an entry per transaction, and SipHash was a tenth of
/// the aggregate's time. The keys are ours (group numbers and payload hashes), not an
/// attacker's.
type OtherAt = HashMap<(usize, i64), usize, foldhash::fast::RandomState>;

/// A payload of a group other than the first one it saw.
pub(super) struct Variant {
    pub(super) group: usize,
    pub(super) payload: i64,
    pub(super) copies: i64,
    pub(super) first: i64,
    /// Its copy: an entry of [`CollapseGroups::variant_copies`] (in [`Taken`], a row of
    /// `other_copies`).
    pub(super) copy: usize,
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
    /// The side entries' copies.
    pub(super) variant_copies: VariantCopies,
    /// (group, payload) → position in `others`.
    pub(super) other_at: OtherAt,
}

impl CollapseGroups {
    pub(super) fn new(types: Types) -> Self {
        Self {
            picks: Picks::new(types.copy.clone()),
            variant_copies: VariantCopies::new(types.copy.clone()),
            types,
            totals: GroupBlocks::default(),
            others: Vec::new(),
            other_at: OtherAt::default(),
        }
    }

    pub(super) fn resize(&mut self, total_num_groups: usize) {
        self.totals.grow(total_num_groups, NO_COPY);
        self.picks.resize(total_num_groups);
    }

    /// `copies` copies of `payload` for group `g`, the first arriving at `first`; the copy
    /// itself is row `row` of the batch's copy column.
    pub(super) fn add(
        &mut self,
        g: usize,
        payload: i64,
        copies: i64,
        first: i64,
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
        self.add_other(g, payload, copies, first, Slot::Copy, row);
        Ok(())
    }

    /// A payload other than the group's first; its copy is `row` of the batch's `slot` array.
    pub(super) fn add_other(
        &mut self,
        g: usize,
        payload: i64,
        copies: i64,
        first: i64,
        slot: Slot,
        row: usize,
    ) {
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
                    copy: self.variant_copies.push(slot, row),
                });
            }
        }
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
        let mut rest = Vec::new();
        for mut v in std::mem::take(&mut self.others) {
            if v.group < n {
                emitted.push(v);
            } else {
                v.group -= n;
                rest.push(v);
            }
        }
        emitted.sort_by_key(|v| v.group);
        let other_copies = self.variant_copies.gather(emitted.iter().map(|v| v.copy))?;
        for (i, v) in emitted.iter_mut().enumerate() {
            v.copy = i;
        }
        let kept: Vec<usize> = rest.iter().map(|v| v.copy).collect();
        self.variant_copies.retain(&kept)?;
        for (i, v) in rest.iter_mut().enumerate() {
            v.copy = i;
        }
        self.other_at = rest
            .iter()
            .enumerate()
            .map(|(i, v)| ((v.group, v.payload), i))
            .collect();
        self.others = rest;
        Ok(Taken {
            copy,
            totals,
            others: emitted,
            other_copies,
        })
    }
}

/// The columns of the groups being emitted.
pub(super) struct Taken {
    pub(super) copy: ArrayRef,
    pub(super) totals: GroupBlocks<Totals>,
    /// Side entries of the emitted groups, sorted by group; entry `i`'s copy is row `i` of
    /// `other_copies`.
    pub(super) others: Vec<Variant>,
    pub(super) other_copies: ArrayRef,
}
