//! The agent's configuration: a TOML file (all keys optional), overridden by flags and
//! environment variables in `main.rs`. Parsing refuses unknown keys so that a typo such as
//! `activ_low` is an error naming the key instead of a silently ignored setting.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pifleet_client::mqtt::{Password, Security};
use pifleet_proto::{Name, Topics};
use serde::Deserialize;

use pifleet_client::BrokerUrl;

/// The commented example printed by `pifleet-agent print-config`; a test keeps it loadable.
pub const EXAMPLE: &str = include_str!("../pifleet-agent.example.toml");

/// Which GPIO backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpioChoice {
    /// rppal when the device tree names a Raspberry Pi (`/proc/device-tree/model` contains
    /// "Raspberry Pi"), the simulator otherwise.
    #[default]
    Auto,
    Rppal,
    Sim,
}

impl std::str::FromStr for GpioChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(GpioChoice::Auto),
            "rppal" => Ok(GpioChoice::Rppal),
            "sim" => Ok(GpioChoice::Sim),
            _ => Err(format!(
                "unknown GPIO backend {s:?}: expected auto, rppal or sim"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    #[default]
    Off,
    On,
    /// The state saved in the state file when the agent last ran (off if there is none).
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    #[default]
    None,
    Up,
    Down,
}

/// What an output drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// On or off (an LED, a relay).
    #[default]
    Switch,
    /// A level from 0 to 100 % by pulse-width modulation (a dimmable LED, a fan): hardware PWM
    /// on BCM 12/13/18/19 where the `pwm` overlay is enabled, software PWM elsewhere.
    Pwm,
}

/// The default PWM frequency: flicker-free for LEDs, and within what software PWM does well.
pub const DEFAULT_PWM_HZ: f64 = 200.0;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub name: Name,
    /// BCM GPIO number.
    pub pin: u8,
    #[serde(default)]
    pub active_low: bool,
    #[serde(default)]
    pub initial: Initial,
    #[serde(default)]
    pub kind: OutputKind,
    /// PWM frequency in Hz (`kind = "pwm"` only; default [`DEFAULT_PWM_HZ`]).
    #[serde(default)]
    pub frequency_hz: Option<f64>,
    /// Every switch on becomes a pulse of this many seconds unless the command gives its own
    /// `on_time` (a garage-door relay, a valve): the agent switches it off by itself.
    #[serde(default)]
    pub pulse_secs: Option<f64>,
}

