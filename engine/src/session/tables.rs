//! Registering the lake's tables and the configured ones in a session.

use super::*;

impl TallySession {
    pub(super) async fn register_raw_payments(
        &mut self,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        let url = self.lake.url_of(layout::RAW_PAYMENTS)?;
        let parts = self.lake.list_dirs(layout::RAW_PAYMENTS).await?;
        if parts.is_empty() {
            return Ok(());
        }
        if parts.iter().any(|p| p == "_delta_log") {
            return self.register_delta("raw_payments", url, cache).await;
        }
        // Data files only, by the rule tally's own listing follows.
        let data_files = crate::raw_files::data_file_pattern()?;
        let table_url = ListingTableUrl::try_new(url.clone(), Some(data_files))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![(schema::INGEST_DATE.to_string(), DataType::Date32)]);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(Arc::clone(&schema::RAW_PAYMENTS));
        let table = ListingTable::try_new(config)?;
        self.ctx
            .register_table("raw_payments", Arc::new(RawPaymentsTable::new(table)))?;
        self.tables.push(TableInfo {
            name: "raw_payments".into(),
            format: "parquet",
            location: url.to_string(),
            detail: format!("{} ingest_date partitions", parts.len()),
        });
        Ok(())
    }

    /// Registers a Delta table if the location holds one; absent otherwise.
    pub(super) async fn register_delta_if_present(
        &mut self,
        name: &str,
        url: url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        match self.open_delta(name, &url, cache).await {
            Ok(table) => self.register_opened_delta(name, &url, table).await,
            Err(TallyError::Delta(deltalake::DeltaTableError::NotATable(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn register_delta(
        &mut self,
        name: &str,
        url: url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        let table = self
            .open_delta(name, &url, cache)
            .await
            .map_err(|e| match e {
                TallyError::Delta(deltalake::DeltaTableError::NotATable(_)) => {
                    TallyError::TableOpen {
                        name: name.into(),
                        location: url.to_string(),
                        message: "not a Delta table (no _delta_log)".into(),
                    }
                }
                other => other,
            })?;
        self.register_opened_delta(name, &url, table).await
    }

    pub(super) async fn open_delta(
        &self,
        name: &str,
        url: &url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<deltalake::DeltaTable> {
        let Some(cache) = cache else {
            return self.open_delta_uncached(name, url).await;
        };
        if let Some(table) = cache.delta.get_mut(url.as_str()) {
            table
                .update_incremental(None)
                .await
                .map_err(|e| TallyError::TableOpen {
                    name: name.into(),
                    location: url.to_string(),
                    message: one_line(&e.to_string()),
                })?;
            return Ok(table.clone());
        }
        let table = self.open_delta_uncached(name, url).await?;
        cache.delta.insert(url.to_string(), table.clone());
        Ok(table)
    }

    pub(super) async fn open_delta_uncached(
        &self,
        name: &str,
        url: &url::Url,
    ) -> Result<deltalake::DeltaTable> {
        crate::delta::open(&self.lake, url)
            .await
            .map_err(|e| match e {
                TallyError::Delta(deltalake::DeltaTableError::NotATable(_)) => e,
                other => TallyError::TableOpen {
                    name: name.into(),
                    location: url.to_string(),
                    message: one_line(&other.to_string()),
                },
            })
    }

    pub(super) async fn register_opened_delta(
        &mut self,
        name: &str,
        url: &url::Url,
        table: deltalake::DeltaTable,
    ) -> Result<()> {
        table.update_datafusion_session(&self.ctx.state())?;
        let mut provider: Arc<dyn TableProvider> = table.table_provider().await?;
        if self.plain_delta_scans {
            if let Some(plain) = crate::delta_files::DeltaFiles::try_new(&table, provider.schema())
            {
                // Its file paths are relative to the table root: the store delta-rs scopes
                // to it, under the URL delta-rs names it by.
                let log_store = table.log_store();
                self.ctx.runtime_env().register_object_store(
                    log_store.object_store_url().as_ref(),
                    log_store.object_store(None),
                );
                provider = Arc::new(plain);
            }
        }
        let mut detail = table
            .version()
            .map(|v| format!("version {v}"))
            .unwrap_or_default();
        if name == layout::LIVE_VIEW || name == layout::LIVE_LATE {
            // The live tables hold partial rows per batch; readers get one row per key.
            let view = crate::live::sink::totals(&self.ctx, provider)?.into_view();
            self.ctx.register_table(name, view)?;
            detail.push_str(", one row per (window_start, partner_id, currency)");
        } else {
            self.ctx.register_table(name, provider)?;
        }
        self.tables.push(TableInfo {
            name: name.into(),
            format: "delta",
            location: url.to_string(),
            detail,
        });
        Ok(())
    }

    pub(super) async fn register_parquet_dir(
        &mut self,
        name: &str,
        url: url::Url,
        cache: Option<&mut TableCache>,
    ) -> Result<()> {
        let cached = cache.as_ref().and_then(|c| c.parquet.get(name).cloned());
        let table = match cached {
            Some(table) => table,
            None => {
                let table = self.open_parquet_dir(name, &url).await?;
                if let Some(cache) = cache {
                    cache.parquet.insert(name.to_string(), Arc::clone(&table));
                }
                table
            }
        };
        self.ctx.register_table(name, table)?;
        self.tables.push(TableInfo {
            name: name.into(),
            format: "parquet",
            location: url.to_string(),
            detail: String::new(),
        });
        Ok(())
    }

    pub(super) async fn open_parquet_dir(
        &self,
        name: &str,
        url: &url::Url,
    ) -> Result<Arc<dyn TableProvider>> {
        let table_url = listing_url(url)?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let state = self.ctx.state();
        // Hive directories (`key=value/`) become string columns.
        let partition_cols = options
            .infer_partitions(&state, &table_url)
            .await
            .map_err(|e| self.table_open_error(name, url, e))?
            .into_iter()
            .map(|c| (c, DataType::Utf8))
            .collect();
        let options = options.with_table_partition_cols(partition_cols);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .infer_schema(&state)
            .await
            .map_err(|e| self.table_open_error(name, url, e))?;
        Ok(Arc::new(ListingTable::try_new(config)?))
    }

    pub(super) fn table_open_error(
        &self,
        name: &str,
        url: &url::Url,
        e: datafusion::error::DataFusionError,
    ) -> TallyError {
        TallyError::TableOpen {
            name: name.into(),
            location: url.to_string(),
            message: one_line(&e.to_string()),
        }
    }
}

pub(super) fn listing_url(url: &url::Url) -> Result<ListingTableUrl> {
    Ok(ListingTableUrl::parse(url.as_str())?)
}
