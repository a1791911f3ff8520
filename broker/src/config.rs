//! pifleet-broker's configuration: a TOML file with a default for every key, named in fleet
//! terms. Limits are on by default because the broker is meant to face the internet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pifleet_proto::Topics;
use serde::Deserialize;

/// The commented default configuration, printed by `pifleet-broker print-config`.
pub const DEFAULT_TOML: &str = include_str!("../pifleet-broker.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub prefix: String,
    pub mqtt: Listener,
    pub websocket: WsListener,
    pub tls: TlsListener,
    pub auth: Auth,
    pub limits: Limits,
    pub state: StateConfig,
    /// Legacy TCP listeners (`[[legacy]]`), each fronting one device.
    #[serde(rename = "legacy")]
    pub legacy: Vec<pifleet_legacy::ListenerConfig>,
    pub history: History,
    /// The web dashboard (`pifleet-web`), an MQTT client of this broker.
    pub dashboard: Dashboard,
    /// Home Assistant discovery (`pifleet-homeassistant`), an MQTT client of this broker.
    pub homeassistant: HomeAssistant,
}

/// `[homeassistant]`: the discovery service (`pifleet_homeassistant::service`). Opt-in: it
/// publishes retained messages outside the fleet's prefix, which a broker shared with other
/// applications should not get unasked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistant {
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub discovery_prefix: String,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        HomeAssistant {
            enabled: false,
            discovery_prefix: pifleet_homeassistant::DEFAULT_DISCOVERY_PREFIX.to_string(),
        }
    }
}

/// `[history]`: the recorder service (`pifleet_history::service`), which keeps what devices
/// report on disk, one CSV file per device per UTC day (docs/history.md). The limits are
/// `pifleet_history::RecorderConfig`'s, named and defaulted the same.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct History {
    pub enabled: bool,
    /// `None`: `pifleet_history::layout::default_dir()` at start (`$STATE_DIRECTORY/history`,
    /// else the user's XDG state directory), where `pifleet history` looks too.
    pub dir: Option<PathBuf>,
    pub keep_days: u32,
    pub max_rows_per_day: u64,
    pub rows_per_sec: f64,
    pub burst: u32,
    pub flush_ms: u64,
    pub max_open_files: usize,
    pub max_pending_bytes: usize,
}

impl Default for History {
    fn default() -> Self {
        let r = pifleet_history::RecorderConfig::default();
        History {
            enabled: true,
            dir: None,
            keep_days: r.keep_days,
            max_rows_per_day: r.max_rows_per_day,
            rows_per_sec: r.rows_per_sec,
            burst: r.burst,
            flush_ms: r.flush_ms,
            max_open_files: r.max_open_files,
            max_pending_bytes: r.max_pending_bytes,
        }
    }
}

impl History {
    /// The recorder's configuration, with the default directory resolved now.
    pub fn recorder(&self) -> pifleet_history::RecorderConfig {
        pifleet_history::RecorderConfig {
            dir: self
                .dir
                .clone()
                .unwrap_or_else(pifleet_history::layout::default_dir),
            keep_days: self.keep_days,
            max_rows_per_day: self.max_rows_per_day,
            rows_per_sec: self.rows_per_sec,
            burst: self.burst,
            flush_ms: self.flush_ms,
            max_open_files: self.max_open_files,
            max_pending_bytes: self.max_pending_bytes,
        }
    }
}

