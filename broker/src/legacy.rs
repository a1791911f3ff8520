//! The legacy shim in the broker: old clients connect to the broker (which is reachable) and
//! their `on`/`off` travel over MQTT to a Pi behind NAT. The reply is sent only when the device
//! confirms; an offline device or a missing confirmation gets a reply that says so, never a false
//! `Led ON.`. `go` answers from the device's retained input state.
//!
//! The relay is an ordinary MQTT client of this broker (over loopback), so it sees exactly what
//! any controller sees and obeys the same authorization rules (it logs in as an internal
//! controller identity when the broker has credentials; see `crate::services`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pifleet_client::mqtt::{describe, Backoff};
use pifleet_legacy::command::{button_reply, led_reply};
use pifleet_legacy::{Addressee, Handler, ListenerConfig, Request, Verb};
use pifleet_proto::fleet::{decode, CommandReply, Fleet};
use pifleet_proto::{Action, Command, CommandId, Name, Target, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use tokio::sync::oneshot;

use crate::credentials::Role;
use crate::engine::{BrokerError, Running};

/// How a device answered one command.
#[derive(Debug)]
enum Ack {
    Confirmed(bool),
    Refused(String),
    Offline,
}

#[derive(Default)]
struct Waiting {
    fleet: Fleet,
    waiters: HashMap<(CommandId, Name), oneshot::Sender<Ack>>,
}

/// The broker's MQTT client for all legacy listeners.
#[derive(Clone)]
pub struct Relay {
    client: AsyncClient,
    topics: Topics,
    state: Arc<Mutex<Waiting>>,
}

impl Relay {
    /// Connects to the broker at `mqtt` and returns once subscribed to the fleet's state.
    pub async fn start(running: &Running, topics: Topics) -> Result<Relay, BrokerError> {
        let url = crate::services::loopback_url(running);
        // With authentication on, the relay logs in as an in-process controller identity.
        const NAME: &str = "pifleet-broker-legacy";
        let security = crate::services::login(&running.engine, NAME, Role::Controller, Vec::new());
        let who = pifleet_client::mqtt::Account::new("controller", &security);
        // A controller's client id: its name, `:`, anything (see engine/auth.rs).
        let client_id = format!("{NAME}:{}", CommandId::generate());
        let (client, mut eventloop) = pifleet_client::mqtt::client(
            &url,
            &client_id,
            &security,
            Duration::from_secs(30),
            Duration::from_secs(5),
            |_| {},
        )
        .map_err(|e| BrokerError::Relay(e.to_string()))?;
        let relay = Relay {
            client,
            topics,
            state: Arc::default(),
        };
        let filters: Vec<_> = [
            relay.topics.status_filter(None),
            relay.topics.output_filter(None),
            relay.topics.input_filter(None),
            relay.topics.event_filter(None),
        ]
        .into_iter()
        // QoS 0: the retained state is a snapshot, not something to acknowledge one by one.
        .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce))
        .collect();
        let (ready_tx, ready) = oneshot::channel();
        let r = relay.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        // rumqttc does not restore subscriptions after a reconnect.
                        let _ = r.client.try_subscribe_many(filters.clone());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => r.on_publish(&p.topic, &p.payload),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("legacy relay: {}", describe(&e, &url, &who));
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .map_err(|_| {
                BrokerError::Relay("the legacy relay could not subscribe within 10 s".into())
            })?
            .map_err(|_| BrokerError::Relay("the legacy relay stopped".into()))?;
        Ok(relay)
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let Ok(Some(event)) = decode(&self.topics, topic, payload) else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        state.fleet.apply(&event);
        let (device, cmd, ack) = match CommandReply::from_event(&event) {
            Some(CommandReply::Confirmed {
                device, cmd, state, ..
            }) => (device, cmd, Ack::Confirmed(state.on)),
            Some(CommandReply::Refused {
                device,
                cmd,
                reason,
            }) => (device, cmd, Ack::Refused(reason)),
            Some(CommandReply::WentOffline { device }) => {
                let gone: Vec<_> = state
                    .waiters
                    .keys()
                    .filter(|(_, d)| *d == device)
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(tx) = state.waiters.remove(&key) {
                        let _ = tx.send(Ack::Offline);
                    }
                }
                return;
            }
            None => return,
        };
        if let Some(tx) = state.waiters.remove(&(cmd, device)) {
            let _ = tx.send(ack);
        }
    }

    fn online(&self, device: &Name) -> bool {
        self.state
            .lock()
            .unwrap()
            .fleet
            .get(device)
            .is_some_and(|d| d.online)
    }

    /// Sends one command to `target` and waits for each of `devices` to answer.
    async fn command(
        &self,
        target: Target,
        devices: Vec<Name>,
        output: Option<Name>,
        action: Action,
        timeout: Duration,
    ) -> Vec<(Name, Option<Ack>)> {
        let id = CommandId::generate();
        let mut pending = Vec::new();
        {
            let mut state = self.state.lock().unwrap();
            for d in devices {
                let (tx, rx) = oneshot::channel();
                state.waiters.insert((id.clone(), d.clone()), tx);
                pending.push((d, rx));
            }
        }
        let command = Command {
            id: id.clone(),
            action,
            output,
            value: None,
            on_time: None,
        };
        let payload = serde_json::to_vec(&command).expect("commands serialize");
        // The deadline covers handing the command over too: while the relay is reconnecting
        // its request channel can be full.
        let deadline = tokio::time::Instant::now() + timeout;
        let publish = self.client.publish(
            self.topics.command(&target),
            QoS::AtLeastOnce,
            false,
            payload,
        );
        let sent = match tokio::time::timeout_at(deadline, publish).await {
            Ok(r) => r.map_err(|_| ()),
            Err(_) => Err(()),
        };
        let mut results = Vec::new();
        for (device, rx) in pending {
            let ack = match sent {
                Ok(()) => tokio::time::timeout_at(deadline, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            results.push((device, ack));
        }
        let mut state = self.state.lock().unwrap();
        state.waiters.retain(|(cmd, _), _| *cmd != id);
        results
    }
}

/// One legacy listener's handler: its default device, output and input.
pub struct BrokerShim {
    pub relay: Relay,
    pub device: Name,
    pub output: Option<Name>,
    pub input: Option<Name>,
    pub timeout: Duration,
}

impl BrokerShim {
    fn offline(device: &Name) -> String {
        format!("Device {device} offline.")
    }

    async fn switch_one(&self, device: Name, action: Action) -> String {
        if !self.relay.online(&device) {
            return Self::offline(&device);
        }
        let target = Target::Device(device.clone());
        let mut results = self
            .relay
            .command(
                target,
                vec![device.clone()],
                self.output.clone(),
                action,
                self.timeout,
            )
            .await;
        match results.pop().and_then(|(_, ack)| ack) {
            Some(Ack::Confirmed(on)) => led_reply(on).to_string(),
            Some(Ack::Refused(why)) => format!("Device {device} refused: {why}"),
            Some(Ack::Offline) => Self::offline(&device),
            None => format!("Device {device} did not confirm."),
        }
    }

    async fn switch_all(&self, action: Action) -> String {
        let online: Vec<Name> = {
            let state = self.relay.state.lock().unwrap();
            state.fleet.online().map(|(n, _)| n.clone()).collect()
        };
        if online.is_empty() {
            return "No device online.".to_string();
        }
        let results = self
            .relay
            .command(
                Target::All,
                online,
                self.output.clone(),
                action,
                self.timeout,
            )
            .await;
        let total = results.len();
        let mut confirmed = None;
        let mut failed = Vec::new();
        for (device, ack) in results {
            match ack {
                Some(Ack::Confirmed(on)) => confirmed = Some(on),
                Some(Ack::Refused(_)) => failed.push(format!("{device} refused")),
                Some(Ack::Offline) => failed.push(format!("{device} offline")),
                None => failed.push(format!("{device} did not confirm")),
            }
        }
        match (failed.is_empty(), confirmed) {
            (true, Some(on)) => led_reply(on).to_string(),
            _ => format!(
                "Confirmed by {} of {total} devices; {}.",
                total - failed.len(),
                failed.join(", ")
            ),
        }
    }

    fn button(&self, device: &Name) -> String {
        let state = self.relay.state.lock().unwrap();
        let Some(d) = state.fleet.get(device).filter(|d| d.online) else {
            return Self::offline(device);
        };
        let input = match &self.input {
            Some(i) => d.inputs.get(i.as_str()),
            None => d.inputs.values().next(),
        };
        match input {
            Some(s) => button_reply(s.active).to_string(),
            None => format!("Device {device} has no button."),
        }
    }
}

impl Handler for BrokerShim {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move {
            let action = match request.verb {
                Verb::On => Action::On,
                Verb::Off => Action::Off,
                Verb::Go => {
                    return match &request.who {
                        Addressee::Default => self.button(&self.device),
                        Addressee::Device(d) => self.button(d),
                        Addressee::All => pifleet_legacy::command::UNRECOGNIZED.to_string(),
                    }
                }
                Verb::Quit => unreachable!("the server answers q itself"),
            };
            match request.who {
                Addressee::Default => self.switch_one(self.device.clone(), action).await,
                Addressee::Device(d) => self.switch_one(d, action).await,
                Addressee::All => self.switch_all(action).await,
            }
        })
    }
}

/// Binds every configured legacy listener and serves it in the background. Returns each
/// listener's device and bound address.
pub async fn start(
    listeners: &[ListenerConfig],
    running: &Running,
    topics: Topics,
) -> Result<Vec<(Name, SocketAddr)>, BrokerError> {
    if listeners.is_empty() {
        return Ok(vec![]);
    }
    let relay = Relay::start(running, topics).await?;
    let mut bound = Vec::new();
    for l in listeners {
        let device = l
            .device
            .clone()
            .expect("validated: broker listeners name a device");
        let listener = tokio::net::TcpListener::bind(l.listen)
            .await
            .map_err(|source| BrokerError::Listen {
                what: "legacy",
                addr: l.listen,
                source,
            })?;
        let addr = listener.local_addr().expect("bound");
        let shim = BrokerShim {
            relay: relay.clone(),
            device: device.clone(),
            output: l.output.clone(),
            input: l.input.clone(),
            timeout: Duration::from_millis(l.confirm_timeout_ms),
        };
        tokio::spawn(pifleet_legacy::serve(
            listener,
            Arc::new(shim),
            l.limits(),
            std::future::pending(),
        ));
        bound.push((device, addr));
    }
    Ok(bound)
}
