//! The discovery builder, without I/O: [`Discovery::handle`] takes one fleet message and
//! returns the retained discovery messages to publish because of it; [`Discovery::all`] returns
//! every device's current config (after a reconnect, or when Home Assistant comes online).
//!
//! One device-based discovery message per device, `<discovery_prefix>/device/<id>/config`:
//! - `device` (identifiers, name, manufacturer, model, sw_version) and `origin` (name,
//!   sw_version, support_url), which device discovery requires;
//! - availability shared by all components: the device's retained presence topic, read with
//!   `{{ value_json.state }}` (`online` / `offline`, the last will included);
//! - `components`: a `switch` per on/off output, a `light` with brightness (`brightness_scale`
//!   100, i.e. percent) per dimmable output, a `binary_sensor` per input, a `sensor` per sensor.
//!
//! Full key names, not abbreviations: Home Assistant accepts both, and the abbreviation table
//! (`homeassistant/components/mqtt/abbreviations.py`) grows between releases, so a full name is
//! the form every release reads. Each platform's discovery schema silently drops a key it does
//! not accept, so every key here is one that platform's schema names.
//!
//! What Home Assistant requires was read at one commit of a full Home Assistant core tree with
//! device-based discovery, NewBabyFace/core@2077c28a46beca80625c3e888ba7423664f2d419
//! (`homeassistant/components/mqtt/`: `discovery.py`, `schemas.py`, `const.py`, `config.py`
//! and the platform files; `homeassistant/components/sensor/const.py`); `mod ha` of
//! `tests/tests/homeassistant.rs` lists what was read from which file and checks every payload
//! built here against it.
//!
//! What is built comes from the device's presence (its outputs, which are dimmable, inputs,
//! sensors and their intervals) and from each sensor's latest reading (`unit` and `kind`, for
//! the device class). A device whose retained presence is cleared gets an empty retained config
//! (Home Assistant removes the device); a component that disappears from a device stays in its
//! config as `{"platform": …}` alone, which is how Home Assistant is told to remove one
//! component (`_parse_device_payload` and the device-component loop of `discovery.py` at that
//! commit: a component config that is empty once `platform` is taken out is a removal, and
//! `check_unique_id` in `schemas.py` asks no `unique_id` of it).

use std::collections::BTreeMap;

use pifleet_proto::payload::{Presence, SensorReading};
use pifleet_proto::{Name, PlainKind, Topic, Topics};
use serde_json::{json, Map, Value};

use crate::ids;

/// Where the project lives, for `origin.support_url`.
pub const SUPPORT_URL: &str = "https://github.com/pifleet/pifleet";

/// The template that reads presence as Home Assistant's availability.
pub const AVAILABILITY_TEMPLATE: &str = "{{ value_json.state }}";
/// An output state (`{"on":true,…}`) as `ON` / `OFF`.
pub const OUTPUT_TEMPLATE: &str = "{{ 'ON' if value_json.on else 'OFF' }}";
/// A dimmable output's level in percent (with `brightness_scale` 100).
pub const LEVEL_TEMPLATE: &str = "{{ value_json.level }}";
/// An input state (`{"active":true,…}`) as `ON` / `OFF`.
pub const INPUT_TEMPLATE: &str = "{{ 'ON' if value_json.active else 'OFF' }}";
/// A sensor reading's value.
pub const SENSOR_TEMPLATE: &str = "{{ value_json.value }}";

/// Sensor kinds that describe the Pi itself rather than its surroundings: shown by Home
/// Assistant as diagnostics (`entity_category: diagnostic`).
pub const HEALTH_KINDS: &[&str] = &[
    "cpu_temp",
    "cpu_usage",
    "cpu",
    "load",
    "load_average",
    "loadavg",
    "memory",
    "memory_used",
    "disk",
    "disk_used",
    "uptime",
    "wifi",
    "wifi_signal",
    "throttled",
    "throttling",
    "undervoltage",
];

/// One retained message to publish: a config, or an empty payload that removes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub payload: String,
}

#[derive(Debug, Default)]
struct DeviceState {
    /// The last presence that described the device (online, or a goodbye); a bare last will
    /// says nothing about the device's parts and does not replace it.
    presence: Option<Presence>,
    /// Unit, kind and quantity of each sensor's latest reading.
    sensors: BTreeMap<Name, Known>,
    /// Components published before that are gone now: id → platform.
    removed: BTreeMap<String, &'static str>,
    /// Components of the last published config: id → platform.
    components: BTreeMap<String, &'static str>,
    /// The last payload published for the device, to publish only changes.
    published: Option<String>,
}

