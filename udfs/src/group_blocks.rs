//! Per-group state stored in fixed-size blocks, for accumulators that see millions of groups.
//!
//! An accumulator's per-group `Vec` grows with every batch. At millions of groups each doubling
//! allocates a buffer twice the size, copies everything into it and frees the old one, so the
//! allocator keeps handing out fresh pages that the kernel must fault in and zero. Blocks of
//! [`BLOCK`] entries never move: growing appends a block, and a block's pages are touched only
//! as groups fill it. On the 10M-transaction ledger day, keeping `collapse_copies`' totals this
//! way lowered the system time (the kernel's page-fault work) in every run, by about a tenth.

/// Entries per block: 64Ki (1.5 MiB for a 24-byte state).
const SHIFT: u32 = 16;
const BLOCK: usize = 1 << SHIFT;
const MASK: usize = BLOCK - 1;

/// One value of `T` per group, group `g` at block `g >> 16`, entry `g & 0xFFFF`.
#[derive(Debug)]
pub(crate) struct GroupBlocks<T> {
    blocks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for GroupBlocks<T> {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy> GroupBlocks<T> {
    /// Groups held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Grows to `n` groups, new ones set to `fill` (never shrinks: see [`Self::take_first`]).
    pub(crate) fn grow(&mut self, n: usize, fill: T) {
        while self.len < n {
            let missing = n - self.len;
            let block = self.block_with_room();
            let add = (BLOCK - block.len()).min(missing);
            block.resize(block.len() + add, fill);
            self.len += add;
        }
    }

    /// Group `g`'s value (`g` < [`Self::len`]).
    #[inline]
    pub(crate) fn get(&self, g: usize) -> &T {
        &self.blocks[g >> SHIFT][g & MASK]
    }

    /// Group `g`'s value, to update (`g` < [`Self::len`]).
    #[inline]
    pub(crate) fn get_mut(&mut self, g: usize) -> &mut T {
        &mut self.blocks[g >> SHIFT][g & MASK]
    }

    /// Every value, in group order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.blocks.iter().flatten()
    }

    /// Removes the first `n` groups (all when `n` ≥ [`Self::len`]) and returns them; the rest
    /// are renumbered from 0. Taking all moves the blocks out without copying; taking fewer
    /// (a sorted merge of spilled state does) copies the rest into new blocks.
    pub(crate) fn take_first(&mut self, n: usize) -> Self {
        if n >= self.len {
            return std::mem::take(self);
        }
        let all = std::mem::take(self);
        let mut taken = Self::default();
        for (g, &v) in all.iter().enumerate() {
            let to = if g < n { &mut taken } else { &mut *self };
            to.push(v);
        }
        taken
    }

    fn push(&mut self, v: T) {
        self.block_with_room().push(v);
        self.len += 1;
    }

    /// The last block, with room for one more entry: a new block when the last one is full.
    fn block_with_room(&mut self) -> &mut Vec<T> {
        if self.blocks.last().is_none_or(|b| b.len() == BLOCK) {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        let last = self.blocks.len() - 1;
        &mut self.blocks[last]
    }

    /// Bytes reserved: the pages actually touched are those of [`Self::len`] entries, but a
    /// memory pool should count what the allocator handed out.
    pub(crate) fn allocated_size(&self) -> usize {
        self.blocks.iter().map(|b| b.capacity()).sum::<usize>() * std::mem::size_of::<T>()
            + self.blocks.capacity() * std::mem::size_of::<Vec<T>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_across_blocks_and_takes_a_prefix_renumbering_the_rest() {
        let mut b = GroupBlocks::default();
        b.grow(3, 7u64);
        b.grow(BLOCK * 2 + 5, 0);
        assert_eq!(b.len(), BLOCK * 2 + 5);
        for g in 0..b.len() {
            *b.get_mut(g) += g as u64;
        }
        assert_eq!(*b.get(1), 8);
        assert_eq!(*b.get(BLOCK + 1), BLOCK as u64 + 1);
        assert_eq!(b.blocks.len(), 3);

        let n = BLOCK + 10;
        let first = b.take_first(n);
        assert_eq!(first.len(), n);
        assert_eq!(b.len(), BLOCK - 5);
        assert!(first
            .iter()
            .enumerate()
            .skip(3)
            .all(|(g, &v)| v == g as u64));
        // The rest start at group 0 with the value group n had.
        assert_eq!(*b.get(0), n as u64);
        assert_eq!(*b.get(b.len() - 1), (BLOCK * 2 + 4) as u64);

        let all = b.take_first(usize::MAX);
        assert_eq!(all.len(), BLOCK - 5);
        assert_eq!(all.blocks.len(), 1);
        assert_eq!(b.len(), 0);
        b.grow(2, 1);
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![1, 1]);
    }
}
