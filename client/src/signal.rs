//! The binaries' stop signal: Ctrl-C in a terminal, SIGTERM from systemd or `docker stop`.

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
