//! The agent core: one task that owns the GPIO, the sensors' latest readings and the MQTT client,
//! and reacts to four sources: the broker (commands), input edges, sensor readings, and local
//! requests through an [`AgentHandle`] (the simulator console, the legacy shim, tests).
//!
//! Owning everything in one task means no locks around pins and a single order of events: a
//! command's GPIO write, its state-file write and its acknowledgement happen in that order.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use pifleet_client::mqtt::{Account, Backoff, Security};
use pifleet_proto::payload::{
    EventKind, InputState, OutputState, Presence, PresenceState, SensorReading, StateSource,
};
use pifleet_proto::time::now_ms;
use pifleet_proto::{Action, Command, CommandId, Event, Name, Target, Topic, Topics};
use rumqttc::{
    AsyncClient, ClientError, LastWill, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::config::{Config, ConfigError, Initial};
use crate::connection::{self, NetEvent};
use crate::gpio::{sim::SimBoard, Backend, Button, GpioError, Switch};
use crate::sensor::{self, Sensor};
use crate::state_file;

/// Fatal agent errors: the ones that stop it before it can serve anything.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Gpio(#[from] GpioError),
    /// The login or TLS settings cannot be used (unreadable password or CA file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the agent has stopped")]
    Stopped,
    #[error("cannot listen for legacy clients on {addr}: {source}")]
    Legacy {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Answers to local requests that the agent refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no output named {0:?}")]
    UnknownOutput(String),
    #[error("this device has no outputs")]
    NoOutputs,
    #[error("no input named {0:?}")]
    UnknownInput(String),
    #[error("this device has no inputs")]
    NoInputs,
    #[error("inputs can only be driven on the simulated GPIO backend")]
    NotSimulated,
    #[error("{0}")]
    Gpio(String),
    #[error("the agent has stopped")]
    Stopped,
}

/// A point-in-time view of the pins, for the simulator console's `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub outputs: Vec<(Name, bool)>,
    pub inputs: Vec<(Name, bool)>,
    pub connected: bool,
}

