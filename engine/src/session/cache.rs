//! The tables a server keeps open between sessions, and the check that a session is still current.

use super::*;

/// Tables a long-running process (`tally serve`) opens once and brings up to date before each
/// session: a Delta table reads only the log entries committed since (its log tail), and a
/// configured Parquet directory keeps the schema inferred from its footers. Every session built
/// from the cache shares one runtime, so one memory pool bounds all concurrent queries.
pub struct TableCache {
    pub(super) runtime: Arc<RuntimeEnv>,
    pub(super) delta: HashMap<String, deltalake::DeltaTable>,
    pub(super) parquet: HashMap<String, Arc<dyn TableProvider>>,
    /// Plans every statement of the sessions built from this cache (the server's result
    /// cache); DataFusion's own planner when `None`.
    pub(super) query_planner: Option<Arc<dyn QueryPlanner + Send + Sync>>,
}

impl TableCache {
    /// An empty cache whose sessions share one runtime (memory pool) built from `opts`.
    pub fn new(opts: &SessionOptions) -> Result<Self> {
        let opts = SessionOptions {
            fresh_listings: true,
            ..opts.clone()
        };
        Ok(Self {
            runtime: new_runtime(&opts)?,
            delta: HashMap::new(),
            parquet: HashMap::new(),
            query_planner: None,
        })
    }

    /// Sessions built from this cache plan their statements with `planner`.
    pub fn with_query_planner(mut self, planner: Arc<dyn QueryPlanner + Send + Sync>) -> Self {
        self.query_planner = Some(planner);
        self
    }

    /// The runtime every session from this cache runs on.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// True when `session` (built from this cache) still shows the lake as it is: no table has
    /// appeared and no Delta table has a commit past the version the session reads. One listing
    /// of the lake root and one HEAD per Delta table (of its next commit file), in parallel: a
    /// server's query pays this instead of opening a new session.
    pub async fn is_current(&self, session: &TallySession) -> Result<bool> {
        if !session.unreadable.is_empty() {
            return Ok(false); // try again: a repaired table comes back
        }
        let mut top = session.lake.top_level_dirs().await?;
        top.sort();
        if top != session.top_dirs {
            return Ok(false);
        }
        use object_store::ObjectStoreExt;
        let checks = self.delta.values().map(|table| async move {
            let Some(version) = table.version() else {
                return Ok(false);
            };
            let next =
                object_store::path::Path::from(format!("_delta_log/{:020}.json", version + 1));
            match table.log_store().object_store(None).head(&next).await {
                Ok(_) => Ok(false),
                Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(TallyError::Storage(e)),
            }
        });
        for current in futures::future::join_all(checks).await {
            if !current? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
