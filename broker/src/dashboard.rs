//! Starts the web dashboard (`pifleet-web`) inside the broker: like the legacy relay, an
//! ordinary MQTT client of this broker over loopback, logged in as an internal controller
//! identity when the broker requires logins. Off loopback, people log in to it with a controller
//! identity from the same credentials file (argon2, [`Credentials::verify`]).

use std::net::SocketAddr;
use std::sync::Arc;

use pifleet_client::{BrokerUrl, Scheme};
use pifleet_proto::{CommandId, Topics};
use pifleet_web::{BrokerLogin, LoginCheck, Logins, Options};

use crate::credentials::Role;
use crate::engine::Running;
use crate::Config;

/// Dashboard logins checked against the credentials the broker holds now: the engine's, so a
/// reload (SIGHUP, a changed file) that removes a controller also ends its dashboard logins.
pub struct CredentialLogins(pub Arc<crate::engine::Engine>);

impl Logins for CredentialLogins {
    fn check(&self, user: &str, password: &str) -> LoginCheck {
        let access = self.0.access();
        let Some(credentials) = access.credentials.as_ref() else {
            return LoginCheck::Refused;
        };
        match credentials.verify(user, password.as_bytes()) {
            Ok(id) if id.role == Role::Controller => LoginCheck::Controller,
            Ok(_) => LoginCheck::NotController,
            Err(_) => LoginCheck::Refused,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// A configuration that must not run (exit 2).
    #[error("{0}")]
    Config(String),
    /// It could not start (exit 1).
    #[error("dashboard: {0}")]
    Start(String),
}

/// Starts the dashboard on `listen` if `[dashboard] enabled`; returns its URL (HTTPS with the
/// broker's certificate when `[tls]` is on). `explicit`: the address was asked
/// for (`--dashboard`); otherwise a default address already in use is a warning, not an error,
/// so a second broker on one machine still starts.
pub async fn start(
    config: &Config,
    listen: SocketAddr,
    explicit: bool,
    running: &Running,
    topics: Topics,
) -> Result<Option<String>, DashboardError> {
    let d = &config.dashboard;
    if !d.enabled {
        return Ok(None);
    }
    let logins = config
        .auth
        .credentials
        .is_some()
        .then(|| Arc::new(CredentialLogins(running.engine.clone())) as Arc<dyn Logins>);
    let options = Options {
        // The charts read what the recorder writes, wherever `[history]` puts it.
        history_dir: config.history.recorder().dir,
        logins,
        allow_anonymous: d.allow_anonymous,
        secure_cookie: false,
        // With `[tls]` on, the dashboard is served over HTTPS with the same certificate.
        tls: match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) if config.tls.enabled => Some(
                crate::tls::server_config(cert, key)
                    .map_err(|e| DashboardError::Config(e.to_string()))?,
            ),
            _ => None,
        },
    };
    pifleet_web::check_exposure(listen, &options)
        .map_err(|e| DashboardError::Config(e.to_string()))?;
    let mqtt = running.mqtt;
    let host = if mqtt.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        mqtt.ip().to_string()
    };
    const NAME: &str = "pifleet-broker-dashboard";
    let login = BrokerLogin {
        url: BrokerUrl {
            scheme: Scheme::Mqtt,
            host,
            port: mqtt.port(),
            path: String::new(),
        },
        security: crate::services::login(&running.engine, NAME, Role::Controller, Vec::new()),
        client_id: format!("{NAME}:{}", CommandId::generate()),
    };
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    match pifleet_web::start(listen, login, topics, options).await {
        Ok(r) => Ok(Some(format!("{scheme}://{}/", r.addr))),
        Err(pifleet_web::Error::Listen { addr, source })
            if !explicit && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            tracing::warn!(
                "dashboard not started: {addr} is in use (choose another with --dashboard ADDR \
                 or [dashboard] listen)"
            );
            Ok(None)
        }
        Err(e) => Err(DashboardError::Start(e.to_string())),
    }
}