impl OutputConfig {
    /// An on/off output with the defaults.
    pub fn switch(name: Name, pin: u8) -> OutputConfig {
        OutputConfig {
            name,
            pin,
            active_low: false,
            initial: Initial::Off,
            kind: OutputKind::Switch,
            frequency_hz: None,
            pulse_secs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    pub name: Name,
    pub pin: u8,
    #[serde(default)]
    pub pull: Pull,
    #[serde(default)]
    pub active_low: bool,
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

fn default_debounce_ms() -> u64 {
    30
}

/// What a `[[sensor]]` reads. The health kinds (`cpu_usage` … `throttled`) are the Pi's own
/// state from /proc, /sys and vcgencmd; `bme280` is a chip on the I2C bus. README "Device
/// health" lists what each publishes, in which unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    CpuTemp,
    Ds18b20,
    Sim,
    CpuUsage,
    LoadAverage,
    MemoryUsed,
    DiskUsed,
    Uptime,
    WifiSignal,
    Undervoltage,
    Throttled,
    Bme280,
}

impl SensorKind {
    /// The quantities a sensor of this kind publishes, each as an ordinary reading on its own
    /// topic `<name>_<quantity>`; empty for a kind that measures one thing, published as
    /// `<name>`.
    pub fn quantities(self) -> &'static [&'static str] {
        match self {
            SensorKind::Bme280 => &crate::sensor::bme280::QUANTITIES,
            SensorKind::Throttled => &crate::sensor::health::Throttled::QUANTITIES,
            _ => &[],
        }
    }

    /// The kind as written in the config and published in each reading's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SensorKind::CpuTemp => "cpu_temp",
            SensorKind::Ds18b20 => "ds18b20",
            SensorKind::Sim => "sim",
            SensorKind::CpuUsage => "cpu_usage",
            SensorKind::LoadAverage => "load_average",
            SensorKind::MemoryUsed => "memory_used",
            SensorKind::DiskUsed => "disk_used",
            SensorKind::Uptime => "uptime",
            SensorKind::WifiSignal => "wifi_signal",
            SensorKind::Undervoltage => "undervoltage",
            SensorKind::Throttled => "throttled",
            SensorKind::Bme280 => "bme280",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub name: Name,
    pub kind: SensorKind,
    #[serde(default = "default_interval")]
    pub interval_secs: f64,
    /// DS18B20 probe id (`28-…`); the first probe found when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Where to read, when not the usual place: for `cpu_temp` the temperature file (default
    /// `/sys/class/thermal/thermal_zone0/temp`), for `ds18b20` the 1-wire devices directory
    /// (default `/sys/bus/w1/devices`), for `disk_used` any path on the file system to measure
    /// (default `/`), for the other health kinds the file they parse (`/proc/stat`,
    /// `/proc/loadavg`, `/proc/meminfo`, `/proc/uptime`, `/proc/net/wireless`, the
    /// `rpi_volt` hwmon's `in0_lcrit_alarm`; for `throttled` a file holding the flags in hex
    /// instead of asking `vcgencmd get_throttled`). Not for `bme280`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `wifi_signal`: the wireless interface (default: the first in /proc/net/wireless).
    #[serde(default)]
    pub interface: Option<String>,
    /// `bme280`: the I2C bus number, /dev/i2c-<bus> (default 1, the header's SDA/SCL pins).
    #[serde(default)]
    pub bus: Option<u8>,
    /// `bme280`: the chip's 7-bit I2C address, 0x76 (SDO to GND, the default) or 0x77.
    #[serde(default)]
    pub address: Option<u8>,
}

impl SensorConfig {
    /// A sensor with every optional key at its default, as `[[sensor]]` with only `name` and
    /// `kind` would be.
    pub fn new(name: Name, kind: SensorKind) -> SensorConfig {
        SensorConfig {
            name,
            kind,
            interval_secs: default_interval(),
            id: None,
            path: None,
            interface: None,
            bus: None,
            address: None,
        }
    }

    /// The names this sensor publishes under, one per quantity (see
    /// [`SensorKind::quantities`]): `env` of kind `bme280` is `env_temperature`,
    /// `env_humidity` and `env_pressure`; a single-quantity sensor is its own name.
    pub fn topic_names(&self) -> Result<Vec<Name>, String> {
        let quantities = self.kind.quantities();
        if quantities.is_empty() {
            return Ok(vec![self.name.clone()]);
        }
        quantities
            .iter()
            .map(|q| {
                Name::new(format!("{}_{q}", self.name)).map_err(|e| {
                    format!(
                        "sensor {:?} publishes {q} as {:?}, which is not a valid name: {e} \
                         (choose a shorter sensor name)",
                        self.name.as_str(),
                        format!("{}_{q}", self.name)
                    )
                })
            })
            .collect()
    }

    /// Refuses keys that mean nothing for this kind, so that `address = 0x77` on the wrong
    /// sensor is an error rather than silently ignored.
    fn validate_keys(&self) -> Result<(), String> {
        let kind = self.kind;
        let refuse = |key: &str| {
            Err(format!(
                "sensor {:?}: `{key}` has no meaning for kind {:?}",
                self.name.as_str(),
                kind.as_str()
            ))
        };
        if self.id.is_some() && kind != SensorKind::Ds18b20 {
            return refuse("id");
        }
        if self.interface.is_some() && kind != SensorKind::WifiSignal {
            return refuse("interface");
        }
        if self.path.is_some() && matches!(kind, SensorKind::Sim | SensorKind::Bme280) {
            return refuse("path");
        }
        if kind != SensorKind::Bme280 {
            if self.bus.is_some() {
                return refuse("bus");
            }
            if self.address.is_some() {
                return refuse("address");
            }
        }
        if let Some(a) = self.address {
            if !(0x08..=0x77).contains(&a) {
                return Err(format!(
                    "sensor {:?}: address = {a:#04x} is not a 7-bit I2C device address \
                     (0x08-0x77; a BME280 is 0x76 or 0x77)",
                    self.name.as_str()
                ));
            }
        }
        Ok(())
    }
}

fn default_interval() -> f64 {
    30.0
}

/// The whole agent configuration after defaults are applied.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_device")]
    pub device: Name,
    #[serde(default = "default_broker")]
    pub broker: BrokerUrl,
    /// The MQTT user name; default: the device name, the identity a pifleet broker with
    /// authentication expects (set it for brokers that name their users otherwise). Sent only
    /// with a password or when set here.
    #[serde(default)]
    pub username: Option<String>,
    /// The MQTT password. `password_file` (or `PIFLEET_PASSWORD`) keeps it out of a file that
    /// is easy to copy around; `Debug` (check-config) shows only `(set)`.
    #[serde(default)]
    pub password: Option<Password>,
    /// A file holding the password (trailing newline ignored), e.g. one readable only by the
    /// agent's user, or a systemd credential.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) the broker's certificate is checked against, for
    /// mqtts:// and wss:// with a private CA; without it the system's roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub groups: Vec<Name>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub gpio: GpioChoice,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: f64,
    /// Seconds between re-publications of the presence message, which keep "last seen" fresh
    /// for devices that are otherwise quiet.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Outputs, inputs and sensors are exactly what a config file lists: a file without
    /// `[[output]]` drives no pin. Only running with no file at all gives the demo set
    /// (see [`Config::default`]).
    #[serde(default, rename = "output")]
    pub outputs: Vec<OutputConfig>,
    #[serde(default, rename = "input")]
    pub inputs: Vec<InputConfig>,
    #[serde(default, rename = "sensor")]
    pub sensors: Vec<SensorConfig>,
    /// The legacy TCP shim for old on/off/q and go clients; off unless configured.
    #[serde(default)]
    pub legacy: Option<pifleet_legacy::ListenerConfig>,
}

