//! Fresh snapshots for a long-running server, without reopening every table per query.
//!
//! A query must see every Delta commit made before it started (by `tally ledger`, `tally live`,
//! another host). Reopening each table per query would replay its log from the last
//! checkpoint; instead the [`TableCache`] keeps each table open and reads only its log tail.
//! Refreshes are coalesced: a query that arrives while a refresh is running waits for the next
//! one (the running one may have listed the log before the query's commit landed), and every
//! query that arrived before a refresh started shares it. Each query then plans and runs on one
//! [`TallySession`], so it reads one version of every table from start to end.

use crate::config::Config;
use crate::error::Result;
use crate::lake::Lake;
use crate::session::{SessionOptions, TableCache, TallySession};
use datafusion::execution::runtime_env::RuntimeEnv;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The lake's tables as the server sees them, refreshed on demand.
pub struct FreshCatalog {
    lake: Lake,
    config: Config,
    opts: SessionOptions,
    runtime: Arc<RuntimeEnv>,
    state: Mutex<State>,
    /// The newest session, readable without waiting for a refresh.
    newest: std::sync::RwLock<Option<Arc<TallySession>>>,
}

struct State {
    cache: TableCache,
    /// The newest session and when the refresh that built it started.
    newest: Option<(Instant, Arc<TallySession>)>,
}

impl FreshCatalog {
    /// Opens nothing yet: tables are opened by the first query (or [`Self::session`] at start).
    pub fn new(lake: Lake, config: Config, opts: SessionOptions) -> Result<Self> {
        let cache = TableCache::new(&opts)?;
        Ok(Self {
            lake,
            config,
            opts,
            runtime: Arc::clone(cache.runtime()),
            state: Mutex::new(State {
                cache,
                newest: None,
            }),
            newest: std::sync::RwLock::new(None),
        })
    }

    /// A session that sees every commit made before this call.
    pub async fn session(&self) -> Result<Arc<TallySession>> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some((started, session)) = &state.newest {
            if *started >= asked {
                return Ok(Arc::clone(session));
            }
            // Nothing committed since: the newest session is still the lake as it is.
            let checked = Instant::now();
            let session = Arc::clone(session);
            if state.cache.is_current(&session).await? {
                state.newest = Some((checked, Arc::clone(&session)));
                return Ok(session);
            }
        }
        let started = Instant::now();
        let session = Arc::new(
            TallySession::open_cached(&self.lake, &self.config, &self.opts, &mut state.cache)
                .await?,
        );
        state.newest = Some((started, Arc::clone(&session)));
        if let Ok(mut newest) = self.newest.write() {
            *newest = Some(Arc::clone(&session));
        }
        Ok(session)
    }

    /// The session of the latest refresh, without refreshing (`None` before the first).
    pub fn newest(&self) -> Option<Arc<TallySession>> {
        self.newest.read().ok().and_then(|n| n.clone())
    }

    /// The runtime (memory pool) every query of this server shares.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// The lake served.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }
}

impl std::fmt::Debug for FreshCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshCatalog")
            .field("lake", &self.lake.root().as_str())
            .finish_non_exhaustive()
    }
}
