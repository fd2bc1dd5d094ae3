//! A day too large to deduplicate in memory at once, split into passes by transaction key.
//!
//! The ledger holds every transaction of the day twice on its way to Parquet: as the
//! aggregate's group (until the last copy is read) and as a held row (until the neighbour
//! lookup says which transactions the day owns). At 10M transactions that is about 2 GiB; at
//! 100M it is past any sensible `--memory-limit`, and DataFusion's aggregate then spills by
//! sorting its groups, merging them back, and the held rows go out as many small sorted runs:
//! the run took 3x as long per transaction as at 10M.
//!
//! Instead, as Grace hash joins do, the day's copies are read once and written to
//! `passes` temporary Arrow IPC files per scan partition, by a range of their transaction key
//! (keys are XXH3 hashes, so the ranges are even). Every copy of a transaction is in the same
//! pass; each pass is then a whole ledger run in miniature (`sql/ledger.sql`, the neighbour
//! lookup for its keys, its own sorted files) that fits in memory. The only extra work is one
//! sequential write and read of the day's copies, uncompressed, on local disk.
//!
//! How many passes. Under a memory limit, one per [`ROWS_PER_PASS`] raw rows, and more if the
//! day's raw rows times [`BYTES_PER_ROW`] (the measured cost of a row in a pass) do not fit in
//! half of it (the other half is the scan's and the writers' buffers, and what the pool cannot
//! see). The fair pool splits the limit between every partition's aggregate and held rows, and
//! a pass that outgrows those shares spills: on a 100M-transaction day (108M raw rows) under
//! `--memory-limit 8GiB`, 6 passes took 98 s and 16, 32 and 64 passes 60, 59 and 58 s; on a
//! 10M day under the same limit, one pass 6.0 s and four 5.2 s. Without a limit nothing
//! spills, and the extra write and read of the copies is pure cost (10M day: one pass 3.7 s,
//! three 4.0 s), so passes only bound the memory: one per [`ROWS_PER_PASS_UNLIMITED`].

use super::window::DayWindow;
use crate::error::{Result, TallyError};
use crate::jobs_sql;
use crate::session::TallySession;
use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{take_record_batch, BatchCoalescer};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::ipc::writer::FileWriter;
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Memory a raw row of the day costs in a pass, in bytes: the aggregate's group and the held
/// ledger row (the 10M-transaction bench day peaks at about 2.2 GiB for 10.8M raw rows).
pub const BYTES_PER_ROW: u64 = 200;

/// Raw rows per pass under a memory limit (see the module docs).
pub const ROWS_PER_PASS: u64 = 4 << 20;

/// Raw rows per pass without a memory limit: about 3.2 GiB of groups and held rows.
pub const ROWS_PER_PASS_UNLIMITED: u64 = 16 << 20;

/// Upper bound on passes (each scan partition keeps one open file per pass).
pub const MAX_PASSES: usize = 256;

/// The passes a day of `raw_rows` needs under a memory limit of `limit` bytes (or none).
pub fn needed(raw_rows: u64, limit: Option<usize>) -> usize {
    let passes = match limit {
        Some(bytes) => {
            let budget = (bytes as u64 / 2).max(1);
            let by_memory = raw_rows.saturating_mul(BYTES_PER_ROW).div_ceil(budget);
            raw_rows.div_ceil(ROWS_PER_PASS).max(by_memory)
        }
        None => raw_rows.div_ceil(ROWS_PER_PASS_UNLIMITED),
    };
    (passes as usize).clamp(1, MAX_PASSES)
}

/// Which of `passes` a transaction key belongs to: `passes` equal ranges of the keys in
/// unsigned order (the order of the key indexes).
pub fn pass_of(key: i64, passes: usize) -> usize {
    ((super::day_keys::order(key) as u128 * passes as u128) >> 64) as usize
}

/// The day's copies, written out by pass (see the module docs). Dropping it deletes them.
pub struct Scattered {
    dir: tempfile::TempDir,
    /// Copies written.
    pub rows: u64,
}

impl Scattered {
    fn pass_dir(root: &Path, pass: usize) -> PathBuf {
        root.join(format!("pass-{pass:03}"))
    }

    /// Registers pass `pass`'s copies as `day_arrivals`, the input of `sql/ledger.sql`.
    pub async fn register(&self, session: &TallySession, pass: usize) -> Result<()> {
        let dir = Self::pass_dir(self.dir.path(), pass);
        let path = dir.to_str().ok_or_else(|| {
            TallyError::Internal(format!("temporary folder {dir:?} is not UTF-8"))
        })?;
        let ctx = session.ctx();
        ctx.deregister_table("day_arrivals")?;
        ctx.register_arrow(
            "day_arrivals",
            &format!("{path}/"),
            ArrowReadOptions::default(),
        )
        .await?;
        Ok(())
    }
}