/// The discovery builder; see the module documentation.
pub struct Discovery {
    topics: Topics,
    prefix: String,
    devices: BTreeMap<Name, DeviceState>,
}

impl Discovery {
    /// Builds for the fleet under `topics`, publishing under `discovery_prefix`.
    pub fn new(topics: Topics, discovery_prefix: &str) -> Discovery {
        Discovery {
            topics,
            prefix: discovery_prefix.trim_end_matches('/').to_string(),
            devices: BTreeMap::new(),
        }
    }

    /// Home Assistant's birth and last will topic (`online` / `offline`).
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// What the service subscribes to: presence, sensor readings, Home Assistant's status.
    pub fn filters(&self) -> Vec<String> {
        vec![
            self.topics.status_filter(None),
            self.topics.sensor_filter(None),
            self.status_topic(),
        ]
    }

    /// The discovery topic of a device.
    pub fn config_topic(&self, device: &Name) -> String {
        format!("{}/device/{}/config", self.prefix, ids::device_id(device))
    }

    /// One message in; the retained messages to publish because of it. Home Assistant saying
    /// `online` on [`status_topic`](Self::status_topic) yields every config ([`all`](Self::all)).
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> Vec<Retained> {
        if topic == self.status_topic() {
            return if payload == b"online" {
                self.all()
            } else {
                Vec::new()
            };
        }
        match self.topics.parse(topic) {
            Some(Topic::Status { device }) if payload.is_empty() => self.forget(&device),
            Some(Topic::Status { device }) => {
                let Ok(presence) = serde_json::from_slice::<Presence>(payload) else {
                    tracing::debug!("homeassistant: undecodable presence on {topic}: ignored");
                    return Vec::new();
                };
                let describes = presence.is_online()
                    || presence.version.is_some()
                    || !presence.outputs.is_empty()
                    || !presence.inputs.is_empty()
                    || !presence.sensors.is_empty();
                if !describes {
                    return Vec::new();
                }
                self.devices.entry(device.clone()).or_default().presence = Some(presence);
                self.refresh(&device)
            }
            Some(Topic::Sensor { device, sensor }) if !payload.is_empty() => {
                let Ok(reading) = serde_json::from_slice::<SensorReading>(payload) else {
                    return Vec::new();
                };
                // One quantity of a sensor that measures several (a BME280's `humidity`), from
                // agents that say so: it names what a bare unit such as `%` measures.
                let quantity = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| Some(v.get("quantity")?.as_str()?.to_string()));
                let d = self.devices.entry(device.clone()).or_default();
                let known = (reading.unit, reading.kind, quantity);
                if d.sensors.get(&sensor) == Some(&known) {
                    return Vec::new();
                }
                d.sensors.insert(sensor, known);
                self.refresh(&device)
            }
            _ => Vec::new(),
        }
    }

    /// Every device's current config, removals of components included.
    pub fn all(&self) -> Vec<Retained> {
        self.devices
            .iter()
            .filter_map(|(name, d)| {
                Some(Retained {
                    topic: self.config_topic(name),
                    payload: d.published.clone()?,
                })
            })
            .filter(|r| !r.payload.is_empty())
            .collect()
    }

    /// The config of one device as published last (`None`: none yet, or removed).
    pub fn config(&self, device: &Name) -> Option<Value> {
        let p = self.devices.get(device)?.published.as_ref()?;
        serde_json::from_str(p).ok()
    }

    /// The retained presence was cleared: the device is gone, from Home Assistant too.
    fn forget(&mut self, device: &Name) -> Vec<Retained> {
        let Some(d) = self.devices.remove(device) else {
            return Vec::new();
        };
        match d.published {
            Some(p) if !p.is_empty() => vec![Retained {
                topic: self.config_topic(device),
                payload: String::new(),
            }],
            _ => Vec::new(),
        }
    }

    /// Rebuilds one device's config; the message to publish if it changed.
    fn refresh(&mut self, device: &Name) -> Vec<Retained> {
        let topic = self.config_topic(device);
        let Some(d) = self.devices.get_mut(device) else {
            return Vec::new();
        };
        let Some(presence) = &d.presence else {
            return Vec::new();
        };
        let mut components = build_components(&self.topics, device, presence, &d.sensors);
        let now: BTreeMap<String, &'static str> = components
            .iter()
            .map(|(id, (platform, _))| (id.clone(), *platform))
            .collect();
        for (id, platform) in &d.components {
            if !now.contains_key(id) {
                d.removed.insert(id.clone(), platform);
            }
        }
        d.removed.retain(|id, _| !now.contains_key(id));
        d.components = now;
        for (id, platform) in &d.removed {
            components.insert(id.clone(), (platform, json!({ "platform": platform })));
        }
        let config = device_config(&self.topics, device, presence, components);
        let payload = config.to_string();
        if d.published.as_deref() == Some(payload.as_str()) {
            return Vec::new();
        }
        d.published = Some(payload.clone());
        vec![Retained { topic, payload }]
    }
}

