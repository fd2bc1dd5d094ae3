//! Waiting for the run's spawned partition tasks.

use crate::error::{Result, TallyError};

/// Waits for a spawned task, turning a panic or cancellation into an error.
pub(super) async fn join<T>(task: tokio::task::JoinHandle<T>) -> Result<T> {
    task.await
        .map_err(|e| TallyError::Internal(format!("ledger writer task: {e}")))
}
