//! The copies of the side entries (payloads other than a group's first), kept as rows of
//! compact arrays rather than one `ScalarValue` each.
//!
//! A day where a partner bug makes most transactions disagree has millions of side entries.
//! As scalars each was a one-row `take`, a struct of owned strings, a `size()` walk on every
//! batch and, at emit, a rebuild through `ScalarValue::iter_to_array`: most of such a day's
//! time. Here the rows a batch adds are taken from it in one `take` per input array when the
//! batch is done, and emitting is one `interleave`.

use crate::picks::compact;
use datafusion::arrow::array::{new_empty_array, Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;

/// Where each side entry's copy is: (source array, row), by entry number.
pub(super) struct VariantCopies {
    data_type: DataType,
    sources: Vec<ArrayRef>,
    sources_size: usize,
    at: Vec<(u32, u32)>,
    /// Rows of the batch being read, per input slot: (entry number, row).
    pending: [Vec<(usize, u32)>; 2],
}

/// Which input array of the batch being read a copy comes from: the batch's copy column, or
/// (in a merge) the flattened values of the state's side-entry lists.
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Copy = 0,
    ListValues = 1,
}

impl VariantCopies {
    pub(super) fn new(data_type: DataType) -> Self {
        Self {
            data_type,
            sources: Vec::new(),
            sources_size: 0,
            at: Vec::new(),
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// A new entry whose copy is `row` of the batch's `slot` array; returns its number.
    pub(super) fn push(&mut self, slot: Slot, row: usize) -> usize {
        let entry = self.at.len();
        self.at.push((u32::MAX, 0));
        self.pending[slot as usize].push((entry, row as u32));
        entry
    }

    /// Takes the rows the batch added out of its arrays (`arrays[slot]`).
    pub(super) fn finish_batch(&mut self, arrays: [Option<&ArrayRef>; 2]) -> Result<()> {
        for (slot, array) in arrays.into_iter().enumerate() {
            let pending = std::mem::take(&mut self.pending[slot]);
            if pending.is_empty() {
                continue;
            }
            let Some(array) = array else {
                return datafusion::common::exec_err!(
                    "collapse_copies: side entries from a missing input"
                );
            };
            let rows = UInt32Array::from_iter_values(pending.iter().map(|(_, r)| *r));
            let source = u32::try_from(self.sources.len()).map_err(|_| {
                datafusion::common::DataFusionError::Execution(
                    "collapse_copies: too many side-entry batches".into(),
                )
            })?;
            let taken = compact(take(array.as_ref(), &rows, None)?);
            self.sources_size += taken.get_array_memory_size();
            self.sources.push(taken);
            for (i, (entry, _)) in pending.into_iter().enumerate() {
                self.at[entry] = (source, i as u32);
            }
        }
        Ok(())
    }

    /// The copies of `entries`, in that order, as one array.
    pub(super) fn gather(&self, entries: impl Iterator<Item = usize>) -> Result<ArrayRef> {
        let indices: Vec<(usize, usize)> = entries
            .map(|e| {
                let (s, r) = self.at[e];
                (s as usize, r as usize)
            })
            .collect();
        if indices.is_empty() {
            return Ok(new_empty_array(&self.data_type));
        }
        let sources: Vec<&dyn Array> = self.sources.iter().map(|a| a.as_ref()).collect();
        Ok(interleave(&sources, &indices)?)
    }

    /// Keeps only `kept` (entry numbers, in their new order) as one compact source.
    pub(super) fn retain(&mut self, kept: &[usize]) -> Result<()> {
        if kept.is_empty() {
            self.sources.clear();
            self.sources_size = 0;
            self.at.clear();
            return Ok(());
        }
        let one = compact(self.gather(kept.iter().copied())?);
        self.sources_size = one.get_array_memory_size();
        self.sources = vec![one];
        self.at = (0..kept.len() as u32).map(|r| (0, r)).collect();
        Ok(())
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        self.sources_size + self.at.capacity() * 8
    }
}
