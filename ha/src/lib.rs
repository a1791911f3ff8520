//! Home Assistant sees a pifleet fleet: MQTT device discovery published by one fleet service.
//!
//! - [`ids`]: names Home Assistant accepts for every valid pifleet name (its discovery topic
//!   allows only `[a-zA-Z0-9_-]`, pifleet names may also contain `.`).
//! - [`discovery`]: the sans-IO builder. Fleet messages in (retained presence, sensor readings),
//!   retained `<discovery_prefix>/device/<id>/config` payloads out: what changed, or everything
//!   (after a reconnect, or when Home Assistant announces itself on `<discovery_prefix>/status`).
//! - [`service`]: the runner, an ordinary MQTT client of any broker. `pifleet-broker` embeds it
//!   (`[homeassistant] enabled`), `pifleet homeassistant --broker URL` runs it alone.
//!
//! Why one service and not each agent: a device identity may only publish under its own
//! `<prefix>/dev/<device>/` subtree, and discovery topics lie outside it. The service reads the
//! same retained presence everyone reads, so it needs nothing from the agents but what they
//! already publish (plus the sensor `intervals` in presence, for `expire_after`).
//!
//! What Home Assistant sends back are plain payloads on per-output topics inside the device's
//! command space (`Topics::plain_command`); the agent turns them into ordinary commands.

pub mod discovery;
pub mod ids;
pub mod service;

pub use discovery::{Discovery, Retained};

/// Home Assistant's default discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";
