//! The task that owns rumqttc's event loop. It only polls and forwards: the agent's shell
//! (`run.rs`) publishes through the `AsyncClient`, never from here, so a slow publish can never
//! stop the loop that would drain it. rumqttc retries a failed connection on the very next poll; this task sleeps a
//! jittered, capped exponential backoff between attempts instead of hammering the broker. Every
//! failure takes that path, a refused login (CONNACK 4 or 5) and a failed TLS handshake included.

use std::time::Duration;

use pifleet_client::mqtt::{describe, is_auth_refusal, Account, Backoff};
use pifleet_client::BrokerUrl;
use rumqttc::{Event, EventLoop, Outgoing, Packet, Publish, SubAck};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// How long a connection must have lasted for the backoff to start over. Starting over at the
/// CONNACK would let a broker that accepts and then drops us at once (an ACL it enforces by
/// disconnecting, another agent taking over our client id) turn the backoff into a tight loop.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What the connection reports to the agent's shell, which hands it to the core
/// ([`crate::state::AgentState`]).
#[derive(Debug)]
pub enum NetEvent {
    /// A CONNACK arrived: subscribe and republish everything (rumqttc restores neither).
    Connected,
    /// The connection failed or dropped; the next attempt follows after `retry_in`.
    Disconnected {
        /// One sentence from [`describe`].
        why: String,
        retry_in: Duration,
        /// The broker refused our login: retrying cannot help until someone fixes the
        /// credentials or the ACL, so the agent logs it as an error.
        refused: bool,
    },
    Message(Publish),
    /// The broker's answer to a SUBSCRIBE: one return code per filter, in the order sent.
    SubAck(SubAck),
}

/// Polls until a DISCONNECT we asked for has been sent (or the receiver is gone).
pub async fn drive(
    mut eventloop: EventLoop,
    url: BrokerUrl,
    who: Account,
    mut backoff: Backoff,
    tx: UnboundedSender<NetEvent>,
) {
    let mut connected_at = None;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected_at = Some(Instant::now());
                NetEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => NetEvent::Message(p),
            Ok(Event::Incoming(Packet::SubAck(s))) => NetEvent::SubAck(s),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                let stable = connected_at
                    .take()
                    .is_some_and(|t: Instant| t.elapsed() >= STABLE_AFTER);
                if stable {
                    backoff.reset();
                }
                let retry_in = backoff.next_delay();
                let why = describe(&e, &url, &who);
                let refused = is_auth_refusal(&e);
                let event = NetEvent::Disconnected {
                    why,
                    retry_in,
                    refused,
                };
                if tx.send(event).is_err() {
                    return;
                }
                tokio::time::sleep(retry_in).await;
                continue;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod test {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use pifleet_client::mqtt::{Password, Security};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// A plain MQTT "broker" on 127.0.0.1 that answers every CONNECT with CONNACK `code` and
    /// then either waits for the client to hang up or (`drop_at_once`) closes. Counts accepts.
    async fn broker(code: u8, drop_at_once: bool) -> (BrokerUrl, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    // A CONNECT this small arrives in one segment.
                    if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = socket.write_all(&[0x20, 0x02, 0x00, code]).await;
                    if !drop_at_once {
                        while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
                    }
                });
            }
        });
        (
            format!("mqtt://127.0.0.1:{port}").parse().unwrap(),
            accepted,
        )
    }

    fn start(url: &BrokerUrl, base: Duration) -> mpsc::UnboundedReceiver<NetEvent> {
        let security = Security {
            username: Some("kitchen".into()),
            password: Some(Password::new("wrong")),
            ca_file: None,
        };
        let (client, eventloop) = pifleet_client::mqtt::client(
            url,
            "kitchen",
            &security,
            Duration::from_secs(10),
            Duration::from_secs(2),
            |_| {},
        )
        .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let who = Account::new("device", &security);
        let backoff = Backoff::new(base, Duration::from_secs(60));
        let url = url.clone();
        tokio::spawn(async move {
            // Dropping the client would end rumqttc's request stream, and with it the loop.
            let _client = client;
            drive(eventloop, url, who, backoff, tx).await;
        });
        rx
    }

    #[tokio::test]
    async fn a_refused_login_backs_off_instead_of_hammering() {
        let (url, accepted) = broker(4, false).await;
        let base = Duration::from_millis(40);
        let mut events = start(&url, base);
        let started = Instant::now();
        let mut delays = Vec::new();
        while delays.len() < 5 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(NetEvent::Disconnected {
                    why,
                    retry_in,
                    refused,
                })) => {
                    assert!(refused);
                    assert_eq!(
                        why,
                        format!(
                            "authentication failed for device 'kitchen' at {} \
                             (bad user name or password)",
                            url.authority()
                        )
                    );
                    delays.push(retry_in);
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        // Five attempts took at least the four waits between them: the refusal went through
        // the backoff, not rumqttc's immediate retry.
        let waited: Duration = delays[..4].iter().sum();
        assert!(started.elapsed() >= waited, "{delays:?}");
        assert!(delays.iter().all(|d| *d >= base / 2), "{delays:?}");
        assert!(accepted.load(Ordering::SeqCst) <= 6);
    }

    #[tokio::test]
    async fn a_broker_that_drops_us_at_once_does_not_reset_the_backoff() {
        let (url, _accepted) = broker(0, true).await;
        let base = Duration::from_millis(5);
        let mut events = start(&url, base);
        let mut delays = Vec::new();
        while delays.len() < 7 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(NetEvent::Connected)) => {}
                Ok(Some(NetEvent::Disconnected {
                    retry_in, refused, ..
                })) => {
                    assert!(!refused);
                    delays.push(retry_in);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Reset at every CONNACK, each delay would be at most `base`; growing, the later ones
        // may reach 2^k · base (all four staying under `base` has odds of about 1 in 4 million).
        assert!(delays[3..].iter().any(|d| *d > base), "{delays:?}");
    }
}
