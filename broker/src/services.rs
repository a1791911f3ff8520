//! The broker's fleet services: the legacy relay ([`crate::legacy`]) and the demo fleet
//! ([`crate::demo`]) are ordinary MQTT clients of the broker they run in, connecting over
//! loopback like any agent or CLI, so the same code works against any other broker and the engine
//! knows nothing about them. What they need from the engine is a login.

use pifleet_client::mqtt::{Password, Security};

use crate::credentials::{Identity, Role};
use crate::engine::Engine;

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