type Components = BTreeMap<String, (&'static str, Value)>;

/// What a reading says about its sensor: unit, kind, quantity.
type Known = (String, Option<String>, Option<String>);

fn device_config(topics: &Topics, device: &Name, presence: &Presence, cmps: Components) -> Value {
    let mut dev = Map::new();
    dev.insert("identifiers".into(), json!([ids::device_id(device)]));
    dev.insert("name".into(), json!(device.to_string()));
    dev.insert("manufacturer".into(), json!("pifleet"));
    dev.insert("model".into(), json!("pifleet-agent"));
    if let Some(v) = &presence.version {
        dev.insert("sw_version".into(), json!(v));
    }
    let components: Map<String, Value> = cmps.into_iter().map(|(id, (_, c))| (id, c)).collect();
    json!({
        "device": dev,
        "origin": {
            "name": "pifleet",
            "sw_version": pifleet_proto::VERSION,
            "support_url": SUPPORT_URL,
        },
        "availability_topic": topics.status(device),
        "availability_template": AVAILABILITY_TEMPLATE,
        "payload_available": "online",
        "payload_not_available": "offline",
        "components": components,
    })
}

fn build_components(
    topics: &Topics,
    device: &Name,
    p: &Presence,
    sensors: &BTreeMap<Name, Known>,
) -> Components {
    let mut out = Components::new();
    let mut add = |platform: &'static str, name: &Name, mut c: Map<String, Value>| {
        let id = ids::component_id(platform, name);
        c.insert("platform".into(), json!(platform));
        c.insert("name".into(), json!(name.to_string()));
        c.insert("unique_id".into(), json!(ids::unique_id(device, &id)));
        c.insert("qos".into(), json!(1));
        out.insert(id, (platform, Value::Object(c)));
    };
    for o in &p.outputs {
        let state = topics.output(device, o);
        let command = topics.plain_command(device, o, PlainKind::Switch);
        let mut c = Map::new();
        c.insert("command_topic".into(), json!(command));
        c.insert("payload_on".into(), json!("ON"));
        c.insert("payload_off".into(), json!("OFF"));
        c.insert("state_topic".into(), json!(state));
        if p.dimmable.contains(o) {
            c.insert("state_value_template".into(), json!(OUTPUT_TEMPLATE));
            c.insert("brightness_state_topic".into(), json!(state));
            c.insert("brightness_value_template".into(), json!(LEVEL_TEMPLATE));
            c.insert(
                "brightness_command_topic".into(),
                json!(topics.plain_command(device, o, PlainKind::Level)),
            );
            c.insert("brightness_scale".into(), json!(100));
            add("light", o, c);
        } else {
            c.insert("value_template".into(), json!(OUTPUT_TEMPLATE));
            add("switch", o, c);
        }
    }
    for i in &p.inputs {
        let mut c = Map::new();
        c.insert("state_topic".into(), json!(topics.input(device, i)));
        c.insert("value_template".into(), json!(INPUT_TEMPLATE));
        c.insert("payload_on".into(), json!("ON"));
        c.insert("payload_off".into(), json!("OFF"));
        add("binary_sensor", i, c);
    }
    for s in &p.sensors {
        let mut c = Map::new();
        c.insert("state_topic".into(), json!(topics.sensor(device, s)));
        c.insert("value_template".into(), json!(SENSOR_TEMPLATE));
        c.insert("state_class".into(), json!("measurement"));
        if let Some((unit, kind, quantity)) = sensors.get(s) {
            let hint = format!(
                "{} {}",
                kind.as_deref().unwrap_or(""),
                quantity.as_deref().unwrap_or("")
            );
            let (class, unit) = device_class(unit, Some(&hint));
            if let Some(class) = class {
                c.insert("device_class".into(), json!(class));
            }
            if !unit.is_empty() {
                c.insert("unit_of_measurement".into(), json!(unit));
            }
            if kind.as_deref().is_some_and(|k| HEALTH_KINDS.contains(&k)) {
                c.insert("entity_category".into(), json!("diagnostic"));
            }
        }
        if let Some(secs) = p.intervals.get(s) {
            c.insert("expire_after".into(), json!(expire_after(*secs)));
        }
        add("sensor", s, c);
    }
    out
}

