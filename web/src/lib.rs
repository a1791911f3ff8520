//! `pifleet-web`: the fleet dashboard. An HTTP server (axum) with a typed JSON API, live
//! updates as server-sent events, and one page embedded at compile time, so the binary that
//! runs it (`pifleet-broker` by default, or `pifleet serve`) works offline with nothing to build.
//!
//! The dashboard is an ordinary MQTT client of the fleet, like the broker's legacy relay: what
//! it shows is what `pifleet status` and `pifleet watch` would show, and its commands obey the
//! same authorization rules as the CLI's. The JSON it serves is the CLI's documented JSON
//! (`pifleet_proto::report`, `pifleet_history::report`); the API is in docs/protocol.md.
//!
//! Layout:
//! - [`live`]: the MQTT connection, the live [`Fleet`](pifleet_proto::fleet::Fleet) fold and
//!   the event fan-out.
//! - [`command`]: `POST /api/command`, answered with a `SwitchReport`.
//! - [`api`]: the routes: pages, JSON, history, server-sent events.
//! - [`auth`]: anonymous-on-loopback or controller login, sessions, CSRF.
//! - `assets/`: the page (HTML, CSS, JS; no third-party code).

pub mod api;
pub mod auth;
pub mod command;
pub mod live;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::{LoginCheck, Logins};
pub use command::{CommandRequest, TargetKind};
pub use live::{BrokerLogin, Link};
use pifleet_proto::Topics;

/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("log in first")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("broker: {0}")]
    Broker(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to serve the dashboard on {0} without logins: anyone who can reach it could \
         switch your devices. Give the broker a credentials file ([auth] credentials), listen \
         on 127.0.0.1, or set [dashboard] allow_anonymous = true on a trusted network"
    )]
    Exposed(SocketAddr),
}

/// How the dashboard is served.
#[derive(Clone)]
pub struct Options {
    /// Where the history files are (the recorder's directory; `pifleet_history::layout`).
    pub history_dir: PathBuf,
    /// Checks controller logins; needed on a non-loopback address.
    pub logins: Option<Arc<dyn Logins>>,
    /// Serve a non-loopback address without logins (a trusted network only).
    pub allow_anonymous: bool,
    /// Mark the session cookie `Secure` (the page is served over TLS by a proxy or by us;
    /// always on with [`Options::tls`]).
    pub secure_cookie: bool,
    /// Serve HTTPS with this configuration (the broker's `[tls]` certificate) instead of HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Options {
    pub fn new(history_dir: impl Into<PathBuf>) -> Options {
        Options {
            history_dir: history_dir.into(),
            logins: None,
            allow_anonymous: false,
            secure_cookie: false,
            tls: None,
        }
    }
}

/// The history directory when none is configured (a standalone `pifleet serve` on the
/// recorder's machine): `PIFLEET_HISTORY_DIR`, else the first existing of the places a recorder
/// writes by default ([`pifleet_history::layout::search_dirs`], as `pifleet history` looks).
pub fn default_history_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(pifleet_history::layout::DIR_ENV) {
        return PathBuf::from(d);
    }
    let dirs = pifleet_history::layout::search_dirs();
    dirs.iter().find(|d| d.is_dir()).unwrap_or(&dirs[0]).clone()
}

/// Refuses a non-loopback address without logins unless anonymous access is allowed.
pub fn check_exposure(addr: SocketAddr, options: &Options) -> Result<(), Error> {
    if !addr.ip().is_loopback() && options.logins.is_none() && !options.allow_anonymous {
        return Err(Error::Exposed(addr));
    }
    Ok(())
}

/// A started dashboard.
pub struct Running {
    pub addr: SocketAddr,
    pub link: Link,
}

/// Checks the address, binds it, connects to the broker and serves in the background.
pub async fn start(
    listen: SocketAddr,
    login: BrokerLogin,
    topics: Topics,
    options: Options,
) -> Result<Running, Error> {
    check_exposure(listen, &options)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().expect("bound");
    let link = Link::start(login, topics).await?;
    tokio::spawn(serve(
        listener,
        link.clone(),
        options,
        std::future::pending(),
    ));
    Ok(Running { addr, link })
}

/// How long a TLS handshake may take before the connection is dropped: a client that opens a
/// connection and sends nothing must not hold it (and its task) for ever.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the request head may take to arrive on an HTTPS connection (slowloris).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the dashboard on an already bound listener until `shutdown` completes: HTTPS when
/// [`Options::tls`] is set, else HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    link: Link,
    mut options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener.local_addr().expect("bound");
    let Some(tls) = options.tls.take() else {
        let app = api::router(api::App::new(link, options, addr));
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("dashboard on {addr}: {e}");
        }
        return;
    };
    options.secure_cookie = true;
    let app = api::router(api::App::new(link, options, addr));
    // The broker's configuration may carry the MQTT listener's ALPN; this listener speaks
    // HTTP/1.1 only.
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("dashboard on {addr}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        // Each handshake in a task of its own, so a slow or silent client delays nobody else.
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "dashboard: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "dashboard: connection: {e}");
            }
        });
    }
}
