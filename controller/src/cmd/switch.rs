//! `pifleet on|off|toggle|set`: publish one command, then wait for every targeted device to
//! acknowledge it with an output state carrying the command's id, or to refuse it with an event
//! carrying the same id. Devices whose retained presence says offline are reported, not waited
//! for, so `off --all` on a fleet with a dead Pi returns at once instead of after the timeout.

use std::io::Write;
use std::time::{Duration, Instant};

use pifleet_proto::fleet::{decode, CommandReply};
use pifleet_proto::report::{Outcome, SwitchReport, SwitchRows};
use pifleet_proto::{Action, Command, CommandId, Name, Target, Topics};
use rumqttc::QoS;

use super::{fold, print_json};
use crate::cli::{Global, SwitchArgs};
use crate::error::{CliError, EXIT_INCOMPLETE, EXIT_OK};
use crate::session::Session;
use crate::table;

pub async fn exec(
    g: &Global,
    topics: Topics,
    action: Action,
    value: Option<f64>,
    a: &SwitchArgs,
) -> Result<u8, CliError> {
    if a.devices.is_empty() && a.groups.is_empty() && !a.all {
        return Err(CliError::Usage(format!(
            "say which devices to switch: `pifleet {action} DEVICE...`, `--group GROUP` or `--all`"
        )));
    }
    // The device refuses these too; saying so here spares a round trip and a refusal per device.
    if a.pulse.is_some() && !matches!(action, Action::On | Action::Set) {
        return Err(CliError::Usage(format!(
            "--for is a pulse: it goes with `pifleet on` or `pifleet set`, not `pifleet {action}`"
        )));
    }
    if a.pulse.is_some() && value == Some(0.0) {
        return Err(CliError::Usage(
            "--for with level 0 would be a pulse of nothing: give a level above 0".into(),
        ));
    }
    let security = g.security()?;
    let mut session =
        Session::connect(&g.broker, &security, topics.clone(), g.connect_timeout()).await?;

    // Only the devices involved: a targeted `on kitchen` does not download a whole fleet.
    let filters = if a.all || !a.groups.is_empty() {
        vec![
            topics.status_filter(None),
            topics.output_filter(None),
            topics.event_filter(None),
        ]
    } else {
        a.devices
            .iter()
            .flat_map(|d| {
                [
                    topics.status_filter(Some(d)),
                    topics.output_filter(Some(d)),
                    topics.event_filter(Some(d)),
                ]
            })
            .collect()
    };
    let snapshot = session.subscribe_snapshot(filters).await?;
    let fleet = fold(&topics, &snapshot);

    let mut rows = SwitchRows::new();
    let mut consider = |device: &Name| rows.target(&fleet, device);
    let mut targets = Vec::new();
    if a.all {
        for name in fleet.names() {
            consider(name);
        }
        targets.push(Target::All);
    }
    for group in &a.groups {
        let known: Vec<Name> = fleet.group_known(group.as_str()).cloned().collect();
        if known.is_empty() {
            eprintln!("pifleet: no device has announced membership of group {group}");
        }
        for name in &known {
            consider(name);
        }
        targets.push(Target::Group(group.clone()));
    }
    for device in &a.devices {
        if consider(device) {
            targets.push(Target::Device(device.clone()));
        }
    }

    let command = Command {
        id: CommandId::generate(),
        action,
        output: a.output.clone(),
        value,
        on_time: a.pulse,
    };
    let payload = serde_json::to_vec(&command).expect("commands serialize");
    let started = Instant::now();
    if rows.is_waiting() {
        for target in &targets {
            session
                .client
                .publish(
                    topics.command(target),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .map_err(|e| CliError::Broker(e.to_string()))?;
        }
    }

    let deadline = tokio::time::Instant::from_std(started + Duration::from_secs_f64(a.timeout));
    while rows.is_waiting() {
        let p = tokio::select! {
            p = session.next_publish() => p?,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let Ok(Some(event)) = decode(&topics, &p.topic, &p.payload) else {
            continue;
        };
        if let Some(reply) = CommandReply::from_event(&event) {
            rows.reply(&command.id, reply, started.elapsed());
        }
    }
    session.close().await;

    let report = SwitchReport {
        command_id: command.id,
        action,
        value,
        on_time: a.pulse,
        output: a.output.as_ref().map(|o| o.to_string()),
        results: rows.finish(a.timeout),
    };
    if g.json {
        print_json(&report)?;
    } else {
        print_human(&report)?;
    }
    Ok(if report.all_confirmed() && !report.results.is_empty() {
        EXIT_OK
    } else {
        EXIT_INCOMPLETE
    })
}

/// `on`, `off`, `40 %`, plus `until 14:03:07` while a pulse runs (the device's clock, UTC).
pub fn state_text(on: Option<bool>, level: Option<f64>, off_at: Option<u64>) -> String {
    let mut s = match (on, level) {
        (_, Some(l)) => format!("{l} %"),
        (Some(true), None) => "on".into(),
        (Some(false), None) => "off".into(),
        (None, None) => "-".into(),
    };
    if let Some(at) = off_at {
        let secs = (at / 1000) % 86_400;
        s.push_str(&format!(
            " until {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        ));
    }
    s
}

fn print_human(report: &SwitchReport) -> std::io::Result<()> {
    if report.results.is_empty() {
        eprintln!("pifleet: no devices matched");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.device.clone(),
                match r.outcome {
                    Outcome::Confirmed => "confirmed",
                    Outcome::Refused => "refused",
                    Outcome::TimedOut => "timed out",
                    Outcome::Offline => "offline",
                    Outcome::Unknown => "unknown",
                }
                .to_string(),
                state_text(r.on, r.level, r.off_at),
                r.latency_ms.map_or("-".into(), |l| format!("{l} ms")),
                r.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    out.write_all(
        table::render(&["DEVICE", "RESULT", "STATE", "LATENCY", "NOTE"], &rows).as_bytes(),
    )?;
    out.flush()
}
