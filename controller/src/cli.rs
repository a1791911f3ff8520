//! Command-line parsing only; each subcommand's options struct has its own `exec` in [`crate::cmd`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pifleet_client::mqtt::{Password, Security};
use pifleet_client::BrokerUrl;
use pifleet_proto::Name;

use crate::error::CliError;

/// Control a fleet of Raspberry Pis over MQTT.
///
/// Login: --user NAME (or PIFLEET_USER) with the password in PIFLEET_PASSWORD or in a file
/// (--password-file, PIFLEET_PASSWORD_FILE). There is no --password flag: command lines are
/// visible to every user of the machine.
///
/// Exit codes: 0 success; 1 some device did not confirm (or is unknown); 2 usage error (also an
/// unreadable password or CA file); 3 broker unreachable, TLS handshake failed, connection
/// refused or lost; 4 the broker refused the login (bad user name or password, not authorized).
/// `history` exits 1 when it finds no rows; `record` exits 2 when it cannot use its directory.
#[derive(Parser, Debug)]
#[command(name = "pifleet", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Broker URL: mqtt://host:port, mqtts://host:port (TLS, default port 8883),
    /// ws://host:port/path or wss://host:port/path (TLS, default port 8084).
    #[arg(
        long,
        env = "PIFLEET_BROKER",
        default_value = "mqtt://localhost:1883",
        global = true
    )]
    pub broker: BrokerUrl,
    /// Log in as NAME; the password comes from PIFLEET_PASSWORD or --password-file. The MQTT
    /// client id becomes NAME:<random>, so several commands can run at once under one name.
    #[arg(long, env = "PIFLEET_USER", value_name = "NAME", global = true)]
    pub user: Option<String>,
    /// File holding the password for --user (trailing newline ignored); beats PIFLEET_PASSWORD.
    #[arg(
        long,
        env = "PIFLEET_PASSWORD_FILE",
        value_name = "PATH",
        global = true
    )]
    pub password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) that signed the broker's TLS certificate, for
    /// mqtts:// and wss:// (default: the system's trusted roots).
    #[arg(long, env = "PIFLEET_CA_FILE", value_name = "PATH", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Topic prefix of the fleet.
    #[arg(long, env = "PIFLEET_PREFIX", default_value = pifleet_proto::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
    /// Machine-readable output: one JSON document (JSON Lines for `watch`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the broker to accept the connection.
    #[arg(long, default_value = "3", value_name = "SECS", value_parser = seconds, global = true)]
    pub connect_timeout: f64,
}

/// Where the password may come from besides `--password-file`: read from the environment by
/// [`Global::security`], never from a flag.
pub const PASSWORD_ENV: &str = "PIFLEET_PASSWORD";

impl Global {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout.clamp(0.1, 3600.0))
    }

    /// The login and TLS trust for this command, with the password from `PIFLEET_PASSWORD`.
    pub fn security(&self) -> Result<Security, CliError> {
        let env_password = std::env::var(PASSWORD_ENV).ok();
        self.security_with(env_password)
    }

    /// [`Global::security`] with the environment's password passed in, for tests. Reads the
    /// password file; an empty `PIFLEET_USER` or `PIFLEET_PASSWORD` counts as unset, as in most
    /// env files.
    pub fn security_with(&self, env_password: Option<String>) -> Result<Security, CliError> {
        let usage = |e: pifleet_client::mqtt::SecurityError| CliError::Usage(e.to_string());
        let password = match &self.password_file {
            Some(file) => Some(Password::from_file(file).map_err(usage)?),
            None => env_password.filter(|p| !p.is_empty()).map(Password::new),
        };
        let username = self.user.clone().filter(|u| !u.is_empty());
        if password.is_some() && username.is_none() {
            return Err(CliError::Usage(format!(
                "a password was given ({}) but no user name: add --user NAME or set PIFLEET_USER",
                if self.password_file.is_some() {
                    "--password-file"
                } else {
                    PASSWORD_ENV
                }
            )));
        }
        Ok(Security {
            username,
            password,
            ca_file: self.ca_file.clone(),
        })
    }
}