enum Request {
    Switch {
        output: Option<Name>,
        action: Action,
        source: StateSource,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
    ReadInput {
        input: Option<Name>,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
    DriveInput {
        input: Name,
        active: bool,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
}

/// A cloneable way to talk to a running agent from other tasks.
#[derive(Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Request>,
}

impl AgentHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Switches an output (`None`: the first one) and returns its new state once the pin is set
    /// and the new state is queued for publishing.
    pub async fn switch(
        &self,
        output: Option<Name>,
        action: Action,
        source: StateSource,
    ) -> Result<bool, RequestError> {
        self.ask(|reply| Request::Switch {
            output,
            action,
            source,
            reply,
        })
        .await
        .unwrap_or(Err(RequestError::Stopped))
    }

    /// Reads an input (`None`: the first one): true when active (pressed).
    pub async fn read_input(&self, input: Option<Name>) -> Result<bool, RequestError> {
        self.ask(|reply| Request::ReadInput { input, reply })
            .await
            .unwrap_or(Err(RequestError::Stopped))
    }

    /// Presses (`true`) or releases a simulated input.
    pub async fn drive_input(&self, input: Name, active: bool) -> Result<(), RequestError> {
        self.ask(|reply| Request::DriveInput {
            input,
            active,
            reply,
        })
        .await
        .unwrap_or(Err(RequestError::Stopped))
    }

    pub async fn snapshot(&self) -> Option<Snapshot> {
        self.ask(|reply| Request::Snapshot { reply }).await
    }
}

struct OutputSlot {
    name: Name,
    restore: bool,
    switch: Switch,
    state: OutputState,
}

struct InputSlot {
    name: Name,
    pin: u8,
    active_low: bool,
    button: Button,
    state: InputState,
}

struct SensorSlot {
    name: Name,
    interval: Duration,
    sensor: Option<Box<dyn Sensor>>,
    last: Option<SensorReading>,
    failing: Option<String>,
}

/// A message waiting for room in rumqttc's request channel.
struct Pending {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
}

/// How many unsent messages are kept while the broker is away or slow; the oldest go first.
/// Retained state is not counted on: it is republished in full after every reconnect.
const OUTBOX_LIMIT: usize = 1024;

/// How many recent command ids are remembered to ignore QoS 1 redeliveries (a duplicated
/// `toggle` must not toggle twice).
const RECENT_COMMANDS: usize = 64;

pub struct Agent {
    config: Config,
    topics: Topics,
    backend: &'static str,
    outputs: Vec<OutputSlot>,
    inputs: Vec<InputSlot>,
    sensors: Vec<SensorSlot>,
    sim: Option<SimBoard>,
    edges: mpsc::UnboundedReceiver<(usize, bool)>,
    requests: mpsc::Receiver<Request>,
    started_at: u64,
    /// Resolved once in [`Agent::new`], so a bad password or CA file stops the agent before it
    /// touches a pin.
    security: Security,
    state_path: Option<PathBuf>,
    recent: VecDeque<CommandId>,
    /// Command topics on which a retained command arrived (and was ignored), so that the
    /// warning is logged once per topic rather than at every reconnect.
    ghosts: HashSet<String>,
    outbox: VecDeque<Pending>,
    /// The filters of the SUBSCRIBE sent after the last CONNACK, until its SUBACK arrives.
    subscribing: Option<Vec<String>>,
    connected: bool,
    /// A handle on ourselves, for the legacy shim.
    handle: AgentHandle,
}

impl Agent {
    /// Reads the login and TLS files, claims every configured pin (outputs first, at their
    /// initial level) and prepares sensors. Nothing touches the network until [`Agent::run`].
    pub fn new(
        config: Config,
        backend: &mut dyn Backend,
        sim: Option<SimBoard>,
    ) -> Result<(Agent, AgentHandle), AgentError> {
        let security = config.security()?;
        let topics = config.topics();
        let now = now_ms();
        // Reported once connected; the agent starts anyway, with the configured defaults.
        let mut startup_problem = None;

        let needs_state = config.outputs.iter().any(|o| o.initial == Initial::Restore);
        let state_path = needs_state.then(|| config.state_file_path());
        let saved = match &state_path {
            Some(p) => state_file::load(p).unwrap_or_else(|e| {
                startup_problem = Some(e.to_string());
                Default::default()
            }),
            None => Default::default(),
        };

        let mut outputs = Vec::new();
        for o in &config.outputs {
            let (on, source) = match o.initial {
                Initial::Off => (false, StateSource::Initial),
                Initial::On => (true, StateSource::Initial),
                Initial::Restore => match saved.get(o.name.as_str()) {
                    Some(&on) => (on, StateSource::Restore),
                    None => (false, StateSource::Initial),
                },
            };
            let switch = Switch::new(backend, o.pin, o.active_low, on)?;
            tracing::info!(
                "output {} on BCM {} starts {} ({:?})",
                o.name,
                o.pin,
                if on { "on" } else { "off" },
                source
            );
            outputs.push(OutputSlot {
                name: o.name.clone(),
                restore: o.initial == Initial::Restore,
                switch,
                state: OutputState {
                    on,
                    cmd: None,
                    source,
                    ts: now,
                },
            });
        }

        let (edge_tx, edges) = mpsc::unbounded_channel();
        let mut inputs = Vec::new();
        for (index, i) in config.inputs.iter().enumerate() {
            let tx = edge_tx.clone();
            let button = Button::new(
                backend,
                i.pin,
                i.pull,
                i.active_low,
                Duration::from_millis(i.debounce_ms),
                move |active| {
                    let _ = tx.send((index, active));
                },
            )?;
            let active = button.is_active();
            inputs.push(InputSlot {
                name: i.name.clone(),
                pin: i.pin,
                active_low: i.active_low,
                button,
                state: InputState { active, ts: now },
            });
        }

        let sensors = config
            .sensors
            .iter()
            .map(|s| SensorSlot {
                name: s.name.clone(),
                interval: Duration::from_secs_f64(s.interval_secs),
                sensor: Some(sensor::open(s)),
                last: None,
                failing: None,
            })
            .collect();

        let (tx, requests) = mpsc::channel(64);
        let handle = AgentHandle { tx };
        let mut agent = Agent {
            handle: handle.clone(),
            backend: backend.name(),
            topics,
            outputs,
            inputs,
            sensors,
            sim,
            edges,
            requests,
            started_at: now,
            security,
            state_path,
            recent: VecDeque::new(),
            ghosts: HashSet::new(),
            outbox: VecDeque::new(),
            subscribing: None,
            connected: false,
            config,
        };
        if let Some(message) = startup_problem {
            let p = agent.event_pending(EventKind::StateFileError, message, None);
            agent.outbox.push_back(p);
        }
        Ok((agent, handle))
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend
    }

