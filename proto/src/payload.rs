//! JSON payloads. Field names are short and stable; optional fields are omitted rather than
//! `null` so that a hand-written `mosquitto_pub -m '{"id":"1","action":"on"}'` is a valid command.
//! Unknown fields are ignored on input, so newer agents and older controllers interoperate.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Whether a device is connected. `offline` is also what the broker publishes on the device's
/// behalf (MQTT last will) when the connection dies without a goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Online,
    Offline,
}

/// Retained on `<prefix>/dev/<device>/status`: what a device is and whether it is connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub state: PresenceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Name>,
    /// The outputs among `outputs` that are dimmable (`kind = "pwm"`: `set` with a level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimmable: Vec<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<Name>,
    /// How often each sensor among `sensors` is read, in seconds (`interval_secs`): what a
    /// consumer needs to tell a stale reading from a slow one (Home Assistant's `expire_after`).
    /// Absent from agents before it was added; a sensor missing here has an unknown interval.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub intervals: BTreeMap<Name, f64>,
    /// When the agent process started (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When this message was published (Unix ms); absent in the last will, which the broker
    /// publishes at an unknown later time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

impl Presence {
    /// The last will: fixed at connect time, so it carries no timestamp.
    pub fn will() -> Self {
        Presence {
            state: PresenceState::Offline,
            version: None,
            groups: vec![],
            outputs: vec![],
            dimmable: vec![],
            inputs: vec![],
            sensors: vec![],
            intervals: BTreeMap::new(),
            started_at: None,
            ts: None,
        }
    }

    pub fn is_online(&self) -> bool {
        self.state == PresenceState::Online
    }
}

/// What to do with an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    On,
    Off,
    Toggle,
    /// Set a dimmable (`kind = "pwm"`) output to [`Command::value`], a level in percent.
    Set,
}

impl Action {
    /// The on/off after applying this action to an output that is `was_on`. For [`Action::Set`]
    /// that depends on the value: see [`Level::is_on`].
    pub fn apply(self, was_on: bool) -> bool {
        match self {
            Action::On => true,
            Action::Off => false,
            Action::Toggle => !was_on,
            Action::Set => was_on,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::On => "on",
            Action::Off => "off",
            Action::Toggle => "toggle",
            Action::Set => "set",
        })
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Action::On),
            "off" => Ok(Action::Off),
            "toggle" => Ok(Action::Toggle),
            "set" => Ok(Action::Set),
            other => Err(format!(
                "unknown action {other:?}: expected on, off, toggle or set"
            )),
        }
    }
}

/// The level of a dimmable output, in percent: 0 (off) to 100 (fully on). Any fraction is
/// allowed (a PWM duty cycle is continuous); NaN and values outside 0–100 are not levels.
pub struct Level;

impl Level {
    pub const MAX: f64 = 100.0;

    /// Why `value` is not a level, if it is not one. Values are refused, never clamped: a
    /// controller asking for 140 % has a bug the user should see.
    pub fn check(value: f64) -> Result<f64, String> {
        if value.is_finite() && (0.0..=Level::MAX).contains(&value) {
            Ok(value)
        } else {
            Err(format!("level {value} is outside 0 to 100 (percent)"))
        }
    }

    pub fn is_on(value: f64) -> bool {
        value > 0.0
    }
}

/// The longest pulse (`on_time`, `pulse_secs`): one day. Longer timers are schedules, not
/// pulses, and a typo (`on_time: 36000` for 3.6 s) should not keep a valve open for ten hours.
pub const MAX_PULSE_SECS: f64 = 86_400.0;

/// Why `secs` is not a pulse length, if it is not one.
pub fn check_pulse_secs(secs: f64) -> Result<f64, String> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_PULSE_SECS {
        Ok(secs)
    } else {
        Err(format!(
            "on_time {secs} must be more than 0 and at most {MAX_PULSE_SECS} seconds"
        ))
    }
}

/// A command id: chosen by the sender, echoed in the output state it causes (the acknowledgement)
/// and in any refusal event. Any non-empty string up to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(pub String);

