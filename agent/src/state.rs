//! The agent's decisions, without I/O: [`AgentState`] takes one input at a time (a connection
//! event, an incoming PUBLISH, an input edge, a sensor reading, a local request, a heartbeat)
//! and returns what to do about it: the [`Message`]s to publish, the SUBSCRIBE to send, the pin
//! to set. It never touches the MQTT client, the GPIO or the clock of a timer; the shell in
//! [`crate::run`] does, and reports back what happened. This is rumqttc's `MqttState` shape
//! (`handle_incoming_packet` returns the packet to send), so every rule here is tested without
//! a broker or a pin.
//!
//! Switching is two steps because the pin can fail: [`AgentState::handle_incoming_publish`] or
//! [`AgentState::switch_order`] returns a [`SwitchOrder`]; the shell sets the pin and hands the
//! outcome to [`AgentState::handle_switched`], which records the new state and returns the
//! acknowledgement (or the refusal), and the state file to write first.

use std::collections::HashSet;
use std::time::Duration;

use pifleet_proto::payload::{
    EventKind, InputState, OutputState, Presence, PresenceState, SensorReading, StateSource,
};
use pifleet_proto::{Action, CommandId, Event, Name, Topic};
use rumqttc::{Publish, SubscribeFilter, SubscribeReasonCode};

use crate::announce;
use crate::command::{self, RecentCommands};
use crate::gpio::GpioError;
use crate::handle::RequestError;
use crate::message::{Message, Wire};
use crate::sensor::ReadResult;
use crate::state_file::Saved;

/// An output as the core knows it: the state last set and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSlot {
    pub name: Name,
    /// `initial = "restore"`: every change is written to the state file.
    pub restore: bool,
    pub state: OutputState,
}

/// An input as the core knows it: the state last published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSlot {
    pub name: Name,
    pub state: InputState,
}

/// A sensor as the core knows it: its latest reading, and why it is failing if it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSlot {
    pub name: Name,
    pub last: Option<SensorReading>,
    pub failing: Option<String>,
}

/// What to send after a CONNACK: subscribe first, then publish (whoever sees the device online
/// can then already reach it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub subscribe: Vec<SubscribeFilter>,
    /// The full retained state, in [`announce::republish`]'s order.
    pub republish: Vec<Message>,
}

/// What to do about an incoming PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Nothing: not a topic of ours, a redelivered or retained command, a presence that needs
    /// no correction.
    Nothing,
    /// Publish these: a refused command's event, or presence `online` again.
    Publish(Vec<Message>),
    /// Set a pin, then tell [`AgentState::handle_switched`] how it went.
    Switch(SwitchOrder),
}

/// A decided switch, waiting for its pin to be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOrder {
    /// Which output, in configuration order.
    pub index: usize,
    /// The level to set (logical: on, whatever the wiring).
    pub on: bool,
    pub source: StateSource,
    /// The command to acknowledge, for a switch an MQTT command asked for.
    pub cmd: Option<CommandId>,
}

/// What a switch came to once its pin was set (or failed to be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// For a local requester: the new state, or why not.
    pub result: Result<bool, RequestError>,
    /// The restorable outputs' states, to write to the state file before publishing.
    pub persist: Option<Saved>,
    /// The new state (the acknowledgement), or a command's refusal event.
    pub publish: Vec<Message>,
}

/// The agent's state machine; see the module documentation.
pub struct AgentState {
    wire: Wire,
    groups: Vec<Name>,
    clock: fn() -> u64,
    started_at: u64,
    outputs: Vec<OutputSlot>,
    inputs: Vec<InputSlot>,
    sensors: Vec<SensorSlot>,
    recent: RecentCommands,
    /// Command topics on which a retained command arrived (and was ignored), so that the
    /// warning is logged once per topic rather than at every reconnect.
    ghosts: HashSet<String>,
    /// The filters of the SUBSCRIBE sent after the last CONNACK, until its SUBACK arrives.
    subscribing: Option<Vec<String>>,
    connected: bool,
}