    fn presence(&self, state: PresenceState) -> Presence {
        Presence {
            state,
            version: Some(pifleet_proto::VERSION.to_string()),
            groups: self.config.groups.clone(),
            outputs: self.outputs.iter().map(|o| o.name.clone()).collect(),
            inputs: self.inputs.iter().map(|i| i.name.clone()).collect(),
            sensors: self.sensors.iter().map(|s| s.name.clone()).collect(),
            started_at: Some(self.started_at),
            ts: Some(now_ms()),
        }
    }

    /// Connects and serves until `shutdown` resolves, then says goodbye: offline presence, a
    /// clean DISCONNECT (so the broker discards the last will), outputs left as they are.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let device = self.config.device.clone();
        let url = self.config.broker.clone();
        let will = serde_json::to_vec(&Presence::will()).expect("serializable");
        let status_topic = self.topics.status(&device);
        // The client id stays the device name whatever the user name: a pifleet broker with
        // authentication requires a device's client id to equal its name.
        let (client, eventloop) = pifleet_client::mqtt::client(
            &url,
            device.as_str(),
            &self.security,
            Duration::from_secs(self.config.keep_alive_secs),
            Duration::from_secs(5),
            |o| {
                o.set_last_will(LastWill::new(
                    status_topic.clone(),
                    will,
                    QoS::AtLeastOnce,
                    true,
                ));
            },
        )
        .map_err(|e| AgentError::Config(ConfigError::Invalid(e.to_string())))?;
        let legacy = match self.config.legacy.clone() {
            Some(l) => {
                let (handle, device) = (self.handle.clone(), self.config.device.clone());
                Some(start_legacy(l, handle, device).await?)
            }
            None => None,
        };
        let backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs_f64(self.config.reconnect_max_secs),
        );
        let who = Account::new("device", &self.security);
        let (net_tx, mut net) = mpsc::unbounded_channel();
        let mut conn = tokio::spawn(connection::drive(
            eventloop,
            url.clone(),
            who,
            backoff,
            net_tx,
        ));

        let (reading_tx, mut readings) = mpsc::channel(16);
        let mut sensor_tasks = JoinSet::new();
        for (index, slot) in self.sensors.iter_mut().enumerate() {
            let sensor = slot.sensor.take().expect("sensors start once");
            sensor_tasks.spawn(sensor::poll(
                index,
                sensor,
                slot.interval,
                reading_tx.clone(),
            ));
        }
        drop(reading_tx);

