//! Tables a long-running server could not open, kept out of the way of every other table.
//!
//! One table whose Delta log cannot be read (a torn commit, a permission change, a deleted
//! checkpoint) must not take the whole lake off the air: the server's session registers every
//! table it can, and this schema wraps them so that a query naming an unreadable table fails
//! with the table's name and the reason, while queries on other tables and catalog browsing
//! (which lists `table_names`) go on. The session is rebuilt at the next query while a table is
//! unreadable, so a repaired table comes back without a restart.

use crate::error::TallyError;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A schema with some of its tables unreadable.
#[derive(Debug)]
pub struct WithUnreadable {
    inner: Arc<dyn SchemaProvider>,
    /// Table name → why it cannot be opened (one line).
    unreadable: BTreeMap<String, String>,
}

impl WithUnreadable {
    /// Wraps `inner`, whose tables opened, with the ones that did not.
    pub fn new(inner: Arc<dyn SchemaProvider>, unreadable: BTreeMap<String, String>) -> Self {
        Self { inner, unreadable }
    }
}

#[async_trait::async_trait]
impl SchemaProvider for WithUnreadable {
    /// Only the readable tables: listings (GetTables, `\dt`, `information_schema`) go on.
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(reason) = self.unreadable.get(name) {
            return Err(DataFusionError::External(Box::new(
                TallyError::Unreadable {
                    name: name.to_string(),
                    message: reason.clone(),
                },
            )));
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.unreadable.contains_key(name) || self.inner.table_exist(name)
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn only_queries_naming_the_unreadable_table_fail() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE good AS SELECT 1 AS a")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let catalog = ctx.catalog("datafusion").unwrap();
        let inner = catalog.schema("public").unwrap();
        let unreadable = BTreeMap::from([("ledger".to_string(), "bad log".to_string())]);
        catalog
            .register_schema("public", Arc::new(WithUnreadable::new(inner, unreadable)))
            .unwrap();
        let n = ctx
            .sql("SELECT count(*) FROM good")
            .await
            .unwrap()
            .collect()
            .await;
        assert!(n.is_ok());
        let e = ctx
            .sql("SELECT * FROM ledger")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("ledger") && e.contains("bad log"), "{e}");
        assert_eq!(
            catalog.schema("public").unwrap().table_names(),
            vec!["good"]
        );
    }
}
