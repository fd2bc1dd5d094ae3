//! One partition's disputed transactions (`[txn_key, variants]`), held until the day knows
//! which of them have copies on a neighbouring day, and spilled to a temporary Arrow IPC file
//! when the memory pool refuses them.
//!
//! A partner bug that makes every copy disagree turns a third of a day into disputes, each
//! with all its variants. Counted in the pool but never released, they used to push every
//! other operator into spilling and still took the process past `--memory-limit`. Here, when
//! the pool says no, what is held goes to disk (through the session's disk manager, where
//! the plan's own spills go) and is read back one batch at a time when the partition
//! settles. The keys stay in memory (8 bytes a transaction): the neighbour lookup needs them.

use crate::error::{Result, TallyError};
use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::execution::disk_manager::DiskManager;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::SpillFile;
use std::sync::Arc;

/// Memory held by the rows of a batch (not by the buffers its slices share with others).
pub fn slice_memory_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// See the module docs.
pub struct DisputedRows {
    held: Vec<RecordBatch>,
    keys: Vec<Int64Array>,
    memory: MemoryReservation,
    disk: Arc<DiskManager>,
    spill: Option<Spill>,
}

struct Spill {
    file: Arc<dyn SpillFile>,
    writer: StreamWriter<Box<dyn datafusion::execution::SpillWriter>>,
    rows: usize,
}

impl DisputedRows {
    /// Empty; `memory` is the partition's reservation for disputes.
    pub fn new(memory: MemoryReservation, disk: Arc<DiskManager>) -> Self {
        Self {
            held: Vec::new(),
            keys: Vec::new(),
            memory,
            disk,
            spill: None,
        }
    }

    /// Holds a `[txn_key, variants]` batch, or spills it with everything held.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let keys = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| TallyError::Internal("disputed rows: txn_key".into()))?
            .clone();
        self.keys.push(keys);
        if self.memory.try_grow(slice_memory_size(&batch)).is_ok() {
            self.held.push(batch);
            return Ok(());
        }
        let spill = match &mut self.spill {
            Some(s) => s,
            None => {
                let file = self.disk.create_tmp_file("ledger disputed variants")?;
                let writer = StreamWriter::try_new(file.open_writer()?, &batch.schema())?;
                self.spill.insert(Spill {
                    file,
                    writer,
                    rows: 0,
                })
            }
        };
        for b in self.held.drain(..).chain(std::iter::once(batch)) {
            spill.rows += b.num_rows();
            spill.writer.write(&b)?;
        }
        self.memory.free();
        Ok(())
    }

    /// Every disputed key, held or spilled, one slice per batch.
    pub fn key_slices(&self) -> impl Iterator<Item = &[i64]> + '_ {
        self.keys.iter().map(|k| &k.values()[..])
    }

    /// Rows written to disk.
    pub fn spilled_rows(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.rows)
    }

    /// The batches, held ones first, then those read back from disk one at a time. The
    /// reservation goes with the held ones (each is freed as the caller drops it).
    pub fn into_batches(self) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
        let spilled = match self.spill {
            Some(s) => {
                // Ends the IPC stream, then the file.
                let mut inner = s.writer.into_inner()?;
                datafusion::execution::SpillWriter::finish(&mut *inner)?;
                let path = s.file.path().ok_or_else(|| {
                    TallyError::Internal(
                        "disputed rows spilled to a temporary store with no local path".into(),
                    )
                })?;
                let reader = StreamReader::try_new(
                    std::io::BufReader::new(std::fs::File::open(path)?),
                    None,
                )?;
                // The file lives until the reader is done with it.
                let file = s.file;
                Some(reader.map(move |b| {
                    let _keep = &file;
                    b.map_err(TallyError::from)
                }))
            }
            None => None,
        };
        let memory = self.memory;
        Ok(self
            .held
            .into_iter()
            .map(move |b| {
                memory.shrink(slice_memory_size(&b).min(memory.size()));
                Ok(b)
            })
            .chain(spilled.into_iter().flatten()))
    }
}