        let login = match self.security.user() {
            Some(user) => format!(" as user {user:?}"),
            None => String::new(),
        };
        tracing::info!(
            "device {device} connecting to {url}{login} (GPIO backend: {})",
            self.backend
        );
        tokio::pin!(shutdown);
        let mut retry = tokio::time::interval(Duration::from_millis(50));
        let heartbeat_every = Duration::from_secs(self.config.heartbeat_secs);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                ev = net.recv() => match ev {
                    Some(NetEvent::Connected) => self.on_connected(&client),
                    Some(NetEvent::Disconnected { why, retry_in, refused }) => {
                        if refused {
                            // Retrying cannot fix credentials; the backoff keeps it from
                            // hammering the broker meanwhile.
                            tracing::error!("{why}; retrying in {:.1}s", retry_in.as_secs_f64());
                        } else if self.connected {
                            tracing::warn!("{why}; reconnecting");
                        } else {
                            tracing::warn!("{why}; retrying in {:.1}s", retry_in.as_secs_f64());
                        }
                        self.connected = false;
                    }
                    Some(NetEvent::Message(p)) => self.on_message(&client, p).await,
                    Some(NetEvent::SubAck(ack)) => self.on_suback(&client, &ack.return_codes),
                    None => break,
                },
                Some((index, active)) = self.edges.recv() => self.on_edge(&client, index, active),
                Some(req) = self.requests.recv() => self.on_request(&client, req).await,
                Some((index, result)) = readings.recv() => self.on_reading(&client, index, result),
                _ = retry.tick(), if !self.outbox.is_empty() && self.connected => self.flush(&client),
                _ = heartbeat.tick(), if self.connected => self.announce(&client),
            }
        }

        sensor_tasks.abort_all();
        if let Some(l) = legacy {
            l.abort();
        }
        if self.connected {
            let goodbye = serde_json::to_vec(&self.presence(PresenceState::Offline)).expect("json");
            let status = self.topics.status(&device);
            let bye = async {
                let _ = client
                    .publish(status, QoS::AtLeastOnce, true, goodbye)
                    .await;
                let _ = client.disconnect().await;
                let _ = (&mut conn).await;
            };
            if tokio::time::timeout(Duration::from_secs(3), bye)
                .await
                .is_err()
            {
                tracing::warn!("the broker did not take the goodbye in time");
            }
        }
        conn.abort();
        tracing::info!("device {device} stopped");
        Ok(())
    }

    /// After every CONNACK: subscribe again and republish everything, because rumqttc restores
    /// neither subscriptions nor state, and a broker restart forgets retained messages it kept
    /// only in memory.
    fn on_connected(&mut self, client: &AsyncClient) {
        self.connected = true;
        tracing::info!("connected to {}", self.config.broker);
        let paths: Vec<String> = self
            .topics
            .agent_subscriptions(&self.config.device, &self.config.groups)
            .into_iter()
            .chain([self.topics.status(&self.config.device)])
            .collect();
        let filters: Vec<_> = paths
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
            .collect();
        // Retained messages queued from before are superseded by the full republish below.
        self.outbox.retain(|p| !p.retain);
        let mut fresh = VecDeque::new();
        let presence = self.presence(PresenceState::Online);
        fresh.push_back(self.pending_json(
            self.topics.status(&self.config.device),
            &presence,
            QoS::AtLeastOnce,
            true,
        ));
        for o in &self.outputs {
            fresh.push_back(self.pending_json(
                self.topics.output(&self.config.device, &o.name),
                &o.state,
                QoS::AtLeastOnce,
                true,
            ));
        }
        for i in &self.inputs {
            fresh.push_back(self.pending_json(
                self.topics.input(&self.config.device, &i.name),
                &i.state,
                QoS::AtLeastOnce,
                true,
            ));
        }
        for s in &self.sensors {
            if let Some(r) = &s.last {
                fresh.push_back(self.pending_json(
                    self.topics.sensor(&self.config.device, &s.name),
                    r,
                    QoS::AtMostOnce,
                    true,
                ));
            }
        }
        // A SUBSCRIBE still unanswered from an earlier connection is answered never: its
        // connection is gone. This connection's SUBACK is matched against these filters.
        self.subscribing = match client.try_subscribe_many(filters) {
            Ok(()) => Some(paths),
            Err(e) => {
                tracing::warn!("cannot queue the subscription: {e}");
                None
            }
        };
        // Subscribe first, then announce: whoever sees us online can already reach us.
        fresh.append(&mut self.outbox);
        self.outbox = fresh;
        self.flush(client);
    }

    fn pending_json<T: serde::Serialize>(
        &self,
        topic: String,
        value: &T,
        qos: QoS,
        retain: bool,
    ) -> Pending {
        Pending {
            topic,
            payload: serde_json::to_vec(value).expect("payloads serialize"),
            qos,
            retain,
        }
    }

    /// Queues a message. While disconnected retained state is not queued (it is republished on
    /// connect); events are kept, up to [`OUTBOX_LIMIT`].
    fn send(&mut self, client: &AsyncClient, p: Pending) {
        if !self.connected && p.retain {
            return;
        }
        if self.outbox.len() >= OUTBOX_LIMIT {
            let dropped = self.outbox.pop_front();
            tracing::warn!(
                "outbox full: dropped a message for {}",
                dropped.map(|d| d.topic).unwrap_or_default()
            );
        }
        self.outbox.push_back(p);
        self.flush(client);
    }

    /// Hands queued messages to rumqttc without ever waiting on it.
    fn flush(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        while let Some(p) = self.outbox.pop_front() {
            match client.try_publish(p.topic, p.qos, p.retain, p.payload) {
                Ok(()) => {}
                Err(ClientError::TryRequest(rumqttc::Request::Publish(back))) => {
                    self.outbox.push_front(Pending {
                        topic: back.topic,
                        payload: back.payload.to_vec(),
                        qos: back.qos,
                        retain: back.retain,
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!("cannot publish: {e}");
                }
            }
        }
    }

    fn event(
        &mut self,
        client: &AsyncClient,
        kind: EventKind,
        message: String,
        cmd: Option<CommandId>,
    ) {
        let p = self.event_pending(kind, message, cmd);
        self.send(client, p);
    }

    /// An event for `<prefix>/dev/<device>/event`, logged as it is created.
    fn event_pending(&self, kind: EventKind, message: String, cmd: Option<CommandId>) -> Pending {
        tracing::warn!("{message}");
        self.event_json(Event {
            kind,
            message,
            cmd,
            filter: None,
            ts: now_ms(),
        })
    }

    fn event_json(&self, event: Event) -> Pending {
        self.pending_json(
            self.topics.event(&self.config.device),
            &event,
            QoS::AtLeastOnce,
            false,
        )
    }

    /// Maps the SUBACK's return codes to the filters subscribed after the last CONNACK and
    /// reports each refused one: an error in the log and a `subscription_refused` event, since
    /// commands to it will never arrive (a controller's `on --group G` would only time out).
    fn on_suback(&mut self, client: &AsyncClient, codes: &[SubscribeReasonCode]) {
        let Some(filters) = self.subscribing.take() else {
            tracing::debug!("SUBACK for no subscription of ours: ignored");
            return;
        };
        let refused = match refused_filters(&filters, codes) {
            Ok(refused) => refused,
            Err(()) => {
                tracing::warn!(
                    "the broker answered {} subscription filters with {} return codes; \
                     cannot tell which it refused",
                    filters.len(),
                    codes.len()
                );
                return;
            }
        };
        for filter in refused {
            let message = refusal_sentence(&self.topics, &self.config.device, filter);
            tracing::error!("{message}");
            let p = self.event_json(Event {
                kind: EventKind::SubscriptionRefused,
                message,
                cmd: None,
                filter: Some(filter.to_string()),
                ts: now_ms(),
            });
            self.send(client, p);
        }
    }

    async fn on_message(&mut self, client: &AsyncClient, p: Publish) {
        match self.topics.parse(&p.topic) {
            Some(Topic::Command(_)) => {}
            Some(Topic::Status { device }) if device == self.config.device => {
                self.on_own_status(client, &p.payload);
                return;
            }
            _ => return,
        }
        if p.retain {
            self.ignore_retained_command(&p.topic);
            return;
        }
        let cmd: Command = match serde_json::from_slice(&p.payload) {
            Ok(c) => c,
            Err(e) => {
                // Still name the command when the id is readable, so the sender stops waiting.
                let id = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    .ok()
                    .and_then(|v| v.get("id")?.as_str().map(|s| CommandId(s.to_string())));
                let shown =
                    String::from_utf8_lossy(&p.payload[..p.payload.len().min(200)]).into_owned();
                self.event(
                    client,
                    EventKind::BadCommand,
                    format!("refused command on {}: {e}: {shown:?}", p.topic),
                    id,
                );
                return;
            }
        };
        if !cmd.id.is_valid() {
            self.event(
                client,
                EventKind::BadCommand,
                format!(
                    "refused command on {}: the id must be 1 to 64 characters",
                    p.topic
                ),
                None,
            );
            return;
        }
        if self.recent.contains(&cmd.id) {
            tracing::debug!("ignoring redelivered command {}", cmd.id);
            return;
        }
        if self.recent.len() == RECENT_COMMANDS {
            self.recent.pop_front();
        }
        self.recent.push_back(cmd.id.clone());
        if let Err(e) = self
            .switch(
                client,
                cmd.output.clone(),
                cmd.action,
                StateSource::Command,
                Some(cmd.id.clone()),
            )
            .await
        {
            let kind = match e {
                RequestError::Gpio(_) => EventKind::GpioError,
                _ => EventKind::UnknownOutput,
            };
            self.event(
                client,
                kind,
                format!("refused command {}: {e}", cmd.id),
                Some(cmd.id),
            );
        }
    }

    /// A command that arrives with the RETAIN flag is one the broker stored and replays at
    /// every subscription, i.e. at every reconnect: executing it would switch the output each
    /// time the network blinks ("ghost switching"). It is dropped without an event (the sender,
    /// if any, is long gone, and an event per reconnect would be noise) and logged once.
    fn ignore_retained_command(&mut self, topic: &str) {
        if self.ghosts.insert(topic.to_string()) {
            tracing::warn!(
                "ignoring a retained command on {topic}: commands must never be retained (the \
                 broker replays a retained one at every reconnect); remove it by publishing an \
                 empty retained message to {topic}"
            );
        }
    }

    /// The agent watches its own presence because a broker may publish its last will while it
    /// is connected: some brokers (rumqttd 0.20) fire the *new* connection's will when a
    /// reconnect takes over a half-dead old one (e.g. after a network partition), and any broker
    /// fires the old connection's will around the takeover. Seeing ourselves "offline" while
    /// connected, we say "online" again. The retained offline of a previous run, delivered at
    /// subscribe time, is corrected the same way.
    fn on_own_status(&mut self, client: &AsyncClient, payload: &[u8]) {
        let offline = serde_json::from_slice::<Presence>(payload).is_ok_and(|p| !p.is_online());
        if offline && self.connected {
            tracing::info!(
                "the broker lists this device offline while it is connected; re-announcing"
            );
            self.announce(client);
        }
    }

    /// Publishes presence `online` (retained) with a fresh timestamp.
    fn announce(&mut self, client: &AsyncClient) {
        let presence = self.presence(PresenceState::Online);
        let p = self.pending_json(
            self.topics.status(&self.config.device),
            &presence,
            QoS::AtLeastOnce,
            true,
        );
        self.send(client, p);
    }

    fn output_index(&self, output: Option<&Name>) -> Result<usize, RequestError> {
        match output {
            None if self.outputs.is_empty() => Err(RequestError::NoOutputs),
            None => Ok(0),
            Some(n) => self
                .outputs
                .iter()
                .position(|o| &o.name == n)
                .ok_or_else(|| RequestError::UnknownOutput(n.to_string())),
        }
    }

    fn input_index(&self, input: Option<&Name>) -> Result<usize, RequestError> {
        match input {
            None if self.inputs.is_empty() => Err(RequestError::NoInputs),
            None => Ok(0),
            Some(n) => self
                .inputs
                .iter()
                .position(|i| &i.name == n)
                .ok_or_else(|| RequestError::UnknownInput(n.to_string())),
        }
    }

    /// Sets the pin, persists restorable outputs, then publishes the state that acknowledges
    /// `cmd`. Every accepted command is acknowledged, including one that changes nothing.
    async fn switch(
        &mut self,
        client: &AsyncClient,
        output: Option<Name>,
        action: Action,
        source: StateSource,
        cmd: Option<CommandId>,
    ) -> Result<bool, RequestError> {
        let index = self.output_index(output.as_ref())?;
        let slot = &mut self.outputs[index];
        let on = action.apply(slot.switch.is_on());
        slot.switch
            .set(on)
            .map_err(|e| RequestError::Gpio(e.to_string()))?;
        if on != slot.state.on {
            tracing::info!("output {} -> {}", slot.name, if on { "on" } else { "off" });
        }
        slot.state = OutputState {
            on,
            cmd,
            source,
            ts: now_ms(),
        };
        let restore = slot.restore;
        let topic = self.topics.output(&self.config.device, &slot.name);
        let state = slot.state.clone();
        if restore {
            self.persist(client).await;
        }
        let p = self.pending_json(topic, &state, QoS::AtLeastOnce, true);
        self.send(client, p);
        Ok(on)
    }

    async fn persist(&mut self, client: &AsyncClient) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let saved: state_file::Saved = self
            .outputs
            .iter()
            .filter(|o| o.restore)
            .map(|o| (o.name.to_string(), o.state.on))
            .collect();
        let result = tokio::task::spawn_blocking(move || state_file::save(&path, &saved)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.event(client, EventKind::StateFileError, e.to_string(), None),
            Err(e) => self.event(client, EventKind::StateFileError, e.to_string(), None),
        }
    }

    fn on_edge(&mut self, client: &AsyncClient, index: usize, active: bool) {
        let Some(slot) = self.inputs.get_mut(index) else {
            return;
        };
        if slot.state.active == active {
            return;
        }
        slot.state = InputState {
            active,
            ts: now_ms(),
        };
        tracing::info!(
            "input {} {}",
            slot.name,
            if active { "pressed" } else { "released" }
        );
        let topic = self.topics.input(&self.config.device, &slot.name);
        let state = slot.state.clone();
        let p = self.pending_json(topic, &state, QoS::AtLeastOnce, true);
        self.send(client, p);
    }

    fn on_reading(&mut self, client: &AsyncClient, index: usize, result: sensor::ReadResult) {
        let device = self.config.device.clone();
        let Some(slot) = self.sensors.get_mut(index) else {
            return;
        };
        match result {
            Ok((reading, kind)) => {
                let recovered = slot.failing.take().is_some();
                let reading = SensorReading {
                    value: reading.value,
                    unit: reading.unit.to_string(),
                    kind: Some(kind.to_string()),
                    ts: now_ms(),
                };
                slot.last = Some(reading.clone());
                let name = slot.name.clone();
                if recovered {
                    self.event(
                        client,
                        EventKind::SensorRecovered,
                        format!("sensor {name} can be read again"),
                        None,
                    );
                }
                let p = self.pending_json(
                    self.topics.sensor(&device, &name),
                    &reading,
                    QoS::AtMostOnce,
                    true,
                );
                self.send(client, p);
            }
            Err(why) => {
                // Report a failure once, and again only when the reason changes: a missing
                // probe must not flood the fleet with one event per interval.
                if slot.failing.as_deref() != Some(why.as_str()) {
                    slot.failing = Some(why.clone());
                    let name = slot.name.clone();
                    self.event(
                        client,
                        EventKind::SensorError,
                        format!("sensor {name}: {why}"),
                        None,
                    );
                }
            }
        }
    }

    async fn on_request(&mut self, client: &AsyncClient, req: Request) {
        match req {
            Request::Switch {
                output,
                action,
                source,
                reply,
            } => {
                let result = self.switch(client, output, action, source, None).await;
                let _ = reply.send(result);
            }
            Request::ReadInput { input, reply } => {
                let result = self
                    .input_index(input.as_ref())
                    .map(|i| self.inputs[i].button.is_active());
                let _ = reply.send(result);
            }
            Request::DriveInput {
                input,
                active,
                reply,
            } => {
                let result = match (&self.sim, self.input_index(Some(&input))) {
                    (None, _) => Err(RequestError::NotSimulated),
                    (_, Err(e)) => Err(e),
                    (Some(board), Ok(i)) => {
                        let slot = &self.inputs[i];
                        board
                            .drive_input(slot.pin, active != slot.active_low)
                            .map_err(|e| RequestError::Gpio(e.to_string()))
                    }
                };
                let _ = reply.send(result);
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(Snapshot {
                    outputs: self
                        .outputs
                        .iter()
                        .map(|o| (o.name.clone(), o.state.on))
                        .collect(),
                    inputs: self
                        .inputs
                        .iter()
                        .map(|i| (i.name.clone(), i.button.is_active()))
                        .collect(),
                    connected: self.connected,
                });
            }
        }
    }
}

