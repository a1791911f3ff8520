//! `pifleet watch`: live events, one line each (JSON Lines with `--json`), until Ctrl-C.
//! Retained messages present at start are the past, not events, and are skipped.

use std::io::Write;

use pifleet_proto::fleet::decode;
use pifleet_proto::report::WatchEvent;
use pifleet_proto::time::now_ms;
use pifleet_proto::Topics;

use crate::cli::{Global, WatchArgs};
use crate::error::{CliError, EXIT_OK};
use crate::session::Session;

pub async fn exec(g: &Global, topics: Topics, a: &WatchArgs) -> Result<u8, CliError> {
    let mut session = Session::connect(&g.broker, topics.clone(), g.connect_timeout()).await?;
    let filters = super::device_filters(&topics, &a.devices);
    session.subscribe_snapshot(filters).await?;
    // The readiness line: scripts (and tests) start acting once they see it.
    eprintln!("pifleet: watching {} (Ctrl-C to stop)", g.broker);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let p = tokio::select! {
            p = session.next_publish() => p?,
            _ = &mut ctrl_c => break,
        };
        let event = match decode(&topics, &p.topic, &p.payload) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("pifleet: {e}");
                continue;
            }
        };
        let mut out = std::io::stdout().lock();
        if g.json {
            serde_json::to_writer(&mut out, &event).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        } else {
            writeln!(out, "{}", human(&event))?;
        }
        out.flush()?;
    }
    session.close().await;
    Ok(EXIT_OK)
}

/// `HH:MM:SSZ device what`, UTC so lines from several machines compare.
pub fn human(e: &WatchEvent) -> String {
    let secs = now_ms() / 1000;
    let clock = format!(
        "{:02}:{:02}:{:02}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
    let what = match e {
        WatchEvent::Presence { device, presence } => {
            let v = presence
                .version
                .as_deref()
                .map(|v| format!(" (v{v})"))
                .unwrap_or_default();
            if presence.is_online() {
                format!("{device} online{v}")
            } else {
                format!("{device} offline")
            }
        }
        WatchEvent::Output {
            device,
            output,
            state,
        } => format!(
            "{device} output {output} {}{}",
            if state.on { "on" } else { "off" },
            state
                .cmd
                .as_ref()
                .map(|c| format!(" (command {c})"))
                .unwrap_or_default()
        ),
        WatchEvent::Input {
            device,
            input,
            state,
        } => format!(
            "{device} input {input} {}",
            if state.active { "pressed" } else { "released" }
        ),
        WatchEvent::Sensor {
            device,
            sensor,
            reading,
        } => {
            format!("{device} sensor {sensor} {}{}", reading.value, reading.unit)
        }
        WatchEvent::Event { device, event } => {
            format!("{device} {:?}: {}", event.kind, event.message)
        }
    };
    format!("{clock} {what}")
}
