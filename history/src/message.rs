//! From an MQTT message to a history row: pure, no I/O, no state, so the recorder service can
//! call it on every message it receives and tests can feed it literal topics and payloads.
//!
//! Every device-reported message becomes a row; which ones are *kept* is the recorder's job
//! ([`crate::writer`]): it skips repeats (a retained message delivered again after a
//! reconnect, a presence heartbeat) and applies the rate limit and daily cap. The row's time is
//! the receive time passed in, not the device's `ts` (kept in `device_ms`): see [`crate::row`].

use pifleet_proto::fleet::{decode, PayloadError};
use pifleet_proto::report::WatchEvent;
use pifleet_proto::{Name, PresenceState, StateSource, Topics};

use crate::row::{Kind, Row};
use crate::time::format_rfc3339;

/// The row for one message on `topic`, received at `received_ms`, and the device it belongs
/// to. `Ok(None)` for what is not device history: commands, the sync marker, foreign topics,
/// empty payloads (a retained message being deleted). `Err` for a device topic whose payload
/// does not decode, which the caller may want to log.
pub fn decode_message(
    topics: &Topics,
    topic: &str,
    payload: &[u8],
    received_ms: u64,
) -> Result<Option<(Name, Row)>, PayloadError> {
    let Some(event) = decode(topics, topic, payload)? else {
        return Ok(None);
    };
    let (device, mut row) = match event {
        WatchEvent::Presence { device, presence } => {
            let online = presence.state == PresenceState::Online;
            // Words, and what tells one run of the agent from the next: the recorder keeps a
            // presence row only when this text or the state changes, so heartbeats are not
            // history but an agent restart is.
            let mut detail = match (online, presence.ts) {
                (true, _) => "online".to_string(),
                // The last will is the only presence without a timestamp: the broker sent it.
                (false, None) => "offline (connection lost)".to_string(),
                (false, Some(_)) => "offline".to_string(),
            };
            if online {
                if let Some(v) = &presence.version {
                    detail.push_str(&format!(", version {v}"));
                }
                if let Some(s) = presence.started_at {
                    detail.push_str(&format!(", started {}", format_rfc3339(s)));
                }
            }
            let row = Row {
                value: Some(if online { 1.0 } else { 0.0 }),
                detail: Some(detail),
                device_ms: presence.ts,
                ..Row::new(received_ms, Kind::Presence, "")
            };
            (device, row)
        }
        WatchEvent::Output {
            device,
            output,
            state,
        } => {
            let source = match state.source {
                StateSource::Initial => "initial",
                StateSource::Restore => "restore",
                StateSource::Command => "command",
                StateSource::Legacy => "legacy",
                StateSource::Pulse => "pulse",
            };
            // A dimmable output's row carries its level (percent), an on/off output's 1 or 0.
            let row = Row {
                value: Some(state.level.unwrap_or(if state.on { 1.0 } else { 0.0 })),
                source: Some(source.to_string()),
                command_id: state.cmd.map(|c| c.0),
                device_ms: Some(state.ts),
                ..Row::new(received_ms, Kind::Output, output.as_str())
            };
            (device, row)
        }
        WatchEvent::Input {
            device,
            input,
            state,
        } => {
            let row = Row {
                value: Some(if state.active { 1.0 } else { 0.0 }),
                device_ms: Some(state.ts),
                ..Row::new(received_ms, Kind::Input, input.as_str())
            };
            (device, row)
        }
        WatchEvent::Sensor {
            device,
            sensor,
            reading,
        } => {
            let row = Row {
                value: Some(reading.value),
                unit: Some(reading.unit),
                source: reading.kind,
                device_ms: Some(reading.ts),
                ..Row::new(received_ms, Kind::Sensor, sensor.as_str())
            };
            (device, row)
        }
        WatchEvent::Event { device, event } => {
            let row = Row {
                command_id: event.cmd.map(|c| c.0),
                detail: Some(event.message),
                device_ms: Some(event.ts),
                ..Row::new(received_ms, Kind::Event, event_kind(payload))
            };
            (device, row)
        }
    };
    row.sanitize();
    Ok(Some((device, row)))
}

/// [`decode_message`] for callers that drop what does not decode.
pub fn row_from_message(
    topics: &Topics,
    topic: &str,
    payload: &[u8],
    received_ms: u64,
) -> Option<(Name, Row)> {
    decode_message(topics, topic, payload, received_ms)
        .ok()
        .flatten()
}

/// The event's kind as the device wrote it: `pifleet-proto` folds kinds it does not know into
/// `other`, but a newer agent's `disk_full` says more in a history file than `other` does. Kept
/// only if it is a valid name (it becomes the `name` column).
fn event_kind(payload: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: String,
    }
    serde_json::from_slice::<Kind>(payload)
        .ok()
        .and_then(|k| Name::new(k.kind).ok())
        .map_or_else(|| "other".to_string(), |n| n.as_str().to_string())
}

