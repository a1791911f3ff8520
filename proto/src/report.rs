//! The `pifleet` CLI's `--json` output. These types are the documented contract for scripts
//! (see `docs/protocol.md`, section "CLI JSON"); the CLI's own end-to-end tests decode its output
//! with them, so a change here that breaks scripts also breaks a test. [`SwitchRows`] builds a
//! switch report's rows from a command's replies, for the CLI and the dashboard alike.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fleet::{CommandReply, Fleet};
use crate::name::Name;
use crate::payload::{Action, CommandId, Event, InputState, OutputState, Presence, SensorReading};

/// One device as `pifleet status` shows it, built from its retained messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Output name to its last reported state.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputState>,
    /// Input name to its last reported state.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputState>,
    /// Sensor name to its latest reading.
    #[serde(default)]
    pub sensors: BTreeMap<String, SensorReading>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// The newest timestamp among everything this device reported (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// `pifleet status --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub devices: Vec<DeviceStatus>,
}

/// How one targeted device answered a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The device reported the new state with this command's id.
    Confirmed,
    /// The device refused the command (unknown output, GPIO failure); see `message`.
    Refused,
    /// The device was online but did not confirm within the timeout.
    TimedOut,
    /// The device's retained presence says offline: the command was not waited for.
    Offline,
    /// No device of that name has ever announced itself on this broker.
    Unknown,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        self == Outcome::Confirmed
    }
}

/// One row of a switch report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchResult {
    pub device: String,
    pub outcome: Outcome,
    /// The output's state after the command (when confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// A dimmable output's level after the command, in percent (when confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<f64>,
    /// A pulse's end, when the command started one (Unix ms; the device switches off then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_at: Option<u64>,
    /// Time from publishing the command to receiving the acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Why, for refused, timed-out, offline and unknown devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `pifleet on|off|toggle|set --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchReport {
    pub command_id: CommandId,
    pub action: Action,
    /// `set`'s level, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The pulse asked for (`--for`), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub results: Vec<SwitchResult>,
}

impl SwitchReport {
    pub fn all_confirmed(&self) -> bool {
        self.results.iter().all(|r| r.outcome.is_success())
    }
}

/// The rows of a [`SwitchReport`], built as a command's replies come in. `pifleet on|off|…` and
/// the dashboard's `POST /api/command` both fill it, so that a device counts as confirmed,
/// refused, offline, unknown or timed out by one rule, with the same words, wherever the
/// command came from. Sans-IO: the caller publishes, waits, and hands over each
/// [`CommandReply`] with the time since it published.
#[derive(Debug, Clone, Default)]
pub struct SwitchRows {
    rows: BTreeMap<Name, SwitchResult>,
    waiting: BTreeSet<Name>,
}

impl SwitchRows {
    pub fn new() -> SwitchRows {
        SwitchRows::default()
    }

    /// A targeted device, as `fleet` knows it. An online one is waited for (`true`). An offline
    /// or unknown one gets its row at once and is not waited for, so that `off --all` on a fleet
    /// with a dead Pi answers at once instead of after the timeout.
    pub fn target(&mut self, fleet: &Fleet, device: &Name) -> bool {
        let (outcome, message) = match fleet.get(device) {
            Some(d) if d.online => {
                self.waiting.insert(device.clone());
                return true;
            }
            Some(_) => (Outcome::Offline, "offline: not waited for"),
            None => (
                Outcome::Unknown,
                "no such device has announced itself on this broker",
            ),
        };
        self.rows
            .insert(device.clone(), unanswered(device, outcome, message));
        false
    }

    /// Whether a targeted device has not answered yet.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// A reply that arrived `elapsed` after command `id` was published. Replies to other
    /// commands, and from devices not waited for or already answered, change nothing: the
    /// first answer is the device's row.
    pub fn reply(&mut self, id: &CommandId, reply: CommandReply, elapsed: Duration) {
        if !reply.answers(id) || !self.waiting.remove(reply.device()) {
            return;
        }
        let (device, row) = match reply {
            CommandReply::Confirmed { device, state, .. } => {
                let row = SwitchResult {
                    device: device.to_string(),
                    outcome: Outcome::Confirmed,
                    on: Some(state.on),
                    level: state.level,
                    off_at: state.off_at,
                    // Milliseconds to a tenth: finer is noise from the scheduler.
                    latency_ms: Some((elapsed.as_secs_f64() * 10_000.0).round() / 10.0),
                    message: None,
                };
                (device, row)
            }
            CommandReply::Refused { device, reason, .. } => {
                let row = unanswered(&device, Outcome::Refused, &reason);
                (device, row)
            }
            CommandReply::WentOffline { device } => {
                let row = unanswered(&device, Outcome::Offline, "went offline before confirming");
                (device, row)
            }
        };
        self.rows.insert(device, row);
    }

