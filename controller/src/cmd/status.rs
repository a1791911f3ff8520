//! `pifleet status`: the fleet table from retained messages alone: nothing is asked of the
//! devices, so it answers in one round trip even for offline devices.

use std::io::Write;

use pifleet_proto::report::{DeviceStatus, FleetStatus};
use pifleet_proto::time::{ago, now_ms};
use pifleet_proto::Topics;

use super::{fold, print_json};
use crate::cli::{Global, StatusArgs};
use crate::error::{CliError, EXIT_INCOMPLETE, EXIT_OK};
use crate::session::Session;
use crate::table;

pub async fn exec(g: &Global, topics: Topics, a: &StatusArgs) -> Result<u8, CliError> {
    let security = g.security()?;
    let mut session =
        Session::connect(&g.broker, &security, topics.clone(), g.connect_timeout()).await?;
    let filters = super::device_filters(&topics, &a.devices);
    let snapshot = session.subscribe_snapshot(filters).await?;
    session.close().await;
    let fleet = fold(&topics, &snapshot);
    let status = fleet.status(&a.devices);
    let unknown: Vec<_> = a
        .devices
        .iter()
        .filter(|d| fleet.get(d).is_none())
        .collect();

    if g.json {
        print_json(&status)?;
    } else {
        print_human(&status, g)?;
    }
    for d in &unknown {
        eprintln!("pifleet: no device {d} has announced itself on this broker");
    }
    Ok(if unknown.is_empty() {
        EXIT_OK
    } else {
        EXIT_INCOMPLETE
    })
}

fn on_off<'a>(v: impl Iterator<Item = (&'a String, bool)>, on: &str, off: &str) -> String {
    let s: Vec<String> = v
        .map(|(n, b)| format!("{n}={}", if b { on } else { off }))
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

/// `led=on lamp=40% valve=on(pulse, 3s left)`.
fn outputs(d: &DeviceStatus, now: u64) -> String {
    let s: Vec<String> = d
        .outputs
        .iter()
        .map(|(n, s)| {
            let mut v = match s.level {
                Some(l) => format!("{n}={l}%"),
                None => format!("{n}={}", if s.on { "on" } else { "off" }),
            };
            if let Some(at) = s.off_at.filter(|_| s.on) {
                let left = at.saturating_sub(now) as f64 / 1000.0;
                v.push_str(&format!("(pulse, {left:.0}s left)"));
            }
            v
        })
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

fn row(d: &DeviceStatus, now: u64) -> Vec<String> {
    let sensors: Vec<String> = d
        .sensors
        .iter()
        .map(|(n, r)| format!("{n}={}{}", r.value, r.unit))
        .collect();
    vec![
        d.device.clone(),
        if d.online { "online" } else { "offline" }.into(),
        if d.groups.is_empty() {
            "-".into()
        } else {
            d.groups.join(",")
        },
        outputs(d, now),
        on_off(
            d.inputs.iter().map(|(n, s)| (n, s.active)),
            "pressed",
            "released",
        ),
        if sensors.is_empty() {
            "-".into()
        } else {
            sensors.join(" ")
        },
        d.last_seen.map_or("-".into(), |t| ago(t, now)),
    ]
}

fn print_human(status: &FleetStatus, g: &Global) -> std::io::Result<()> {
    if status.devices.is_empty() {
        eprintln!(
            "pifleet: no devices have announced themselves on {} (prefix {:?})",
            g.broker, g.prefix
        );
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<_> = status.devices.iter().map(|d| row(d, now)).collect();
    let text = table::render(
        &[
            "DEVICE",
            "STATE",
            "GROUPS",
            "OUTPUTS",
            "INPUTS",
            "SENSORS",
            "LAST SEEN",
        ],
        &rows,
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}