fn default_device() -> Name {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    host.and_then(|h| Name::new(h).ok())
        .unwrap_or_else(|| Name::new("pi").expect("valid"))
}

fn default_broker() -> BrokerUrl {
    "mqtt://localhost:1883".parse().expect("valid default URL")
}

fn default_prefix() -> String {
    pifleet_proto::DEFAULT_PREFIX.to_string()
}

fn default_keep_alive() -> u64 {
    10
}

fn default_reconnect_max() -> f64 {
    30.0
}

fn default_heartbeat() -> u64 {
    60
}

fn default_outputs() -> Vec<OutputConfig> {
    vec![OutputConfig::switch(Name::new("led").expect("valid"), 17)]
}

fn default_inputs() -> Vec<InputConfig> {
    vec![InputConfig {
        name: Name::new("button").expect("valid"),
        pin: 27,
        pull: Pull::Up,
        active_low: true,
        debounce_ms: default_debounce_ms(),
    }]
}

fn default_sensors() -> Vec<SensorConfig> {
    vec![SensorConfig::new(
        Name::new("cpu").expect("valid"),
        SensorKind::CpuTemp,
    )]
}

/// A configuration that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Default for Config {
    /// The configuration without a file: an LED on BCM 17, a button on BCM 27 and the CPU
    /// temperature, the wiring of most first projects.
    fn default() -> Self {
        Config {
            outputs: default_outputs(),
            inputs: default_inputs(),
            sensors: default_sensors(),
            ..Config::from_toml_str("", Path::new("<defaults>")).expect("defaults are valid")
        }
    }
}

