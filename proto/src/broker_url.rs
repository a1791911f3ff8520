//! Broker addresses as users write them: `mqtt://host:port` for plain MQTT over TCP and
//! `ws://host:port/path` for MQTT over WebSocket (what browsers and many microcontroller
//! libraries speak). A bare `host` or `host:port` means `mqtt://`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Ws,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// WebSocket path, starting with `/` (`/mqtt` unless given).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "broker URL {0:?} has an unsupported scheme: use mqtt://host:port or ws://host:port/path"
    )]
    Scheme(String),
    #[error("broker URL {0:?}: TLS (mqtts://, wss://) is not supported by this build yet")]
    Tls(String),
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
            Some(("ws", rest)) => (Scheme::Ws, rest),
            Some(("mqtts" | "ssl" | "wss", _)) => return Err(UrlError::Tls(s.into())),
            Some(_) => return Err(UrlError::Scheme(s.into())),
            None => (Scheme::Mqtt, s),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = match scheme {
            Scheme::Mqtt => 1883,
            Scheme::Ws => 8083,
        };
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
        let path = match scheme {
            Scheme::Ws if path.is_empty() => "/mqtt".to_string(),
            Scheme::Ws => path.to_string(),
            Scheme::Mqtt => String::new(),
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
        match self.scheme {
            Scheme::Mqtt => write!(f, "mqtt://{}", self.authority()),
            Scheme::Ws => write!(f, "ws://{}{}", self.authority(), self.path),
        }
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
            "mqtts://x".parse::<BrokerUrl>(),
            Err(UrlError::Tls(_))
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
}
