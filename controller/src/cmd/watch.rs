//! `pifleet watch`: live events, one line each (JSON Lines with `--json`), until Ctrl-C.
//! Retained messages present at start are the past, not events, and are skipped. A lost
//! connection is retried (with backoff) until Ctrl-C, unless the broker refuses the login on
//! reconnecting: credentials do not fix themselves, so that ends the watch with exit code 4.

use std::io::Write;
use std::time::Duration;

use pifleet_client::mqtt::Backoff;
use pifleet_proto::fleet::decode;
use pifleet_proto::report::WatchEvent;
use pifleet_proto::time::now_ms;
use pifleet_proto::Topics;

use crate::cli::{Global, WatchArgs};
use crate::error::{CliError, EXIT_OK};
use crate::session::Session;

pub async fn exec(g: &Global, topics: Topics, a: &WatchArgs) -> Result<u8, CliError> {
    let filters = super::device_filters(&topics, &a.devices);
    let security = g.security()?;
    let connect = || async {
        let mut s =
            Session::connect(&g.broker, &security, topics.clone(), g.connect_timeout()).await?;
        s.subscribe_snapshot(filters.clone()).await?;
        Ok::<_, CliError>(s)
    };
    // The first connection fails fast, like every command: a typo in --broker is not retried.
    let mut session = connect().await?;
    // The readiness line: scripts (and tests) start acting once they see it.
    eprintln!("pifleet: watching {} (Ctrl-C to stop)", g.broker);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let lost = loop {
            let p = tokio::select! {
                p = session.next_publish() => match p {
                    Ok(p) => p,
                    Err(e) => break e,
                },
                _ = &mut ctrl_c => {
                    session.close().await;
                    return Ok(EXIT_OK);
                }
            };
            print_event(&topics, &p, g.json)?;
        };
        // A watcher outlives broker restarts and network blips: reconnect until Ctrl-C. What
        // happened meanwhile is not replayed; `pifleet status` shows the current state.
        eprintln!("pifleet: {lost}; reconnecting");
        session = loop {
            tokio::select! {
                r = connect() => match r {
                    Ok(s) => break s,
                    Err(e @ CliError::Auth(_)) => return Err(e),
                    Err(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                            _ = &mut ctrl_c => return Ok(EXIT_OK),
                        }
                    }
                },
                _ = &mut ctrl_c => return Ok(EXIT_OK),
            }
        };
        backoff.reset();
        eprintln!("pifleet: reconnected; watching {} again", g.broker);
    }
}

fn print_event(topics: &Topics, p: &rumqttc::Publish, json: bool) -> Result<(), CliError> {
    let event = match decode(topics, &p.topic, &p.payload) {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprintln!("pifleet: {e}");
            return Ok(());
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &event).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    } else {
        writeln!(out, "{}", human(&event))?;
    }
    out.flush()?;
    Ok(())
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
            crate::cmd::switch::state_text(Some(state.on), state.level, state.off_at),
            match (&state.cmd, state.source) {
                (Some(c), _) => format!(" (command {c})"),
                (None, pifleet_proto::StateSource::Pulse) => " (end of pulse)".to_string(),
                _ => String::new(),
            },
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
