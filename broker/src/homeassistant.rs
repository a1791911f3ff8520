//! Home Assistant discovery in the broker: `pifleet_homeassistant::service` run against this
//! broker over loopback, like the recorder, so a fleet appears in Home Assistant with nothing
//! else to run (`[homeassistant] enabled`, off by default). The same service runs alone as
//! `pifleet homeassistant` against any broker.
//!
//! Discovery is an addition to the broker, not part of serving MQTT: when it cannot start, that
//! is one logged error and the broker goes on without it.

use pifleet_homeassistant::service::{self, Options, Running};
use pifleet_proto::Topics;

use crate::config::HomeAssistant;
use crate::engine;

/// The service's identity when the broker has credentials: an in-process controller.
const NAME: &str = "pifleet-broker-homeassistant";

/// Starts the service if `[homeassistant]` enables it; `None` when off or failed (logged).
pub async fn start(
    config: &HomeAssistant,
    running: &engine::Running,
    topics: Topics,
) -> Option<Running> {
    if !config.enabled {
        return None;
    }
    let options = Options {
        login: crate::services::service_login(running, NAME),
        topics,
        discovery_prefix: config.discovery_prefix.clone(),
    };
    match service::start(options).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(
                "homeassistant: {e}; not publishing discovery (the broker goes on serving MQTT)"
            );
            None
        }
    }
}
