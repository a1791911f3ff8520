//! pifleet's wire contract: every MQTT topic and JSON payload the agent, the controller and the
//! broker exchange, built and parsed in one place so no binary formats a topic string by hand.
//!
//! Nothing here opens a connection: how a program talks to a broker (rumqttc, TLS, backoff,
//! logging) is `pifleet-client`, so a server can use the contract without a client stack.
//!
//! Layout:
//! - [`name`]: validated device, group, output, input and sensor names (they become topic levels).
//! - [`topic`]: the topic tree under a configurable prefix, both directions (build and parse),
//!   and which topics are a device's own or commands.
//! - [`filter`]: MQTT topic names and filters: validity and matching (§4.7), for broker and
//!   clients alike.
//! - [`payload`]: the JSON bodies: presence, commands, output/input state, sensor readings, events.
//! - [`fleet`]: the fleet view folded from device messages (status, targets, legacy shim), and
//!   the rule by which a command counts as confirmed, refused or cut short.
//! - [`report`]: the documented `--json` output of the `pifleet` CLI, so scripts and the CLI's own
//!   tests decode the same types.
//! - [`time`]: the one clock used for timestamps (Unix milliseconds).
//!
//! `docs/protocol.md` is the human-readable version of this crate; the two must agree.

pub mod filter;
pub mod fleet;
pub mod name;
pub mod payload;
pub mod report;
pub mod time;
pub mod topic;

pub use name::{Name, NameError};
pub use payload::{
    Action, Command, CommandId, Event, EventKind, InputState, Level, OutputState, Presence,
    PresenceState, SensorReading, StateSource,
};
pub use topic::{PlainKind, Target, Topic, Topics};

/// The version every agent reports in its presence message.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The topic prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "pifleet";
