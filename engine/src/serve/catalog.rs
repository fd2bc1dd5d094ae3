//! Fresh snapshots for a long-running server, without reopening every table per query.
//!
//! A query must see every Delta commit made before it started (by `tally ledger`, `tally live`,
//! another host). Reopening each table per query would replay its log from the last
//! checkpoint; instead the [`TableCache`] keeps each table open and reads only its log tail.
//! Refreshes are coalesced: a query that arrives while a refresh is running waits for the next
//! one (the running one may have listed the log before the query's commit landed), and every
//! query that arrived before a refresh started shares it. Queries wait on a refresh's shared
//! result, never on a lock a refresh holds. Each query then plans and runs on one
//! [`TallySession`], so it reads one version of every table from start to end.

use crate::config::Config;
use crate::error::{Result, TallyError};
use crate::lake::Lake;
use crate::session::{SessionOptions, TableCache, TallySession};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// A refresh's result, shared by every query waiting for it.
type Refresh = Shared<BoxFuture<'static, std::result::Result<Arc<TallySession>, Arc<TallyError>>>>;

/// The lake's tables as the server sees them, refreshed on demand.
///
/// No query waits on a lock for a refresh: a refresh runs in its own task (one at a time, with
/// the table cache to itself), and queries wait on its shared result, each within its own
/// timeout. A refresh that stalls (an unreachable store) ends at `refresh_timeout` and frees
/// the cache for the next one; a query that gave up on it leaves it running for the others.
pub struct FreshCatalog {
    lake: Lake,
    config: Config,
    opts: SessionOptions,
    runtime: Arc<RuntimeEnv>,
    refresh_timeout: std::time::Duration,
    /// The table cache; only the one running refresh holds it.
    cache: Arc<tokio::sync::Mutex<TableCache>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The newest session and when the refresh that built it started.
    newest: Option<(Instant, Arc<TallySession>)>,
    /// The refresh running now and when it started.
    running: Option<(Instant, Refresh)>,
}

impl FreshCatalog {
    /// Opens nothing yet: tables are opened by the first query (or [`Self::session`] at start).
    /// A refresh gives up after `refresh_timeout` (the server's query timeout).
    pub fn new(
        lake: Lake,
        config: Config,
        opts: SessionOptions,
        refresh_timeout: std::time::Duration,
        planner: Option<Arc<dyn QueryPlanner + Send + Sync>>,
    ) -> Result<Self> {
        let mut cache = TableCache::new(&opts)?;
        if let Some(planner) = planner {
            cache = cache.with_query_planner(planner);
        }
        Ok(Self {
            lake,
            config,
            opts,
            runtime: Arc::clone(cache.runtime()),
            refresh_timeout,
            cache: Arc::new(tokio::sync::Mutex::new(cache)),
            state: Mutex::new(State::default()),
        })
    }

    /// A session that sees every commit made before this call.
    pub async fn session(&self) -> Result<Arc<TallySession>> {
        let asked = Instant::now();
        loop {
            let (started, refresh) = {
                let mut state = self
                    .state
                    .lock()
                    .map_err(|_| TallyError::Internal("catalog state poisoned".into()))?;
                if let Some((started, session)) = &state.newest {
                    if *started >= asked {
                        return Ok(Arc::clone(session));
                    }
                }
                match &state.running {
                    Some((started, refresh)) => (*started, refresh.clone()),
                    None => {
                        let started = Instant::now();
                        let refresh =
                            self.refresh(state.newest.as_ref().map(|(_, s)| Arc::clone(s)));
                        state.running = Some((started, refresh.clone()));
                        (started, refresh)
                    }
                }
            };
            let result = refresh.await;
            {
                let mut state = self
                    .state
                    .lock()
                    .map_err(|_| TallyError::Internal("catalog state poisoned".into()))?;
                if state.running.as_ref().is_some_and(|(s, _)| *s == started) {
                    state.running = None;
                    if let Ok(session) = &result {
                        if state.newest.as_ref().is_none_or(|(s, _)| *s < started) {
                            state.newest = Some((started, Arc::clone(session)));
                        }
                    }
                }
            }
            match result {
                // A refresh that started before this call may have listed the log before the
                // caller's commit landed: wait for the next one.
                Ok(session) if started >= asked => return Ok(session),
                Ok(_) => continue,
                Err(e) => return Err(TallyError::Shared(e)),
            }
        }
    }

    /// Starts a refresh in its own task: when `newest` is still the lake as it is (nothing
    /// committed since), it is the result; otherwise the tables' log tails are read.
    fn refresh(&self, newest: Option<Arc<TallySession>>) -> Refresh {
        let cache = Arc::clone(&self.cache);
        let (lake, config, opts) = (self.lake.clone(), self.config.clone(), self.opts.clone());
        let timeout = self.refresh_timeout;
        let task = tokio::spawn(async move {
            let work = async {
                let mut cache = cache.lock().await;
                if let Some(session) = newest {
                    if cache.is_current(&session).await? {
                        return Ok(session);
                    }
                }
                let opened = TallySession::open_cached(&lake, &config, &opts, &mut cache).await?;
                Ok(Arc::new(opened))
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(done) => done.map_err(Arc::new),
                Err(_) => Err(Arc::new(TallyError::QueryTimeout {
                    seconds: timeout.as_secs(),
                })),
            }
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(TallyError::Internal(format!(
                    "catalog refresh: {e}"
                ))))
            })
        }
        .boxed()
        .shared()
    }

    /// The session of the latest refresh, without refreshing (`None` before the first).
    pub fn newest(&self) -> Option<Arc<TallySession>> {
        let state = self.state.lock().ok()?;
        state.newest.as_ref().map(|(_, s)| Arc::clone(s))
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
