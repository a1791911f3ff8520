//! Runs rumqttd inside our tokio runtime instead of through `Broker::start`, which blocks,
//! starts a runtime per listener, swallows bind errors into a log line and cannot say which port
//! it bound. Here a bind failure is an error the caller sees, port 0 is resolved to a real port
//! that is printed, and readiness means "a TCP connect succeeds", checked before `start` returns.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::time::{Duration, Instant};

use rumqttd::protocol::v4::V4;
use rumqttd::{LinkType, Router, Server};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Relay(String),
    #[error("the {what} listener on {addr} did not come up within {secs} s")]
    NotReady {
        what: &'static str,
        addr: SocketAddr,
        secs: u64,
    },
}

/// A started broker: where it listens. The router and listeners live as long as the process
/// (rumqttd has no shutdown; the binary exits after its own goodbye work).
#[derive(Debug, Clone)]
pub struct Running {
    pub mqtt: SocketAddr,
    pub websocket: Option<SocketAddr>,
}

/// Starts the router and every listener; returns once each accepts connections.
pub async fn start(config: &Config) -> Result<Running, BrokerError> {
    let router_tx = Router::new(0, config.router()).spawn();
    // rumqttd does not export the router's event type, so the sender is only ever named by
    // inference, inside this closure.
    let spawn = |settings: rumqttd::ServerSettings, websocket: bool| {
        let tx = router_tx.clone();
        let link = if websocket {
            LinkType::Websocket
        } else {
            LinkType::Remote
        };
        tokio::spawn(async move {
            let mut server = Server::new(settings, tx, V4);
            server.start(link).await.map_err(|e| e.to_string())
        })
    };
    let mqtt = listen(config, "mqtt", config.mqtt.listen, false, &spawn).await?;
    let websocket = if config.websocket.enabled {
        let ws = config.websocket.listen;
        Some(listen(config, "websocket", ws, true, &spawn).await?)
    } else {
        None
    };
    Ok(Running { mqtt, websocket })
}

/// How long a listener may take to accept its first connection.
const READY_WITHIN: Duration = Duration::from_secs(5);

async fn listen(
    config: &Config,
    what: &'static str,
    requested: SocketAddr,
    websocket: bool,
    spawn: &impl Fn(rumqttd::ServerSettings, bool) -> tokio::task::JoinHandle<Result<(), String>>,
) -> Result<SocketAddr, BrokerError> {
    // rumqttd binds by address and never reports the port it got, nor a bind failure until its
    // task ends. So we bind first ourselves: that resolves port 0 to a free port and turns a busy
    // port into an immediate error. If another process grabs the port in the instant between
    // our probe and rumqttd's bind, the task fails and (for port 0) we try another port.
    let attempts = if requested.port() == 0 { 5 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let probe = StdListener::bind(requested).map_err(|source| BrokerError::Listen {
            what,
            addr: requested,
            source,
        })?;
        let addr = probe.local_addr().expect("bound");
        drop(probe);
        let mut task = spawn(config.server(what, addr), websocket);
        match wait_ready(addr, &mut task).await {
            Ready::Yes => return Ok(addr),
            Ready::Failed(message) => {
                last_err = Some(BrokerError::Listen {
                    what,
                    addr,
                    source: std::io::Error::other(message),
                })
            }
            Ready::Timeout => {
                task.abort();
                return Err(BrokerError::NotReady {
                    what,
                    addr,
                    secs: READY_WITHIN.as_secs(),
                });
            }
        }
    }
    Err(last_err.expect("at least one attempt"))
}

enum Ready {
    Yes,
    Failed(String),
    Timeout,
}

/// Polls with TCP connects until the listener answers, its task ends (bind failed), or time
/// runs out.
async fn wait_ready(
    addr: SocketAddr,
    task: &mut tokio::task::JoinHandle<Result<(), String>>,
) -> Ready {
    let target = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        ip if ip.is_unspecified() => SocketAddr::new("::1".parse().expect("valid"), addr.port()),
        _ => addr,
    };
    let deadline = Instant::now() + READY_WITHIN;
    let mut pause = Duration::from_millis(1);
    while Instant::now() < deadline {
        if task.is_finished() {
            return match task.await {
                Ok(Err(e)) => Ready::Failed(e),
                Ok(Ok(())) => Ready::Failed("the listener stopped".into()),
                Err(e) => Ready::Failed(e.to_string()),
            };
        }
        if tokio::net::TcpStream::connect(target).await.is_ok() {
            return Ready::Yes;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Ready::Timeout
}
