//! One picked row per group, gathered at emit time: the part `any_copy` and `collapse_copies`
//! share.
//!
//! An accumulator that keeps "one copy's value" per group must not copy values row by row
//! (strings would be one allocation each) nor keep whole input batches alive (their decoded
//! pages would stay pinned until the aggregate emits). [`Picks`] takes, from each input batch,
//! the rows that start a group (one `take`, into compact arrays) and remembers where each
//! group's value is.
//!
//! Groups are numbered in the order they first appear (DataFusion's group values do this), so
//! when every group's value is picked at the row that creates it, the picks are already in
//! group order and emitting everything is a `concat` of the taken arrays, not a per-row
//! `interleave`.

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, StructArray, UInt32Array,
};
use datafusion::arrow::compute::{concat, interleave, take};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::EmitTo;
use std::sync::Arc;

/// Where each group's value is.
///
/// While every group so far was picked at the row that created it (the usual case), group
/// `g`'s value is row `g` of the sources concatenated, and no per-group index is kept. The
/// first pick out of that order builds the index: per group, (source array, 1-based; 0 = none
/// yet) and row.
pub(crate) struct Picks {
    data_type: DataType,
    /// Taken arrays, each holding only picked values.
    sources: Vec<ArrayRef>,
    /// Memory the sources hold, kept as they come and go: the aggregate asks for `size()`
    /// after every batch, and summing every source each time grew with the partition.
    sources_size: usize,
    /// Per group; empty while `in_order`.
    picks: Vec<(u32, u32)>,
    /// Rows chosen from the batch being read, not yet taken.
    pending: Vec<u32>,
    /// Every group so far was picked, in group order: the sources concatenated are the values.
    in_order: bool,
    /// Groups the aggregate has (the last `resize`).
    groups: usize,
    picked: usize,
}

impl Picks {
    pub(crate) fn new(data_type: DataType) -> Self {
        Self {
            data_type,
            sources: Vec::new(),
            sources_size: 0,
            picks: Vec::new(),
            pending: Vec::new(),
            in_order: true,
            groups: 0,
            picked: 0,
        }
    }

    /// Makes room for `total_num_groups`.
    pub(crate) fn resize(&mut self, total_num_groups: usize) {
        self.groups = total_num_groups;
        if !self.in_order {
            self.picks.resize(total_num_groups, (0, 0));
        }
    }

    /// Whether group `g` has its value.
    pub(crate) fn has(&self, g: usize) -> bool {
        if self.in_order {
            g < self.picked
        } else {
            self.picks[g].0 != 0
        }
    }

    /// Picks `row` of the batch being read as group `g`'s value (`g` has none yet).
    pub(crate) fn pick(&mut self, g: usize, row: usize) {
        if self.in_order {
            if g == self.picked {
                self.pending.push(row as u32);
                self.picked += 1;
                return;
            }
            self.leave_order();
        }
        let source = self.sources.len() as u32 + 1;
        self.picks[g] = (source, self.pending.len() as u32);
        self.pending.push(row as u32);
        self.picked += 1;
    }

    /// Builds the per-group index of groups picked in order: those in the sources, then
    /// those pending from the batch being read (its rows will be the next source).
    fn leave_order(&mut self) {
        if !self.in_order {
            return;
        }
        self.in_order = false;
        self.picks = vec![(0, 0); self.groups.max(self.picked)];
        let mut g = 0;
        for (s, source) in self.sources.iter().enumerate() {
            for r in 0..source.len() {
                self.picks[g] = (s as u32 + 1, r as u32);
                g += 1;
            }
        }
        let next = self.sources.len() as u32 + 1;
        for k in 0..self.pending.len() {
            self.picks[g + k] = (next, k as u32);
        }
    }

