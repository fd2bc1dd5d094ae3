//! One hash partition's ledger rows, held until the day knows which transactions it owns.
//!
//! A transaction whose copies name a neighbouring day may belong to that day instead, and
//! that is known only once every partition has produced its rows (the neighbours' copies are
//! looked up by the day's keys). So a partition's rows wait here, with their `txn_key`s, and
//! the few transactions found on a neighbouring day are taken out to be settled before the
//! rest is sorted and written. Under a memory limit, rows written early (sorted runs the pool
//! could not hold) leave their keys behind, so the writer knows whether its file must be
//! rewritten without them.

use super::partition_sort::SortedRun;
use crate::error::{Result, TallyError};
use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::Int64Type;
use std::collections::HashSet;

/// Rows of one partition and the key of each.
#[derive(Default)]
pub struct HeldRows {
    run: SortedRun,
    /// Per held batch (as the run keeps them), the rows' `txn_key`s.
    keys: Vec<Int64Array>,
}

impl HeldRows {
    /// Holds the rows of `batch` that `keep` selects (all when `None`); `keys` are the rows'
    /// `txn_key`s, aligned with `batch`.
    pub fn push(
        &mut self,
        batch: RecordBatch,
        keep: Option<BooleanBuffer>,
        keys: &dyn Array,
    ) -> Result<()> {
        let selected = keep
            .as_ref()
            .map_or(batch.num_rows(), |k| k.count_set_bits());
        if selected == 0 {
            return Ok(());
        }
        let keys = keys
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| TallyError::Internal("txn_key is not a BIGINT".into()))?
            .clone();
        self.keys.push(keys);
        self.run.push_selected(batch, keep);
        Ok(())
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.run.rows()
    }

    /// Every held row's key (including rows held out by a selection: disputed transactions of
    /// the day, whose neighbouring copies the lookup may then read too; the settlement takes
    /// them either way).
    pub fn keys(&self) -> impl Iterator<Item = i64> + '_ {
        self.keys.iter().flat_map(|k| k.values().iter().copied())
    }

    /// The held rows' keys as slices, one per held batch (see [`HeldRows::keys`]).
    pub fn key_slices(&self) -> impl Iterator<Item = &[i64]> + '_ {
        self.keys.iter().map(|k| &k.values()[..])
    }

    /// Takes out the rows whose key is in `wanted`.
    pub fn take_keys(&mut self, wanted: &HashSet<i64>) -> Result<Vec<RecordBatch>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.keys;
        self.run.deselect(|b, r| wanted.contains(&keys[b].value(r)))
    }

    /// Hands the rows over for sorting and writing, leaving this empty.
    pub fn take_run(&mut self) -> SortedRun {
        self.keys.clear();
        std::mem::take(&mut self.run)
    }
}
