//! Waiting for the run's spawned tasks (partition writers, key index lookups).

use crate::error::{Result, TallyError};

/// Waits for a spawned task, turning a panic or cancellation into an error.
pub(super) async fn join<T>(task: tokio::task::JoinHandle<T>) -> Result<T> {
    task.await
        .map_err(|e| TallyError::Internal(format!("ledger task: {e}")))
}
