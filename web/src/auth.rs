//! Who may use the dashboard.
//!
//! - **Anonymous** (loopback only, or `allow_anonymous`): no login. The Host header must name
//!   the listening address or `localhost` on loopback, so a page on another site cannot reach
//!   the dashboard through DNS rebinding.
//! - **Login**: `POST /api/login` with a *controller* identity checked by a [`Logins`] (the
//!   broker's credentials file, argon2); a device identity is refused. The session is a random
//!   token in a cookie (`HttpOnly; SameSite=Strict`, plus `Secure` over TLS).
//!
//! Either way every state-changing request (`POST`) must carry `X-CSRF-Token` with the value
//! `GET /api/session` gave the page: another site's page can send a request but cannot read
//! that answer, so it cannot forge the header.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a user name and password fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginCheck {
    /// A controller identity with the right password.
    Controller,
    /// The password is right but the identity is not a controller (a device).
    NotController,
    /// Unknown user or wrong password.
    Refused,
}

/// Checks logins; blocking (argon2), so it is called on a blocking thread.
pub trait Logins: Send + Sync + 'static {
    fn check(&self, user: &str, password: &str) -> LoginCheck;
}

pub const COOKIE: &str = "pifleet_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 1000;

/// 32 random bytes as hex.
pub fn token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct Session {
    pub user: String,
    pub csrf: String,
    seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `user`: (cookie token, CSRF token).
    pub fn create(&self, user: &str) -> (String, String) {
        let mut m = self.map.lock().unwrap();
        m.retain(|_, s| s.seen.elapsed() < IDLE);
        if m.len() >= MAX_SESSIONS {
            if let Some(oldest) = m.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        let (t, csrf) = (token(), token());
        m.insert(
            t.clone(),
            Session {
                user: user.to_string(),
                csrf: csrf.clone(),
                seen: Instant::now(),
            },
        );
        (t, csrf)
    }

    /// The session's (user, CSRF token), refreshing its idle time.
    pub fn get(&self, token: &str) -> Option<(String, String)> {
        let mut m = self.map.lock().unwrap();
        let s = m.get_mut(token)?;
        if s.seen.elapsed() >= IDLE {
            m.remove(token);
            return None;
        }
        s.seen = Instant::now();
        Some((s.user.clone(), s.csrf.clone()))
    }

    pub fn remove(&self, token: &str) {
        self.map.lock().unwrap().remove(token);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Compares secrets without an early exit.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `host` (a Host header) names this loopback dashboard: `localhost`, `127.x`, `[::1]`,
/// with the listening port.
pub fn loopback_host(host: &str, port: u16) -> bool {
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !p.contains(']') => (n, p.parse::<u16>().ok()),
        _ => (host, None),
    };
    if p.is_some_and(|p| p != port) || (p.is_none() && port != 80) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Logins checked by the broker itself: the user name and password are tried in an MQTT
/// CONNECT with a controller's client id (`NAME:<random>`). A pifleet broker with credentials
/// accepts that only for a controller identity (a device's client id must be its name, so a
/// device gets "identifier rejected"). A broker that accepts a random wrong password too checks
/// nothing, so every login is refused there. Used by `pifleet serve`, which has no credentials
/// file of its own; the embedded dashboard checks the file directly.
pub struct BrokerLogins {
    pub url: pifleet_client::BrokerUrl,
    pub ca_file: Option<std::path::PathBuf>,
}

impl BrokerLogins {
    async fn try_login(&self, user: &str, password: &str) -> LoginCheck {
        use rumqttc::{ConnectReturnCode, ConnectionError, Event, Packet};
        let security = pifleet_client::mqtt::Security {
            username: Some(user.to_string()),
            password: Some(pifleet_client::mqtt::Password::new(password)),
            ca_file: self.ca_file.clone(),
        };
        let id = format!("{user}:{}", pifleet_proto::CommandId::generate());
        let Ok((client, mut el)) = pifleet_client::mqtt::client(
            &self.url,
            &id,
            &security,
            Duration::from_secs(30),
            Duration::from_secs(5),
            |_| {},
        ) else {
            return LoginCheck::Refused;
        };
        let verdict = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return LoginCheck::Controller,
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId)) => {
                        return LoginCheck::NotController
                    }
                    Err(_) => return LoginCheck::Refused,
                }
            }
        })
        .await
        .unwrap_or(LoginCheck::Refused);
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        verdict
    }
}

impl Logins for BrokerLogins {
    fn check(&self, user: &str, password: &str) -> LoginCheck {
        if user.is_empty() || user.contains([':', '/', '+', '#']) {
            return LoginCheck::Refused;
        }
        let rt = tokio::runtime::Handle::current();
        match rt.block_on(self.try_login(user, password)) {
            LoginCheck::Controller => {
                if rt.block_on(self.try_login(user, &token())) == LoginCheck::Controller {
                    tracing::error!(
                        "dashboard: the broker at {} accepts any password; refusing every login",
                        self.url.authority()
                    );
                    return LoginCheck::Refused;
                }
                LoginCheck::Controller
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        assert_eq!(cookie("a=1; pifleet_session=xyz", COOKIE), Some("xyz"));
        assert_eq!(cookie("xpifleet_session=1", COOKIE), None);
    }

    #[test]
    fn only_loopback_names_with_our_port_pass_the_host_check() {
        assert!(loopback_host("127.0.0.1:8080", 8080));
        assert!(loopback_host("localhost:8080", 8080));
        assert!(loopback_host("[::1]:8080", 8080));
        assert!(!loopback_host("evil.example:8080", 8080));
        assert!(!loopback_host("127.0.0.1:9999", 8080));
        assert!(!loopback_host("127.0.0.1", 8080));
    }

    #[test]
    fn sessions_hand_out_distinct_tokens_and_forget_removed_ones() {
        let s = Sessions::default();
        let (a, csrf) = s.create("alice");
        let (b, _) = s.create("alice");
        assert_ne!(a, b);
        assert_eq!(s.get(&a), Some(("alice".into(), csrf)));
        s.remove(&a);
        assert_eq!(s.get(&a), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
