//! pifleet-broker's own configuration, translated into rumqttd's. Ours has defaults for every
//! key and names things in fleet terms; rumqttd's requires every field and sizes its in-memory
//! logs for a server, not for thousands of small devices (its issues #957 and #1001).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

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
    pub limits: Limits,
    pub storage: Storage,
    /// Legacy TCP listeners (`[[legacy]]`), each fronting one device.
    #[serde(rename = "legacy")]
    pub legacy: Vec<pifleet_legacy::ListenerConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listener {
    pub listen: SocketAddr,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            listen: "0.0.0.0:1883".parse().expect("valid"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsListener {
    pub enabled: bool,
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    /// How many retained messages one QoS 0 subscription receives at most (rumqttd's
    /// `max_outgoing_packet_count`, also its batch size when forwarding QoS 0 messages).
    pub max_retained_per_subscription: u64,
    pub max_packet_size: usize,
    pub connect_timeout_ms: u16,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub command_segment_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: pifleet_proto::DEFAULT_PREFIX.into(),
            mqtt: Listener::default(),
            websocket: WsListener::default(),
            limits: Limits::default(),
            storage: Storage::default(),
            legacy: Vec::new(),
        }
    }
}

impl Default for WsListener {
    fn default() -> Self {
        WsListener {
            enabled: true,
            listen: "0.0.0.0:8083".parse().expect("valid"),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_retained_per_subscription: 50_000,
            max_packet_size: 65_536,
            connect_timeout_ms: 10_000,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            max_segment_size: 1_048_576,
            max_segment_count: 4,
            command_segment_size: 16_384,
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
        Config::from_toml_str(&text, &path.display().to_string())
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
        // rumqttd panics on segments under 1 KiB.
        if self.storage.max_segment_size < 1024 || self.storage.command_segment_size < 1024 {
            return bad("storage segment sizes must be at least 1024 bytes");
        }
        if self.storage.max_segment_count == 0 {
            return bad("storage.max_segment_count must be at least 1");
        }
        if self.limits.max_retained_per_subscription < 100 {
            return bad("limits.max_retained_per_subscription must be at least 100");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections must be at least 1");
        }
        if self.limits.max_packet_size < 1024 {
            return bad("limits.max_packet_size must be at least 1024 bytes");
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
        if self.websocket.enabled
            && self.websocket.listen == self.mqtt.listen
            && self.mqtt.listen.port() != 0
        {
            return bad("mqtt.listen and websocket.listen must differ");
        }
        Ok(())
    }

    /// rumqttd's router settings for this config.
    pub fn router(&self) -> rumqttd::RouterConfig {
        let commands = format!("{}/dev/+/cmnd", self.prefix);
        let mut custom = HashMap::new();
        custom.insert(
            commands,
            rumqttd::SegmentConfig {
                max_segment_size: self.storage.command_segment_size,
                // Never 1: rotating the only segment drops commands a device has not read yet.
                max_segment_count: 4,
            },
        );
        rumqttd::RouterConfig {
            max_connections: self.limits.max_connections,
            max_outgoing_packet_count: self.limits.max_retained_per_subscription,
            max_segment_size: self.storage.max_segment_size,
            max_segment_count: self.storage.max_segment_count,
            custom_segment: Some(custom),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        }
    }

    /// rumqttd's settings for one listener at `listen`.
    pub fn server(&self, name: &str, listen: SocketAddr) -> rumqttd::ServerSettings {
        rumqttd::ServerSettings {
            name: name.to_string(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: self.limits.connect_timeout_ms,
                max_payload_size: self.limits.max_packet_size,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: false,
            },
        }
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
        let e = Config::from_toml_str("[storage]\nmax_segment_size = 10\n", "x").unwrap_err();
        assert!(e.to_string().contains("1024"), "{e}");
    }

    #[test]
    fn command_filters_get_small_segments() {
        let r = Config::default().router();
        let seg = &r.custom_segment.unwrap()["pifleet/dev/+/cmnd"];
        assert_eq!((seg.max_segment_size, seg.max_segment_count), (16_384, 4));
    }
}