/// How long Home Assistant shows a reading before it marks the sensor unavailable: two
/// intervals and half a minute, in whole seconds (Home Assistant takes a positive integer).
pub fn expire_after(interval_secs: f64) -> u64 {
    (2.0 * interval_secs + 30.0).ceil() as u64
}

/// Home Assistant's sensor device class for a reading's unit and kind, and the unit to
/// declare (Home Assistant knows relative humidity as `%`). `None` where no class fits:
/// a percentage of CPU or memory is not a battery.
pub fn device_class<'a>(unit: &'a str, kind: Option<&str>) -> (Option<&'static str>, &'a str) {
    let kind = kind.unwrap_or("");
    let class = match unit {
        "°C" | "°F" | "K" => Some("temperature"),
        "%RH" => return (Some("humidity"), "%"),
        "%" if kind.contains("humidity") => Some("humidity"),
        "hPa" if kind.contains("pressure") || kind.contains("bme") => Some("atmospheric_pressure"),
        "Pa" | "hPa" | "kPa" | "mbar" | "bar" | "psi" | "inHg" | "mmHg" => Some("pressure"),
        "dBm" | "dB" if kind.contains("wifi") || kind.contains("signal") || unit == "dBm" => {
            Some("signal_strength")
        }
        "s" | "ms" | "min" | "h" | "d" => Some("duration"),
        "V" | "mV" => Some("voltage"),
        "A" | "mA" => Some("current"),
        "W" | "kW" => Some("power"),
        "Hz" | "kHz" | "MHz" | "GHz" => Some("frequency"),
        "lx" => Some("illuminance"),
        "B" | "kB" | "MB" | "GB" | "KiB" | "MiB" | "GiB" => Some("data_size"),
        _ => None,
    };
    (class, unit)
}

#[cfg(test)]
mod test {
    use super::*;

    fn disc() -> Discovery {
        Discovery::new(Topics::default(), "homeassistant")
    }

    const KITCHEN: &str = r#"{"state":"online","version":"0.1.0","outputs":["led","lamp"],"dimmable":["lamp"],"inputs":["button"],"sensors":["cpu"],"intervals":{"cpu":10.0},"ts":1}"#;

