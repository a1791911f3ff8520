//! A fleet view assembled from the messages under `<prefix>/dev/+/#`. The controller's `status`
//! and `watch`, the switch command's target resolution and the broker's legacy shim all need the
//! same answer to "which devices exist, are they online, what did they last report", so it is
//! computed once, here, from typed topics and payloads.

use std::collections::BTreeMap;

use crate::name::Name;
use crate::payload::{CommandId, Event, InputState, OutputState, Presence, SensorReading};
use crate::report::{DeviceStatus, FleetStatus, WatchEvent};
use crate::topic::{Topic, Topics};

/// Why a message under the prefix could not be used.
#[derive(Debug, thiserror::Error)]
#[error("malformed payload on {topic}: {source}")]
pub struct PayloadError {
    pub topic: String,
    #[source]
    pub source: serde_json::Error,
}

/// Decodes one message into a typed fleet event. `Ok(None)`: not a device-reported topic
/// (commands, foreign topics, or an empty payload, which is how a retained message is deleted).
pub fn decode(
    topics: &Topics,
    topic: &str,
    payload: &[u8],
) -> Result<Option<WatchEvent>, PayloadError> {
    let Some(parsed) = topics.parse(topic) else {
        return Ok(None);
    };
    if payload.is_empty() {
        return Ok(None);
    }
    let err = |source| PayloadError {
        topic: topic.to_string(),
        source,
    };
    Ok(Some(match parsed {
        Topic::Status { device } => WatchEvent::Presence {
            device,
            presence: serde_json::from_slice::<Presence>(payload).map_err(err)?,
        },
        Topic::Output { device, output } => WatchEvent::Output {
            device,
            output,
            state: serde_json::from_slice::<OutputState>(payload).map_err(err)?,
        },
        Topic::Input { device, input } => WatchEvent::Input {
            device,
            input,
            state: serde_json::from_slice::<InputState>(payload).map_err(err)?,
        },
        Topic::Sensor { device, sensor } => WatchEvent::Sensor {
            device,
            sensor,
            reading: serde_json::from_slice::<SensorReading>(payload).map_err(err)?,
        },
        Topic::Event { device } => WatchEvent::Event {
            device,
            event: serde_json::from_slice::<Event>(payload).map_err(err)?,
        },
        Topic::Command(_) | Topic::PlainCommand { .. } => return Ok(None),
    }))
}

/// Everything known about every device, keyed by name.
#[derive(Debug, Default, Clone)]
pub struct Fleet {
    devices: BTreeMap<Name, DeviceStatus>,
}

impl Fleet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event into the view.
    pub fn apply(&mut self, event: &WatchEvent) {
        let (device, ts) = match event {
            WatchEvent::Presence { device, presence } => (device, presence.ts),
            WatchEvent::Output { device, state, .. } => (device, Some(state.ts)),
            WatchEvent::Input { device, state, .. } => (device, Some(state.ts)),
            WatchEvent::Sensor {
                device, reading, ..
            } => (device, Some(reading.ts)),
            WatchEvent::Event { device, event } => (device, Some(event.ts)),
        };
        let d = self
            .devices
            .entry(device.clone())
            .or_insert_with(|| DeviceStatus {
                device: device.to_string(),
                ..Default::default()
            });
        if let Some(ts) = ts {
            d.last_seen = Some(d.last_seen.map_or(ts, |s| s.max(ts)));
        }
        match event {
            WatchEvent::Presence { presence, .. } => {
                d.online = presence.is_online();
                // The last will carries no description; keep what the device said when online.
                // A goodbye (offline with a description) updates it.
                if presence.is_online() || !presence.groups.is_empty() || presence.version.is_some()
                {
                    d.version.clone_from(&presence.version);
                    d.groups = presence.groups.iter().map(|g| g.to_string()).collect();
                    d.started_at = presence.started_at;
                }
            }
            WatchEvent::Output { output, state, .. } => {
                d.outputs.insert(output.to_string(), state.clone());
            }
            WatchEvent::Input { input, state, .. } => {
                d.inputs.insert(input.to_string(), state.clone());
            }
            WatchEvent::Sensor {
                sensor, reading, ..
            } => {
                d.sensors.insert(sensor.to_string(), reading.clone());
            }
            WatchEvent::Event { .. } => {}
        }
    }

    pub fn get(&self, device: &Name) -> Option<&DeviceStatus> {
        self.devices.get(device)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Devices currently online.
    pub fn online(&self) -> impl Iterator<Item = (&Name, &DeviceStatus)> {
        self.devices.iter().filter(|(_, d)| d.online)
    }

    /// Online members of a group.
    pub fn group_members<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Name> + 'a {
        self.online()
            .filter(move |(_, d)| d.groups.iter().any(|g| g == group))
            .map(|(n, _)| n)
    }

    /// Devices that were ever seen in a group, online or not (to report offline members).
    pub fn group_known<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Name> + 'a {
        self.devices
            .iter()
            .filter(move |(_, d)| d.groups.iter().any(|g| g == group))
            .map(|(n, _)| n)
    }

    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.devices.keys()
    }

    /// The snapshot for `status`, limited to `only` when it is non-empty.
    pub fn status(&self, only: &[Name]) -> FleetStatus {
        FleetStatus {
            devices: self
                .devices
                .iter()
                .filter(|(n, _)| only.is_empty() || only.contains(n))
                .map(|(_, d)| d.clone())
                .collect(),
        }
    }
}

