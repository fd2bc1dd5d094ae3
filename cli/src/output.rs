//! Printing query results: an aligned table for people, streamed CSV / JSON for machines.
//!
//! CSV and JSON write each batch as it arrives, so a 100M-row result never sits in memory;
//! the table format keeps at most `max_rows` rows and counts the rest.

use crate::args::OutputFormat;
use anyhow::Result;
use futures::StreamExt;
use std::io::Write;
use tally_engine::arrow::array::RecordBatch;
use tally_engine::arrow::datatypes::SchemaRef;
use tally_engine::arrow::util::pretty::pretty_format_batches_with_schema;
use tally_engine::datafusion::physical_plan::SendableRecordBatchStream;

/// Writes a result stream to `out` in `format`; returns the number of rows.
pub async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    max_rows: usize,
    out: &mut dyn Write,
) -> Result<u64> {
    let schema = stream.schema();
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut kept: Vec<RecordBatch> = Vec::new();
            let mut kept_rows = 0usize;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                if kept_rows < max_rows {
                    let take = (max_rows - kept_rows).min(batch.num_rows());
                    kept.push(batch.slice(0, take));
                    kept_rows += take;
                }
            }
            print_table(&schema, &kept, out)?;
            if rows as usize > kept_rows {
                writeln!(
                    out,
                    "({kept_rows} of {rows} rows shown; use --format csv or json for all)"
                )?;
            }
        }
        OutputFormat::Csv => {
            let mut w = tally_engine::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote_any = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
                wrote_any = true;
            }
            if !wrote_any {
                // Still print the header for an empty result.
                w.write(&RecordBatch::new_empty(schema))?;
            }
        }
        OutputFormat::Json => {
            let mut w = tally_engine::arrow::json::ArrayWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
            drop(w);
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut w = tally_engine::arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
        }
    }
    out.flush()?;
    Ok(rows)
}

/// Prints batches as an aligned table, with the header even when there are no rows.
pub fn print_table(schema: &SchemaRef, batches: &[RecordBatch], out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{}",
        pretty_format_batches_with_schema(schema.clone(), batches)?
    )?;
    Ok(())
}