    /// The wait is over after `timeout_s` seconds: every device still waited for timed out.
    /// The rows, one per targeted device, in name order.
    pub fn finish(mut self, timeout_s: f64) -> Vec<SwitchResult> {
        let message = format!("no confirmation within {timeout_s} s");
        for device in std::mem::take(&mut self.waiting) {
            let row = unanswered(&device, Outcome::TimedOut, &message);
            self.rows.insert(device, row);
        }
        self.rows.into_values().collect()
    }
}

/// A row without a confirmed state: only the outcome and why.
fn unanswered(device: &Name, outcome: Outcome, message: &str) -> SwitchResult {
    SwitchResult {
        device: device.to_string(),
        outcome,
        on: None,
        level: None,
        off_at: None,
        latency_ms: None,
        message: Some(message.to_string()),
    }
}

/// One line of `pifleet watch --json` (JSON Lines: one object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    Presence {
        device: Name,
        presence: Presence,
    },
    Output {
        device: Name,
        output: Name,
        state: OutputState,
    },
    Input {
        device: Name,
        input: Name,
        state: InputState,
    },
    Sensor {
        device: Name,
        sensor: Name,
        reading: SensorReading,
    },
    Event {
        device: Name,
        event: Event,
    },
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::fleet::decode;
    use crate::topic::Topics;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn reply(topic: &str, payload: &str) -> CommandReply {
        let event = decode(&Topics::default(), topic, payload.as_bytes())
            .unwrap()
            .unwrap();
        CommandReply::from_event(&event).unwrap()
    }

    #[test]
    fn each_targeted_device_gets_one_row_confirmed_refused_offline_unknown_or_timed_out() {
        let t = Topics::default();
        let mut fleet = Fleet::new();
        for (device, state) in [
            ("kitchen", "online"),
            ("porch", "online"),
            ("hall", "online"),
            ("attic", "online"),
            ("garage", "offline"),
        ] {
            let topic = format!("pifleet/dev/{device}/status");
            let payload = format!(r#"{{"state":"{state}","version":"0.1.0","groups":[],"ts":1}}"#);
            fleet.apply(&decode(&t, &topic, payload.as_bytes()).unwrap().unwrap());
        }
        let mut rows = SwitchRows::new();
        for device in ["kitchen", "porch", "hall", "attic"] {
            assert!(rows.target(&fleet, &name(device)), "{device} is online");
        }
        assert!(
            !rows.target(&fleet, &name("garage")),
            "offline: not waited for"
        );
        assert!(!rows.target(&fleet, &name("cellar")), "never announced");
        assert!(rows.is_waiting());

        let id = CommandId("c1".into());
        let ms = Duration::from_micros(12_345);
        let confirm = |cmd: &str, level: u8| {
            let state =
                format!(r#"{{"on":true,"level":{level},"cmd":"{cmd}","source":"command","ts":5}}"#);
            reply("pifleet/dev/kitchen/out/led", &state)
        };
        rows.reply(&id, confirm("c2", 10), ms);
        rows.reply(&id, confirm("c1", 40), ms);
        rows.reply(&id, confirm("c1", 70), ms);
        let refusal = r#"{"kind":"unknown_output","message":"no output 'x'","cmd":"c1","ts":6}"#;
        rows.reply(&id, reply("pifleet/dev/porch/event", refusal), ms);
        let gone = r#"{"state":"offline"}"#;
        rows.reply(&id, reply("pifleet/dev/hall/status", gone), ms);
        rows.reply(&id, reply("pifleet/dev/kitchen/status", gone), ms);
        rows.reply(&id, reply("pifleet/dev/garage/status", gone), ms);
        assert!(rows.is_waiting(), "attic has not answered");

        let rows: BTreeMap<String, SwitchResult> = rows
            .finish(2.5)
            .into_iter()
            .map(|r| (r.device.clone(), r))
            .collect();
        assert_eq!(rows.len(), 6, "{rows:?}");
        let kitchen = &rows["kitchen"];
        assert_eq!(
            (
                kitchen.outcome,
                kitchen.on,
                kitchen.level,
                kitchen.latency_ms
            ),
            (Outcome::Confirmed, Some(true), Some(40.0), Some(12.3)),
            "its own command's confirmation, not another's, and the first answer stays"
        );
        assert_eq!(kitchen.message, None);
        let row = |device: &str| {
            let r = &rows[device];
            assert_eq!((r.on, r.latency_ms), (None, None), "{device}");
            (r.outcome, r.message.as_deref().unwrap())
        };
        assert_eq!(row("porch"), (Outcome::Refused, "no output 'x'"));
        assert_eq!(
            row("hall"),
            (Outcome::Offline, "went offline before confirming")
        );
        assert_eq!(row("garage"), (Outcome::Offline, "offline: not waited for"));
        assert_eq!(
            row("cellar"),
            (
                Outcome::Unknown,
                "no such device has announced itself on this broker"
            )
        );
        assert_eq!(
            row("attic"),
            (Outcome::TimedOut, "no confirmation within 2.5 s")
        );
    }
}