#[cfg(test)]
mod test {
    use super::*;

    const AT: u64 = 1_700_000_010_000;

    fn row(topic: &str, payload: &str) -> Option<(String, Row)> {
        let t = Topics::default();
        row_from_message(&t, topic, payload.as_bytes(), AT).map(|(d, r)| (d.to_string(), r))
    }

    #[test]
    fn a_sensor_reading_keeps_value_unit_kind_and_both_times() {
        let (d, r) = row(
            "pifleet/dev/kitchen/sensor/cpu",
            r#"{"value":41.5,"unit":"°C","kind":"cpu_temp","ts":1700000003000}"#,
        )
        .unwrap();
        assert_eq!(d, "kitchen");
        assert_eq!(
            r.to_line(),
            "2023-11-14T22:13:30.000Z,sensor,cpu,41.5,°C,cpu_temp,,,1700000003000,1700000010000\n"
        );
    }

    #[test]
    fn an_output_state_keeps_its_source_and_command_id() {
        let (_, r) = row(
            "pifleet/dev/kitchen/out/led",
            r#"{"on":true,"cmd":"c0ffee01","source":"command","ts":1700000001234}"#,
        )
        .unwrap();
        assert_eq!(
            r.to_line(),
            "2023-11-14T22:13:30.000Z,output,led,1,,command,c0ffee01,,1700000001234,1700000010000\n"
        );
        let (_, r) = row(
            "pifleet/dev/kitchen/out/relay",
            r#"{"on":false,"source":"restore","ts":7}"#,
        )
        .unwrap();
        assert_eq!(
            (r.value, r.source.as_deref(), r.command_id),
            (Some(0.0), Some("restore"), None)
        );
    }

    #[test]
    fn inputs_presence_and_events_become_rows() {
        let (_, r) = row(
            "pifleet/dev/kitchen/in/button",
            r#"{"active":true,"ts":1700000002000}"#,
        )
        .unwrap();
        assert_eq!(
            (r.kind, r.name.as_str(), r.value),
            (Kind::Input, "button", Some(1.0))
        );

        let (_, r) = row(
            "pifleet/dev/kitchen/status",
            r#"{"state":"online","version":"0.1.0","started_at":1700000000000,"ts":1700000000500}"#,
        )
        .unwrap();
        assert_eq!(
            (r.kind, r.value, r.detail.as_deref(), r.device_ms),
            (
                Kind::Presence,
                Some(1.0),
                Some("online, version 0.1.0, started 2023-11-14T22:13:20.000Z"),
                Some(1_700_000_000_500)
            )
        );
        let (_, r) = row("pifleet/dev/kitchen/status", r#"{"state":"online"}"#).unwrap();
        assert_eq!(r.detail.as_deref(), Some("online"));
        let (_, r) = row("pifleet/dev/kitchen/status", r#"{"state":"offline"}"#).unwrap();
        assert_eq!(
            (r.value, r.detail.as_deref(), r.device_ms),
            (Some(0.0), Some("offline (connection lost)"), None)
        );

        let (_, r) = row(
            "pifleet/dev/kitchen/event",
            r#"{"kind":"unknown_output","message":"refused command c0ffee02: no output named \"fan\"","cmd":"c0ffee02","ts":1700000004000}"#,
        )
        .unwrap();
        assert_eq!(
            r.to_line(),
            "2023-11-14T22:13:30.000Z,event,unknown_output,,,,c0ffee02,\
             \"refused command c0ffee02: no output named \"\"fan\"\"\",1700000004000,1700000010000\n"
        );
        let (_, r) = row(
            "pifleet/dev/kitchen/event",
            r#"{"kind":"disk_full","message":"m","ts":1}"#,
        )
        .unwrap();
        assert_eq!(r.name, "disk_full", "a newer agent's kind is kept");
        let (_, r) = row(
            "pifleet/dev/kitchen/event",
            r#"{"kind":"no/such kind","message":"m","ts":1}"#,
        )
        .unwrap();
        assert_eq!(r.name, "other");
    }

    #[test]
    fn commands_foreign_topics_deletions_and_garbage_are_not_history() {
        assert!(row("pifleet/dev/kitchen/cmnd", r#"{"id":"1","action":"on"}"#).is_none());
        assert!(row("pifleet/all/cmnd", r#"{"id":"1","action":"on"}"#).is_none());
        assert!(row("pifleet/ctl/sync", "x").is_none());
        assert!(row("other/dev/kitchen/status", r#"{"state":"online"}"#).is_none());
        assert!(row("pifleet/dev/kitchen/status", "").is_none());
        assert!(row("pifleet/dev/a+b/status", r#"{"state":"online"}"#).is_none());
        let t = Topics::default();
        assert!(decode_message(&t, "pifleet/dev/kitchen/status", b"nope", AT).is_err());
        assert!(row("pifleet/dev/kitchen/status", "nope").is_none());
    }
}
