//! `pifleet-broker`: an MQTT 3.1.1 broker sized for a fleet of Raspberry Pis, so one binary gives
//! a fleet a broker every Pi can dial out to, with per-device identities, topic ACLs and TLS.
//!
//! Layout:
//! - [`config`]: our configuration (defaults for everything, limits on by default).
//! - [`engine`]: the MQTT engine: listeners, sessions, subscriptions, retained messages, wills.
//! - [`credentials`]: the credentials file (a fast keyed hash for generated secrets, argon2id
//!   for chosen ones) and identities (device/controller).
//! - [`acl`]: what an identity may publish and subscribe to.
//! - [`tls`]: server TLS configuration and `tls self-signed`.
//! - [`admin`]: the `init` / `device` / `controller` / `tls` / `health` subcommands.
//! - [`health`]: the probe behind `health`, a container health check that needs no secret.
//! - [`services`]: the fleet services' login: in-process MQTT clients of this broker, seen by the
//!   engine as any other client:
//!   - [`legacy`]: the shim that relays old TCP clients' on/off/go to devices over MQTT;
//!   - [`history`]: the recorder that keeps what devices report on disk (`[history]`);
//!   - [`homeassistant`]: Home Assistant discovery for the fleet (`[homeassistant]`, opt-in);
//!   - [`demo`]: a small simulated fleet in the same process, for the quickstart;
//!   - [`dashboard`]: the web dashboard (`pifleet-web`).

pub mod acl;
pub mod admin;
pub mod config;
pub mod credentials;
pub mod dashboard;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod health;
pub mod history;
pub mod homeassistant;
pub mod legacy;
pub mod services;
pub mod tls;

pub use config::Config;
pub use engine::{start, BrokerError, Running};