impl AgentState {
    /// A core with no outputs, inputs or sensors yet, disconnected. `clock` gives Unix
    /// milliseconds for timestamps ([`pifleet_proto::time::now_ms`] outside tests); the agent
    /// started now.
    pub fn new(wire: Wire, groups: Vec<Name>, clock: fn() -> u64) -> AgentState {
        AgentState {
            wire,
            groups,
            clock,
            started_at: clock(),
            outputs: Vec::new(),
            inputs: Vec::new(),
            sensors: Vec::new(),
            recent: RecentCommands::default(),
            ghosts: HashSet::new(),
            subscribing: None,
            connected: false,
        }
    }

    /// Adds an output whose pin starts `on`, and returns its index.
    pub fn add_output(
        &mut self,
        name: Name,
        restore: bool,
        on: bool,
        source: StateSource,
    ) -> usize {
        let state = OutputState {
            on,
            cmd: None,
            source,
            ts: self.started_at,
        };
        self.outputs.push(OutputSlot {
            name,
            restore,
            state,
        });
        self.outputs.len() - 1
    }

    /// Adds an input that reads `active` at start, and returns its index.
    pub fn add_input(&mut self, name: Name, active: bool) -> usize {
        let state = InputState {
            active,
            ts: self.started_at,
        };
        self.inputs.push(InputSlot { name, state });
        self.inputs.len() - 1
    }

    /// Adds a sensor (no reading yet), and returns its index.
    pub fn add_sensor(&mut self, name: Name) -> usize {
        self.sensors.push(SensorSlot {
            name,
            last: None,
            failing: None,
        });
        self.sensors.len() - 1
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    pub fn groups(&self) -> &[Name] {
        &self.groups
    }

    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// Unix milliseconds, from the clock given at construction.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn outputs(&self) -> &[OutputSlot] {
        &self.outputs
    }

    pub fn inputs(&self) -> &[InputSlot] {
        &self.inputs
    }

    pub fn sensors(&self) -> &[SensorSlot] {
        &self.sensors
    }

    /// After every CONNACK: subscribe again and republish everything (rumqttc restores neither
    /// subscriptions nor state, and a broker restart forgets retained messages it kept only in
    /// memory). A SUBSCRIBE still unanswered from an earlier connection is answered never: its
    /// connection is gone. This connection's SUBACK is matched against these filters.
    pub fn handle_connected(&mut self) -> Connect {
        self.connected = true;
        let subscribe =
            announce::subscriptions(self.wire.topics(), self.wire.device(), &self.groups);
        self.subscribing = Some(subscribe.iter().map(|f| f.path.clone()).collect());
        Connect {
            subscribe,
            republish: announce::republish(self),
        }
    }

    /// The SUBSCRIBE of [`Connect`] could not be handed to the client, so no SUBACK will answer
    /// it.
    pub fn handle_subscribe_unsent(&mut self) {
        self.subscribing = None;
    }

    /// The connection failed or dropped; the next attempt follows after `retry_in`. `refused`:
    /// the broker refused the login.
    pub fn handle_disconnected(&mut self, why: &str, retry_in: Duration, refused: bool) {
        if refused {
            // Retrying cannot fix credentials; the backoff keeps it from hammering the broker
            // meanwhile.
            tracing::error!("{why}; retrying in {:.1}s", retry_in.as_secs_f64());
        } else if self.connected {
            tracing::warn!("{why}; reconnecting");
        } else {
            tracing::warn!("{why}; retrying in {:.1}s", retry_in.as_secs_f64());
        }
        self.connected = false;
    }

    /// Maps the SUBACK's return codes to the filters subscribed after the last CONNACK and
    /// reports each refused one: an error in the log and a `subscription_refused` event, since
    /// commands to it will never arrive (a controller's `on --group G` would only time out).
    pub fn handle_suback(&mut self, codes: &[SubscribeReasonCode]) -> Vec<Message> {
        let Some(filters) = self.subscribing.take() else {
            tracing::debug!("SUBACK for no subscription of ours: ignored");
            return Vec::new();
        };
        let refused = match announce::refused_filters(&filters, codes) {
            Ok(refused) => refused,
            Err(()) => {
                tracing::warn!(
                    "the broker answered {} subscription filters with {} return codes; \
                     cannot tell which it refused",
                    filters.len(),
                    codes.len()
                );
                return Vec::new();
            }
        };
        refused
            .into_iter()
            .map(|filter| {
                let message =
                    announce::refusal_sentence(self.wire.topics(), self.wire.device(), filter);
                tracing::error!("{message}");
                self.wire.event(&Event {
                    kind: EventKind::SubscriptionRefused,
                    message,
                    cmd: None,
                    filter: Some(filter.to_string()),
                    ts: self.now(),
                })
            })
            .collect()
    }

