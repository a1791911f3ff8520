//! How pifleet's programs talk to a broker: the agent, the CLI, the benchmark and the broker's
//! own fleet services (the legacy relay, the demo fleet) are all MQTT clients, and this crate
//! makes them behave alike. The wire contract itself (topics, payloads) is `pifleet-proto`; a
//! server never needs this crate for its own listeners.
//!
//! Layout:
//! - [`broker_url`]: `mqtt://`, `mqtts://`, `ws://` and `wss://` broker addresses (never with a
//!   user name or password in them).
//! - [`mqtt`]: rumqttc set up the way pifleet needs it (TCP_NODELAY, TLS, login), the
//!   reconnect backoff, and connection errors as one sentence each.
//! - [`security`]: the MQTT login (user name, redacted password) and TLS trust (CA file or the
//!   system's roots).
//! - [`logging`]: the binaries' shared log setup, and [`say!`]/[`tell!`], the `println!` and
//!   `eprintln!` that cannot panic on a closed stdout or stderr.
//! - [`service`]: the start-up of a long-running fleet service (the recorder, Home Assistant
//!   discovery): one connection, subscribed before `start` returns, retried once running.
//! - [`signal`]: the binaries' stop signal (SIGINT, SIGTERM).
//! - [`files`]: files written atomically (temporary file, fsync, rename, fsync of the directory).

pub mod broker_url;
pub mod files;
pub mod logging;
pub mod mqtt;
pub mod security;
pub mod service;
pub mod signal;

pub use broker_url::{BrokerUrl, Scheme};