/// The filters a SUBACK refused: its return codes answer the SUBSCRIBE's filters one by one,
/// in order (MQTT 3.1.1, 3.9.3). `Err` when the counts differ, i.e. the SUBACK cannot be for
/// that SUBSCRIBE.
fn refused_filters<'a>(
    filters: &'a [String],
    codes: &[SubscribeReasonCode],
) -> Result<Vec<&'a str>, ()> {
    if filters.len() != codes.len() {
        return Err(());
    }
    Ok(filters
        .iter()
        .zip(codes)
        .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
        .map(|(f, _)| f.as_str())
        .collect())
}

/// One sentence on a refused subscription, naming the group when it is a group's commands
/// (the usual cause: the device's credentials list other groups than its config).
fn refusal_sentence(topics: &Topics, device: &Name, filter: &str) -> String {
    match topics.parse(filter) {
        Some(Topic::Command(Target::Group(group))) => format!(
            "broker refused subscription to group '{group}' ({filter}): check the device's \
             groups in the broker's credentials"
        ),
        _ => format!(
            "broker refused subscription to {filter}: check what the broker allows device \
             '{device}'"
        ),
    }
}

/// Binds the legacy listener (a bind failure is fatal: the user asked for that port) and
/// serves it in the background.
async fn start_legacy(
    l: pifleet_legacy::ListenerConfig,
    handle: AgentHandle,
    device: Name,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(l.listen)
        .await
        .map_err(|source| AgentError::Legacy {
            addr: l.listen,
            source,
        })?;
    let addr = listener.local_addr().expect("bound");
    tracing::info!("legacy shim listening on {addr}");
    let shim = crate::legacy::AgentShim {
        handle,
        device,
        output: l.output.clone(),
        input: l.input.clone(),
    };
    Ok(tokio::spawn(pifleet_legacy::serve(
        listener,
        std::sync::Arc::new(shim),
        l.limits(),
        std::future::pending(),
    )))
}