impl CommandId {
    /// A fresh id: 64 random bits from the operating system, so acknowledgements from a fleet
    /// never match another controller's command.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 8];
        // The OS generator does not fail on the systems pifleet runs on; should it, the clock
        // still makes ids distinct between commands.
        if getrandom::fill(&mut bytes).is_err() {
            bytes = (crate::time::now_ms() ^ u64::from(std::process::id()) << 40).to_le_bytes();
        }
        CommandId(format!("{:016x}", u64::from_le_bytes(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_valid(&self) -> bool {
        !self.0.is_empty() && self.0.chars().count() <= 64
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Published (QoS 1, never retained) on a command topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: CommandId,
    pub action: Action,
    /// Which output; absent means the device's first configured output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Name>,
    /// For `set`: the level in percent ([`Level`]); refused with any other action and on an
    /// output that is not dimmable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A pulse: switch on, then off again after this many seconds (fractions allowed), on the
    /// device's own timer, which keeps running if the network drops. With `on`, or `set` to a
    /// level above 0; see [`check_pulse_secs`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_time: Option<f64>,
}

impl Command {
    /// An `on`/`off`/`toggle` of `output` (the first one when `None`), with a fresh id.
    pub fn switch(action: Action, output: Option<Name>) -> Command {
        Command {
            id: CommandId::generate(),
            action,
            output,
            value: None,
            on_time: None,
        }
    }
}

/// What last changed an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateSource {
    /// The configured initial state at agent start.
    Initial,
    /// Restored from the agent's state file at start.
    Restore,
    /// An MQTT command (its id is in `cmd`).
    Command,
    /// A legacy-protocol client connected to the agent directly.
    Legacy,
    /// The end of a pulse: the device's own timer switched the output off (`on_time`,
    /// `pulse_secs`).
    Pulse,
}

/// Retained on `<prefix>/dev/<device>/out/<output>`. `cmd` is the acknowledgement: a controller
/// that sent command `X` waits for a state with `cmd == X`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputState {
    pub on: bool,
    /// A dimmable output's level in percent (`on` is `level > 0`); absent for on/off outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<f64>,
    /// While a pulse runs: when the device will switch the output off (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<CommandId>,
    pub source: StateSource,
    pub ts: u64,
}

/// Retained on `<prefix>/dev/<device>/in/<input>`. `active` is the logical level (after
/// active-low inversion): for a button, pressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputState {
    pub active: bool,
    pub ts: u64,
}

/// Retained on `<prefix>/dev/<device>/sensor/<sensor>`: the latest reading.
///
/// A configured sensor that measures several quantities (a BME280: temperature, humidity,
/// pressure) publishes one ordinary reading per quantity, each on a topic of its own named
/// `<sensor>_<quantity>`, with `quantity` naming what it is; a controller that knows nothing of
/// `quantity` sees plain sensors (docs/protocol.md, "Sensor reading").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorReading {
    pub value: f64,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Which of its sensor's quantities this is (`temperature`, `humidity`, `pressure`, …);
    /// absent for a sensor that measures one thing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    pub ts: u64,
}

/// The class of an event; unknown kinds from newer agents decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A command payload that is not valid JSON or not a valid command.
    BadCommand,
    /// A command naming an output this device does not have, or a device without outputs.
    UnknownOutput,
    /// Setting a GPIO pin failed.
    GpioError,
    /// A sensor could not be read (the agent keeps running and retries at the next interval).
    SensorError,
    /// A sensor that had failed can be read again.
    SensorRecovered,
    /// The state file could not be written.
    StateFileError,
    /// The broker refused one of the device's subscriptions (SUBACK return code 0x80), e.g. a
    /// group its credentials do not list: commands to it will not arrive. `filter` names it.
    SubscriptionRefused,
    #[serde(other)]
    Other,
}

/// Published (QoS 1, not retained) on `<prefix>/dev/<device>/event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub message: String,
    /// The command this event refuses, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<CommandId>,
    /// The subscription filter a `subscription_refused` event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    pub ts: u64,
}