/// `[dashboard]`: the fleet dashboard on HTTP. Loopback by default; on another address it
/// requires a controller login from `[auth] credentials` (or `allow_anonymous`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dashboard {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Serve a non-loopback address without logins (a trusted network only).
    pub allow_anonymous: bool,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            enabled: true,
            listen: pifleet_web::DEFAULT_LISTEN.parse().expect("valid"),
            allow_anonymous: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listener {
    pub listen: SocketAddr,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            listen: "127.0.0.1:1883".parse().expect("valid"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsListener {
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for WsListener {
    fn default() -> Self {
        WsListener {
            enabled: true,
            listen: "127.0.0.1:8083".parse().expect("valid"),
        }
    }
}

/// MQTT over TLS (`mqtts://`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListener {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Server certificate chain (PEM), e.g. from `pifleet-broker tls self-signed`.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

impl Default for TlsListener {
    fn default() -> Self {
        TlsListener {
            enabled: false,
            listen: "127.0.0.1:8883".parse().expect("valid"),
            cert: None,
            key: None,
        }
    }
}

/// Who may connect. Without a credentials file every client is anonymous and may do anything,
/// which is only allowed on loopback unless `allow_anonymous` says otherwise.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Credentials file managed by `pifleet-broker device|controller add|remove|list`.
    pub credentials: Option<PathBuf>,
    /// Optional extra rules for topics outside the fleet's own (see docs/security.md).
    pub acl_file: Option<PathBuf>,
    /// Serve anonymous clients on non-loopback addresses (a trusted network only).
    pub allow_anonymous: bool,
    /// Never move argon2id entries of generated secrets from files of older versions to the
    /// fast hash (docs/security.md, "Files from before the fast scheme"): the broker then
    /// never writes the credentials file.
    pub keep_old_hashes: bool,
}

/// Where retained messages and persistent sessions are kept across restarts (`[state]`,
/// docs/broker.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// False (`--no-state`): everything in memory, as before.
    pub enabled: bool,
    /// The state directory (`--state-dir`). Unset: `$STATE_DIRECTORY`, else
    /// `$XDG_STATE_HOME/pifleet/broker`, else `~/.local/state/pifleet/broker`.
    pub dir: Option<PathBuf>,
    /// Changes are written and fsynced this often (the durability window).
    pub commit_interval_ms: u64,
    /// After a restart, a client has at least this long to connect again before its last
    /// will is published (1.5 x its keep-alive when that is longer; at most 600). Agents back
    /// off up to 30 s between reconnect attempts, so 1.5 x their 10 s keep-alive is too short.
    pub will_grace_secs: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            enabled: true,
            dir: None,
            commit_interval_ms: 200,
            will_grace_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections in all; more are closed right after accept.
    pub max_connections: usize,
    /// Open connections from one IP address (0: no limit). A whole home fleet behind one NAT
    /// router shares an address, so this is generous; it stops one host exhausting the rest.
    pub max_connections_per_ip: usize,
    /// Largest MQTT packet accepted, in bytes; a larger one closes that connection. Over
    /// WebSocket it bounds frames and messages too (plus 5 bytes of MQTT fixed header).
    pub max_packet_size: usize,
    /// TLS/WebSocket handshake, CONNECT and the password check must complete within this time.
    pub connect_timeout_ms: u64,
    /// Retained messages one SUBSCRIBE delivers at most (`pifleet status` subscribes to every
    /// device's presence at once, so this bounds the fleet size it can list).
    pub max_retained_per_subscription: usize,
    /// Messages queued for one client (online but slow, or offline with a persistent session)
    /// beyond which new QoS 0 messages are dropped and QoS 1/2 ones too (counted and logged).
    pub max_queued_messages: usize,
    /// QoS 1/2 messages sent to one client and not yet acknowledged.
    pub max_inflight: u16,
    /// Longest topic name or filter, in bytes (MQTT allows 65,535). Longer: a PUBLISH or a
    /// last will closes the connection, a SUBSCRIBE filter is refused (0x80).
    pub max_topic_len: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter, treated like
    /// `max_topic_len`. The topic trees have a node per level, so this bounds their depth.
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold; filters beyond it are refused (0x80).
    pub max_subscriptions_per_client: usize,
    /// Bytes queued for one client (topic + payload + overhead per message), beside
    /// `max_queued_messages`: whichever bites first drops the message.
    pub max_queued_bytes: usize,
    /// Bytes queued for all clients together. Each online client may always queue
    /// [`QUEUE_RESERVE`] bytes; beyond that only while the total is under this.
    pub max_queued_bytes_total: usize,
    /// Retained messages stored in all; a retained message on a new topic beyond it is
    /// delivered but not stored.
    pub max_retained_messages: usize,
    /// Bytes of retained messages stored in all (topic + payload + a node's cost per level).
    pub max_retained_bytes: usize,
    /// Sessions (connected, or offline persistent ones) in all; a new one beyond it gets
    /// CONNACK 3 "server unavailable".
    pub max_sessions: usize,
    /// Sessions one identity (a controller's `name`, `name:…` client ids) may hold; a new one
    /// beyond it replaces the identity's oldest offline session, or gets CONNACK 3.
    pub max_sessions_per_identity: usize,
    /// An offline persistent session (`clean_session = false`) is forgotten after this long.
    pub session_expiry_secs: u64,
}

/// Bytes every connected client may queue whatever the total (see
/// [`Limits::max_queued_bytes_total`]), so a few clients that stop reading cannot starve the
/// rest of the fleet.
pub const QUEUE_RESERVE: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_connections_per_ip: 1_024,
            max_packet_size: 65_536,
            connect_timeout_ms: 10_000,
            max_retained_per_subscription: 100_000,
            max_queued_messages: 10_000,
            max_inflight: 100,
            max_topic_len: 1024,
            max_topic_levels: 32,
            max_subscriptions_per_client: 100,
            max_queued_bytes: 16 * 1024 * 1024,
            max_queued_bytes_total: 64 * 1024 * 1024,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_sessions: 50_000,
            max_sessions_per_identity: 64,
            session_expiry_secs: 86_400,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: pifleet_proto::DEFAULT_PREFIX.into(),
            mqtt: Listener::default(),
            websocket: WsListener::default(),
            tls: TlsListener::default(),
            auth: Auth::default(),
            limits: Limits::default(),
            state: StateConfig::default(),
            legacy: Vec::new(),
            history: History::default(),
            dashboard: Dashboard::default(),
            homeassistant: HomeAssistant::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Config::from_toml_str(&text, &path.display().to_string())?;
        // Relative paths in a config file mean "next to the config file".
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.tls.cert,
            &mut c.tls.key,
            &mut c.auth.credentials,
            &mut c.auth.acl_file,
            &mut c.state.dir,
            &mut c.history.dir,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        Topics::new(&self.prefix).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.limits.max_retained_per_subscription < 100 {
            return bad("limits.max_retained_per_subscription must be at least 100");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections must be at least 1");
        }
        if self.limits.max_packet_size < 1024 {
            return bad("limits.max_packet_size must be at least 1024 bytes");
        }
        if self.limits.max_queued_messages == 0 || self.limits.max_inflight == 0 {
            return bad("limits.max_queued_messages and limits.max_inflight must be at least 1");
        }
        let l = &self.limits;
        if l.max_topic_len < 64 || l.max_topic_len > 65_535 {
            return bad("limits.max_topic_len must be between 64 and 65535 bytes");
        }
        if l.max_topic_levels < 8 || l.max_topic_levels > 1024 {
            return bad("limits.max_topic_levels must be between 8 and 1024");
        }
        for (v, name) in [
            (
                l.max_subscriptions_per_client,
                "max_subscriptions_per_client",
            ),
            (l.max_retained_messages, "max_retained_messages"),
            (l.max_sessions, "max_sessions"),
            (l.max_sessions_per_identity, "max_sessions_per_identity"),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} must be at least 1"
                )));
            }
        }
        for (v, name) in [
            (l.max_queued_bytes, "max_queued_bytes"),
            (l.max_queued_bytes_total, "max_queued_bytes_total"),
            (l.max_retained_bytes, "max_retained_bytes"),
        ] {
            if v < l.max_packet_size {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} must be at least limits.max_packet_size ({} bytes)",
                    l.max_packet_size
                )));
            }
        }
        if !(1..=60_000).contains(&self.state.commit_interval_ms) {
            return bad("state.commit_interval_ms must be between 1 and 60000");
        }
        if self.state.will_grace_secs > 600 {
            return bad("state.will_grace_secs must be at most 600 (the longest grace)");
        }
        for l in &self.legacy {
            l.validate().map_err(ConfigError::Invalid)?;
            if l.device.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "legacy {}: name the `device` old clients control",
                    l.listen
                )));
            }
        }
        self.history
            .recorder()
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[history]: {e}")))?;
        let dp = &self.homeassistant.discovery_prefix;
        if Topics::new(dp).is_err()
            || Topics::new(&self.prefix)
                .is_ok_and(|t| t.under_prefix(&format!("{dp}/x")).is_some() || dp == &self.prefix)
        {
            return bad(
                "[homeassistant] discovery_prefix must be one or more '/'-separated topic levels \
                 without wildcards, outside the fleet's prefix",
            );
        }
        if self.tls.enabled && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return bad(
                "[tls] needs `cert` and `key` (create them with `pifleet-broker tls self-signed`)",
            );
        }
        let ports: Vec<SocketAddr> = self
            .listeners()
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| a.port() != 0)
            .collect();
        for (i, a) in ports.iter().enumerate() {
            if ports[..i].contains(a) {
                return Err(ConfigError::Invalid(format!(
                    "two listeners on {a}: give each its own address"
                )));
            }
        }
        Ok(())
    }

    /// The enabled MQTT listeners and their addresses. Plain MQTT is always on (loopback by
    /// default): the broker's own legacy relay and demo fleet connect through it.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut v = vec![("mqtt", self.mqtt.listen)];
        if self.websocket.enabled {
            v.push(("websocket", self.websocket.listen));
        }
        if self.tls.enabled {
            v.push(("mqtts", self.tls.listen));
        }
        v
    }

    /// Anonymous access on an address other hosts can reach: refused unless
    /// `auth.allow_anonymous`. Returns the offending listener.
    pub fn anonymous_exposure(&self) -> Option<SocketAddr> {
        if self.auth.credentials.is_some() || self.auth.allow_anonymous {
            return None;
        }
        self.listeners()
            .into_iter()
            .map(|(_, a)| a)
            .find(|a| !a.ip().is_loopback())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        assert_eq!(
            Config::from_toml_str(DEFAULT_TOML, "default").unwrap(),
            Config::default()
        );
        assert_eq!(
            Config::from_toml_str("", "empty").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml_str("[mqtt]\nlisten = \"nowhere\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        let e = Config::from_toml_str("[limits]\nmax_conections = 5\n", "x").unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
        let e = Config::from_toml_str("[tls]\nenabled = true\n", "x").unwrap_err();
        assert!(e.to_string().contains("self-signed"), "{e}");
    }

    #[test]
    fn home_assistant_is_off_by_default_and_its_prefix_is_checked() {
        let h = Config::default().homeassistant;
        assert!(!h.enabled);
        assert_eq!(h.discovery_prefix, "homeassistant");
        let c = Config::from_toml_str("[homeassistant]\nenabled = true\n", "x").unwrap();
        assert!(c.homeassistant.enabled);
        for bad in ["a/+", "pifleet", "pifleet/ha", ""] {
            let toml = format!("[homeassistant]\ndiscovery_prefix = {bad:?}\n");
            assert!(Config::from_toml_str(&toml, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn history_is_on_by_default_with_the_recorders_own_defaults() {
        let h = Config::default().history;
        assert!(h.enabled);
        // The recorder's defaults, its directory resolved the same way.
        assert_eq!(h.recorder(), pifleet_history::RecorderConfig::default());
        let c = Config::from_toml_str("[history]\ndir = \"/data/h\"\nburst = 50\n", "x").unwrap();
        assert_eq!(c.history.recorder().dir, Path::new("/data/h"));
        assert_eq!(c.history.recorder().burst, 50);
        let e = Config::from_toml_str("[history]\nkeep_days = 0\n", "x").unwrap_err();
        assert!(e.to_string().contains("keep_days"), "{e}");
        let e = Config::from_toml_str("[history]\nkeepdays = 3\n", "x").unwrap_err();
        assert!(e.to_string().contains("keepdays"), "{e}");
    }

    #[test]
    fn anonymous_is_only_for_loopback_unless_allowed() {
        let mut c = Config::default();
        assert_eq!(c.anonymous_exposure(), None);
        c.mqtt.listen = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(c.anonymous_exposure(), Some(c.mqtt.listen));
        c.auth.allow_anonymous = true;
        assert_eq!(c.anonymous_exposure(), None);
        c.auth.allow_anonymous = false;
        c.auth.credentials = Some("creds.toml".into());
        assert_eq!(c.anonymous_exposure(), None);
    }
}
