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
use pifleet_proto::{Action, CommandId, Event, Level, Name, PlainKind, Topic};
use rumqttc::{Publish, SubscribeFilter, SubscribeReasonCode};

use crate::announce;
use crate::command::{self, RecentCommands};
use crate::gpio::GpioError;
use crate::handle::RequestError;
use crate::message::{Message, Wire};
use crate::sensor::ReadResult;
use crate::state_file::Saved;

/// An output as the core knows it: the state last set and published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSlot {
    pub name: Name,
    /// `initial = "restore"`: every change is written to the state file.
    pub restore: bool,
    /// `kind = "pwm"`: it has a level, and takes `set`.
    pub dimmable: bool,
    /// `pulse_secs`: every switch on without an `on_time` of its own is a pulse this long.
    pub pulse_secs: Option<f64>,
    /// The last level above 0, which `on` and `toggle` bring back (100 until one was set).
    pub last_level: f64,
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
    /// How often it is read (`interval_secs`), announced in presence; `None` until set.
    pub interval_secs: Option<f64>,
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchOrder {
    /// Which output, in configuration order.
    pub index: usize,
    /// The level to set (logical: on, whatever the wiring).
    pub on: bool,
    /// A dimmable output's level in percent (`on` is `level > 0`); `None` for on/off outputs.
    pub level: Option<f64>,
    /// A pulse: switch off again after this many seconds. The shell keeps the timer and calls
    /// [`AgentState::handle_pulse_end`]; any later switch of the output ends the pulse.
    pub pulse_secs: Option<f64>,
    pub source: StateSource,
    /// The command to acknowledge, for a switch an MQTT command asked for.
    pub cmd: Option<CommandId>,
}

