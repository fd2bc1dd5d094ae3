//! A Delta table snapshot read as plain Parquet files: DataFusion's own Parquet scan over the
//! snapshot's active files, for a long-running server's queries.
//!
//! delta-rs's provider wraps each scan in its own operator that rebuilds every batch (partition
//! values, casts to the Delta schema): on a 10M-row ledger day that wrapper cost 40 ms of a
//! 90 ms aggregate, and its string columns reach the aggregate as `Utf8`. For tables whose
//! protocol needs no reader features (no column mapping, no deletion vectors: all of tally's
//! own), the active files with their partition values are all a reader needs. Files are
//! skipped with the snapshot's per-file statistics and partition values (delta-rs's
//! `PruningStatistics`), row groups and pages by DataFusion's Parquet pruning and bloom filters.

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use object_store::ObjectMeta;
use std::sync::Arc;

/// One snapshot of a Delta table as a Parquet scan.
#[derive(Debug)]
pub struct DeltaFiles {
    snapshot: deltalake::table::state::DeltaTableState,
    store_url: ObjectStoreUrl,
    /// The table's location, naming the snapshot together with its version.
    location: String,
    /// The table's columns in the Delta provider's order (what `SELECT *` shows).
    schema: SchemaRef,
    /// The file columns, then the partition columns.
    table_schema: TableSchema,
    /// For each column of `schema`, its index in `table_schema`.
    to_scan: Vec<usize>,
    partition_cols: Vec<Arc<Field>>,
}

impl DeltaFiles {
    /// The snapshot of `table` as a Parquet scan with `schema` (the Delta provider's), or
    /// `None` when the table's protocol asks readers for more than plain files.
    pub fn try_new(table: &DeltaTable, schema: SchemaRef) -> Option<Self> {
        let snapshot = table.snapshot().ok()?;
        // Strings as views, as DataFusion's Parquet reader yields them: no copy into `Utf8`,
        // and group keys hash and compare as views.
        let schema = Arc::new(Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        ));
        if snapshot.protocol().min_reader_version() > 1 {
            return None;
        }
        let partition_names = snapshot.metadata().partition_columns().to_vec();
        let partition_cols: Vec<Arc<Field>> = partition_names
            .iter()
            .map(|n| schema.field_with_name(n).ok().map(|f| Arc::new(f.clone())))
            .collect::<Option<_>>()?;
        let file_fields: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| !partition_names.contains(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        let file_schema = Arc::new(Schema::new(file_fields));
        let combined: Vec<String> = file_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .chain(partition_names.iter().cloned())
            .collect();
        let to_scan = schema
            .fields()
            .iter()
            .map(|f| combined.iter().position(|n| n == f.name()))
            .collect::<Option<Vec<_>>>()?;
        let table_schema = TableSchema::builder(file_schema)
            .with_table_partition_cols(partition_cols.clone())
            .build();
        Some(Self {
            snapshot: snapshot.clone(),
            store_url: table.log_store().object_store_url(),
            location: table.table_url().to_string(),
            schema,
            table_schema,
            to_scan,
            partition_cols,
        })
    }

    /// `location@version`: two scans with the same identity read the same rows.
    pub fn identity(&self) -> String {
        format!("{}@{}", self.location, self.snapshot.version())
    }

    /// Which files may hold rows matching `filters` (all of them when the filters cannot be
    /// used for pruning).
    fn kept(&self, state: &dyn Session, filters: &[Expr]) -> Option<Vec<bool>> {
        let predicate = conjunction(filters.iter().cloned())?;
        let df_schema = DFSchema::try_from(Arc::clone(&self.schema)).ok()?;
        let physical = state.create_physical_expr(predicate, &df_schema).ok()?;
        let pruning = PruningPredicateBuilder::new()
            .with_file_schema(Arc::clone(&self.schema))
            .build(physical)?;
        pruning.prune(&self.snapshot.log_data()).ok()
    }
}

#[async_trait::async_trait]
impl TableProvider for DeltaFiles {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to skip files here; evaluated above the scan (and pushed into it by the
        // physical optimizer).
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let kept = self.kept(state, filters);
        let mut files = Vec::new();
        for (i, view) in self.snapshot.log_data().iter().enumerate() {
            if kept
                .as_ref()
                .is_some_and(|k| !k.get(i).copied().unwrap_or(true))
            {
                continue;
            }
            let values = view.partition_values_map();
            let partition_values = self
                .partition_cols
                .iter()
                .map(|f| match values.get(f.name()).cloned().flatten() {
                    Some(v) => ScalarValue::try_from_string(v, f.data_type()),
                    None => ScalarValue::try_from(f.data_type()),
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = ObjectMeta {
                location: view.object_store_path(),
                last_modified: chrono::DateTime::from_timestamp_millis(view.modification_time())
                    .unwrap_or_default(),
                size: u64::try_from(view.size()).unwrap_or(0),
                e_tag: None,
                version: None,
            };
            files
                .push(PartitionedFile::new_from_meta(meta).with_partition_values(partition_values));
        }
        let projected: Vec<usize> = match projection {
            Some(p) => p.iter().map(|i| self.to_scan[*i]).collect(),
            None => self.to_scan.clone(),
        };
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(self.table_schema.clone());
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(groups)
            .with_projection_indices(Some(projected))?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}