    fn cpu(unit: &str, kind: &str) -> String {
        format!(r#"{{"value":41.5,"unit":"{unit}","kind":"{kind}","ts":2}}"#)
    }

    fn components(v: &Value) -> &Map<String, Value> {
        v["components"].as_object().unwrap()
    }

    #[test]
    fn a_device_online_gets_one_retained_config_with_a_component_per_part() {
        let mut d = disc();
        let out = d.handle("pifleet/dev/kitchen/status", KITCHEN.as_bytes());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "homeassistant/device/pifleet_kitchen/config");
        let v: Value = serde_json::from_str(&out[0].payload).unwrap();
        let c = components(&v);
        let keys: Vec<_> = c.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "binary_sensor_button",
                "light_lamp",
                "sensor_cpu",
                "switch_led"
            ]
        );
        assert_eq!(
            c["switch_led"]["command_topic"],
            "pifleet/dev/kitchen/cmnd/led"
        );
        assert_eq!(
            c["light_lamp"]["brightness_command_topic"],
            "pifleet/dev/kitchen/cmnd/lamp/level"
        );
        assert_eq!(c["light_lamp"]["brightness_scale"], 100);
        assert_eq!(c["sensor_cpu"]["expire_after"], 50);
        assert_eq!(v["availability_topic"], "pifleet/dev/kitchen/status");
        assert_eq!(v["device"]["sw_version"], "0.1.0");
        assert_eq!(v["origin"]["name"], "pifleet");
        // The same presence again (a heartbeat) publishes nothing.
        let again = KITCHEN.replace(r#""ts":1"#, r#""ts":9"#);
        assert!(d
            .handle("pifleet/dev/kitchen/status", again.as_bytes())
            .is_empty());
    }

    #[test]
    fn a_reading_gives_the_sensor_its_class_and_unit_and_health_is_diagnostic() {
        let mut d = disc();
        d.handle("pifleet/dev/kitchen/status", KITCHEN.as_bytes());
        let out = d.handle(
            "pifleet/dev/kitchen/sensor/cpu",
            cpu("°C", "cpu_temp").as_bytes(),
        );
        let v: Value = serde_json::from_str(&out[0].payload).unwrap();
        let s = &components(&v)["sensor_cpu"];
        assert_eq!(s["device_class"], "temperature");
        assert_eq!(s["unit_of_measurement"], "°C");
        assert_eq!(s["state_class"], "measurement");
        assert_eq!(s["entity_category"], "diagnostic");
        // Another reading of the same unit changes nothing.
        let same = d.handle(
            "pifleet/dev/kitchen/sensor/cpu",
            cpu("°C", "cpu_temp").as_bytes(),
        );
        assert!(same.is_empty());
    }

    #[test]
    fn a_quantity_names_what_a_bare_percentage_measures() {
        let mut d = disc();
        let p = r#"{"state":"online","sensors":["env_humidity"]}"#;
        d.handle("pifleet/dev/k/status", p.as_bytes());
        let r = r#"{"value":45.05,"unit":"%","kind":"bme280","quantity":"humidity","ts":1}"#;
        let out = d.handle("pifleet/dev/k/sensor/env_humidity", r.as_bytes());
        let v: Value = serde_json::from_str(&out[0].payload).unwrap();
        assert_eq!(
            components(&v)["sensor_env__humidity"]["device_class"],
            "humidity"
        );
    }

    #[test]
    fn units_map_to_device_classes_or_to_none() {
        assert_eq!(device_class("%RH", Some("bme280")), (Some("humidity"), "%"));
        assert_eq!(
            device_class("hPa", Some("bme280")),
            (Some("atmospheric_pressure"), "hPa")
        );
        assert_eq!(
            device_class("dBm", Some("wifi")),
            (Some("signal_strength"), "dBm")
        );
        assert_eq!(device_class("s", Some("uptime")), (Some("duration"), "s"));
        assert_eq!(device_class("%", Some("cpu_usage")), (None, "%"));
        assert_eq!(device_class("", Some("load")), (None, ""));
    }

    #[test]
    fn an_output_removed_from_presence_stays_as_a_platform_only_removal() {
        let mut d = disc();
        d.handle("pifleet/dev/kitchen/status", KITCHEN.as_bytes());
        let fewer = KITCHEN.replace(r#""outputs":["led","lamp"]"#, r#""outputs":["lamp"]"#);
        let out = d.handle("pifleet/dev/kitchen/status", fewer.as_bytes());
        let v: Value = serde_json::from_str(&out[0].payload).unwrap();
        assert_eq!(components(&v)["switch_led"], json!({"platform": "switch"}));
        // It comes back: a full component again.
        let out = d.handle("pifleet/dev/kitchen/status", KITCHEN.as_bytes());
        let v: Value = serde_json::from_str(&out[0].payload).unwrap();
        assert!(components(&v)["switch_led"].get("unique_id").is_some());
    }

    #[test]
    fn a_cleared_presence_removes_the_device_and_a_last_will_does_not() {
        let mut d = disc();
        d.handle("pifleet/dev/kitchen/status", KITCHEN.as_bytes());
        assert!(d
            .handle("pifleet/dev/kitchen/status", br#"{"state":"offline"}"#)
            .is_empty());
        assert_eq!(d.all().len(), 1, "offline is availability, not removal");
        let out = d.handle("pifleet/dev/kitchen/status", b"");
        assert_eq!(
            out,
            vec![Retained {
                topic: "homeassistant/device/pifleet_kitchen/config".into(),
                payload: String::new()
            }]
        );
        assert!(d.all().is_empty());
    }

    #[test]
    fn home_assistant_coming_online_gets_every_config_again() {
        let mut d = disc();
        d.handle("pifleet/dev/kitchen/status", KITCHEN.as_bytes());
        d.handle(
            "pifleet/dev/hall.1/status",
            br#"{"state":"online","outputs":["x"]}"#,
        );
        let all = d.handle("homeassistant/status", b"online");
        let topics: Vec<_> = all.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/device/pifleet_hall_d1/config",
                "homeassistant/device/pifleet_kitchen/config"
            ]
        );
        assert!(d.handle("homeassistant/status", b"offline").is_empty());
    }
}
