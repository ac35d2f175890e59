//! Process signals.

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs `on_hangup` on every SIGHUP for the rest of the process's life. Registering the
/// handler replaces SIGHUP's default action, which is to die: a service manager's reload, or a
/// terminal going away, must never kill the daemon. Returns `false` if the handler could not
/// be installed.
pub fn on_hangup(mut on_hangup: impl FnMut() + Send + 'static) -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return false;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            on_hangup();
        }
    });
    true
}
