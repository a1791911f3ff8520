//! The TCP server both shims run: accept, decode frames, ask a [`Handler`] for each reply, and
//! answer in the framing the request came in.
//!
//! Robustness, because anyone on the network can connect:
//! - nothing is written on connect (a tcpcom client reads an early write or close as
//!   "server occupied");
//! - at most `max_clients` sessions; beyond that new connections wait in the kernel's backlog
//!   instead of being accepted and dropped;
//! - a session idle for `idle_timeout` is closed, so stuck clients free their slot;
//! - a frame beyond `max_frame` gets an error reply and a close, never unbounded buffering;
//! - every complete frame gets its reply, including after the client shut its write side;
//! - accept errors (e.g. out of file descriptors) back off instead of spinning.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::codec::{encode, Decoder, FramingMode};
use crate::command::{self, Request, Verb};

/// Answers one parsed request with the reply text. Implemented by the agent (local GPIO) and
/// the broker (commands over MQTT).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = String> + Send + '_>>;
}

/// ServerLimits of one listener.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub framing: FramingMode,
    pub max_frame: usize,
    pub max_clients: usize,
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            framing: FramingMode::Auto,
            max_frame: 64 * 1024,
            max_clients: 256,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Serves `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_clients));
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff = Duration::from_millis(10);
                    c
                }
                Err(e) => {
                    tracing::warn!("legacy listener: accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            tracing::debug!("legacy client {peer} connected");
            if let Err(e) = session(stream, handler.as_ref(), &limits).await {
                tracing::debug!("legacy client {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn session(
    mut stream: TcpStream,
    handler: &dyn Handler,
    limits: &ServerLimits,
) -> std::io::Result<()> {
    let mut decoder = Decoder::new(limits.framing, limits.max_frame);
    // Reads of at most 2048 bytes, like the originals: with the frame bound this caps what one
    // client can make us hold.
    let mut buf = [0u8; 2048];
    loop {
        let n = match tokio::time::timeout(limits.idle_timeout, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()), // idle: close quietly
        };
        if n == 0 {
            // EOF (possibly a half-close after the request): everything complete was answered.
            return Ok(());
        }
        decoder.feed(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // Bounded like every write: a client that never reads cannot hold the slot.
                    let bytes = encode(e.framing(), &e.reply());
                    let _ =
                        tokio::time::timeout(limits.idle_timeout, stream.write_all(&bytes)).await;
                    linger_close(&mut stream).await;
                    return Ok(());
                }
            };
            let (reply, quit) = match command::parse(&frame.text) {
                Some(Request {
                    verb: Verb::Quit, ..
                }) => (command::QUIT.to_string(), true),
                Some(request) => (handler.handle(request).await, false),
                None => (command::UNRECOGNIZED.to_string(), false),
            };
            // A client that never reads must not hold its slot forever.
            let bytes = encode(frame.framing, &reply);
            match tokio::time::timeout(limits.idle_timeout, stream.write_all(&bytes)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            }
            if quit {
                linger_close(&mut stream).await;
                return Ok(());
            }
        }
    }
}

/// Closes a session we end (error or `q`) so that the reply survives: send FIN, then read and
/// discard what the client is still sending for a moment. Dropping a socket with unread input
/// makes the kernel answer with a reset, which can destroy the reply before the client reads it.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 2048];
    let mut budget: usize = 1024 * 1024; // bytes we are willing to swallow
    let drain = async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
