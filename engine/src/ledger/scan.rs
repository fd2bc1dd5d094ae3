//! The raw files a ledger run checked, as a table: the scan reads exactly them.
//!
//! `raw_payments` is a listing table: it lists the lake when a query runs. Had the ledger run
//! its plan on it, a file landing between the footer check and the scan would be read
//! unchecked and left out of the recorded inputs. This provider is built from the checked
//! list itself and never lists. Everything else is DataFusion's Parquet scan: projection,
//! the `ingest_date` partition value of each file, row-group pruning and filter pushdown (the
//! physical optimizer pushes the plan's filters into the scan), and files spread over the
//! session's target partitions.

use crate::schema::{self, INGEST_DATE};
use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectMeta;
use parquet::arrow::arrow_reader::RowSelection;
use std::sync::Arc;

/// A fixed set of raw Parquet files, each with its `ingest_date` and, optionally, the only
/// rows to read of it (an external index's answer: see [`super::key_index`]).
#[derive(Debug)]
pub struct CheckedFiles {
    store_url: ObjectStoreUrl,
    files: Vec<(ObjectMeta, NaiveDate, Option<RowSelection>)>,
    /// The file columns and the `ingest_date` partition column.
    table_schema: TableSchema,
}

impl CheckedFiles {
    /// The table over `files` in the store registered under `store_url`.
    pub fn new(store_url: ObjectStoreUrl, files: Vec<(ObjectMeta, NaiveDate)>) -> Self {
        Self::with_selections(
            store_url,
            files.into_iter().map(|(m, d)| (m, d, None)).collect(),
        )
    }

    /// The table over `files`, of which only the selected rows are read (DataFusion's row
    /// groups and pages are pruned from the selection, and its filters still apply).
    pub fn with_selections(
        store_url: ObjectStoreUrl,
        files: Vec<(ObjectMeta, NaiveDate, Option<RowSelection>)>,
    ) -> Self {
        let table_schema = TableSchema::builder(Arc::clone(&schema::RAW_PAYMENTS))
            .with_table_partition_cols(vec![Arc::new(Field::new(
                INGEST_DATE,
                DataType::Date32,
                false,
            ))])
            .build();
        Self {
            store_url,
            files,
            table_schema,
        }
    }
}

#[async_trait]
impl TableProvider for CheckedFiles {
    fn schema(&self) -> SchemaRef {
        Arc::clone(self.table_schema.table_schema())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The filters stay above the scan (and are pushed into it by the physical optimizer).
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema().project(p)?),
                None => self.schema(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(self.table_schema.clone());
        let files: Vec<PartitionedFile> = self
            .files
            .iter()
            .map(|(meta, day, rows)| {
                let file = PartitionedFile::new_from_meta(meta.clone())
                    .with_partition_values(vec![ScalarValue::Date32(Some(schema::date32(*day)))]);
                match rows {
                    Some(rows) => file.with_extension(ParquetRowSelection::new(rows.clone())),
                    None => file,
                }
            })
            .collect();
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}