#[cfg(test)]
mod test {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn command_fixtures() {
        let c: Command = serde_json::from_str(r#"{"id":"1","action":"on"}"#).unwrap();
        assert_eq!(
            c,
            Command {
                id: CommandId("1".into()),
                action: Action::On,
                output: None,
                value: None,
                on_time: None,
            }
        );
        let c = Command {
            id: CommandId("a1".into()),
            action: Action::Toggle,
            output: Some(n("led")),
            value: None,
            on_time: None,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"id":"a1","action":"toggle","output":"led"}"#
        );
        // A level, and a pulse (docs/protocol.md "Command").
        let c: Command =
            serde_json::from_str(r#"{"id":"d1","action":"set","output":"lamp","value":40}"#)
                .unwrap();
        assert_eq!(
            (c.action, c.value, c.on_time),
            (Action::Set, Some(40.0), None)
        );
        let c: Command =
            serde_json::from_str(r#"{"id":"p1","action":"on","output":"valve","on_time":2.5}"#)
                .unwrap();
        assert_eq!(
            (c.action, c.value, c.on_time),
            (Action::On, None, Some(2.5))
        );
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"id":"p1","action":"on","output":"valve","on_time":2.5}"#
        );
        // Unknown fields are ignored; unknown actions and bad output names are refused.
        assert!(serde_json::from_str::<Command>(r#"{"id":"1","action":"on","x":1}"#).is_ok());
        assert!(serde_json::from_str::<Command>(r#"{"id":"1","action":"blink"}"#).is_err());
        assert!(
            serde_json::from_str::<Command>(r#"{"id":"1","action":"on","output":"a/b"}"#).is_err()
        );
    }

    #[test]
    fn presence_fixtures() {
        assert_eq!(
            serde_json::to_string(&Presence::will()).unwrap(),
            r#"{"state":"offline"}"#
        );
        let p: Presence = serde_json::from_str(
            r#"{"state":"online","version":"0.1.0","groups":["kitchen"],"outputs":["led"],
                "inputs":["button"],"sensors":["cpu"],"started_at":1700000000000,"ts":1700000000500}"#,
        )
        .unwrap();
        assert!(p.is_online());
        assert_eq!(p.groups, vec![n("kitchen")]);
        assert_eq!(p.started_at, Some(1_700_000_000_000));
        assert!(p.intervals.is_empty());
        // The fixture of docs/protocol.md, "Presence": a pwm output and sensor intervals.
        let fixture = r#"{"state":"online","version":"0.1.0","outputs":["led","lamp"],"dimmable":["lamp"],"inputs":["button"],"sensors":["cpu","room"],"intervals":{"cpu":10.0,"room":30.0},"started_at":1700000000000,"ts":1700000000500}"#;
        let p: Presence = serde_json::from_str(fixture).unwrap();
        assert_eq!(p.intervals.get(&n("room")), Some(&30.0));
        assert_eq!(serde_json::to_string(&p).unwrap(), fixture);
    }

    #[test]
    fn state_fixtures() {
        let s = OutputState {
            on: true,
            level: None,
            off_at: None,
            cmd: Some(CommandId("c1".into())),
            source: StateSource::Command,
            ts: 5,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"on":true,"cmd":"c1","source":"command","ts":5}"#
        );
        // A dimmed output during a pulse, and the pulse's end.
        let s: OutputState = serde_json::from_str(
            r#"{"on":true,"level":40.0,"off_at":1700000002500,"cmd":"p1","source":"command","ts":1700000000000}"#,
        )
        .unwrap();
        assert_eq!((s.level, s.off_at), (Some(40.0), Some(1_700_000_002_500)));
        let s: OutputState =
            serde_json::from_str(r#"{"on":false,"level":0.0,"source":"pulse","ts":1700000002500}"#)
                .unwrap();
        assert_eq!(
            (s.on, s.source, s.off_at),
            (false, StateSource::Pulse, None)
        );
        let i: InputState = serde_json::from_str(r#"{"active":false,"ts":7}"#).unwrap();
        assert!(!i.active);
        let r: SensorReading =
            serde_json::from_str(r#"{"value":41.5,"unit":"°C","kind":"cpu_temp","ts":9}"#).unwrap();
        assert_eq!(r.value, 41.5);
        assert_eq!(r.quantity, None);
    }

    #[test]
    fn sensor_reading_fixtures_of_docs_protocol() {
        // docs/protocol.md, "Sensor reading": one sensor, one quantity, and the three readings
        // of a BME280 named `env` (on sensor/env_temperature, env_humidity, env_pressure).
        let single = r#"{"value":41.5,"unit":"°C","kind":"cpu_temp","ts":1700000003000}"#;
        let r: SensorReading = serde_json::from_str(single).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), single);
        let env = [
            (
                r#"{"value":25.08,"unit":"°C","kind":"bme280","quantity":"temperature","ts":1700000003000}"#,
                25.08,
                "temperature",
            ),
            (
                r#"{"value":45.05,"unit":"%","kind":"bme280","quantity":"humidity","ts":1700000003000}"#,
                45.05,
                "humidity",
            ),
            (
                r#"{"value":1006.53,"unit":"hPa","kind":"bme280","quantity":"pressure","ts":1700000003000}"#,
                1006.53,
                "pressure",
            ),
        ];
        for (fixture, value, quantity) in env {
            let r: SensorReading = serde_json::from_str(fixture).unwrap();
            assert_eq!((r.value, r.quantity.as_deref()), (value, Some(quantity)));
            assert_eq!(r.kind.as_deref(), Some("bme280"));
            assert_eq!(serde_json::to_string(&r).unwrap(), fixture);
        }
        // A health flag: 0 or 1, no unit.
        let flag = r#"{"value":1.0,"unit":"","kind":"throttled","quantity":"undervoltage_occurred","ts":1700000003000}"#;
        let r: SensorReading = serde_json::from_str(flag).unwrap();
        assert_eq!((r.value, r.unit.as_str()), (1.0, ""));
        assert_eq!(serde_json::to_string(&r).unwrap(), flag);
    }

    #[test]
    fn event_kinds_are_forward_compatible() {
        let e: Event =
            serde_json::from_str(r#"{"kind":"brand_new","message":"m","ts":1}"#).unwrap();
        assert_eq!(e.kind, EventKind::Other);
        let e = Event {
            kind: EventKind::UnknownOutput,
            message: "no output 'fan'".into(),
            cmd: Some(CommandId("x".into())),
            filter: None,
            ts: 2,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"unknown_output","message":"no output 'fan'","cmd":"x","ts":2}"#
        );
    }

    #[test]
    fn a_refused_subscription_event_names_its_filter() {
        // The fixture of docs/protocol.md, "Event".
        let fixture = r#"{"kind":"subscription_refused","message":"broker refused subscription to group 'upstairs' (pifleet/group/upstairs/cmnd): check the device's groups in the broker's credentials","filter":"pifleet/group/upstairs/cmnd","ts":1700000005000}"#;
        let e: Event = serde_json::from_str(fixture).unwrap();
        assert_eq!(e.kind, EventKind::SubscriptionRefused);
        assert_eq!(e.filter.as_deref(), Some("pifleet/group/upstairs/cmnd"));
        assert_eq!(e.cmd, None);
        assert_eq!(serde_json::to_string(&e).unwrap(), fixture);
    }

    #[test]
    fn actions() {
        assert!(Action::On.apply(false));
        assert!(!Action::Off.apply(true));
        assert!(Action::Toggle.apply(false));
        assert!(!Action::Toggle.apply(true));
        assert_eq!("toggle".parse::<Action>(), Ok(Action::Toggle));
        assert_eq!("set".parse::<Action>(), Ok(Action::Set));
        assert_eq!(Level::check(40.0), Ok(40.0));
        assert!(Level::check(100.5).is_err() && Level::check(-1.0).is_err());
        assert!(Level::check(f64::NAN).is_err());
        assert!(check_pulse_secs(0.0).is_err() && check_pulse_secs(86_401.0).is_err());
        assert_eq!(check_pulse_secs(0.25), Ok(0.25));
        assert!("blink".parse::<Action>().is_err());
    }

    #[test]
    fn generated_ids_differ() {
        let a = CommandId::generate();
        let b = CommandId::generate();
        assert_ne!(a, b);
        assert!(a.is_valid() && a.as_str().len() == 16);
    }
}
