//! The `pifleet` CLI's `--json` output. These types are the documented contract for scripts
//! (see `docs/protocol.md`, section "CLI JSON"); the CLI's own end-to-end tests decode its output
//! with them, so a change here that breaks scripts also breaks a test.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