/// What a switch came to once its pin was set (or failed to be).
#[derive(Debug, Clone, PartialEq)]
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
            level: None,
            off_at: None,
            cmd: None,
            source,
            ts: self.started_at,
        };
        self.outputs.push(OutputSlot {
            name,
            restore,
            dimmable: false,
            pulse_secs: None,
            last_level: Level::MAX,
            state,
        });
        self.outputs.len() - 1
    }

    /// Makes output `index` dimmable, at the level it starts at (0 when it starts off, 100 when
    /// on: the configuration's `initial` is on/off).
    pub fn make_dimmable(&mut self, index: usize) {
        let slot = &mut self.outputs[index];
        slot.dimmable = true;
        slot.state.level = Some(if slot.state.on { Level::MAX } else { 0.0 });
    }

    /// Every switch on of output `index` becomes a pulse of `secs` unless it has its own.
    pub fn set_pulse_default(&mut self, index: usize, secs: f64) {
        self.outputs[index].pulse_secs = Some(secs);
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
            interval_secs: None,
            last: None,
            failing: None,
        });
        self.sensors.len() - 1
    }

    /// Sensor `index` is read every `secs` seconds (announced in presence as `intervals`).
    pub fn set_sensor_interval(&mut self, index: usize, secs: f64) {
        self.sensors[index].interval_secs = Some(secs);
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

    /// A PUBLISH from the broker: a command, a plain per-output command, or our own presence.
    pub fn handle_incoming_publish(&mut self, p: &Publish) -> Incoming {
        let plain = match self.wire.topics().parse(&p.topic) {
            Some(Topic::Command(_)) => None,
            Some(Topic::PlainCommand {
                device,
                output,
                kind,
            }) if device == *self.wire.device() => Some((output, kind)),
            Some(Topic::Status { device }) if device == *self.wire.device() => {
                return self.on_own_status(&p.payload);
            }
            _ => return Incoming::Nothing,
        };
        if p.retain {
            self.ignore_retained_command(&p.topic);
            return Incoming::Nothing;
        }
        if let Some((output, kind)) = plain {
            return self.plain_command(&p.topic, &output, kind, &p.payload);
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
        let order = self.order(
            cmd.output.as_ref(),
            cmd.action,
            cmd.value,
            cmd.on_time,
            StateSource::Command,
            Some(cmd.id.clone()),
        );
        match order {
            Ok(order) => Incoming::Switch(order),
            Err(e) => Incoming::Publish(vec![self.command_refused(cmd.id, &e)]),
        }
    }

    /// A plain payload on `<prefix>/dev/<d>/cmnd/<output>` (`ON`, `OFF`) or `…/level` (a
    /// number in percent), as Home Assistant sends them: made into an ordinary command with a
    /// fresh id, so it is checked, executed and acknowledged (the output state carries the id)
    /// like any other, and a refusal names that id. There is no id to deduplicate a QoS 1
    /// redelivery by, which is why only idempotent payloads exist here (no toggle).
    fn plain_command(
        &mut self,
        topic: &str,
        output: &Name,
        kind: PlainKind,
        payload: &[u8],
    ) -> Incoming {
        let text = String::from_utf8_lossy(payload);
        let text = text.trim();
        let (action, value) = match kind {
            PlainKind::Switch if text.eq_ignore_ascii_case("on") => (Action::On, None),
            PlainKind::Switch if text.eq_ignore_ascii_case("off") => (Action::Off, None),
            PlainKind::Level => match text.parse::<f64>() {
                Ok(v) => (Action::Set, Some(v)),
                Err(_) => {
                    let message = format!(
                        "refused command on {topic}: {text:?} is not a level (a number, percent)"
                    );
                    return Incoming::Publish(vec![self.event(
                        EventKind::BadCommand,
                        message,
                        None,
                    )]);
                }
            },
            PlainKind::Switch => {
                let message = format!("refused command on {topic}: {text:?} is neither ON nor OFF");
                return Incoming::Publish(vec![self.event(EventKind::BadCommand, message, None)]);
            }
        };
        let id = CommandId::generate();
        tracing::info!("plain command on {topic}: {text} (command {id})");
        match self.order(
            Some(output),
            action,
            value,
            None,
            StateSource::Command,
            Some(id.clone()),
        ) {
            Ok(order) => Incoming::Switch(order),
            Err(e) => Incoming::Publish(vec![self.command_refused(id, &e)]),
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
        self.order(output, action, None, None, source, cmd)
    }

    /// [`AgentState::switch_order`] with a command's `value` (for `set`) and `on_time` (a
    /// pulse), each checked against the output: a level only for a dimmable output and only
    /// with `set`, within 0–100; a pulse only for a switch on. What is not right is refused,
    /// never clamped or ignored.
    pub fn order(
        &self,
        output: Option<&Name>,
        action: Action,
        value: Option<f64>,
        on_time: Option<f64>,
        source: StateSource,
        cmd: Option<CommandId>,
    ) -> Result<SwitchOrder, RequestError> {
        let index = self.output_index(output)?;
        let slot = &self.outputs[index];
        let bad = |why: String| Err(RequestError::BadValue(why));
        let level = match (action, value) {
            (Action::Set, None) => return bad("set needs a value (a level in percent)".into()),
            (Action::Set, Some(_)) if !slot.dimmable => {
                return bad(format!(
                    "output {} is on/off only: it takes on, off or toggle, not a level",
                    slot.name
                ))
            }
            (Action::Set, Some(v)) => Some(Level::check(v).map_err(RequestError::BadValue)?),
            (_, Some(_)) => return bad(format!("a value is only for set, not for {action}")),
            (_, None) if slot.dimmable => {
                let on = action.apply(slot.state.on);
                Some(if on { slot.last_level } else { 0.0 })
            }
            (_, None) => None,
        };
        let on = level.map_or_else(|| action.apply(slot.state.on), Level::is_on);
        let pulse_secs = match on_time {
            Some(secs) => {
                let secs = pifleet_proto::payload::check_pulse_secs(secs)
                    .map_err(RequestError::BadValue)?;
                if !(matches!(action, Action::On | Action::Set) && on) {
                    return bad(format!(
                        "on_time is a pulse: it goes with on (or set above 0), not with {action}"
                    ));
                }
                Some(secs)
            }
            None if on => slot.pulse_secs,
            None => None,
        };
        Ok(SwitchOrder {
            index,
            on,
            level,
            pulse_secs,
            source,
            cmd,
        })
    }

    /// The shell's pulse timer for output `index` fired: switch it off, with source `pulse`,
    /// unless a later switch already ended the pulse (then nothing).
    pub fn handle_pulse_end(&self, index: usize) -> Option<SwitchOrder> {
        let slot = self.outputs.get(index)?;
        slot.state.off_at?;
        Some(SwitchOrder {
            index,
            on: false,
            level: slot.dimmable.then_some(0.0),
            pulse_secs: None,
            source: StateSource::Pulse,
            cmd: None,
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
        if order.on != slot.state.on || order.level != slot.state.level {
            let what = match order.level {
                Some(l) => format!("{l} %"),
                None if order.on => "on".into(),
                None => "off".into(),
            };
            match order.pulse_secs {
                Some(p) => tracing::info!("output {} -> {what} for {p} s", slot.name),
                None => tracing::info!("output {} -> {what}", slot.name),
            }
        }
        if let Some(l) = order.level.filter(|l| Level::is_on(*l)) {
            slot.last_level = l;
        }
        slot.state = OutputState {
            on: order.on,
            level: order.level,
            off_at: order.pulse_secs.map(|s| ts + (s * 1000.0).round() as u64),
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

    /// What the state file holds: every restorable output's state. An output in a pulse is
    /// saved as off: an agent restarted mid-pulse has no timer to end it, so it comes up off.
    fn saved(&self) -> Saved {
        self.outputs
            .iter()
            .filter(|o| o.restore)
            .map(|o| (o.name.to_string(), o.state.on && o.state.off_at.is_none()))
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
                    quantity: reading.quantity.map(str::to_string),
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
            RequestError::BadValue(_) => EventKind::BadCommand,
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

#[cfg(test)]
mod test {
    use pifleet_proto::Topics;
    use rumqttc::QoS;

    use super::*;
    use crate::backlog::Backlog;
    use crate::sensor::Reading;

    /// Every timestamp in these tests.
    const T: u64 = 1_700_000_000_000;

    fn clock() -> u64 {
        T
    }

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn id(s: &str) -> CommandId {
        CommandId(s.to_string())
    }

    /// Device `k` in group `downstairs`: outputs `led` (off) and `relay` (restorable, on),
    /// input `button` (released), sensors `cpu` and `probe`.
    fn kitchen() -> AgentState {
        let wire = Wire::new(Topics::new("pifleet").unwrap(), n("k"));
        let mut k = AgentState::new(wire, vec![n("downstairs")], clock);
        k.add_output(n("led"), false, false, StateSource::Initial);
        k.add_output(n("relay"), true, true, StateSource::Restore);
        k.add_input(n("button"), false);
        k.add_sensor(n("cpu"));
        k.add_sensor(n("probe"));
        k
    }

    fn connected() -> AgentState {
        let mut k = kitchen();
        k.handle_connected();
        k
    }

    fn msg(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
        }
    }

    /// An event as the agent publishes it: QoS 1, not retained.
    fn event(payload: &str) -> Message {
        msg("pifleet/dev/k/event", payload, QoS::AtLeastOnce, false)
    }

    fn publish(topic: &str, payload: &str) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, payload)
    }

    fn command(payload: &str) -> Publish {
        publish("pifleet/dev/k/cmnd", payload)
    }

    fn presence(state: &str) -> Message {
        let v = pifleet_proto::VERSION;
        msg(
            "pifleet/dev/k/status",
            &format!(
                r#"{{"state":"{state}","version":"{v}","groups":["downstairs"],"outputs":["led","relay"],"inputs":["button"],"sensors":["cpu","probe"],"started_at":{T},"ts":{T}}}"#
            ),
            QoS::AtLeastOnce,
            true,
        )
    }

    fn cpu_reading() -> ReadResult {
        Ok((
            Reading {
                value: 41.5,
                unit: "°C",
                quantity: None,
            },
            "cpu_temp",
        ))
    }

    /// Runs a command through both steps with a pin that works.
    fn execute(k: &mut AgentState, payload: &str) -> Switched {
        match k.handle_incoming_publish(&command(payload)) {
            Incoming::Switch(order) => k.handle_switched(order, Ok(())),
            other => panic!("expected a switch, got {other:?}"),
        }
    }

    #[test]
    fn a_connack_subscribes_then_republishes_presence_outputs_inputs_and_sensors_in_order() {
        let mut k = kitchen();
        k.handle_sensor_reading(0, cpu_reading());
        assert!(!k.is_connected());
        let connect = k.handle_connected();
        assert!(k.is_connected());
        let paths: Vec<_> = connect.subscribe.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "pifleet/dev/k/cmnd",
                "pifleet/group/downstairs/cmnd",
                "pifleet/all/cmnd",
                "pifleet/dev/k/cmnd/+",
                "pifleet/dev/k/cmnd/+/level",
                "pifleet/dev/k/status",
            ]
        );
        let q1 = QoS::AtLeastOnce;
        assert_eq!(
            connect.republish,
            vec![
                presence("online"),
                msg(
                    "pifleet/dev/k/out/led",
                    &format!(r#"{{"on":false,"source":"initial","ts":{T}}}"#),
                    q1,
                    true
                ),
                msg(
                    "pifleet/dev/k/out/relay",
                    &format!(r#"{{"on":true,"source":"restore","ts":{T}}}"#),
                    q1,
                    true
                ),
                msg(
                    "pifleet/dev/k/in/button",
                    &format!(r#"{{"active":false,"ts":{T}}}"#),
                    q1,
                    true
                ),
                // `probe` has no reading yet, so nothing is said for it.
                msg(
                    "pifleet/dev/k/sensor/cpu",
                    &format!(r#"{{"value":41.5,"unit":"°C","kind":"cpu_temp","ts":{T}}}"#),
                    QoS::AtMostOnce,
                    true
                ),
            ]
        );
    }

    #[test]
    fn the_republish_carries_the_latest_states_with_the_commands_that_caused_them() {
        let mut k = connected();
        execute(&mut k, r#"{"id":"c1","action":"on"}"#);
        k.handle_input_edge(0, true);
        k.handle_disconnected("the broker went away", Duration::from_secs(1), false);
        let republish = k.handle_connected().republish;
        assert_eq!(
            republish[1].payload,
            format!(r#"{{"on":true,"cmd":"c1","source":"command","ts":{T}}}"#).into_bytes()
        );
        assert_eq!(
            republish[3].payload,
            format!(r#"{{"active":true,"ts":{T}}}"#).into_bytes()
        );
    }

    #[test]
    fn a_command_is_acknowledged_with_its_id_once_its_pin_is_set() {
        let mut k = connected();
        let order = match k.handle_incoming_publish(&command(r#"{"id":"c1","action":"toggle"}"#)) {
            Incoming::Switch(order) => order,
            other => panic!("expected a switch, got {other:?}"),
        };
        assert_eq!(
            order,
            SwitchOrder {
                index: 0,
                on: true,
                level: None,
                pulse_secs: None,
                source: StateSource::Command,
                cmd: Some(id("c1")),
            }
        );
        assert!(
            !k.outputs()[0].state.on,
            "nothing changes before the pin is set"
        );
        let done = k.handle_switched(order, Ok(()));
        assert_eq!(
            done,
            Switched {
                result: Ok(true),
                persist: None,
                publish: vec![msg(
                    "pifleet/dev/k/out/led",
                    &format!(r#"{{"on":true,"cmd":"c1","source":"command","ts":{T}}}"#),
                    QoS::AtLeastOnce,
                    true
                )],
            }
        );
        assert!(k.outputs()[0].state.on);
    }

    #[test]
    fn a_command_that_changes_nothing_is_acknowledged_all_the_same() {
        let mut k = connected();
        let done = execute(&mut k, r#"{"id":"c1","action":"off"}"#);
        assert_eq!(done.result, Ok(false));
        assert_eq!(
            done.publish[0].payload,
            format!(r#"{{"on":false,"cmd":"c1","source":"command","ts":{T}}}"#).into_bytes()
        );
    }

    #[test]
    fn a_group_or_fleet_command_names_its_output_like_a_device_command() {
        let mut k = connected();
        let p = publish(
            "pifleet/group/downstairs/cmnd",
            r#"{"id":"g1","action":"off","output":"relay"}"#,
        );
        let Incoming::Switch(order) = k.handle_incoming_publish(&p) else {
            panic!("a group command switches");
        };
        assert_eq!((order.index, order.on), (1, false));
        let p = publish("pifleet/all/cmnd", r#"{"id":"a1","action":"on"}"#);
        assert!(matches!(
            k.handle_incoming_publish(&p),
            Incoming::Switch(SwitchOrder {
                index: 0,
                on: true,
                ..
            })
        ));
        // Not a command topic: nothing to do.
        let other = publish("pifleet/dev/k/out/led", r#"{"id":"o1","action":"on"}"#);
        assert_eq!(k.handle_incoming_publish(&other), Incoming::Nothing);
    }

    #[test]
    fn a_repeated_command_id_is_ignored_without_switching_twice() {
        let mut k = connected();
        let toggle = r#"{"id":"c1","action":"toggle"}"#;
        assert_eq!(execute(&mut k, toggle).result, Ok(true));
        // The QoS 1 redelivery: no switch, no second acknowledgement, no event.
        assert_eq!(
            k.handle_incoming_publish(&command(toggle)),
            Incoming::Nothing
        );
        assert!(k.outputs()[0].state.on, "toggled once, not twice");
        // A new id toggles again.
        assert_eq!(
            execute(&mut k, r#"{"id":"c2","action":"toggle"}"#).result,
            Ok(false)
        );
    }

    #[test]
    fn a_command_for_an_unknown_output_is_refused_with_an_unknown_output_event() {
        let mut k = connected();
        assert_eq!(
            k.handle_incoming_publish(&command(r#"{"id":"c2","action":"on","output":"fan"}"#)),
            Incoming::Publish(vec![event(&format!(
                r#"{{"kind":"unknown_output","message":"refused command c2: no output named \"fan\"","cmd":"c2","ts":{T}}}"#
            ))])
        );
        // A device without outputs refuses every command the same way.
        let wire = Wire::new(Topics::new("pifleet").unwrap(), n("k"));
        let mut bare = AgentState::new(wire, vec![], clock);
        assert_eq!(
            bare.handle_incoming_publish(&command(r#"{"id":"c3","action":"on"}"#)),
            Incoming::Publish(vec![event(&format!(
                r#"{{"kind":"unknown_output","message":"refused command c3: this device has no outputs","cmd":"c3","ts":{T}}}"#
            ))])
        );
    }

    #[test]
    fn bad_json_is_refused_with_a_bad_command_event_naming_a_readable_id() {
        let mut k = connected();
        assert_eq!(
            k.handle_incoming_publish(&command("on please")),
            Incoming::Publish(vec![event(&format!(
                r#"{{"kind":"bad_command","message":"refused command on pifleet/dev/k/cmnd: expected value at line 1 column 1: \"on please\"","ts":{T}}}"#
            ))])
        );
        let Incoming::Publish(out) =
            k.handle_incoming_publish(&command(r#"{"id":"c5","action":"blink"}"#))
        else {
            panic!("an unknown action is refused");
        };
        let e: Event = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!((e.kind, e.cmd), (EventKind::BadCommand, Some(id("c5"))));
        assert!(!k.outputs()[0].state.on);
    }

    #[test]
    fn a_retained_command_is_ignored_without_an_event_or_a_switch() {
        let mut k = connected();
        let mut ghost = command(r#"{"id":"g1","action":"on"}"#);
        ghost.retain = true;
        assert_eq!(k.handle_incoming_publish(&ghost), Incoming::Nothing);
        // Replayed at the next reconnect: still nothing.
        k.handle_disconnected("gone", Duration::from_secs(1), false);
        k.handle_connected();
        assert_eq!(k.handle_incoming_publish(&ghost), Incoming::Nothing);
        assert!(!k.outputs()[0].state.on);
        // Ignoring it did not take its id: sent properly, the same command runs.
        assert_eq!(
            execute(&mut k, r#"{"id":"g1","action":"on"}"#).result,
            Ok(true)
        );
    }

    #[test]
    fn a_failed_pin_refuses_the_command_with_a_gpio_error_and_keeps_the_old_state() {
        let mut k = connected();
        let Incoming::Switch(order) =
            k.handle_incoming_publish(&command(r#"{"id":"c4","action":"on"}"#))
        else {
            panic!("expected a switch");
        };
        let broken = GpioError::Pin {
            pin: 17,
            message: "busy".into(),
        };
        assert_eq!(
            k.handle_switched(order, Err(broken)),
            Switched {
                result: Err(RequestError::Gpio("BCM pin 17: busy".into())),
                persist: None,
                publish: vec![event(&format!(
                    r#"{{"kind":"gpio_error","message":"refused command c4: BCM pin 17: busy","cmd":"c4","ts":{T}}}"#
                ))],
            }
        );
        assert_eq!(
            k.outputs()[0].state,
            OutputState {
                on: false,
                level: None,
                off_at: None,
                cmd: None,
                source: StateSource::Initial,
                ts: T
            }
        );
    }

    #[test]
    fn switching_a_restorable_output_asks_for_the_state_file_before_the_acknowledgement() {
        let mut k = connected();
        let done = execute(&mut k, r#"{"id":"c6","action":"off","output":"relay"}"#);
        // Only restorable outputs are saved; `led` is not one.
        assert_eq!(
            done.persist,
            Some(Saved::from([("relay".to_string(), false)]))
        );
        assert_eq!(done.publish[0].topic, "pifleet/dev/k/out/relay");
        // A non-restorable output writes no state file.
        assert_eq!(
            execute(&mut k, r#"{"id":"c7","action":"on"}"#).persist,
            None
        );
        assert_eq!(
            k.state_file_failed("cannot write state file /x: denied".into()),
            event(&format!(
                r#"{{"kind":"state_file_error","message":"cannot write state file /x: denied","ts":{T}}}"#
            ))
        );
    }

    #[test]
    fn a_local_switch_is_acknowledged_without_an_id_and_a_failed_pin_only_answers_the_requester() {
        let mut k = connected();
        let order = k
            .switch_order(Some(&n("led")), Action::On, StateSource::Legacy, None)
            .unwrap();
        let done = k.handle_switched(order.clone(), Ok(()));
        assert_eq!(done.result, Ok(true));
        assert_eq!(
            done.publish,
            vec![msg(
                "pifleet/dev/k/out/led",
                &format!(r#"{{"on":true,"source":"legacy","ts":{T}}}"#),
                QoS::AtLeastOnce,
                true
            )]
        );
        let broken = GpioError::Pin {
            pin: 17,
            message: "busy".into(),
        };
        let failed = k.handle_switched(order, Err(broken));
        assert_eq!(
            failed.result,
            Err(RequestError::Gpio("BCM pin 17: busy".into()))
        );
        assert_eq!(failed.publish, vec![], "no command, so no refusal event");
    }

    #[test]
    fn local_requests_name_outputs_and_inputs_or_say_why_not() {
        let k = kitchen();
        let fan = k.switch_order(Some(&n("fan")), Action::On, StateSource::Legacy, None);
        assert_eq!(fan, Err(RequestError::UnknownOutput("fan".into())));
        assert_eq!(k.input_index(None), Ok(0));
        assert_eq!(
            k.input_index(Some(&n("door"))),
            Err(RequestError::UnknownInput("door".into()))
        );
        let wire = Wire::new(Topics::new("pifleet").unwrap(), n("k"));
        let bare = AgentState::new(wire, vec![], clock);
        assert_eq!(bare.output_index(None), Err(RequestError::NoOutputs));
        assert_eq!(bare.input_index(None), Err(RequestError::NoInputs));
    }

    #[test]
    fn an_input_edge_publishes_the_new_state_once() {
        let mut k = connected();
        assert_eq!(
            k.handle_input_edge(0, true),
            vec![msg(
                "pifleet/dev/k/in/button",
                &format!(r#"{{"active":true,"ts":{T}}}"#),
                QoS::AtLeastOnce,
                true
            )]
        );
        assert_eq!(
            k.handle_input_edge(0, true),
            vec![],
            "no change, no message"
        );
        assert_eq!(k.handle_input_edge(0, false).len(), 1);
        assert_eq!(k.handle_input_edge(7, true), vec![], "no such input");
    }

    #[test]
    fn a_sensor_reading_is_published_at_qos_0_retained() {
        let mut k = connected();
        assert_eq!(
            k.handle_sensor_reading(0, cpu_reading()),
            vec![msg(
                "pifleet/dev/k/sensor/cpu",
                &format!(r#"{{"value":41.5,"unit":"°C","kind":"cpu_temp","ts":{T}}}"#),
                QoS::AtMostOnce,
                true
            )]
        );
        assert_eq!(k.handle_sensor_reading(9, cpu_reading()), vec![]);
    }

    #[test]
    fn a_failing_sensor_is_reported_once_per_reason_and_its_recovery_once() {
        let mut k = connected();
        let gone = || Err("cannot read /sys/bus/w1/devices: gone".to_string());
        let error = event(&format!(
            r#"{{"kind":"sensor_error","message":"sensor probe: cannot read /sys/bus/w1/devices: gone","ts":{T}}}"#
        ));
        assert_eq!(k.handle_sensor_reading(1, gone()), vec![error.clone()]);
        assert_eq!(k.handle_sensor_reading(1, gone()), vec![], "same reason");
        let crc = k.handle_sensor_reading(1, Err("CRC failed".into()));
        assert_eq!(crc.len(), 1, "a new reason is reported");
        let back = k.handle_sensor_reading(1, cpu_reading());
        assert_eq!(
            back[0],
            event(&format!(
                r#"{{"kind":"sensor_recovered","message":"sensor probe can be read again","ts":{T}}}"#
            ))
        );
        assert_eq!(back[1].topic, "pifleet/dev/k/sensor/probe");
        assert_eq!(back.len(), 2);
        assert_eq!(k.handle_sensor_reading(1, cpu_reading()).len(), 1);
        assert_eq!(k.handle_sensor_reading(1, gone()), vec![error]);
    }

    #[test]
    fn suback_refusals_become_subscription_refused_events_naming_the_filter() {
        let mut k = connected();
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        let no = SubscribeReasonCode::Failure;
        assert_eq!(
            k.handle_suback(&[ok, no, ok, ok, ok, ok]),
            vec![event(&format!(
                r#"{{"kind":"subscription_refused","message":"broker refused subscription to group 'downstairs' (pifleet/group/downstairs/cmnd): check the device's groups in the broker's credentials","filter":"pifleet/group/downstairs/cmnd","ts":{T}}}"#
            ))]
        );
        // That SUBACK answered the SUBSCRIBE; another is for none of ours.
        assert_eq!(k.handle_suback(&[no, no, no, no, no, no]), vec![]);
        // After the next CONNACK, a SUBACK whose count does not match says nothing.
        k.handle_connected();
        assert_eq!(k.handle_suback(&[no, no]), vec![]);
        // Refused at every connection, reported at every connection.
        k.handle_connected();
        assert_eq!(k.handle_suback(&[no, ok, ok, ok, ok, ok]).len(), 1);
    }

    #[test]
    fn a_subscribe_that_could_not_be_sent_expects_no_suback() {
        let mut k = connected();
        k.handle_subscribe_unsent();
        let no = SubscribeReasonCode::Failure;
        assert_eq!(k.handle_suback(&[no, no, no, no, no, no]), vec![]);
    }

    #[test]
    fn our_own_offline_presence_while_connected_is_answered_with_online() {
        let mut k = kitchen();
        let offline = publish("pifleet/dev/k/status", r#"{"state":"offline"}"#);
        assert_eq!(
            k.handle_incoming_publish(&offline),
            Incoming::Nothing,
            "not connected: the CONNACK's republish will say online"
        );
        k.handle_connected();
        assert_eq!(
            k.handle_incoming_publish(&offline),
            Incoming::Publish(vec![presence("online")])
        );
        let online = publish("pifleet/dev/k/status", r#"{"state":"online"}"#);
        assert_eq!(k.handle_incoming_publish(&online), Incoming::Nothing);
        let other = publish("pifleet/dev/other/status", r#"{"state":"offline"}"#);
        assert_eq!(k.handle_incoming_publish(&other), Incoming::Nothing);
    }

    #[test]
    fn a_heartbeat_announces_presence_only_while_connected() {
        let mut k = kitchen();
        assert_eq!(k.handle_heartbeat(), vec![]);
        k.handle_connected();
        assert_eq!(k.handle_heartbeat(), vec![presence("online")]);
        k.handle_disconnected("gone", Duration::from_secs(1), false);
        assert_eq!(k.handle_heartbeat(), vec![]);
    }

    #[test]
    fn the_goodbye_is_retained_offline_presence() {
        assert_eq!(connected().goodbye(), presence("offline"));
    }

    #[test]
    fn changes_made_offline_reach_the_broker_as_the_republish_and_events_follow_it() {
        let mut k = kitchen();
        let mut backlog = Backlog::default();
        let mut queue = |k: &AgentState, out: Vec<Message>| {
            for m in out {
                backlog.push(m, k.is_connected());
            }
        };
        // Offline: a local switch, an input edge and a refused command.
        let order = k
            .switch_order(None, Action::On, StateSource::Legacy, None)
            .unwrap();
        let out = k.handle_switched(order, Ok(())).publish;
        queue(&k, out);
        let out = k.handle_input_edge(0, true);
        queue(&k, out);
        let Incoming::Publish(out) = k.handle_incoming_publish(&command("nope")) else {
            panic!("refused");
        };
        let refusal = out[0].clone();
        queue(&k, out);
        // Only the event waited; the states come with the CONNACK's republish, first.
        let connect = k.handle_connected();
        backlog.reconnect(connect.republish.clone());
        let sent: Vec<_> = std::iter::from_fn(|| backlog.pop()).collect();
        assert_eq!(sent, [connect.republish, vec![refusal]].concat());
        assert_eq!(
            sent[1].payload,
            format!(r#"{{"on":true,"source":"legacy","ts":{T}}}"#).into_bytes()
        );
        assert_eq!(
            sent[3].payload,
            format!(r#"{{"active":true,"ts":{T}}}"#).into_bytes()
        );
    }

    /// Device `k` with outputs `led` (on/off), `lamp` (dimmable, off) and `valve` (on/off,
    /// `pulse_secs = 2`, restorable).
    fn garden() -> AgentState {
        let wire = Wire::new(Topics::new("pifleet").unwrap(), n("k"));
        let mut k = AgentState::new(wire, vec![], clock);
        k.add_output(n("led"), false, false, StateSource::Initial);
        let lamp = k.add_output(n("lamp"), false, false, StateSource::Initial);
        k.make_dimmable(lamp);
        let valve = k.add_output(n("valve"), true, false, StateSource::Initial);
        k.set_pulse_default(valve, 2.0);
        k.handle_connected();
        k
    }

    /// The refusal event a command produces, decoded.
    fn refusal(k: &mut AgentState, payload: &str) -> Event {
        match k.handle_incoming_publish(&command(payload)) {
            Incoming::Publish(out) => serde_json::from_slice(&out[0].payload).unwrap(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn state_of(switched: &Switched) -> OutputState {
        serde_json::from_slice(&switched.publish[0].payload).unwrap()
    }

    #[test]
    fn set_gives_a_dimmable_output_its_level_and_the_acknowledgement_carries_it() {
        let mut k = garden();
        let done = execute(
            &mut k,
            r#"{"id":"s1","action":"set","output":"lamp","value":40}"#,
        );
        let state = state_of(&done);
        assert_eq!((state.on, state.level), (true, Some(40.0)));
        assert_eq!(state.cmd, Some(id("s1")));
        let done = execute(
            &mut k,
            r#"{"id":"s2","action":"set","output":"lamp","value":0}"#,
        );
        assert_eq!(state_of(&done).level, Some(0.0));
        assert!(!state_of(&done).on, "level 0 is off");
    }

    #[test]
    fn on_brings_back_the_last_level_above_zero_and_off_is_zero() {
        let mut k = garden();
        let on = execute(&mut k, r#"{"id":"a","action":"on","output":"lamp"}"#);
        assert_eq!(state_of(&on).level, Some(100.0), "never set: fully on");
        execute(
            &mut k,
            r#"{"id":"b","action":"set","output":"lamp","value":35.5}"#,
        );
        let off = execute(&mut k, r#"{"id":"c","action":"off","output":"lamp"}"#);
        assert_eq!(
            (state_of(&off).on, state_of(&off).level),
            (false, Some(0.0))
        );
        let toggle = execute(&mut k, r#"{"id":"d","action":"toggle","output":"lamp"}"#);
        assert_eq!(state_of(&toggle).level, Some(35.5));
    }

    #[test]
    fn a_level_out_of_range_or_for_an_on_off_output_is_refused_with_a_reason_not_clamped() {
        let mut k = garden();
        for (payload, reason) in [
            (
                r#"{"id":"r1","action":"set","output":"lamp","value":140}"#,
                "outside 0 to 100",
            ),
            (
                r#"{"id":"r2","action":"set","output":"lamp","value":-5}"#,
                "outside 0 to 100",
            ),
            (
                r#"{"id":"r3","action":"set","output":"led","value":40}"#,
                "on/off only",
            ),
            (
                r#"{"id":"r4","action":"set","output":"lamp"}"#,
                "needs a value",
            ),
            (
                r#"{"id":"r5","action":"on","output":"lamp","value":40}"#,
                "only for set",
            ),
        ] {
            let e = refusal(&mut k, payload);
            assert_eq!(e.kind, EventKind::BadCommand, "{payload}");
            assert!(e.message.contains(reason), "{payload}: {}", e.message);
            assert!(e.cmd.is_some(), "the refusal names the command");
        }
        assert_eq!(k.outputs()[1].state.level, Some(0.0), "nothing changed");
    }

    #[test]
    fn on_time_starts_a_pulse_whose_end_is_in_the_state_and_comes_back_as_an_off_order() {
        let mut k = garden();
        let done = execute(
            &mut k,
            r#"{"id":"p1","action":"on","output":"led","on_time":1.5}"#,
        );
        assert_eq!(state_of(&done).off_at, Some(T + 1500));
        let order = k.handle_pulse_end(0).expect("the pulse is running");
        assert_eq!(
            (order.on, order.source, order.cmd.clone()),
            (false, StateSource::Pulse, None)
        );
        let end = k.handle_switched(order, Ok(()));
        let state = state_of(&end);
        assert_eq!(
            (state.on, state.source, state.off_at),
            (false, StateSource::Pulse, None)
        );
        assert_eq!(k.handle_pulse_end(0), None, "ended: nothing more to do");
    }

    #[test]
    fn a_new_command_to_the_same_output_ends_the_running_pulse() {
        let mut k = garden();
        execute(
            &mut k,
            r#"{"id":"p1","action":"on","output":"led","on_time":10}"#,
        );
        let plain = execute(&mut k, r#"{"id":"p2","action":"on","output":"led"}"#);
        assert_eq!(
            state_of(&plain).off_at,
            None,
            "a plain on cancels the pulse"
        );
        assert_eq!(
            k.handle_pulse_end(0),
            None,
            "the old timer firing changes nothing"
        );
        let again = execute(
            &mut k,
            r#"{"id":"p3","action":"on","output":"led","on_time":3}"#,
        );
        assert_eq!(
            state_of(&again).off_at,
            Some(T + 3000),
            "a new pulse replaces it"
        );
    }

    #[test]
    fn pulse_secs_makes_every_switch_on_a_pulse_unless_the_command_has_its_own() {
        let mut k = garden();
        let on = execute(&mut k, r#"{"id":"v1","action":"on","output":"valve"}"#);
        assert_eq!(state_of(&on).off_at, Some(T + 2000));
        let own = execute(
            &mut k,
            r#"{"id":"v2","action":"on","output":"valve","on_time":0.5}"#,
        );
        assert_eq!(state_of(&own).off_at, Some(T + 500));
        let off = execute(&mut k, r#"{"id":"v3","action":"off","output":"valve"}"#);
        assert_eq!(state_of(&off).off_at, None);
        let toggle = execute(&mut k, r#"{"id":"v4","action":"toggle","output":"valve"}"#);
        assert_eq!(
            state_of(&toggle).off_at,
            Some(T + 2000),
            "toggled on: a pulse too"
        );
    }

    #[test]
    fn on_time_goes_only_with_a_switch_on_and_within_a_day() {
        let mut k = garden();
        for (payload, reason) in [
            (
                r#"{"id":"t1","action":"off","output":"led","on_time":2}"#,
                "not with off",
            ),
            (
                r#"{"id":"t2","action":"on","output":"led","on_time":0}"#,
                "more than 0",
            ),
            (
                r#"{"id":"t3","action":"on","output":"led","on_time":90000}"#,
                "at most 86400",
            ),
            (
                r#"{"id":"t4","action":"set","output":"lamp","value":0,"on_time":2}"#,
                "not with set",
            ),
        ] {
            let e = refusal(&mut k, payload);
            assert_eq!(e.kind, EventKind::BadCommand, "{payload}");
            assert!(e.message.contains(reason), "{payload}: {}", e.message);
        }
        let dim = execute(
            &mut k,
            r#"{"id":"t5","action":"set","output":"lamp","value":20,"on_time":2}"#,
        );
        assert_eq!(state_of(&dim).off_at, Some(T + 2000), "a dimmed pulse");
        let end = k.handle_pulse_end(1).unwrap();
        assert_eq!(end.level, Some(0.0));
    }

    #[test]
    fn an_output_in_a_pulse_is_saved_as_off_so_a_restart_mid_pulse_comes_up_off() {
        let mut k = garden();
        let on = execute(&mut k, r#"{"id":"v1","action":"on","output":"valve"}"#);
        assert!(!on.persist.unwrap()["valve"], "saved as off");
        assert!(k.outputs()[2].state.on, "while it is on now");
    }

    #[test]
    fn presence_lists_the_dimmable_outputs() {
        let k = garden();
        let p = announce::presence(&k, PresenceState::Online);
        assert_eq!(p.dimmable, vec![n("lamp")]);
    }

    /// A plain payload on a per-output topic, through both steps with a pin that works.
    fn plain(k: &mut AgentState, topic: &str, payload: &str) -> Incoming {
        k.handle_incoming_publish(&publish(topic, payload))
    }

    #[test]
    fn plain_on_and_off_switch_an_output_with_a_generated_id_that_the_state_acknowledges() {
        let mut k = garden();
        let Incoming::Switch(order) = plain(&mut k, "pifleet/dev/k/cmnd/led", "ON") else {
            panic!("ON switches")
        };
        let id = order.cmd.clone().expect("a generated command id");
        assert!(id.is_valid());
        let done = k.handle_switched(order, Ok(()));
        assert_eq!(done.publish[0].topic, "pifleet/dev/k/out/led");
        let state = state_of(&done);
        assert!(state.on);
        assert_eq!(
            (state.cmd, state.source),
            (Some(id), StateSource::Command),
            "acknowledged like any command"
        );
        let Incoming::Switch(order) = plain(&mut k, "pifleet/dev/k/cmnd/led", "OFF") else {
            panic!("OFF switches")
        };
        assert!(!order.on);
        assert_ne!(
            order.cmd,
            state_of(&done).cmd,
            "every plain command has its own id"
        );
    }

    #[test]
    fn a_plain_level_sets_a_dimmable_output_and_on_brings_that_level_back() {
        let mut k = garden();
        let Incoming::Switch(order) = plain(&mut k, "pifleet/dev/k/cmnd/lamp/level", "40") else {
            panic!("a level sets")
        };
        let done = k.handle_switched(order, Ok(()));
        assert_eq!(
            (state_of(&done).on, state_of(&done).level),
            (true, Some(40.0))
        );
        // What Home Assistant sends next when a light is switched on at a brightness.
        let Incoming::Switch(order) = plain(&mut k, "pifleet/dev/k/cmnd/lamp", "ON") else {
            panic!("ON switches")
        };
        assert_eq!(order.level, Some(40.0));
    }

    #[test]
    fn plain_payloads_that_are_wrong_are_refused_with_an_event_and_change_nothing() {
        let mut k = garden();
        for (topic, payload, reason) in [
            ("pifleet/dev/k/cmnd/led", "TOGGLE", "neither ON nor OFF"),
            ("pifleet/dev/k/cmnd/lamp/level", "bright", "not a level"),
            ("pifleet/dev/k/cmnd/lamp/level", "140", "outside 0 to 100"),
            ("pifleet/dev/k/cmnd/led/level", "40", "on/off only"),
            ("pifleet/dev/k/cmnd/nope", "ON", "nope"),
        ] {
            let Incoming::Publish(out) = plain(&mut k, topic, payload) else {
                panic!("{topic} {payload}: expected a refusal")
            };
            let e: Event = serde_json::from_slice(&out[0].payload).unwrap();
            assert!(
                e.message.contains(reason),
                "{topic} {payload}: {}",
                e.message
            );
        }
        assert_eq!(k.outputs()[1].state.level, Some(0.0), "nothing changed");
    }

    #[test]
    fn a_retained_or_foreign_plain_command_is_ignored() {
        let mut k = garden();
        let mut p = publish("pifleet/dev/k/cmnd/led", "ON");
        p.retain = true;
        assert_eq!(k.handle_incoming_publish(&p), Incoming::Nothing);
        assert_eq!(
            plain(&mut k, "pifleet/dev/other/cmnd/led", "ON"),
            Incoming::Nothing
        );
    }

    #[test]
    fn presence_announces_each_sensor_interval() {
        let mut k = kitchen();
        k.set_sensor_interval(0, 2.5);
        let p = announce::presence(&k, PresenceState::Online);
        assert_eq!(p.intervals.get(&n("cpu")), Some(&2.5));
        assert_eq!(p.intervals.get(&n("probe")), None, "unknown until set");
    }
}
