//! The broker's fleet services: the legacy relay ([`crate::legacy`]), the history recorder
//! ([`crate::history`]) and the demo fleet ([`crate::demo`]) are ordinary MQTT clients of the
//! broker they run in, connecting over loopback like any agent or CLI, so the same code works
//! against any other broker and the engine knows nothing about them. What they need from the
//! engine is an address and a login.

use std::time::Duration;

use pifleet_client::mqtt::{Password, Security};
use pifleet_client::service::Login;
use pifleet_client::{BrokerUrl, Scheme};
use pifleet_proto::CommandId;

use crate::credentials::{Identity, Role};
use crate::engine::{Engine, Running};

/// The plain MQTT listener of `running`, as a URL a client in this process connects to (its
/// loopback address when it listens on all of them).
pub fn loopback_url(running: &Running) -> BrokerUrl {
    let mqtt = running.mqtt;
    let host = if mqtt.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        mqtt.ip().to_string()
    };
    BrokerUrl {
        scheme: Scheme::Mqtt,
        host,
        port: mqtt.port(),
        path: String::new(),
    }
}

/// What an in-process client needs to log in to `engine` as `name` with `role`: nothing when
/// authentication is off, otherwise a fresh internal identity (never written to the
/// credentials file).
pub fn login(engine: &Engine, name: &str, role: Role, groups: Vec<String>) -> Security {
    if !engine.auth_enabled() {
        return Security::default();
    }
    let secret = engine.internal_identity(Identity {
        name: name.to_string(),
        role,
        groups,
    });
    Security {
        username: Some(name.to_string()),
        password: Some(Password::new(secret)),
        ca_file: None,
    }
}

/// The login of a long-running fleet service (the recorder, Home Assistant discovery) named
/// `name`: an in-process controller over loopback, with a controller's client id (its name,
/// `:`, anything; see engine/auth.rs) so that a restarted service never takes over another.
pub fn service_login(running: &Running, name: &str) -> Login {
    Login {
        broker: loopback_url(running),
        client_id: format!("{name}:{}", CommandId::generate()),
        security: login(&running.engine, name, Role::Controller, Vec::new()),
        role: "controller",
        connect_timeout: Duration::from_secs(5),
    }
}
