//! `pifleet homeassistant`: Home Assistant discovery on its own, against any broker. The same
//! code (`pifleet_homeassistant::service`) that `pifleet-broker` runs embedded with
//! `[homeassistant] enabled`: it reads the retained presence and sensor readings and publishes
//! one retained `<discovery_prefix>/device/<id>/config` per device, republishing after every
//! reconnect and when Home Assistant announces itself, until SIGINT or SIGTERM.
//!
//! The first connection fails fast like every command (exit 3, or 4 for a refused login or
//! subscription); once running, a lost connection is retried with backoff.

use clap::Args;
use pifleet_homeassistant::service::{self, Options, StartError};
use pifleet_proto::Topics;

use super::service_login;
use crate::cli::Global;
use crate::error::{CliError, EXIT_OK};

#[derive(Args, Debug, Clone)]
pub struct HomeAssistantArgs {
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    #[arg(long, value_name = "PREFIX", default_value = pifleet_homeassistant::DEFAULT_DISCOVERY_PREFIX)]
    pub discovery_prefix: String,
}

pub async fn exec(g: &Global, topics: Topics, a: &HomeAssistantArgs) -> Result<u8, CliError> {
    if Topics::new(&a.discovery_prefix).is_err() {
        return Err(CliError::Usage(format!(
            "--discovery-prefix {:?}: use one or more '/'-separated levels without wildcards",
            a.discovery_prefix
        )));
    }
    let options = Options {
        login: service_login(g, "pifleet-homeassistant")?,
        topics,
        discovery_prefix: a.discovery_prefix.clone(),
    };
    let running = service::start(options).await.map_err(|e| match e {
        StartError::Connect(e) => e.into(),
        other => CliError::Usage(other.to_string()),
    })?;
    // The readiness line: subscribed; each device's config follows as its presence arrives.
    eprintln!(
        "pifleet: publishing Home Assistant discovery for {} under {}/ (Ctrl-C to stop)",
        g.broker, a.discovery_prefix
    );
    pifleet_client::signal::shutdown().await;
    running.stop().await;
    eprintln!("pifleet: stopped publishing Home Assistant discovery");
    Ok(EXIT_OK)
}
