//! A long-lived interactive session (the shell) that sees what was committed.
//!
//! A session pins the Delta snapshot of each table it opened: a shell left open would never
//! see a new ledger day or live batch, and once the live roll-up vacuumed, its `live_view`
//! would point at deleted files. Before each statement the shell asks [`FreshSession::current`],
//! which uses the server's mechanism ([`TableCache`]: one HEAD per table for its next commit,
//! log tails read only when something changed) and, when a table moved, opens a new session
//! on the refreshed tables. What the user made in the old one (views, external tables, `SET`
//! options) is carried into it, so a refresh is invisible except for the newer data.

use super::{SessionOptions, TableCache, TallySession};
use crate::config::Config;
use crate::error::{Result, TallyError};
use crate::lake::Lake;
use datafusion::catalog::view::ViewTable;

/// A session kept up to date with the lake, statement by statement.
pub struct FreshSession {
    lake: Lake,
    config: Config,
    opts: SessionOptions,
    cache: TableCache,
    session: TallySession,
}

impl FreshSession {
    /// Opens the lake's tables through a cache; a table that cannot be opened fails only the
    /// statements that use it.
    pub async fn open(lake: &Lake, config: &Config, opts: &SessionOptions) -> Result<Self> {
        let mut cache = TableCache::new(opts)?;
        let session = TallySession::open_cached(lake, config, opts, &mut cache).await?;
        Ok(Self {
            lake: lake.clone(),
            config: config.clone(),
            opts: opts.clone(),
            cache,
            session,
        })
    }

    /// The session as of now: every commit made before this call is visible, and the
    /// tables, views and settings the user created in it are still there.
    pub async fn current(&mut self) -> Result<&TallySession> {
        if !self.cache.is_current(&self.session).await? {
            let next =
                TallySession::open_cached(&self.lake, &self.config, &self.opts, &mut self.cache)
                    .await?;
            carry_over(&self.session, &next).await?;
            self.session = next;
        }
        Ok(&self.session)
    }
}

/// Registers in `to` the tables and views the user made in `from` (anything in its default
/// schema that is not one of the lake's tables) and its settings.
async fn carry_over(from: &TallySession, to: &TallySession) -> Result<()> {
    let schema = |s: &TallySession| {
        s.ctx()
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .ok_or_else(|| TallyError::Internal("no default schema".into()))
    };
    let (old, new) = (schema(from)?, schema(to)?);
    // Views are made again from their SQL, so they read the refreshed tables; other tables
    // (external tables over files) are taken as they are. A view over another view waits for
    // it: each pass makes what it can.
    let mut views = Vec::new();
    for name in old.table_names() {
        if from.tables().iter().any(|t| t.name == name) || new.table_exist(&name) {
            continue;
        }
        let Some(provider) = old.table(&name).await? else {
            continue;
        };
        let any: &dyn std::any::Any = provider.as_ref();
        let definition = any
            .downcast_ref::<ViewTable>()
            .and_then(|v| v.definition().map(|d| d.to_string()));
        match definition {
            Some(sql) => views.push((name, sql)),
            None => {
                new.register_table(name, provider)?;
            }
        }
    }
    while !views.is_empty() {
        let before = views.len();
        let mut failed = Vec::new();
        let mut last_error = None;
        for (name, sql) in views {
            if let Err(e) = to.ctx().sql(&sql).await {
                last_error = Some(format!("view {name} could not be made again: {e}"));
                failed.push((name, sql));
            }
        }
        if failed.len() == before {
            return Err(TallyError::Internal(last_error.unwrap_or_default()));
        }
        views = failed;
    }
    let options = from.ctx().copied_config().options().as_ref().clone();
    *to.ctx().state_ref().write().config_mut().options_mut() = options;
    Ok(())
}
