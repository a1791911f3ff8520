//! One module per subcommand.

pub mod history;
pub mod homeassistant;
pub mod record;
pub mod serve;
pub mod status;
pub mod switch;
pub mod watch;

use pifleet_proto::fleet::{decode, Fleet};
use pifleet_proto::Topics;
use rumqttc::Publish;

/// Folds retained messages into a fleet view, warning about (and skipping) malformed ones.
pub(crate) fn fold(topics: &Topics, snapshot: &[Publish]) -> Fleet {
    let mut fleet = Fleet::new();
    for p in snapshot {
        match decode(topics, &p.topic, &p.payload) {
            Ok(Some(ev)) => fleet.apply(&ev),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    fleet
}

/// The subscriptions for everything `devices` (all devices when empty) report.
pub(crate) fn device_filters(topics: &Topics, devices: &[pifleet_proto::Name]) -> Vec<String> {
    if devices.is_empty() {
        topics.fleet_filters(None)
    } else {
        devices
            .iter()
            .flat_map(|d| topics.fleet_filters(Some(d)))
            .collect()
    }
}

/// Writes a JSON document and a newline to stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}