/// Reads the day's copies (`day_arrivals`, the checked raw files) once and writes them into
/// `passes` sets of temporary files by transaction key.
pub async fn scatter(
    session: &TallySession,
    window: &DayWindow,
    passes: usize,
) -> Result<Scattered> {
    let mut state = session.ctx().state();
    // One scan partition per core is enough to keep them busy; each holds a file per pass.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = state.config_mut().options_mut();
    options.execution.target_partitions = options.execution.target_partitions.min(cores);
    let batch_rows = options.execution.batch_size.get();
    let logical = state.create_logical_plan(jobs_sql::LEDGER_SCATTER).await?;
    let plan = DataFrame::new(state, logical)
        .with_param_values(window.scatter_params())?
        .create_physical_plan()
        .await?;
    let dir = tempfile::Builder::new()
        .prefix("tally-ledger-passes-")
        .tempdir()?;
    for pass in 0..passes {
        std::fs::create_dir(Scattered::pass_dir(dir.path(), pass))?;
    }
    let task_ctx = session.ctx().task_ctx();
    let mut tasks = Vec::new();
    for p in 0..plan.output_partitioning().partition_count() {
        let stream = plan.execute(p, Arc::clone(&task_ctx))?;
        let files = (0..passes)
            .map(|pass| Scattered::pass_dir(dir.path(), pass).join(format!("part-{p:03}.arrow")))
            .collect();
        tasks.push(tokio::spawn(split(stream, files, batch_rows)));
    }
    let mut rows = 0;
    for t in tasks {
        rows += super::tasks::join(t).await??;
    }
    Ok(Scattered { dir, rows })
}

/// One pass's file of one scan partition: rows gathered into full batches, then written.
struct PassFile {
    rows: BatchCoalescer,
    file: FileWriter<BufWriter<File>>,
}

impl PassFile {
    fn write_completed(&mut self) -> Result<()> {
        while let Some(b) = self.rows.next_completed_batch() {
            // A gathered batch still points into the buffers of every batch it took rows
            // from, and Arrow IPC writes a view column's buffers whole.
            self.file.write(&compact_views(&b)?)?;
        }
        Ok(())
    }
}

/// Writes one scan partition's copies (`txn_key` first, then the `day_arrivals` columns) into
/// `files`, one per pass, without the key (`sql/ledger.sql` computes it again). Every file is
/// written, empty or not, so each pass's folder reads as a table.
async fn split(
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    files: Vec<PathBuf>,
    batch_rows: usize,
) -> Result<u64> {
    let schema = stream.schema();
    let columns: Vec<usize> = (1..schema.fields().len()).collect();
    let out: SchemaRef = Arc::new(schema.project(&columns)?);
    let mut outs = files
        .iter()
        .map(|path| {
            Ok(PassFile {
                rows: BatchCoalescer::new(Arc::clone(&out), batch_rows),
                file: FileWriter::try_new(
                    BufWriter::with_capacity(1 << 20, File::create(path)?),
                    &out,
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let passes = outs.len();
    let mut rows = 0;
    let mut by_pass: Vec<u32> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        let keys = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| TallyError::Internal("txn_key is not a BIGINT".into()))?;
        // Each row's index under its pass, in row order (a counting sort): one pass over the
        // rows, whatever the number of passes.
        let mut starts = vec![0u32; passes + 1];
        for &k in keys.values() {
            starts[pass_of(k, passes) + 1] += 1;
        }
        for p in 0..passes {
            starts[p + 1] += starts[p];
        }
        let mut next = starts.clone();
        by_pass.clear();
        by_pass.resize(keys.len(), 0);
        for (row, &k) in keys.values().iter().enumerate() {
            let p = pass_of(k, passes);
            by_pass[next[p] as usize] = row as u32;
            next[p] += 1;
        }
        // The Parquet reader's string views point into whole decoded pages, even those whose
        // strings are inline: compacted once here, before the batch is split `passes` ways.
        let copies = compact_views(&batch.project(&columns)?)?;
        for (pass, file) in outs.iter_mut().enumerate() {
            let (from, to) = (starts[pass] as usize, starts[pass + 1] as usize);
            if from == to {
                continue;
            }
            let rows = UInt32Array::from(by_pass[from..to].to_vec());
            file.rows.push_batch(take_record_batch(&copies, &rows)?)?;
            file.write_completed()?;
        }
    }
    for mut f in outs {
        f.rows.finish_buffered_batch()?;
        f.write_completed()?;
        f.file.finish()?;
    }
    Ok(rows)
}

/// `batch` with each string view column holding only the bytes its rows use (none when every
/// string is inline).
fn compact_views(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.as_string_view_opt() {
            Some(v) if !v.data_buffers().is_empty() => Arc::new(v.gc()) as ArrayRef,
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_the_keys_in_unsigned_order_and_evenly() {
        assert_eq!(pass_of(0, 4), 0);
        assert_eq!(pass_of(i64::MAX, 4), 1);
        assert_eq!(pass_of(i64::MIN, 4), 2);
        assert_eq!(pass_of(-1, 4), 3);
        assert_eq!(pass_of(-1, 1), 0);
        let mut counts = [0u32; 7];
        for i in 0..70_000u64 {
            counts[pass_of(tally_udfs::txn_key(&format!("T{i}")), 7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_day_takes_as_many_passes_as_its_rows_need_under_the_limit() {
        assert_eq!(needed(4_000_000, None), 1);
        assert_eq!(needed(10_800_000, None), 1);
        assert_eq!(needed(108_000_000, None), 7);
        assert_eq!(needed(10_800_000, Some(8 << 30)), 3);
        assert_eq!(needed(108_000_000, Some(8 << 30)), 26);
        assert_eq!(needed(108_000_000, Some(2 << 30)), 26);
        assert_eq!(needed(13_000_000, Some(1 << 30)), 5);
        assert_eq!(needed(100_000, Some(16 << 20)), 3);
        assert_eq!(needed(u64::MAX, Some(1)), MAX_PASSES);
        assert_eq!(needed(0, Some(1 << 20)), 1);
    }
}
