//! Column builders for one output file of raw rows, and their Parquet encoding.

use crate::error::Result;
use crate::schema;
use arrow::array::{
    ArrayRef, Decimal128Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// Column builders for one output file.
pub(super) struct FileRows {
    txn_id: StringBuilder,
    partner_id: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    ingest_time: TimestampMicrosecondBuilder,
    amount: Decimal128Builder,
    currency: StringBuilder,
    status: StringBuilder,
    pub(super) rows: usize,
}

impl FileRows {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            txn_id: StringBuilder::with_capacity(capacity, capacity * 18),
            partner_id: StringBuilder::with_capacity(capacity, capacity * 12),
            event_time: TimestampMicrosecondBuilder::with_capacity(capacity),
            ingest_time: TimestampMicrosecondBuilder::with_capacity(capacity),
            amount: Decimal128Builder::with_capacity(capacity),
            currency: StringBuilder::with_capacity(capacity, capacity * 3),
            status: StringBuilder::with_capacity(capacity, capacity * 2),
            rows: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        id: &str,
        partner: &str,
        event: i64,
        ingest: i64,
        cents: i128,
        cur: &str,
        status: &str,
    ) {
        self.txn_id.append_value(id);
        self.partner_id.append_value(partner);
        self.event_time.append_value(event);
        self.ingest_time.append_value(ingest);
        self.amount.append_value(cents);
        self.currency.append_value(cur);
        self.status.append_value(status);
        self.rows += 1;
    }

    pub(super) fn finish(mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.txn_id.finish()),
            Arc::new(self.partner_id.finish()),
            Arc::new(self.event_time.finish().with_timezone("UTC")),
            Arc::new(self.ingest_time.finish().with_timezone("UTC")),
            Arc::new(
                self.amount
                    .finish()
                    .with_precision_and_scale(schema::AMOUNT_PRECISION, schema::AMOUNT_SCALE)?,
            ),
            Arc::new(self.currency.finish()),
            Arc::new(self.status.finish()),
        ];
        Ok(RecordBatch::try_new(
            Arc::clone(&schema::RAW_PAYMENTS_FILE),
            columns,
        )?)
    }
}

pub(super) fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut buf = Vec::with_capacity(batch.num_rows() * 40);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}