    /// A PUBLISH from the broker: a command, or our own presence.
    pub fn handle_incoming_publish(&mut self, p: &Publish) -> Incoming {
        match self.wire.topics().parse(&p.topic) {
            Some(Topic::Command(_)) => {}
            Some(Topic::Status { device }) if device == *self.wire.device() => {
                return self.on_own_status(&p.payload);
            }
            _ => return Incoming::Nothing,
        }
        if p.retain {
            self.ignore_retained_command(&p.topic);
            return Incoming::Nothing;
        }
        let cmd = match command::parse(&p.topic, &p.payload) {
            Ok(cmd) => cmd,
            Err(bad) => {
                let event = self.event(EventKind::BadCommand, bad.message, bad.id);
                return Incoming::Publish(vec![event]);
            }
        };
        if !self.recent.first_time(&cmd.id) {
            tracing::debug!("ignoring redelivered command {}", cmd.id);
            return Incoming::Nothing;
        }
        let order = self.switch_order(
            cmd.output.as_ref(),
            cmd.action,
            StateSource::Command,
            Some(cmd.id.clone()),
        );
        match order {
            Ok(order) => Incoming::Switch(order),
            Err(e) => Incoming::Publish(vec![self.command_refused(cmd.id, &e)]),
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
    fn on_own_status(&mut self, payload: &[u8]) -> Incoming {
        let offline = serde_json::from_slice::<Presence>(payload).is_ok_and(|p| !p.is_online());
        if offline && self.connected {
            tracing::info!(
                "the broker lists this device offline while it is connected; re-announcing"
            );
            return Incoming::Publish(vec![self.announcement()]);
        }
        Incoming::Nothing
    }

    /// Decides a switch: which output (`None`: the first one) and what level `action` leads to.
    /// Nothing changes until [`AgentState::handle_switched`].
    pub fn switch_order(
        &self,
        output: Option<&Name>,
        action: Action,
        source: StateSource,
        cmd: Option<CommandId>,
    ) -> Result<SwitchOrder, RequestError> {
        let index = self.output_index(output)?;
        Ok(SwitchOrder {
            index,
            on: action.apply(self.outputs[index].state.on),
            source,
            cmd,
        })
    }

    /// The pin of `order` is set (`Ok`) or could not be. On success the output's state is
    /// recorded and published, which acknowledges the command: every accepted command is
    /// acknowledged, including one that changes nothing. A command whose pin failed is refused
    /// with a `gpio_error` event; a local requester gets the error.
    pub fn handle_switched(&mut self, order: SwitchOrder, pin: Result<(), GpioError>) -> Switched {
        if let Err(e) = pin {
            let error = RequestError::Gpio(e.to_string());
            let publish = order
                .cmd
                .map(|id| self.command_refused(id, &error))
                .into_iter()
                .collect();
            return Switched {
                result: Err(error),
                persist: None,
                publish,
            };
        }
        let ts = self.now();
        let slot = &mut self.outputs[order.index];
        if order.on != slot.state.on {
            tracing::info!(
                "output {} -> {}",
                slot.name,
                if order.on { "on" } else { "off" }
            );
        }
        slot.state = OutputState {
            on: order.on,
            cmd: order.cmd,
            source: order.source,
            ts,
        };
        let ack = self.wire.output(&slot.name, &slot.state);
        let persist = slot.restore.then(|| self.saved());
        Switched {
            result: Ok(order.on),
            persist,
            publish: vec![ack],
        }
    }

    /// What the state file holds: every restorable output's state.
    fn saved(&self) -> Saved {
        self.outputs
            .iter()
            .filter(|o| o.restore)
            .map(|o| (o.name.to_string(), o.state.on))
            .collect()
    }

    /// An input changed (after debouncing): publish its new state. A report of the state it
    /// already has is no change.
    pub fn handle_input_edge(&mut self, index: usize, active: bool) -> Vec<Message> {
        let ts = self.now();
        let Some(slot) = self.inputs.get_mut(index) else {
            return Vec::new();
        };
        if slot.state.active == active {
            return Vec::new();
        }
        slot.state = InputState { active, ts };
        tracing::info!(
            "input {} {}",
            slot.name,
            if active { "pressed" } else { "released" }
        );
        vec![self.wire.input(&slot.name, &slot.state)]
    }

    /// A sensor was read. A reading is published (after a `sensor_recovered` event if the
    /// sensor was failing); a failure is reported once, and again only when the reason changes:
    /// a missing probe must not flood the fleet with one event per interval.
    pub fn handle_sensor_reading(&mut self, index: usize, result: ReadResult) -> Vec<Message> {
        let ts = self.now();
        let Some(slot) = self.sensors.get_mut(index) else {
            return Vec::new();
        };
        match result {
            Ok((reading, kind)) => {
                let recovered = slot.failing.take().is_some();
                let reading = SensorReading {
                    value: reading.value,
                    unit: reading.unit.to_string(),
                    kind: Some(kind.to_string()),
                    ts,
                };
                slot.last = Some(reading.clone());
                let name = slot.name.clone();
                let mut out = Vec::new();
                if recovered {
                    out.push(self.event(
                        EventKind::SensorRecovered,
                        format!("sensor {name} can be read again"),
                        None,
                    ));
                }
                out.push(self.wire.sensor(&name, &reading));
                out
            }
            Err(why) => {
                if slot.failing.as_deref() == Some(why.as_str()) {
                    return Vec::new();
                }
                slot.failing = Some(why.clone());
                let message = format!("sensor {}: {why}", slot.name);
                vec![self.event(EventKind::SensorError, message, None)]
            }
        }
    }

    /// The heartbeat timer fired: presence again with a fresh `ts`, which keeps "last seen"
    /// meaningful for a quiet device. Nothing while disconnected.
    pub fn handle_heartbeat(&self) -> Vec<Message> {
        if !self.connected {
            return Vec::new();
        }
        vec![self.announcement()]
    }

    /// Presence `online`, stamped now.
    fn announcement(&self) -> Message {
        self.wire
            .status(&announce::presence(self, PresenceState::Online))
    }

    /// Presence `offline`, stamped now: the goodbye before a clean DISCONNECT (which makes the
    /// broker discard the last will).
    pub fn goodbye(&self) -> Message {
        self.wire
            .status(&announce::presence(self, PresenceState::Offline))
    }

    /// The state file could not be read at start or written after a switch.
    pub fn state_file_failed(&self, message: String) -> Message {
        self.event(EventKind::StateFileError, message, None)
    }

    /// Which output a request means (`None`: the first one).
    pub fn output_index(&self, output: Option<&Name>) -> Result<usize, RequestError> {
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

    /// Which input a request means (`None`: the first one).
    pub fn input_index(&self, input: Option<&Name>) -> Result<usize, RequestError> {
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

    /// The refusal of command `id`: `gpio_error` when the pin failed, else `unknown_output`.
    fn command_refused(&self, id: CommandId, e: &RequestError) -> Message {
        let kind = match e {
            RequestError::Gpio(_) => EventKind::GpioError,
            _ => EventKind::UnknownOutput,
        };
        self.event(kind, format!("refused command {id}: {e}"), Some(id))
    }

    /// An event for `<prefix>/dev/<device>/event`, logged as it is created.
    fn event(&self, kind: EventKind, message: String, cmd: Option<CommandId>) -> Message {
        tracing::warn!("{message}");
        self.wire.event(&Event {
            kind,
            message,
            cmd,
            filter: None,
            ts: self.now(),
        })
    }
}