/// What a device message says about a command sent to it: the one rule by which a command
/// counts as confirmed, refused or cut short, shared by the CLI and the broker's legacy relay.
/// An output state carrying the command's id confirms it; an event carrying the id refuses it
/// (with the device's reason); a presence that is not online ends the wait for every command to
/// that device.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandReply {
    Confirmed {
        device: Name,
        cmd: CommandId,
        output: Name,
        state: OutputState,
    },
    Refused {
        device: Name,
        cmd: CommandId,
        reason: String,
    },
    WentOffline {
        device: Name,
    },
}

impl CommandReply {
    /// The reply `event` carries, if any.
    pub fn from_event(event: &WatchEvent) -> Option<CommandReply> {
        match event {
            WatchEvent::Output {
                device,
                output,
                state,
            } => Some(CommandReply::Confirmed {
                device: device.clone(),
                cmd: state.cmd.clone()?,
                output: output.clone(),
                state: state.clone(),
            }),
            WatchEvent::Event { device, event } => Some(CommandReply::Refused {
                device: device.clone(),
                cmd: event.cmd.clone()?,
                reason: event.message.clone(),
            }),
            WatchEvent::Presence { device, presence } if !presence.is_online() => {
                Some(CommandReply::WentOffline {
                    device: device.clone(),
                })
            }
            _ => None,
        }
    }

    pub fn device(&self) -> &Name {
        match self {
            CommandReply::Confirmed { device, .. }
            | CommandReply::Refused { device, .. }
            | CommandReply::WentOffline { device } => device,
        }
    }

    /// Whether this reply answers command `id` (a device going offline answers every one).
    pub fn answers(&self, id: &CommandId) -> bool {
        match self {
            CommandReply::Confirmed { cmd, .. } | CommandReply::Refused { cmd, .. } => cmd == id,
            CommandReply::WentOffline { .. } => true,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_command_is_confirmed_by_its_id_refused_by_an_event_and_cut_short_by_offline() {
        let t = Topics::default();
        let reply = |topic: &str, p: &str| {
            CommandReply::from_event(&decode(&t, topic, p.as_bytes()).unwrap().unwrap())
        };
        let id = CommandId("c1".into());
        let confirmed = reply(
            "pifleet/dev/k/out/led",
            r#"{"on":true,"cmd":"c1","source":"command","ts":5}"#,
        )
        .unwrap();
        assert!(confirmed.answers(&id) && confirmed.device().as_str() == "k");
        assert!(matches!(confirmed, CommandReply::Confirmed { ref state, .. } if state.on));
        let other = reply(
            "pifleet/dev/k/out/led",
            r#"{"on":true,"cmd":"c2","source":"command","ts":5}"#,
        )
        .unwrap();
        assert!(!other.answers(&id), "another command's confirmation");
        assert_eq!(
            reply(
                "pifleet/dev/k/out/led",
                r#"{"on":true,"source":"legacy","ts":5}"#
            ),
            None,
            "a change nobody commanded answers nothing"
        );
        let refused = reply(
            "pifleet/dev/k/event",
            r#"{"kind":"unknown_output","message":"no output 'x'","cmd":"c1","ts":6}"#,
        )
        .unwrap();
        assert!(
            matches!(refused, CommandReply::Refused { ref reason, .. } if reason == "no output 'x'")
        );
        let gone = reply(
            "pifleet/dev/k/status",
            r#"{"state":"offline","version":"0.1.0","groups":[],"ts":7}"#,
        )
        .unwrap();
        assert!(gone.answers(&id), "offline ends the wait for every command");
        assert_eq!(
            reply(
                "pifleet/dev/k/status",
                r#"{"state":"online","version":"0.1.0","groups":[],"ts":8}"#
            ),
            None
        );
    }

    #[test]
    fn folds_presence_state_and_will() {
        let t = Topics::default();
        let mut f = Fleet::new();
        let ev = |topic: &str, p: &str| decode(&t, topic, p.as_bytes()).unwrap().unwrap();
        f.apply(&ev(
            "pifleet/dev/k/status",
            r#"{"state":"online","version":"0.1.0","groups":["kitchen"],"ts":10}"#,
        ));
        f.apply(&ev(
            "pifleet/dev/k/out/led",
            r#"{"on":true,"cmd":"c","source":"command","ts":20}"#,
        ));
        let k = Name::new("k").unwrap();
        let d = f.get(&k).unwrap();
        assert!(d.online);
        assert_eq!(d.groups, vec!["kitchen"]);
        assert!(d.outputs["led"].on);
        assert_eq!(d.last_seen, Some(20));
        assert_eq!(f.group_members("kitchen").count(), 1);

        f.apply(&ev("pifleet/dev/k/status", r#"{"state":"offline"}"#));
        let d = f.get(&k).unwrap();
        assert!(!d.online);
        assert_eq!(d.groups, vec!["kitchen"], "will keeps the description");
        assert_eq!(f.group_members("kitchen").count(), 0);
        assert_eq!(f.group_known("kitchen").count(), 1);
    }

    #[test]
    fn ignores_commands_deletions_and_foreign_topics_but_reports_garbage() {
        let t = Topics::default();
        assert!(decode(&t, "pifleet/dev/k/cmnd", b"{}").unwrap().is_none());
        assert!(decode(&t, "pifleet/dev/k/status", b"").unwrap().is_none());
        assert!(decode(&t, "elsewhere/x", b"zz").unwrap().is_none());
        let err = decode(&t, "pifleet/dev/k/status", b"not json").unwrap_err();
        assert!(err.to_string().contains("pifleet/dev/k/status"));
    }
}