/// A number of seconds: finite and within `0..=3600`.
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Switch outputs on and wait for each device to confirm.
    On(SwitchArgs),
    /// Switch outputs off and wait for each device to confirm.
    Off(SwitchArgs),
    /// Toggle outputs and wait for each device to confirm.
    Toggle(SwitchArgs),
    /// Set dimmable (PWM) outputs to a level in percent and wait for each device to confirm.
    Set(SetArgs),
    /// Show the fleet: presence, outputs, inputs, latest sensor values, last seen.
    Status(StatusArgs),
    /// Print live events (presence, outputs, buttons, sensors, refusals) until Ctrl-C.
    Watch(WatchArgs),
    /// Show what a device reported, from the history directory (on the broker's machine).
    History(crate::cmd::history::HistoryArgs),
    /// Record what the devices report into the history directory, until Ctrl-C (what
    /// pifleet-broker does by itself; for other brokers).
    Record(crate::cmd::record::RecordArgs),
    /// Publish Home Assistant discovery for the fleet, until Ctrl-C (what pifleet-broker does
    /// with `[homeassistant] enabled`; for other brokers).
    #[command(name = "homeassistant")]
    Homeassistant(crate::cmd::homeassistant::HomeAssistantArgs),
    /// Serve the web dashboard (default http://127.0.0.1:8080) for the fleet on --broker.
    Serve(crate::cmd::serve::ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SwitchArgs {
    /// Devices to switch.
    pub devices: Vec<Name>,
    /// Every online device in this group (repeatable).
    #[arg(long = "group", short)]
    pub groups: Vec<Name>,
    /// Every online device.
    #[arg(long, short, conflicts_with_all = ["devices", "groups"])]
    pub all: bool,
    /// Which output (default: each device's first output).
    #[arg(long, short)]
    pub output: Option<Name>,
    /// Seconds to wait for confirmations.
    #[arg(long, short, default_value = "5", value_name = "SECS", value_parser = seconds)]
    pub timeout: f64,
    /// A pulse (`on` and `set`): the device switches the output off again after this long, on
    /// its own timer (e.g. 2s, 1.5s, 500ms, 10m; at most a day).
    #[arg(long = "for", value_name = "DURATION", value_parser = pulse)]
    pub pulse: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct SetArgs {
    /// The level, in percent: 0 (off) to 100.
    #[arg(long, short, value_name = "PERCENT", value_parser = level)]
    pub level: f64,
    #[command(flatten)]
    pub switch: SwitchArgs,
}

/// A level in percent, as `set` takes it.
pub fn level(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    pifleet_proto::Level::check(v)
}

/// A pulse length: a number with `ms`, `s`, `m` or `h` (seconds without one).
pub fn pulse(s: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 2s, 1.5s, 500ms, 10m)"))?;
    pifleet_proto::payload::check_pulse_secs(v * scale)
        .map_err(|_| format!("{s:?}: a pulse is more than 0 and at most a day (24h)"))
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Only these devices (default: all).
    pub devices: Vec<Name>,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Only these devices (default: all).
    pub devices: Vec<Name>,
}

#[cfg(test)]
mod test {
    use clap::Parser;

    use super::*;

    fn global(args: &[&str]) -> Global {
        let mut argv = vec!["pifleet"];
        argv.extend_from_slice(args);
        argv.push("status");
        Cli::try_parse_from(argv).unwrap().global
    }

    #[test]
    fn the_password_comes_from_the_environment_or_a_file_never_a_flag() {
        let e = Cli::try_parse_from(["pifleet", "--password", "x", "status"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);

        let g = global(&["--user", "alice"]);
        let s = g.security_with(Some("s3cret".into())).unwrap();
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.password.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));

        let file = std::env::temp_dir().join(format!("pifleet-cli-pw-{}", std::process::id()));
        std::fs::write(&file, "from-file\n").unwrap();
        let g = global(&["--user", "alice", "--password-file", file.to_str().unwrap()]);
        let s = g.security_with(Some("from-env".into())).unwrap();
        assert_eq!(s.password.unwrap().expose(), "from-file", "the file wins");
        std::fs::remove_file(&file).unwrap();
        let e = g.security_with(None).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.starts_with("cannot read the password file")),
            "{e}"
        );
    }

    #[test]
    fn a_password_needs_a_user_and_empty_means_unset() {
        let g = global(&[]);
        let e = g.security_with(Some("s3cret".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a password was given (PIFLEET_PASSWORD) but no user name: add --user NAME or set \
             PIFLEET_USER"
        );
        assert_eq!(
            g.security_with(Some(String::new())).unwrap(),
            Security::default()
        );
        let s = global(&["--user", "alice"]).security_with(None).unwrap();
        assert_eq!((s.username.as_deref(), s.password), (Some("alice"), None));
        let s = global(&["--user", ""]).security_with(None).unwrap();
        assert_eq!(s.username, None);
    }

    #[test]
    fn pulses_and_levels_parse_with_their_units() {
        assert_eq!(pulse("2s"), Ok(2.0));
        assert_eq!(pulse("1.5"), Ok(1.5));
        assert_eq!(pulse("500ms"), Ok(0.5));
        assert_eq!(pulse("10m"), Ok(600.0));
        assert!(pulse("0s").is_err() && pulse("25h").is_err() && pulse("soon").is_err());
        assert_eq!(level("40"), Ok(40.0));
        assert_eq!(level("12.5%"), Ok(12.5));
        assert!(level("140").is_err() && level("-1").is_err() && level("dim").is_err());
    }

    #[test]
    fn tls_urls_and_the_ca_file_parse() {
        let g = global(&[
            "--broker",
            "mqtts://pi.example.org",
            "--ca-file",
            "/etc/ca.pem",
        ]);
        assert_eq!(g.broker.to_string(), "mqtts://pi.example.org:8883");
        let s = g.security_with(None).unwrap();
        assert_eq!(
            s.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
    }
}
