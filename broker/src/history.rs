//! The history recorder in the broker: `pifleet_history::service` run against this broker over
//! loopback, like the legacy relay, so the broker's machine keeps what the fleet reports with
//! nothing else to set up (`[history]`, on by default). The same service runs alone as
//! `pifleet record` against any broker.
//!
//! History is an addition to the broker, not part of serving MQTT: when it cannot start (a
//! directory that cannot be created or written, another recorder on the same directory), that is
//! one logged error and the broker goes on without it.

use pifleet_history::service::{self, Options, Recording};
use pifleet_proto::Topics;

use crate::config::History;
use crate::engine::Running;

/// The recorder's identity when the broker has credentials: an in-process controller.
const NAME: &str = "pifleet-broker-history";

/// Starts the recorder if `[history]` enables it; `None` when it is off or could not start
/// (already logged).
pub async fn start(config: &History, running: &Running, topics: Topics) -> Option<Recording> {
    if !config.enabled {
        return None;
    }
    let recorder = config.recorder();
    let options = Options {
        login: crate::services::service_login(running, NAME),
        topics,
        recorder,
    };
    match service::start(options).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(
                "history: {e}; not recording history (the broker goes on serving MQTT; see \
                 [history] in `pifleet-broker print-config`, or --history-dir, --no-history)"
            );
            None
        }
    }
}
