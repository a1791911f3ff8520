//! Broker addresses as users write them: `mqtt://host:port` for plain MQTT over TCP,
//! `ws://host:port/path` for MQTT over WebSocket (what browsers and many microcontroller
//! libraries speak), and their TLS forms `mqtts://` (also spelled `ssl://`, as paho and
//! mosquitto do) and `wss://`. A bare `host` or `host:port` means `mqtt://`.
//!
//! Default ports are the usual ones: 1883 (mqtt), 8883 (mqtts), 8083 (ws) and 8084 (wss, the
//! port EMQX and most hosted brokers use next to 8083; there is no IANA port for it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// MQTT over plain TCP.
    Mqtt,
    /// MQTT over TLS (`mqtts://`, `ssl://`).
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Scheme {
    /// Whether the connection is encrypted, i.e. whether a password sent over it stays secret
    /// and a CA file has anything to check.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    /// Whether MQTT rides on WebSocket (and the URL has a path).
    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 8083,
            Scheme::Wss => 8084,
        }
    }

    /// The canonical spelling, as [`BrokerUrl`]'s `Display` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// WebSocket path, starting with `/` (`/mqtt` unless given); empty for mqtt and mqtts.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "broker URL {0:?} has an unsupported scheme: use mqtt://host:port, mqtts://host:port, \
         ws://host:port/path or wss://host:port/path"
    )]
    Scheme(String),
    #[error("broker URL {0:?} has no host")]
    NoHost(String),
    #[error("broker URL {0:?} has an invalid port")]
    Port(String),
}

impl BrokerUrl {
    /// `host:port`, for messages and for TCP connects.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = match s.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (Scheme::Mqtt, rest),
            Some(("mqtts" | "ssl", rest)) => (Scheme::Mqtts, rest),
            Some(("ws", rest)) => (Scheme::Ws, rest),
            Some(("wss", rest)) => (Scheme::Wss, rest),
            Some(_) => return Err(UrlError::Scheme(s.into())),
            None => (Scheme::Mqtt, s),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = scheme.default_port();
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(s.into()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| UrlError::Port(s.into()))?,
                None if after.is_empty() => default_port,
                None => return Err(UrlError::Port(s.into())),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| UrlError::Port(s.into()))?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(s.into()));
        }
        if port == 0 {
            return Err(UrlError::Port(s.into()));
        }
        let path = if !scheme.is_websocket() {
            String::new()
        } else if path.is_empty() {
            "/mqtt".to_string()
        } else {
            path.to_string()
        };
        Ok(BrokerUrl {
            scheme,
            host,
            port,
            path,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path
        )
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        let u: BrokerUrl = "mqtt://pi.local:1884".parse().unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtt, "pi.local", 1884)
        );
        let u: BrokerUrl = "localhost".parse().unwrap();
        assert_eq!(u.to_string(), "mqtt://localhost:1883");
        let u: BrokerUrl = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(u.port, 5000);
        let u: BrokerUrl = "ws://h".parse().unwrap();
        assert_eq!(u.to_string(), "ws://h:8083/mqtt");
        let u: BrokerUrl = "ws://h:9/ws".parse().unwrap();
        assert_eq!(u.path, "/ws");
        let u: BrokerUrl = "mqtt://[::1]:7".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("::1", "[::1]:7".to_string())
        );
    }

    #[test]
    fn refuses_with_reasons() {
        assert!(matches!(
            "http://x".parse::<BrokerUrl>(),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            "mqttss://x".parse::<BrokerUrl>(),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            "wss://:8084/mqtt".parse::<BrokerUrl>(),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            "mqtts://h:0".parse::<BrokerUrl>(),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            "mqtt://:1883".parse::<BrokerUrl>(),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            "mqtt://h:x".parse::<BrokerUrl>(),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            "mqtt://h:0".parse::<BrokerUrl>(),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            "mqtt://h:70000".parse::<BrokerUrl>(),
            Err(UrlError::Port(_))
        ));
    }

    #[test]
    fn tls_schemes_parse_with_their_default_ports() {
        let u: BrokerUrl = "mqtts://broker.example.org".parse().unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Mqtts, "broker.example.org", 8883, "")
        );
        assert_eq!(u.to_string(), "mqtts://broker.example.org:8883");
        // ssl:// is another spelling of mqtts://, written back in the canonical form.
        let u: BrokerUrl = "ssl://h:9883".parse().unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Mqtts, 9883));
        assert_eq!(u.to_string(), "mqtts://h:9883");
        let u: BrokerUrl = "wss://h".parse().unwrap();
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (Scheme::Wss, 8084, "/mqtt")
        );
        assert_eq!(u.to_string(), "wss://h:8084/mqtt");
        let u: BrokerUrl = "wss://[::1]:443/ws".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 443, "/ws")
        );
        assert!(Scheme::Mqtts.is_tls() && Scheme::Wss.is_tls());
        assert!(!Scheme::Mqtt.is_tls() && !Scheme::Ws.is_tls());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "mqtt://h:1883",
            "mqtts://h:8883",
            "ws://h:8083/mqtt",
            "wss://h:8084/mqtt",
            "wss://[::1]:9/x/y",
            "mqtts://[fe80::1]:8883",
        ] {
            let u: BrokerUrl = s.parse().unwrap();
            assert_eq!(u.to_string(), s);
            assert_eq!(u.to_string().parse::<BrokerUrl>().unwrap(), u);
        }
    }
}