#[cfg(test)]
mod test {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn suback_codes_map_to_the_filters_in_the_order_subscribed() {
        let filters: Vec<String> = [
            "pifleet/dev/k/cmnd",
            "pifleet/group/downstairs/cmnd",
            "pifleet/group/upstairs/cmnd",
            "pifleet/all/cmnd",
        ]
        .map(String::from)
        .into();
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        let no = SubscribeReasonCode::Failure;
        assert_eq!(
            refused_filters(&filters, &[ok, ok, no, ok]),
            Ok(vec!["pifleet/group/upstairs/cmnd"])
        );
        assert_eq!(
            refused_filters(&filters, &[no, ok, ok, no]),
            Ok(vec!["pifleet/dev/k/cmnd", "pifleet/all/cmnd"])
        );
        assert_eq!(refused_filters(&filters, &[ok; 4]), Ok(vec![]));
        // A granted QoS lower than asked for is still granted.
        let qos0 = SubscribeReasonCode::Success(QoS::AtMostOnce);
        assert_eq!(refused_filters(&filters, &[qos0; 4]), Ok(vec![]));
        assert_eq!(refused_filters(&filters, &[no, no]), Err(()));
    }

    #[test]
    fn a_refused_group_subscription_is_a_sentence_naming_the_group() {
        let topics = Topics::new("pifleet").unwrap();
        assert_eq!(
            refusal_sentence(&topics, &n("k"), "pifleet/group/upstairs/cmnd"),
            "broker refused subscription to group 'upstairs' (pifleet/group/upstairs/cmnd): \
             check the device's groups in the broker's credentials"
        );
        assert_eq!(
            refusal_sentence(&topics, &n("k"), "pifleet/all/cmnd"),
            "broker refused subscription to pifleet/all/cmnd: check what the broker allows \
             device 'k'"
        );
    }
}
