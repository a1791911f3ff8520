//! Listeners: plain MQTT, MQTT over WebSocket and MQTT over TLS, each an accept loop that admits
//! a connection, sets TCP_NODELAY and spawns its task; the TLS and WebSocket handshakes run in
//! that task under the connect deadline, so half-open handshakes hold nobody up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::admission::Admitted;
use super::{conn, store, Access, BrokerError, Engine, Running};
use crate::config::{Config, Limits};
use pifleet_proto::Topics;

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Mqtt,
    WebSocket,
    Tls,
}

/// Rebuilds the engine from the state directory (`[state]`), then binds every listener in
/// `config` and starts accepting. Returns once all are bound, so a client may connect as soon
/// as this returns.
pub async fn start(config: &Config) -> Result<Running, BrokerError> {
    let security = Access::load(config)?;
    let topics = Topics::new(&config.prefix).map_err(|e| BrokerError::Setup(e.to_string()))?;
    let state = config.state.clone();
    // Reading and rewriting the state directory is blocking file I/O.
    let opened = tokio::task::spawn_blocking(move || store::open(&state))
        .await
        .map_err(|e| BrokerError::Setup(e.to_string()))??;
    let engine = Engine::with_store(config.limits.clone(), security, topics, opened.store());
    let e = engine.clone();
    tokio::task::spawn_blocking(move || opened.attach(&e))
        .await
        .map_err(|e| BrokerError::Setup(e.to_string()))?;
    start_with(config, engine).await
}

/// [`start`] with an engine built by the caller.
pub async fn start_with(config: &Config, engine: Arc<Engine>) -> Result<Running, BrokerError> {
    tokio::spawn(engine.clone().sweep_keep_alives());
    if engine.access().files.is_some() {
        tokio::spawn(engine.clone().watch_access_files());
    }
    let mqtt = listen(&engine, "mqtt", config.mqtt.listen, Kind::Mqtt).await?;
    let websocket = match config.websocket.enabled {
        true => Some(
            listen(
                &engine,
                "websocket",
                config.websocket.listen,
                Kind::WebSocket,
            )
            .await?,
        ),
        false => None,
    };
    let mqtts = match (config.tls.enabled, &engine.access().tls) {
        (true, Some(_)) => Some(listen(&engine, "mqtts", config.tls.listen, Kind::Tls).await?),
        _ => None,
    };
    Ok(Running {
        mqtt,
        websocket,
        mqtts,
        engine,
    })
}

async fn listen(
    engine: &Arc<Engine>,
    what: &'static str,
    addr: SocketAddr,
    kind: Kind,
) -> Result<SocketAddr, BrokerError> {
    let err = |source| BrokerError::Listen { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    tokio::spawn(accept_loop(engine.clone(), listener, kind));
    Ok(bound)
}

async fn accept_loop(engine: Arc<Engine>, listener: TcpListener, kind: Kind) {
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and similar: pause rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admitted) = engine.admit(peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "connection limit reached: closing new connections");
            }
            continue;
        };
        // Without it a PUBLISH queued behind an unacknowledged packet waits for the peer's
        // delayed ACK (40 ms on Linux) — every command confirmation would.
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(engine.clone(), stream, peer, kind, admitted));
    }
}

pub(super) async fn handle(
    engine: Arc<Engine>,
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    _admitted: Admitted,
) {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(engine.limits.connect_timeout_ms);
    match kind {
        Kind::Mqtt => {
            let (r, w) = stream.split();
            conn::serve(&engine, r, w, peer, deadline).await
        }
        // Boxed: their handshake state would otherwise enlarge every plain connection too.
        Kind::Tls => Box::pin(serve_tls(&engine, stream, peer, deadline)).await,
        Kind::WebSocket => Box::pin(serve_websocket(&engine, stream, peer, deadline)).await,
    }
}

async fn serve_tls(
    engine: &Arc<Engine>,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) {
    let config = engine
        .access()
        .tls
        .clone()
        .expect("tls listener has a config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // Each handshake runs in its own task and under the connect deadline, so half-open
    // handshakes neither block other accepts nor hold a slot for long.
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (r, w) = tokio::io::split(tls);
            conn::serve(engine, r, w, peer, deadline).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_websocket(
    engine: &Arc<Engine>,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) {
    let ws = async_tungstenite::tokio::accept_hdr_async_with_config(
        stream,
        MqttSubprotocol,
        Some(websocket_config(&engine.limits)),
    );
    match tokio::time::timeout_at(deadline, ws).await {
        Ok(Ok(ws)) => {
            let (r, w) = tokio::io::split(ws_stream_tungstenite::WsStream::new(ws));
            conn::serve(engine, r, w, peer, deadline).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, "WebSocket handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
    }
}

/// tungstenite's defaults (16 MiB frames, 64 MiB messages, 128 KiB read buffer allocated up
/// front) would let a client that never sends CONNECT make the broker buffer megabytes: an
/// announced frame is read whole before any MQTT parsing starts. An MQTT packet is at most
/// `max_packet_size` plus its fixed header (a type byte and up to 4 length bytes), and clients
/// send one packet per message, so a larger frame or message closes the connection as soon as
/// its header says so.
fn websocket_config(limits: &Limits) -> async_tungstenite::tungstenite::protocol::WebSocketConfig {
    let max = limits.max_packet_size + 5;
    async_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(max))
        .max_message_size(Some(max))
        // Grows while a client streams; small for the many that are idle.
        .read_buffer_size(4 * 1024)
        // The connection flushes whenever its own write buffer drains: no second buffer here.
        .write_buffer_size(0)
}

/// Answers the WebSocket handshake with the `mqtt` subprotocol, which MQTT clients require.
struct MqttSubprotocol;

impl async_tungstenite::tungstenite::handshake::server::Callback for MqttSubprotocol {
    fn on_request(
        self,
        _request: &async_tungstenite::tungstenite::handshake::server::Request,
        mut response: async_tungstenite::tungstenite::handshake::server::Response,
    ) -> Result<
        async_tungstenite::tungstenite::handshake::server::Response,
        async_tungstenite::tungstenite::handshake::server::ErrorResponse,
    > {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            async_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::config::Limits;

    /// A connection's whole state lives in its task's future; it is what ten thousand idle
    /// devices cost. Guard its size so an innocent-looking change cannot double it.
    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let engine = Engine::new(Limits::default(), Access::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let admitted = engine.admit(peer.ip()).unwrap();
        let fut = handle(engine.clone(), stream, peer, Kind::Mqtt, admitted);
        let size = std::mem::size_of_val(&fut);
        println!("connection future: {size} bytes");
        assert!(size <= 2048, "connection future grew to {size} bytes");
    }
}
