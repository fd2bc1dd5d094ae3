//! The lake's tables for a long-lived DataFusion context whose plans outlive one snapshot.
//!
//! The Postgres endpoint keeps one context (its `pg_catalog` emulation is costly to build) and
//! clients keep plans in it (named prepared statements, which psycopg and JDBC switch to after
//! a few runs). A plain table provider would pin those plans to the snapshot of the moment they
//! were parsed. [`FreshSchema`] hands out [`FreshTable`]s instead: each resolves to the table
//! of the query's pinned session ([`PINNED`], the newest refresh when it started) when the plan
//! is executed (`scan`), so a prepared statement run again reads the commits made since.

use super::catalog::FreshCatalog;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

const SCHEMA: &str = "public";

tokio::task_local! {
    /// The session one query runs on: every table it scans resolves in this one snapshot,
    /// even when another connection refreshes while it plans.
    pub static PINNED: Arc<crate::session::TallySession>;
}

/// `datafusion.public` of the served lake, always at its newest refresh.
#[derive(Debug)]
pub struct FreshSchema {
    catalog: Arc<FreshCatalog>,
}

impl FreshSchema {
    /// The schema over `catalog`'s newest session.
    pub fn new(catalog: Arc<FreshCatalog>) -> Self {
        Self { catalog }
    }
}

/// The newest session's `public` schema.
fn newest_schema(catalog: &FreshCatalog) -> Option<Arc<dyn SchemaProvider>> {
    let session = PINNED
        .try_with(Arc::clone)
        .ok()
        .or_else(|| catalog.newest())?;
    session
        .ctx()
        .catalog("datafusion")
        .and_then(|c| c.schema(SCHEMA))
}

#[async_trait::async_trait]
impl SchemaProvider for FreshSchema {
    fn table_names(&self) -> Vec<String> {
        newest_schema(&self.catalog)
            .map(|s| s.table_names())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(schema) = newest_schema(&self.catalog) else {
            return Ok(None);
        };
        Ok(schema.table(name).await?.map(|current| {
            Arc::new(FreshTable {
                name: name.to_string(),
                catalog: Arc::clone(&self.catalog),
                schema: current.schema(),
                table_type: current.table_type(),
            }) as Arc<dyn TableProvider>
        }))
    }

    async fn table_type(&self, name: &str) -> Result<Option<TableType>> {
        match newest_schema(&self.catalog) {
            Some(schema) => schema.table_type(name).await,
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        newest_schema(&self.catalog).is_some_and(|s| s.table_exist(name))
    }
}

/// One table, resolved to the newest refresh's provider when scanned.
#[derive(Debug)]
pub struct FreshTable {
    name: String,
    catalog: Arc<FreshCatalog>,
    schema: arrow::datatypes::SchemaRef,
    table_type: TableType,
}

impl FreshTable {
    async fn current(&self) -> Result<Arc<dyn TableProvider>> {
        let schema = newest_schema(&self.catalog)
            .ok_or_else(|| DataFusionError::Plan("the lake is not open yet".into()))?;
        schema
            .table(&self.name)
            .await?
            .ok_or_else(|| DataFusionError::Plan(format!("table '{}' not found", self.name)))
    }

    /// The table in the session pinned to this task (the query's), if one is.
    pub(crate) fn pinned(&self) -> Option<Arc<dyn TableProvider>> {
        PINNED.try_with(|_| ()).ok()?;
        self.current_now()
    }

    fn current_now(&self) -> Option<Arc<dyn TableProvider>> {
        // The providers of the newest session are registered directly, so the lookup is a map
        // read; futures::executor would be needed only for a lazy schema, which this is not.
        let schema = newest_schema(&self.catalog)?;
        futures::executor::block_on(schema.table(&self.name))
            .ok()
            .flatten()
    }
}

#[async_trait::async_trait]
impl TableProvider for FreshTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let current = self.current().await?;
        if current.schema().fields() != self.schema.fields() {
            return Err(DataFusionError::Plan(format!(
                "the schema of table '{}' changed since this statement was prepared: prepare it again",
                self.name
            )));
        }
        current.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        match self.current_now() {
            Some(current) => current.supports_filters_pushdown(filters),
            None => Ok(vec![
                TableProviderFilterPushDown::Unsupported;
                filters.len()
            ]),
        }
    }
}
