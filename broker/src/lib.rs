//! `pifleet-broker`: rumqttd embedded with a fleet-sized configuration, so one binary gives a
//! fleet a broker that every Pi can dial out to.
//!
//! Layout:
//! - [`config`]: our configuration (defaults for everything) and its translation to rumqttd's.
//! - [`server`]: starts rumqttd's router and listeners inside our runtime and reports the
//!   addresses actually bound (port 0 works, which is what tests use).
//! - [`legacy`]: the shim that relays old TCP clients' on/off/go to devices over MQTT.
//! - [`demo`]: a small simulated fleet in the same process, for the quickstart.

pub mod config;
pub mod demo;
pub mod legacy;
pub mod server;

pub use config::Config;
pub use server::{start, BrokerError, Running};
