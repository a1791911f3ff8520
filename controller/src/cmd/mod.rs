//! One module per subcommand.

pub mod history;
pub mod homeassistant;
pub mod record;
pub mod serve;
pub mod status;
pub mod switch;
pub mod watch;

use pifleet_client::service::Login;
use pifleet_proto::fleet::{decode, Fleet};
use pifleet_proto::{CommandId, Topics};
use rumqttc::Publish;

use crate::cli::Global;
use crate::error::CliError;

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

/// The login of a service subcommand (`record`, `homeassistant`): the account from the flags
/// (`default_name` without one) with a controller's client id, `NAME:<random>`, so that it
/// never takes over another session of the same account.
pub(crate) fn service_login(g: &Global, default_name: &str) -> Result<Login, CliError> {
    let security = g.security()?;
    let name = security.user().unwrap_or(default_name).to_string();
    Ok(Login {
        broker: g.broker.clone(),
        client_id: format!("{name}:{}", CommandId::generate()),
        security,
        role: "controller",
        connect_timeout: g.connect_timeout(),
    })
}

/// Writes a JSON document and a newline to stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}
