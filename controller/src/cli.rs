//! Command-line parsing only; each subcommand's options struct has its own `exec` in [`crate::cmd`].

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pifleet_proto::{BrokerUrl, Name};

/// Control a fleet of Raspberry Pis over MQTT.
///
/// Exit codes: 0 success; 1 some device did not confirm (or is unknown); 2 usage error;
/// 3 broker unreachable, refused, or connection lost.
#[derive(Parser, Debug)]
#[command(name = "pifleet", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Broker URL: mqtt://host:port or ws://host:port/path.
    #[arg(
        long,
        env = "PIFLEET_BROKER",
        default_value = "mqtt://localhost:1883",
        global = true
    )]
    pub broker: BrokerUrl,
    /// Topic prefix of the fleet.
    #[arg(long, env = "PIFLEET_PREFIX", default_value = pifleet_proto::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
    /// Machine-readable output: one JSON document (JSON Lines for `watch`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the broker to accept the connection.
    #[arg(long, default_value = "3", value_name = "SECS", value_parser = seconds, global = true)]
    pub connect_timeout: f64,
}

impl Global {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout.clamp(0.1, 3600.0))
    }
}

/// A number of seconds: finite and within `0..=3600`.
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Switch outputs on and wait for each device to confirm.
    On(SwitchArgs),
    /// Switch outputs off and wait for each device to confirm.
    Off(SwitchArgs),
    /// Toggle outputs and wait for each device to confirm.
    Toggle(SwitchArgs),
    /// Show the fleet: presence, outputs, inputs, latest sensor values, last seen.
    Status(StatusArgs),
    /// Print live events (presence, outputs, buttons, sensors, refusals) until Ctrl-C.
    Watch(WatchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SwitchArgs {
    /// Devices to switch.
    pub devices: Vec<Name>,
    /// Every online device in this group (repeatable).
    #[arg(long = "group", short)]
    pub groups: Vec<Name>,
    /// Every online device.
    #[arg(long, short, conflicts_with_all = ["devices", "groups"])]
    pub all: bool,
    /// Which output (default: each device's first output).
    #[arg(long, short)]
    pub output: Option<Name>,
    /// Seconds to wait for confirmations.
    #[arg(long, short, default_value = "5", value_name = "SECS", value_parser = seconds)]
    pub timeout: f64,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Only these devices (default: all).
    pub devices: Vec<Name>,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Only these devices (default: all).
    pub devices: Vec<Name>,
}