    /// Takes the rows picked from `values` (the batch just read).
    pub(crate) fn finish_batch(&mut self, values: &ArrayRef) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = UInt32Array::from(std::mem::take(&mut self.pending));
        // A `take` always builds new arrays. (A `filter` was tried: no faster here, and when it
        // keeps every row it returns the input as is, pinning whatever buffers the input shares.)
        let picked = take(values.as_ref(), &rows, None)?;
        // Only the picked values, in their own buffers: the input batch (and the decoded pages
        // its string views point into) is not pinned, and `size()` is true. (Keeping the views
        // and skipping the byte copy was measured slower: every later kernel then walks the
        // many page buffers the views point into.)
        let picked = compact(picked);
        self.sources_size += picked.get_array_memory_size();
        self.sources.push(picked);
        Ok(())
    }

    /// The values of the groups `emit_to` names, in group order (null where a group has none);
    /// the remaining groups are renumbered from 0.
    pub(crate) fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = match emit_to {
            EmitTo::All => self.groups,
            EmitTo::First(n) => n,
        };
        if self.in_order && n == self.groups && self.picked == n && !self.sources.is_empty() {
            // Every group picked at its first row: the sources are the values, in order.
            let arrays: Vec<&dyn Array> = self.sources.iter().map(|a| a.as_ref()).collect();
            let out = concat(&arrays)?;
            self.clear();
            return Ok(out);
        }
        self.leave_order();
        let picks = emit_to.take_needed(&mut self.picks);
        let rest = std::mem::take(&mut self.picks);
        // Emitting everything drops the sources: the output may share their buffers.
        let out = self.gather(&picks, !rest.is_empty())?;
        // The groups left (after emitting the first n, as a sorted merge of spilled state
        // does) are gathered into one array, so emitted values do not stay pinned.
        let kept = if rest.is_empty() {
            None
        } else {
            Some(self.gather(&rest, true)?)
        };
        self.clear();
        if let Some(kept) = kept {
            self.in_order = false;
            self.groups = rest.len();
            self.picks = rest
                .iter()
                .enumerate()
                .map(|(i, &(s, _))| if s == 0 { (0, 0) } else { (1, i as u32) })
                .collect();
            self.picked = rest.iter().filter(|(s, _)| *s != 0).count();
            self.sources_size = kept.get_array_memory_size();
            self.sources = vec![kept];
        }
        Ok(out)
    }

    fn clear(&mut self) {
        self.sources.clear();
        self.sources_size = 0;
        self.picks.clear();
        self.pending.clear();
        self.in_order = true;
        self.groups = 0;
        self.picked = 0;
    }

    /// The values of `picks`, in order. `compact_strings` copies string bytes out of the
    /// sources; not needed when the sources are dropped right after, since they hold only
    /// picked values (each picked once), so nothing would be pinned.
    fn gather(&self, picks: &[(u32, u32)], compact_strings: bool) -> Result<ArrayRef> {
        let none = new_null_array(&self.data_type, 1);
        let mut arrays: Vec<&dyn Array> = Vec::with_capacity(self.sources.len() + 1);
        arrays.push(none.as_ref());
        arrays.extend(self.sources.iter().map(|a| a.as_ref()));
        let indices: Vec<(usize, usize)> = picks
            .iter()
            .map(|&(s, r)| (s as usize, if s == 0 { 0 } else { r as usize }))
            .collect();
        let out = interleave(&arrays, &indices)?;
        Ok(if compact_strings { compact(out) } else { out })
    }

    /// How many taken arrays are held.
    #[cfg(test)]
    pub(crate) fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Memory held.
    pub(crate) fn size(&self) -> usize {
        self.sources_size
            + self.picks.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.pending.capacity() * std::mem::size_of::<u32>()
    }
}

/// String views gathered from other arrays still point into their buffers: copy them out
/// (also inside a struct, the form the ledger uses to take a whole copy at once).
pub(crate) fn compact(a: ArrayRef) -> ArrayRef {
    if let Some(views) = a.as_string_view_opt() {
        return Arc::new(views.gc());
    }
    if let Some(s) = a.as_struct_opt() {
        if s.columns().iter().any(|c| c.as_string_view_opt().is_some()) {
            let columns = s.columns().iter().map(|c| compact(Arc::clone(c))).collect();
            let nulls = s.nulls().cloned();
            return Arc::new(StructArray::new(s.fields().clone(), columns, nulls));
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;

    fn strings(values: &[&str]) -> ArrayRef {
        Arc::new(StringViewArray::from(values.to_vec()))
    }

    fn emitted(p: &mut Picks) -> Vec<Option<String>> {
        let out = p.emit(EmitTo::All).unwrap();
        out.as_string_view()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn in_order_picks_need_no_index_and_survive_a_pick_out_of_order() {
        let mut p = Picks::new(DataType::Utf8View);
        // Batch 1: groups 0 and 1 start at rows 0 and 2 (row 1 repeats group 0).
        p.resize(2);
        p.pick(0, 0);
        p.pick(1, 2);
        p.finish_batch(&strings(&["a-value-longer-than-12", "again", "b"]))
            .unwrap();
        assert!(p.in_order && p.picks.is_empty());
        // Batch 2: group 2 in order, then group 4 while group 3 has no value yet.
        p.resize(5);
        p.pick(2, 0);
        p.pick(4, 1);
        assert!(!p.in_order);
        assert!(p.has(2) && !p.has(3) && p.has(4));
        p.finish_batch(&strings(&["c", "e-value-longer-than-12"]))
            .unwrap();
        // Batch 3: group 3 at last.
        p.pick(3, 1);
        p.finish_batch(&strings(&["unused", "d"])).unwrap();
        // The running total of the sources' memory is their sum.
        let held: usize = p.sources.iter().map(|a| a.get_array_memory_size()).sum();
        assert!(held > 0 && p.sources_size == held);
        let want = [
            "a-value-longer-than-12",
            "b",
            "c",
            "d",
            "e-value-longer-than-12",
        ];
        assert_eq!(
            emitted(&mut p),
            want.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>()
        );
        // Emitting everything starts over, in order again.
        assert!(p.in_order && p.source_count() == 0 && p.sources_size == 0);
    }

    #[test]
    fn a_group_never_picked_is_null() {
        let mut p = Picks::new(DataType::Utf8View);
        p.resize(3);
        p.pick(0, 0);
        p.pick(1, 1);
        p.finish_batch(&strings(&["a", "b"])).unwrap();
        assert_eq!(
            emitted(&mut p),
            vec![Some("a".to_string()), Some("b".to_string()), None]
        );
    }
}
