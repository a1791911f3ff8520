//! `pifleet-agent`: runs on each Pi, dials out to the broker (so a Pi behind NAT needs no port
//! forwarding), switches outputs on command and publishes inputs and sensors.
//!
//! Layout, from the edges in:
//! - [`config`]: the TOML configuration and its validation.
//! - [`gpio`]: the hardware seam (`Backend`), with the rppal and simulated backends.
//! - [`sensor`]: temperatures, the Pi's own health (CPU, load, memory, disk, uptime, Wi-Fi,
//!   under-voltage and throttling), I2C chips (a BME280, through its embedded-hal driver on
//!   rppal's or a simulated bus), each polled off the runtime.
//! - [`state_file`]: atomic persistence behind `initial = "restore"`.
//! - [`connection`]: the task that polls rumqttc's event loop, with backoff.
//!
//! The agent itself, decisions apart from I/O (rumqttc's `MqttState` shape):
//! - [`agent`]: [`Agent`], built from the config (claims the pins, loads the state file) and
//!   run; [`AgentError`].
//! - [`handle`]: [`AgentHandle`], how other tasks talk to a running agent, and its requests.
//! - [`state`]: [`state::AgentState`], the sans-IO core: an input in (a CONNACK, a PUBLISH, an
//!   input edge, a sensor reading, a local request, a heartbeat), the messages to publish and
//!   the pin to set out.
//! - [`command`]: command parsing and validation, and the ring of recent command ids that
//!   makes a QoS 1 redelivery harmless.
//! - [`announce`]: what is said after every CONNACK and in what order (SUBSCRIBE, then
//!   presence, outputs, inputs, sensors), and reading the SUBACK.
//! - [`message`]: [`message::Message`] (topic, payload, QoS, retain) and the builders that give
//!   each kind of message its QoS and retain flag.
//! - [`backlog`]: what the agent holds while the broker cannot take it, and its drop policy.
//! - `run`: the async shell, the one task that owns the client, the pins and the timers, and
//!   carries out what the core decides.
//!
//! Around it:
//! - [`legacy`]: the on-Pi shim for old length-prefixed and NUL-terminated clients.
//! - [`console`]: the simulator's stdin console (`press button`, `show`).

pub mod agent;
pub mod announce;
pub mod backlog;
pub mod command;
pub mod config;
pub mod connection;
pub mod console;
pub mod gpio;
pub mod handle;
pub mod legacy;
pub mod message;
mod run;
pub mod sensor;
pub mod state;
pub mod state_file;

pub use agent::{Agent, AgentError};
pub use config::Config;
pub use handle::{AgentHandle, RequestError, Snapshot};
