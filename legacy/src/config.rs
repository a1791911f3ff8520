//! A legacy listener's configuration, shared by the agent (`[legacy]`) and the broker
//! (`[[legacy]]`). The agent serves its own pins; the broker relays to `device` over MQTT.

use std::net::SocketAddr;
use std::time::Duration;

use pifleet_proto::Name;
use serde::Deserialize;

use crate::codec::FramingMode;
use crate::server::ServerLimits;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Where old clients connect, e.g. `0.0.0.0:8000` (the original LED server's port) or
    /// `0.0.0.0:22000` (tcpcom's). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Broker only: the device `on`/`off`/`go` without a target name refer to.
    #[serde(default)]
    pub device: Option<Name>,
    /// The output `on`/`off` switch (default: the device's first output).
    #[serde(default)]
    pub output: Option<Name>,
    /// The input `go` reads (default: the device's first input).
    #[serde(default)]
    pub input: Option<Name>,
    /// `auto` (detect per frame), `length` or `nul`.
    #[serde(default)]
    pub framing: FramingMode,
    /// Largest frame accepted, in bytes; a longer one gets an error reply and a close.
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    /// Sessions served at once; further clients wait in the listen backlog.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// A client silent for this long is disconnected.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Broker only: how long to wait for the device to confirm before replying that it did not.
    #[serde(default = "default_confirm")]
    pub confirm_timeout_ms: u64,
}

fn default_max_frame() -> usize {
    64 * 1024
}
fn default_max_clients() -> usize {
    256
}
fn default_idle() -> u64 {
    300
}
fn default_confirm() -> u64 {
    3000
}

impl ListenerConfig {
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            framing: self.framing,
            max_frame: self.max_frame,
            max_clients: self.max_clients,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
        }
    }

    /// Range checks shared by both places; returns a sentence naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=16 * 1024 * 1024).contains(&self.max_frame) {
            return Err(format!(
                "legacy {}: max_frame must be between 1 and 16777216",
                self.listen
            ));
        }
        if !(1..=100_000).contains(&self.max_clients) {
            return Err(format!(
                "legacy {}: max_clients must be between 1 and 100000",
                self.listen
            ));
        }
        if self.idle_timeout_secs == 0 {
            return Err(format!(
                "legacy {}: idle_timeout_secs must be at least 1",
                self.listen
            ));
        }
        if self.confirm_timeout_ms == 0 || self.confirm_timeout_ms > 600_000 {
            return Err(format!(
                "legacy {}: confirm_timeout_ms must be between 1 and 600000",
                self.listen
            ));
        }
        Ok(())
    }
}
