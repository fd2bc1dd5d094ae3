//! How long-running jobs report progress without knowing who is watching.
//!
//! The engine calls a [`Progress`]; the CLI turns it into an `indicatif` bar on a terminal or
//! JSON lines for cron, tests pass [`NoProgress`].

/// Receives progress of a job measured in units the job names (files, days, rows).
pub trait Progress: Send + Sync {
    /// The job now knows how many units it will do.
    fn set_total(&self, _unit: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short status line (the day or file being worked on).
    fn message(&self, _msg: &str) {}
}

/// Discards progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
