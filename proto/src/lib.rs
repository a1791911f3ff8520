//! pifleet's wire contract: every MQTT topic and JSON payload the agent, the controller and the
//! broker exchange, built and parsed in one place so no binary formats a topic string by hand.
//!
//! Layout:
//! - [`broker_url`]: `mqtt://`, `mqtts://`, `ws://` and `wss://` broker addresses.
//! - [`filter`]: MQTT topic names and filters: validity and matching (§4.7), for broker and
//!   clients alike.
//! - [`logging`]: the binaries' shared log setup, and [`say!`]/[`tell!`], the `println!` and
//!   `eprintln!` that cannot panic on a closed stdout or stderr.
//! - [`mqtt`]: rumqttc set up the way pifleet needs it (TCP_NODELAY, TLS, login, backoff, error
//!   sentences).
//! - [`security`]: the MQTT login (user name, redacted password) and TLS trust (CA file or the
//!   system's roots).
//! - [`name`]: validated device, group, output, input and sensor names (they become topic levels).
//! - [`topic`]: the topic tree under a configurable prefix, both directions (build and parse).
//! - [`payload`]: the JSON bodies: presence, commands, output/input state, sensor readings, events.
//! - [`fleet`]: the fleet view folded from device messages (status, targets, legacy shim).
//! - [`report`]: the documented `--json` output of the `pifleet` CLI, so scripts and the CLI's own
//!   tests decode the same types.
//! - [`signal`]: the binaries' stop signal (SIGINT, SIGTERM).
//! - [`time`]: the one clock used for timestamps (Unix milliseconds).
//!
//! `docs/protocol.md` is the human-readable version of this crate; the two must agree.

pub mod broker_url;
pub mod filter;
pub mod fleet;
pub mod logging;
pub mod mqtt;
pub mod name;
pub mod payload;
pub mod report;
pub mod security;
pub mod signal;
pub mod time;
pub mod topic;

pub use broker_url::{BrokerUrl, Scheme};
pub use name::{Name, NameError};
pub use payload::{
    Action, Command, CommandId, Event, EventKind, InputState, OutputState, Presence, PresenceState,
    SensorReading, StateSource,
};
pub use topic::{Target, Topic, Topics};

/// The version every agent reports in its presence message.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The topic prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "pifleet";
