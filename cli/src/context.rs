//! Resolves configuration layers (defaults < file < environment < flags) into what the
//! engine needs: the config and the opened lake.

use crate::args::{ClusterArgs, GlobalArgs};
use anyhow::Result;
use std::path::PathBuf;
use tally_engine::cluster::Workers;
use tally_engine::config::Config;
use tally_engine::lake::Lake;
use tally_engine::serve::auth::Token;
use tally_engine::session::{SessionOptions, TallySession};

/// Everything a command needs to reach the lake.
pub struct Context {
    /// The resolved configuration.
    pub config: Config,
    /// The lake, located by flag, `TALLY_LAKE`, `tally.toml` or `./lake`, in that order.
    pub lake: Lake,
}

impl Context {
    /// Reads the config file (an explicit `--config` must exist) and resolves the lake.
    pub fn resolve(global: &GlobalArgs) -> Result<Self> {
        let config = match &global.config {
            Some(path) => Config::load(path, true)?,
            None => Config::load(&PathBuf::from("tally.toml"), false)?,
        };
        let location = global
            .lake
            .clone()
            .or_else(|| config.lake.clone())
            .unwrap_or_else(|| "./lake".to_string());
        let lake = Lake::open(&location, &config.s3)?;
        Ok(Self { config, lake })
    }

    /// The workers a command runs on: `--workers` / `TALLY_WORKERS`, else `[cluster]` of
    /// tally.toml; `None` runs here. Those that do not answer are left out (a warning each);
    /// none answering is an error naming them.
    pub async fn workers(&self, args: &ClusterArgs) -> Result<Option<Workers>> {
        let listed = if args.workers.is_empty() {
            &self.config.cluster.workers
        } else {
            &args.workers
        };
        if listed.is_empty() {
            return Ok(None);
        }
        let token = Token::new(std::env::var("TALLY_TOKEN").ok());
        let workers = Workers::parse(listed, token)?;
        Ok(Some(workers.reachable().await?))
    }

    /// Opens a session with every table of the lake and the config registered.
    pub async fn session(&self, opts: &SessionOptions) -> Result<TallySession> {
        Ok(TallySession::open(&self.lake, &self.config, opts).await?)
    }
}
