//! The start-up every long-running fleet service shares. The history recorder and Home Assistant
//! discovery each run inside `pifleet-broker` over loopback and alone (`pifleet record`,
//! `pifleet homeassistant`) against any broker, and each is one MQTT connection that must be
//! subscribed by the time its `start` returns, so that nothing published afterwards is missed.
//!
//! [`Connection::run`] spawns the connection task and waits for that moment. The first
//! connection fails fast with the reason, as a [`ConnectError`] the CLI turns into exit 3 or 4;
//! later losses are retried with backoff and logged, because a service must ride out broker
//! restarts. After every CONNACK the task subscribes again (rumqttc does not), so a broker that
//! restarted without its sessions still delivers.
//!
//! What differs between services (what a message becomes, how a later refusal or loss is
//! logged) is theirs, behind [`Handler`]. What arrives goes to them over their bounded channel:
//! when it is full the task stops polling, which makes the broker queue for us within its own
//! limits instead of us buffering without bound.

use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::mqtt::{describe, is_auth_refusal, Account, Backoff, Security, SecurityError};
use crate::BrokerUrl;

const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Allowed on top of the connect timeout for the first connection: the TLS and MQTT handshakes
/// and the subscription, which the TCP connect timeout does not cover.
const HANDSHAKES: Duration = Duration::from_secs(10);

/// Where a service connects and as whom.
pub struct Login {
    pub broker: BrokerUrl,
    /// A controller's client id is `NAME` or `NAME:anything` on a pifleet broker with
    /// credentials (see the broker's `engine/auth.rs`).
    pub client_id: String,
    pub security: Security,
    /// How connection errors name the account: `controller` → "controller 'alice'".
    pub role: &'static str,
    /// Bounds the TCP connect; the first connection must succeed within it (plus 10 s for the
    /// TLS and MQTT handshakes and the subscription).
    pub connect_timeout: Duration,
}

/// Why a service's first connection did not end subscribed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// One sentence naming the broker.
    pub message: String,
    /// The broker refused the login or a subscription: retrying with the same account will not
    /// help (the CLI's exit 4 rather than 3).
    pub auth: bool,
}

/// What a service subscribes to, and how its task names it.
pub struct Subscription {
    /// Begins the task's log lines: `history` → "history: reconnected to …".
    pub name: &'static str,
    /// Whose task it is, for the error when it ends before the service is ready:
    /// `the recorder` → "the recorder's connection task ended".
    pub owner: &'static str,
    pub filters: Vec<SubscribeFilter>,
    /// Ends the sentence naming refused filters, saying which account would be allowed them,
    /// in parentheses.
    pub refused_hint: &'static str,
}

/// The service's side of the connection task. Its methods run on that task, between polls, so
/// they must not block; what needs time belongs to the service's own task or thread, which
/// receives the [`Handler::Item`]s.
pub trait Handler: Send + 'static {
    /// What the task hands over for each message (and, if asked, each connection).
    type Item: Send + 'static;

    /// After every CONNACK, once the subscription is on its way: something to hand over, for a
    /// service that must act on every (re)connection. Nothing by default.
    fn connected(&mut self) -> Option<Self::Item> {
        None
    }

    /// A message on one of the filters, at the moment it arrived.
    fn message(&mut self, publish: Publish) -> Self::Item;

    /// Once running, the broker refused some filters again (after a reconnect); `message` is
    /// the sentence naming them. The service decides how loudly to say so.
    fn refused(&mut self, message: &str);

    /// Once running, the connection was lost (`auth`: the login was refused); it is retried
    /// after a backoff. `message` is one sentence naming the broker.
    fn lost(&mut self, message: &str, auth: bool);
}

/// A service's MQTT client, set up but not connected yet: publish with [`Connection::client`],
/// then [`Connection::run`] it.
pub struct Connection {
    client: AsyncClient,
    eventloop: EventLoop,
    broker: BrokerUrl,
    who: Account,
    connect_timeout: Duration,
}

impl Connection {
    /// Builds the client (TLS, login); nothing is sent until [`Connection::run`].
    pub fn new(login: &Login) -> Result<Connection, SecurityError> {
        let (client, eventloop) = crate::mqtt::client(
            &login.broker,
            &login.client_id,
            &login.security,
            KEEP_ALIVE,
            login.connect_timeout,
            |_| {},
        )?;
        Ok(Connection {
            client,
            eventloop,
            broker: login.broker.clone(),
            who: Account::new(login.role, &login.security),
            connect_timeout: login.connect_timeout,
        })
    }

    /// The client: clone it to publish, and to disconnect, which ends the task.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Spawns the connection task and returns its handle once the broker accepted every filter
    /// of `sub` (the retained messages are then on their way over `tx`). When the first
    /// connection fails, is refused, or does not answer within the connect timeout plus 10 s,
    /// the task has ended (and dropped `tx`) by the time the error is returned, so the service
    /// can wait for its own half to see the channel close. The task ends when the client
    /// disconnects or the service drops its receiver.
    pub async fn run<H: Handler>(
        self,
        sub: Subscription,
        mut handler: H,
        tx: mpsc::Sender<H::Item>,
    ) -> Result<JoinHandle<()>, ConnectError> {
        let Connection {
            client,
            mut eventloop,
            broker,
            who,
            connect_timeout,
        } = self;
        let (ready_tx, ready) = oneshot::channel::<Result<(), ConnectError>>();
        let url = broker.clone();
        let owner = sub.owner;
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if ready.is_none() {
                            tracing::info!("{}: reconnected to {}", sub.name, url.authority());
                        }
                        backoff.reset();
                        let _ = client.try_subscribe_many(sub.filters.clone());
                        if let Some(item) = handler.connected() {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused: Vec<&str> = ack
                            .return_codes
                            .iter()
                            .zip(&sub.filters)
                            .filter(|(c, _)| matches!(c, SubscribeReasonCode::Failure))
                            .map(|(_, f)| f.path.as_str())
                            .collect();
                        let error = (!refused.is_empty()).then(|| {
                            format!(
                                "the broker at {} refused the subscription to {} {}",
                                url.authority(),
                                refused.join(", "),
                                sub.refused_hint
                            )
                        });
                        match (ready.take(), error) {
                            (Some(r), None) => {
                                let _ = r.send(Ok(()));
                            }
                            (Some(r), Some(message)) => {
                                let _ = r.send(Err(ConnectError {
                                    message,
                                    auth: true,
                                }));
                                return;
                            }
                            (None, Some(message)) => handler.refused(&message),
                            (None, None) => {}
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(handler.message(p)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let message = describe(&e, &url, &who);
                        let auth = is_auth_refusal(&e);
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(ConnectError { message, auth }));
                            return;
                        }
                        handler.lost(&message, auth);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });

        let deadline = connect_timeout + HANDSHAKES;
        let failed = match tokio::time::timeout(deadline, ready).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e),
            Ok(Err(_)) => Some(ConnectError {
                message: format!("{owner}'s connection task ended"),
                auth: false,
            }),
            Err(_) => Some(ConnectError {
                message: format!(
                    "no answer from the broker at {} within {} s",
                    broker.authority(),
                    deadline.as_secs()
                ),
                auth: false,
            }),
        };
        match failed {
            None => Ok(task),
            Some(e) => {
                task.abort();
                let _ = task.await;
                Err(e)
            }
        }
    }
}
