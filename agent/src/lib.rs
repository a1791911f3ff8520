//! `pifleet-agent`: runs on each Pi, dials out to the broker (so a Pi behind NAT needs no port
//! forwarding), switches outputs on command and publishes inputs and sensors.
//!
//! Layout:
//! - [`config`]: the TOML configuration and its validation.
//! - [`gpio`]: the hardware seam (`Backend`), with the rppal and simulated backends.
//! - [`sensor`]: CPU temperature, DS18B20 and simulated sensors.
//! - [`state_file`]: atomic persistence behind `initial = "restore"`.
//! - [`connection`]: the MQTT poll loop with backoff.
//! - [`agent`]: the core that ties them together; [`AgentHandle`] talks to a running agent.
//! - [`legacy`]: the on-Pi shim for old length-prefixed and NUL-terminated clients.
//! - [`console`]: the simulator's stdin console (`press button`, `show`).

pub mod agent;
pub mod config;
pub mod connection;
pub mod console;
pub mod gpio;
pub mod legacy;
pub mod sensor;
pub mod state_file;

pub use agent::{Agent, AgentError, AgentHandle, RequestError, Snapshot};
pub use config::Config;