/// Where and what, in one line: `line 3, column 10, device: name "a/b" contains '/'`. Not
/// toml's own `Display`, which quotes the offending line of the file: that line may hold a
/// secret (a `password = "...` missing its closing quote, a broker URL with a password in it).
/// The key a bad value belongs to is named, as the quoted line used to show it.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim_end();
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else {
        return message.to_string();
    };
    let line = before.matches('\n').count() + 1;
    let on_line = before.rsplit('\n').next().unwrap_or("");
    let column = on_line.chars().count() + 1;
    // `key = ` right before the value; in an inline table only the last `key = `.
    let key = on_line
        .trim_end()
        .strip_suffix('=')
        .and_then(|k| k.rsplit([',', '{']).next())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match key {
        Some(key) => format!("line {line}, column {column}, {key}: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: toml_error(&e, text),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: uniqueness, ranges, the prefix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        Topics::new(&self.prefix).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.password.is_some() && self.password_file.is_some() {
            return bad("set either password or password_file, not both".into());
        }
        if self.password.as_ref().is_some_and(Password::is_empty) {
            return bad("password is empty (leave it out to connect without a login)".into());
        }
        if self.username.as_deref() == Some("") {
            return bad("username is empty (leave it out to use the device name)".into());
        }
        if self.keep_alive_secs == 0 || self.keep_alive_secs > 3600 {
            return bad(format!(
                "keep_alive_secs = {}: must be between 1 and 3600",
                self.keep_alive_secs
            ));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 86_400 {
            return bad(format!(
                "heartbeat_secs = {}: must be between 1 and 86400",
                self.heartbeat_secs
            ));
        }
        if !(self.reconnect_max_secs >= 0.1 && self.reconnect_max_secs <= 3600.0) {
            return bad(format!(
                "reconnect_max_secs = {}: must be between 0.1 and 3600",
                self.reconnect_max_secs
            ));
        }
        let mut pins = HashSet::new();
        let mut names = HashSet::new();
        let endpoints = self
            .outputs
            .iter()
            .map(|o| ("output", &o.name, o.pin))
            .chain(self.inputs.iter().map(|i| ("input", &i.name, i.pin)));
        for (what, name, pin) in endpoints {
            if pin > 53 {
                return bad(format!(
                    "{what} {name}: pin {pin} is not a BCM GPIO number (0-53)"
                ));
            }
            if !pins.insert(pin) {
                return bad(format!("{what} {name}: pin {pin} is used twice"));
            }
            if !names.insert((what, name)) {
                return bad(format!("{what} name {name} is used twice"));
            }
        }
        for o in &self.outputs {
            let name = &o.name;
            match (o.kind, o.frequency_hz) {
                (OutputKind::Switch, Some(_)) => {
                    return bad(format!(
                        "output {name}: frequency_hz is for kind = \"pwm\" outputs"
                    ));
                }
                (OutputKind::Pwm, Some(f))
                    if !(f.is_finite() && (1.0..=100_000.0).contains(&f)) =>
                {
                    return bad(format!(
                        "output {name}: frequency_hz = {f} must be between 1 and 100000"
                    ));
                }
                _ => {}
            }
            if let Some(p) = o.pulse_secs {
                if let Err(why) = pifleet_proto::payload::check_pulse_secs(p) {
                    return bad(format!("output {name}: pulse_secs: {why}"));
                }
                if o.initial == Initial::On {
                    return bad(format!(
                        "output {name}: initial = \"on\" with pulse_secs would switch it on \
                         with no pulse to end it; use initial = \"off\""
                    ));
                }
            }
        }
        let mut sensor_names = HashSet::new();
        for s in &self.sensors {
            if !(s.interval_secs >= 0.05 && s.interval_secs <= 86_400.0) {
                return bad(format!(
                    "sensor {:?}: interval_secs = {} must be between 0.05 and 86400",
                    s.name.as_str(),
                    s.interval_secs
                ));
            }
            s.validate_keys().map_err(ConfigError::Invalid)?;
            for name in s.topic_names().map_err(ConfigError::Invalid)? {
                if !sensor_names.insert(name.clone()) {
                    return bad(if name == s.name {
                        format!("sensor name {:?} is used twice", name.as_str())
                    } else {
                        format!(
                            "sensor {:?} publishes {:?}, a name another sensor uses",
                            s.name.as_str(),
                            name.as_str()
                        )
                    });
                }
            }
        }
        if let Some(l) = &self.legacy {
            l.validate().map_err(ConfigError::Invalid)?;
            if l.device.as_ref().is_some_and(|d| *d != self.device) {
                return bad(format!(
                    "legacy.device: the agent serves only itself ({}); `device` is for the broker's shim",
                    self.device
                ));
            }
            if let Some(o) = &l.output {
                if !self.outputs.iter().any(|x| &x.name == o) {
                    return bad(format!("legacy.output: no output named {:?}", o.as_str()));
                }
            }
            if let Some(i) = &l.input {
                if !self.inputs.iter().any(|x| &x.name == i) {
                    return bad(format!("legacy.input: no input named {:?}", i.as_str()));
                }
            }
        }
        for i in &self.inputs {
            if i.debounce_ms > 10_000 {
                return bad(format!(
                    "input {:?}: debounce_ms = {} is more than 10 seconds",
                    i.name.as_str(),
                    i.debounce_ms
                ));
            }
        }
        Ok(())
    }

    /// Replaces the file's password settings with the ones from the command line or
    /// environment: a password file there beats a password there, and either beats the file's
    /// `password` and `password_file` (which then no longer conflict).
    pub fn override_password(&mut self, password: Option<Password>, file: Option<PathBuf>) {
        if let Some(file) = file {
            self.password_file = Some(file);
            self.password = None;
        } else if let Some(password) = password {
            self.password = Some(password);
            self.password_file = None;
        }
    }

    /// The login and TLS trust to connect with: reads the password file and checks the CA
    /// file, so that a bad one is a configuration error at start-up (and in `check-config`),
    /// not a reconnect loop. The user name defaults to the device name, and is sent only with a
    /// password or when configured.
    pub fn security(&self) -> Result<Security, ConfigError> {
        let invalid = |e: pifleet_client::mqtt::SecurityError| ConfigError::Invalid(e.to_string());
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(file)) => Some(Password::from_file(file).map_err(invalid)?),
            (None, None) => None,
        };
        let username = match (&self.username, &password) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(_)) => Some(self.device.to_string()),
            (None, None) => None,
        };
        let security = Security {
            username,
            password,
            ca_file: self.ca_file.clone(),
        };
        pifleet_client::mqtt::transport(&self.broker, &security).map_err(invalid)?;
        Ok(security)
    }

    pub fn topics(&self) -> Topics {
        Topics::new(&self.prefix).expect("validated")
    }

    /// The state file to use: the configured one, else a per-device file in the usual state
    /// directory for services and users.
    pub fn state_file_path(&self) -> PathBuf {
        if let Some(p) = &self.state_file {
            return p.clone();
        }
        let dir = std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("pifleet"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/pifleet"))
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/pifleet"));
        dir.join(format!("{}.json", self.device))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("test.toml"))
    }

    #[test]
    fn the_printed_example_loads() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.device.as_str(), "kitchen");
        assert_eq!(c.outputs[0].initial, Initial::Restore);
        assert_eq!(c.inputs[0].pull, Pull::Up);
        assert_eq!(c.sensors[0].kind, SensorKind::CpuTemp);
        // The commented outputs load too once uncommented.
        let start = EXAMPLE.find("# [[output]]\n# name = \"lamp\"").unwrap();
        let end = EXAMPLE.find("# pulse_secs = 0.8\n").unwrap() + "# pulse_secs = 0.8\n".len();
        let block: Vec<&str> = EXAMPLE[start..end]
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect();
        let all = parse(&block.join("\n")).unwrap();
        assert!(all.outputs.iter().any(|o| o.kind == OutputKind::Pwm));
        assert!(all.outputs.iter().any(|o| o.pulse_secs == Some(0.8)));
    }

    #[test]
    fn pwm_and_pulse_settings_are_checked() {
        let pwm =
            parse("[[output]]\nname = \"l\"\npin = 18\nkind = \"pwm\"\nfrequency_hz = 25000\n")
                .unwrap();
        assert_eq!(
            (pwm.outputs[0].kind, pwm.outputs[0].frequency_hz),
            (OutputKind::Pwm, Some(25000.0))
        );
        let e = parse("[[output]]\nname = \"l\"\npin = 18\nfrequency_hz = 200\n").unwrap_err();
        assert!(
            e.to_string().contains("frequency_hz is for kind = \"pwm\""),
            "{e}"
        );
        let e = parse("[[output]]\nname = \"l\"\npin = 18\nkind = \"pwm\"\nfrequency_hz = 0\n")
            .unwrap_err();
        assert!(e.to_string().contains("between 1 and 100000"), "{e}");
        let e = parse("[[output]]\nname = \"v\"\npin = 22\npulse_secs = 0\n").unwrap_err();
        assert!(e.to_string().contains("pulse_secs"), "{e}");
        let e = parse("[[output]]\nname = \"v\"\npin = 22\npulse_secs = 2\ninitial = \"on\"\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("initial = \"on\" with pulse_secs"),
            "{e}"
        );
    }

    #[test]
    fn no_file_means_the_demo_wiring_but_a_file_drives_only_what_it_lists() {
        let c = Config::default();
        assert_eq!(c.outputs[0].pin, 17);
        assert_eq!(c.inputs[0].pin, 27);
        assert_eq!(c.broker.to_string(), "mqtt://localhost:1883");
        assert_eq!(c.prefix, "pifleet");
        let c = parse("[[sensor]]\nname = \"t\"\nkind = \"sim\"\n").unwrap();
        assert!(c.outputs.is_empty() && c.inputs.is_empty());
        let c = parse("[[input]]\nname = \"b\"\npin = 17\n").unwrap();
        assert_eq!(
            c.inputs[0].pin, 17,
            "pin 17 is free when no output claims it"
        );
    }

    #[test]
    fn typos_and_bad_values_name_the_field() {
        let e = parse("[[output]]\nname = \"led\"\npin = 17\nactiv_low = true\n").unwrap_err();
        assert!(e.to_string().contains("activ_low"), "{e}");
        let e = parse("device = \"a/b\"").unwrap_err();
        assert!(
            e.to_string().contains("device") && e.to_string().contains("'/'"),
            "{e}"
        );
        let e = parse("[[output]]\nname = \"led\"\npin = 17\ninitial = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
        let e = parse("broker = \"http://x\"").unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
        let e =
            parse("device = \"k\"\n\n[[output]]\nname = \"led\"\npin = 17\n  activ_low = true\n")
                .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file test.toml: line 6, column 3: unknown field `activ_low`"),
            "{e}"
        );
    }

    #[test]
    fn errors_never_quote_a_secret_from_the_file() {
        let e = parse("device = \"k\"\nbroker = \"mqtt://bob:secret@host\"\n").unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("line 2") && shown.contains("must not contain a user name or password"),
            "{shown}"
        );
        assert!(
            !shown.contains("secret") && !shown.contains("bob"),
            "{shown}"
        );
        // A password whose closing quote is missing: toml's own message would quote the line.
        let e = parse("password = \"hunter2\ndevice = \"k\"\n").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn semantic_checks() {
        let two = "[[output]]\nname = \"a\"\npin = 5\n[[output]]\nname = \"b\"\npin = 5\n";
        assert!(parse(two)
            .unwrap_err()
            .to_string()
            .contains("pin 5 is used twice"));
        let dup = "[[output]]\nname = \"a\"\npin = 5\n[[output]]\nname = \"a\"\npin = 6\n";
        assert!(parse(dup).unwrap_err().to_string().contains("used twice"));
        assert!(parse("[[output]]\nname = \"a\"\npin = 99\n").is_err());
        assert!(parse("keep_alive_secs = 0").is_err());
        assert!(parse("prefix = \"a/+\"").is_err());
        assert!(parse("[[sensor]]\nname = \"t\"\nkind = \"sim\"\ninterval_secs = 0\n").is_err());
    }

    #[test]
    fn a_several_quantity_sensor_publishes_one_name_per_quantity() {
        let c = parse(
            "[[sensor]]\nname = \"env\"\nkind = \"bme280\"\naddress = 0x77\n\
             [[sensor]]\nname = \"power\"\nkind = \"throttled\"\n\
             [[sensor]]\nname = \"disk\"\nkind = \"disk_used\"\npath = \"/var\"\n",
        )
        .unwrap();
        let names = |i: usize| -> Vec<String> {
            c.sensors[i]
                .topic_names()
                .unwrap()
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(
            names(0),
            ["env_temperature", "env_humidity", "env_pressure"]
        );
        assert_eq!(c.sensors[0].address, Some(0x77));
        assert_eq!(
            names(1),
            [
                "power_undervoltage",
                "power_throttled",
                "power_undervoltage_occurred",
                "power_throttled_occurred"
            ]
        );
        assert_eq!(names(2), ["disk"]);
    }

    #[test]
    fn derived_sensor_names_are_checked_like_names() {
        let clash = "[[sensor]]\nname = \"env\"\nkind = \"bme280\"\n\
                     [[sensor]]\nname = \"env_humidity\"\nkind = \"sim\"\n";
        let e = parse(clash).unwrap_err().to_string();
        assert!(e.contains("\"env_humidity\""), "{e}");
        let long = format!(
            "[[sensor]]\nname = \"{}\"\nkind = \"bme280\"\n",
            "e".repeat(60)
        );
        let e = parse(&long).unwrap_err().to_string();
        assert!(e.contains("temperature") && e.contains("shorter"), "{e}");
        assert!(parse("[[sensor]]\nname = \"a\"\nkind = \"sim\"\n[[sensor]]\nname = \"a\"\nkind = \"uptime\"\n")
            .unwrap_err()
            .to_string()
            .contains("used twice"));
    }

    #[test]
    fn keys_that_mean_nothing_for_a_sensor_kind_are_refused() {
        for (kind, key) in [
            ("cpu_usage", "address = 0x76"),
            ("uptime", "bus = 1"),
            ("memory_used", "interface = \"wlan0\""),
            ("bme280", "path = \"/dev/i2c-1\""),
            ("bme280", "id = \"28-1\""),
        ] {
            let text = format!("[[sensor]]\nname = \"s\"\nkind = \"{kind}\"\n{key}\n");
            let e = parse(&text).unwrap_err().to_string();
            let key = key.split(' ').next().unwrap();
            assert!(
                e.contains(&format!("`{key}` has no meaning for kind \"{kind}\"")),
                "{e}"
            );
        }
        let e = parse("[[sensor]]\nname = \"s\"\nkind = \"bme280\"\naddress = 0xee\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0xee") && e.contains("7-bit"), "{e}");
        assert!(
            parse("[[sensor]]\nname = \"w\"\nkind = \"wifi_signal\"\ninterface = \"wlan1\"\n")
                .is_ok()
        );
        assert!(parse("[[sensor]]\nname = \"w\"\nkind = \"wifi\"\n")
            .unwrap_err()
            .to_string()
            .contains("wifi_signal"));
    }

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../client/testdata/tls")
            .join(name)
    }

    #[test]
    fn no_login_settings_means_no_login() {
        let c = parse("device = \"kitchen\"").unwrap();
        assert_eq!(c.security().unwrap(), Security::default());
        // A user name alone is sent (some brokers log in by name only).
        let c = parse("username = \"k1\"").unwrap();
        let s = c.security().unwrap();
        assert_eq!((s.username.as_deref(), s.password), (Some("k1"), None));
    }

    #[test]
    fn the_user_name_defaults_to_the_device_name() {
        let c = parse("device = \"kitchen\"\npassword = \"s3cret\"").unwrap();
        let s = c.security().unwrap();
        assert_eq!(s.username.as_deref(), Some("kitchen"));
        assert_eq!(s.password.unwrap().expose(), "s3cret");
        let c = parse("device = \"kitchen\"\nusername = \"k1\"\npassword = \"x\"").unwrap();
        assert_eq!(c.security().unwrap().username.as_deref(), Some("k1"));
    }

    #[test]
    fn login_and_tls_keys_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("pifleet-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("password");
        std::fs::write(&pw, "from-file\n").unwrap();
        let text = format!(
            "device = \"kitchen\"\nbroker = \"mqtts://broker.example.org\"\n\
             password_file = {:?}\nca_file = {:?}\n",
            pw,
            testdata("ca.pem")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.broker.port, 8883);
        let s = c.security().unwrap();
        assert_eq!(s.password.as_ref().unwrap().expose(), "from-file");
        assert_eq!(s.ca_file.as_deref(), Some(testdata("ca.pem").as_path()));
        // check-config prints the config's Debug form: never the password.
        let c = parse("password = \"hunter2\"").unwrap();
        let shown = format!("{c:#?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("(set)"),
            "{shown}"
        );

        let e = parse("password = \"a\"\npassword_file = \"/x\"").unwrap_err();
        assert!(
            e.to_string().contains("either password or password_file"),
            "{e}"
        );
        assert!(parse("password = \"\"").is_err());
        assert!(parse("username = \"\"").is_err());
        assert!(parse("pasword = \"typo\"")
            .unwrap_err()
            .to_string()
            .contains("pasword"));

        let missing = parse("password_file = \"/nonexistent/pifleet-pw\"").unwrap();
        let e = missing.security().unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read the password file /nonexistent/pifleet-pw"),
            "{e}"
        );
        let bad_ca = parse("broker = \"mqtts://h\"\nca_file = \"/nonexistent/ca.pem\"").unwrap();
        let e = bad_ca.security().unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read the CA file /nonexistent/ca.pem"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn command_line_passwords_replace_the_files() {
        let mut c = parse("password = \"in-file\"").unwrap();
        c.override_password(Some(Password::new("from-env")), None);
        assert_eq!(c.password.as_ref().unwrap().expose(), "from-env");
        c.override_password(Some(Password::new("ignored")), Some("/run/pw".into()));
        assert_eq!(
            (c.password.is_none(), c.password_file.as_deref()),
            (true, Some(Path::new("/run/pw")))
        );
        c.validate().unwrap();
        let mut c = parse("password_file = \"/etc/pw\"").unwrap();
        c.override_password(Some(Password::new("from-env")), None);
        assert!(c.password_file.is_none());
        c.override_password(None, None);
        assert_eq!(c.password.unwrap().expose(), "from-env");
    }
}
