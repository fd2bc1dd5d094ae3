//! Resolves configuration layers (defaults < file < environment < flags) into what the
//! engine needs: the config and the opened lake.

use crate::args::GlobalArgs;
use anyhow::Result;
use std::path::PathBuf;
use tally_engine::config::Config;
use tally_engine::lake::Lake;
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

    /// Opens a session with every table of the lake and the config registered.
    pub async fn session(&self, opts: &SessionOptions) -> Result<TallySession> {
        Ok(TallySession::open(&self.lake, &self.config, opts).await?)
    }
}
