//! `POST /api/command`: one command to a device, a group or the whole fleet, answered with the
//! same [`SwitchReport`] `pifleet on|off|toggle --json` prints. Targets are resolved from the
//! live fold the way the CLI resolves them from its snapshot: offline devices are reported and
//! not waited for, unknown ones reported as such, and each online one is confirmed, refused or
//! timed out by proto's [`SwitchRows`], the rows the CLI builds too.

use std::time::{Duration, Instant};

use pifleet_proto::report::{SwitchReport, SwitchRows};
use pifleet_proto::{Action, Command, CommandId, Name, Target};
use rumqttc::QoS;
use serde::{Deserialize, Serialize};

use crate::live::Link;
use crate::Error;

/// The request body of `POST /api/command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub target: TargetKind,
    /// The device or group name (not for `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    pub action: Action,
    /// The output to switch (default: each device's first output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Name>,
    /// For `set`: the level in percent (a dimmable output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A pulse: seconds until the device switches the output off again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_time: Option<f64>,
    /// How long to wait for confirmations (default 5000, at most 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Device,
    Group,
    All,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Sends the command and collects every targeted device's answer.
pub async fn run(link: &Link, req: CommandRequest) -> Result<SwitchReport, Error> {
    let timeout_ms = req
        .timeout_ms
        .unwrap_or(DEFAULT_TIMEOUT_MS)
        .clamp(1, MAX_TIMEOUT_MS);
    let fleet = link.fleet();
    let (target, targeted): (Target, Vec<Name>) = match (req.target, &req.name) {
        (TargetKind::All, None) => (Target::All, fleet.names().cloned().collect()),
        (TargetKind::Group, Some(g)) => (
            Target::Group(g.clone()),
            fleet.group_known(g.as_str()).cloned().collect(),
        ),
        (TargetKind::Device, Some(d)) => (Target::Device(d.clone()), vec![d.clone()]),
        (TargetKind::All, Some(_)) => {
            return Err(Error::BadRequest("target \"all\" takes no name".into()))
        }
        (_, None) => {
            return Err(Error::BadRequest(
                "target \"device\" and \"group\" need a name".into(),
            ))
        }
    };
    let mut rows = SwitchRows::new();
    for d in &targeted {
        rows.target(&fleet, d);
    }
    let command = Command {
        id: CommandId::generate(),
        action: req.action,
        output: req.output.clone(),
        value: req.value,
        on_time: req.on_time,
    };
    let mut waiter = link.wait_for(&command.id);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    if rows.is_waiting() {
        let payload = serde_json::to_vec(&command).expect("commands serialize");
        let publish = link.client.publish(
            link.topics.command(&target),
            QoS::AtLeastOnce,
            false,
            payload,
        );
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Broker(e.to_string())),
            Err(_) => return Err(Error::Broker("could not hand the command over".into())),
        }
    }
    while rows.is_waiting() {
        let reply = tokio::select! {
            r = waiter.rx.recv() => match r { Some(r) => r, None => break },
            _ = tokio::time::sleep_until(deadline) => break,
        };
        rows.reply(&command.id, reply, started.elapsed());
    }
    Ok(SwitchReport {
        command_id: command.id,
        action: req.action,
        value: req.value,
        on_time: req.on_time,
        output: req.output.map(|o| o.to_string()),
        results: rows.finish(timeout_ms as f64 / 1000.0),
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn requests_decode_from_the_documented_json() {
        let all: CommandRequest =
            serde_json::from_str(r#"{"target":"all","action":"on"}"#).unwrap();
        assert_eq!(all.target, TargetKind::All);
        assert_eq!(all.action, Action::On);
        let one: CommandRequest = serde_json::from_str(
            r#"{"target":"device","name":"kitchen","action":"toggle","output":"led"}"#,
        )
        .unwrap();
        assert_eq!(one.name.unwrap().as_str(), "kitchen");
        assert!(serde_json::from_str::<CommandRequest>(
            r#"{"target":"device","name":"a/b","action":"on"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<CommandRequest>(
            r#"{"target":"all","action":"on","extra":1}"#
        )
        .is_err());
    }
}
