//! Where blocking work runs: file writes, service restarts and child processes never run on
//! the async runtime's workers (two of them serve every request), but on tokio's blocking
//! pool through [`blocking`].

/// The blocking task could not finish (it panicked or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("worker task failed: {0}")]
pub struct TaskFailed(pub String);

/// Runs `f` on the blocking pool and returns its result.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(TaskFailed(e.to_string())))?
}
