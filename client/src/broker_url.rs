//! Broker addresses as users write them: `mqtt://host:port` for plain MQTT over TCP,
//! `ws://host:port/path` for MQTT over WebSocket (what browsers and many microcontroller
//! libraries speak), and their TLS forms `mqtts://` (also spelled `ssl://`, as paho and
//! mosquitto do) and `wss://`. A bare `host` or `host:port` means `mqtt://`.
//!
//! Default ports are the usual ones: 1883 (mqtt), 8883 (mqtts), 8083 (ws) and 8084 (wss, the
//! port EMQX and most hosted brokers use next to 8083; there is no IANA port for it).
//!
//! A user name or password in the URL (`mqtt://bob:secret@host`) is refused, with an error that
//! does not repeat the URL: logins travel separately (`--user`, a password file), and a URL is
//! echoed in errors, logs and `ps` output.

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
    /// The URL has a user name or password (`mqtt://user:secret@host`). The message never
    /// repeats the URL: it would put the secret on screen and in logs.
    #[error(
        "broker URL must not contain a user name or password; use --user and \
         PIFLEET_PASSWORD_FILE/PIFLEET_PASSWORD (the agent: username and password_file in its \
         config)"
    )]
    UserInfo,
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
        // First, before any error that quotes the URL. Any `@` counts, not only one in the
        // authority: a password with an unescaped `/` (`mqtt://bob:se/cret@host`) would
        // otherwise leave its `@` in what parses as a path, and the error about the port would
        // quote the secret. MQTT WebSocket paths have no use for `@`.
        if s.contains('@') {
            return Err(UrlError::UserInfo);
        }
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

/// `--broker URL` and `PIFLEET_BROKER` for clap. clap's own error for a bad value quotes the
/// value (`invalid value 'mqtt://bob:secret@host' for '--broker'`), which would put a password
/// given in the URL on screen; this parser's errors say only what [`UrlError`] says (which, for
/// a URL with a password, is not the URL). Still a usage error: exit code 2.
#[cfg(feature = "clap")]
mod cli {
    use std::ffi::OsStr;

    use clap::builder::{TypedValueParser, ValueParserFactory};
    use clap::error::ErrorKind;

    use super::BrokerUrl;

    #[derive(Debug, Clone, Copy, Default)]
    pub struct BrokerUrlParser;

    impl TypedValueParser for BrokerUrlParser {
        type Value = BrokerUrl;

        fn parse_ref(
            &self,
            cmd: &clap::Command,
            arg: Option<&clap::Arg>,
            value: &OsStr,
        ) -> Result<BrokerUrl, clap::Error> {
            let name = arg.map_or_else(|| "the broker URL".to_string(), |a| format!("'{a}'"));
            let why = match value.to_str().map(str::parse::<BrokerUrl>) {
                Some(Ok(url)) => return Ok(url),
                Some(Err(e)) => e.to_string(),
                None => "broker URL is not valid UTF-8".to_string(),
            };
            let message = format!("invalid value for {name}: {why}\n");
            Err(clap::Error::raw(ErrorKind::ValueValidation, message).with_cmd(cmd))
        }
    }

    /// Picked by `#[arg]` for every `BrokerUrl` field, so no flag can forget it.
    impl ValueParserFactory for BrokerUrl {
        type Parser = BrokerUrlParser;

        fn value_parser() -> BrokerUrlParser {
            BrokerUrlParser
        }
    }
}

#[cfg(feature = "clap")]
pub use cli::BrokerUrlParser;

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
    fn a_user_or_password_in_the_url_is_refused_without_repeating_them() {
        for s in [
            "mqtt://bob:secret@host",
            "mqtt://bob:secret@host:1883",
            "bob:secret@host",
            "mqtts://secret@h",
            "ws://bob:secret@h:8083/mqtt",
            "wss://bob:secret@[::1]/mqtt",
            "http://bob:secret@x",
            "mqtt://bob:se/cret@host",
            "mqtt://bob:secret@host:x",
        ] {
            let e = s.parse::<BrokerUrl>().unwrap_err();
            assert_eq!(e, UrlError::UserInfo, "{s}");
            let shown = e.to_string();
            assert!(
                !shown.contains("secret") && !shown.contains("bob") && !shown.contains("cret"),
                "{shown}"
            );
        }
        assert_eq!(
            UrlError::UserInfo.to_string(),
            "broker URL must not contain a user name or password; use --user and \
             PIFLEET_PASSWORD_FILE/PIFLEET_PASSWORD (the agent: username and password_file in \
             its config)"
        );
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
