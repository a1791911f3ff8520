//! The dashboard's MQTT connection: one client of the fleet's broker that subscribes to every
//! device topic, folds what arrives into a live [`Fleet`] (the same fold as `pifleet status`),
//! fans each event out to the page's server-sent event streams, and hands command replies to
//! whoever waits for them. It reconnects by itself with backoff, like the legacy relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pifleet_client::mqtt::{describe, Account, Backoff, Security};
use pifleet_client::BrokerUrl;
use pifleet_proto::fleet::{decode, CommandReply, Fleet};
use pifleet_proto::report::{FleetStatus, WatchEvent};
use pifleet_proto::{CommandId, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::Error;

/// What the page's event stream carries besides the snapshot. Nearly every value is a
/// `Watch`, so boxing it to shrink the rare `Link` would cost an allocation per message.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Live {
    /// A device message, decoded.
    Watch(WatchEvent),
    /// The dashboard's own connection to the broker came up (true) or was lost (false).
    Link(bool),
}

#[derive(Default)]
struct Shared {
    fleet: Fleet,
    connected: bool,
    /// Commands in flight: every reply that answers one goes to its sender.
    waiters: HashMap<CommandId, mpsc::UnboundedSender<CommandReply>>,
}

/// The dashboard's view of the fleet and its way to send commands.
#[derive(Clone)]
pub struct Link {
    pub(crate) client: AsyncClient,
    pub topics: Topics,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<Live>,
}

/// How to reach the broker.
#[derive(Clone, Debug)]
pub struct BrokerLogin {
    pub url: BrokerUrl,
    pub security: Security,
    /// A controller's client id (`NAME:<anything>` on a pifleet broker with credentials).
    pub client_id: String,
}

impl Link {
    /// Connects and returns once subscribed to the fleet (or fails within 10 s).
    pub async fn start(login: BrokerLogin, topics: Topics) -> Result<Link, Error> {
        let (client, mut eventloop) = pifleet_client::mqtt::client(
            &login.url,
            &login.client_id,
            &login.security,
            Duration::from_secs(30),
            Duration::from_secs(5),
            |_| {},
        )
        .map_err(|e| Error::Broker(e.to_string()))?;
        let (events, _) = broadcast::channel(4096);
        let link = Link {
            client,
            topics,
            shared: Arc::default(),
            events,
        };
        let filters: Vec<_> = link
            .topics
            .fleet_filters(None)
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce))
            .collect();
        let (ready_tx, ready) = oneshot::channel::<Result<(), String>>();
        let l = link.clone();
        let who = Account::new("controller", &login.security);
        let url = login.url.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        // rumqttc does not restore subscriptions after a reconnect.
                        let _ = l.client.try_subscribe_many(filters.clone());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        l.set_connected(true);
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => l.on_publish(&p.topic, &p.payload),
                    Ok(_) => {}
                    Err(e) => {
                        let why = describe(&e, &url, &who);
                        l.set_connected(false);
                        if pifleet_client::mqtt::is_auth_refusal(&e) {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(Err(why.clone()));
                                return;
                            }
                        }
                        tracing::warn!("dashboard: {why}");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready).await {
            Ok(Ok(Ok(()))) => Ok(link),
            Ok(Ok(Err(why))) => Err(Error::Broker(why)),
            Ok(Err(_)) => Err(Error::Broker("the dashboard's MQTT task stopped".into())),
            Err(_) => Err(Error::Broker(format!(
                "the dashboard could not subscribe at {} within 10 s",
                login.url.authority()
            ))),
        }
    }

    fn set_connected(&self, up: bool) {
        let mut s = self.shared.lock().unwrap();
        if s.connected != up {
            s.connected = up;
            let _ = self.events.send(Live::Link(up));
        }
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let event = match decode(&self.topics, topic, payload) {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("dashboard: {e}");
                return;
            }
        };
        let mut s = self.shared.lock().unwrap();
        s.fleet.apply(&event);
        if let Some(reply) = CommandReply::from_event(&event) {
            match &reply {
                CommandReply::WentOffline { .. } => {
                    for tx in s.waiters.values() {
                        let _ = tx.send(reply.clone());
                    }
                }
                CommandReply::Confirmed { cmd, .. } | CommandReply::Refused { cmd, .. } => {
                    if let Some(tx) = s.waiters.get(cmd) {
                        let _ = tx.send(reply.clone());
                    }
                }
            }
        }
        // Sent under the lock, so a subscriber that took a snapshot sees every later event.
        let _ = self.events.send(Live::Watch(event));
    }

    /// The fleet as `pifleet status --json` prints it.
    pub fn status(&self) -> FleetStatus {
        self.shared.lock().unwrap().fleet.status(&[])
    }

    /// A copy of the fold, for resolving a command's targets.
    pub fn fleet(&self) -> Fleet {
        self.shared.lock().unwrap().fleet.clone()
    }

    pub fn connected(&self) -> bool {
        self.shared.lock().unwrap().connected
    }

    /// The snapshot and the stream of everything after it, atomically.
    pub fn subscribe(&self) -> (FleetStatus, bool, broadcast::Receiver<Live>) {
        let s = self.shared.lock().unwrap();
        (s.fleet.status(&[]), s.connected, self.events.subscribe())
    }

    /// Registers interest in the replies to `id` (before the command is published).
    pub(crate) fn wait_for(&self, id: &CommandId) -> Waiter {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().unwrap().waiters.insert(id.clone(), tx);
        Waiter {
            link: self.clone(),
            id: id.clone(),
            rx,
        }
    }
}

/// Replies to one command; unregisters itself when dropped.
pub(crate) struct Waiter {
    link: Link,
    id: CommandId,
    pub rx: mpsc::UnboundedReceiver<CommandReply>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.link.shared.lock().unwrap().waiters.remove(&self.id);
    }
}
