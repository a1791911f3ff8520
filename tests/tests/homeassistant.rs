//! Home Assistant, end to end and against Home Assistant's own code.
//!
//! - A broker with `--homeassistant` and a simulated Pi (a switch, a pwm output, a button, a
//!   sensor): the retained device config appears; publishing exactly what Home Assistant
//!   publishes (`ON`/`OFF` on the switch's `command_topic`, a brightness number on the light's
//!   `brightness_command_topic`) gives the confirmed output state on the `state_topic`, and the
//!   value templates of the config, rendered with Jinja2 as Home Assistant renders them, read
//!   that state right. A cleared presence removes the device.
//! - The standalone service (`pifleet homeassistant`) against Debian's mosquitto: the same
//!   config, a switch click confirmed, and everything published again when Home Assistant
//!   announces itself on `homeassistant/status`.
//! - Every payload the builder produces, checked against what Home Assistant's MQTT discovery
//!   code requires (see [`ha`] for the files and commits read).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pifleet_proto::Topics;
use pifleet_tests::*;
use serde_json::{json, Value};

/// What Home Assistant's MQTT code accepts, as read from home-assistant/core. The index the
/// search tools read holds several versions per file; each list names the one it was read from.
mod ha {
    /// homeassistant/components/mqtt/discovery.py, the version with device-based discovery
    /// (stored file id 96132234; its commit was not given by the index): `TOPIC_MATCHER`'s id
    /// alphabet, the `device` discovery component, and `DEVICE_DISCOVERY_SCHEMA` applied after
    /// abbreviations are replaced: `device` required (with `identifiers` or `connections`),
    /// `origin` required (with `name`), `components` a map of configs each with a `platform`
    /// from SUPPORTED_COMPONENTS and, when it has more than its platform, a `unique_id`.
    /// Shared (device-level) options merged into each component (`_merge_common_device_options`).
    pub const SHARED_OPTIONS: &[&str] = &[
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "command_topic",
        "payload_available",
        "payload_not_available",
        "state_topic",
    ];
    pub const DEVICE_DISCOVERY_KEYS: &[&str] = &["device", "origin", "components"];
    pub const PLATFORMS_USED: &[&str] = &["switch", "light", "binary_sensor", "sensor"];

    /// homeassistant/components/mqtt/schemas.py @ c6ca7f5f416326437e8e652a5623aa5eff7b3d00:
    /// MQTT_ENTITY_DEVICE_INFO_SCHEMA, MQTT_ORIGIN_INFO_SCHEMA, MQTT_ENTITY_COMMON_SCHEMA.
    pub const DEVICE_KEYS: &[&str] = &[
        "identifiers",
        "connections",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "hw_version",
        "serial_number",
        "sw_version",
        "via_device",
        "suggested_area",
        "configuration_url",
    ];
    pub const ORIGIN_KEYS: &[&str] = &["name", "sw_version", "support_url"];
    pub const ENTITY_CATEGORIES: &[&str] = &["config", "diagnostic"];

    /// homeassistant/components/mqtt/abbreviations.py @ 911803bfd294b1ba1f541af01f6d37666ae4e384:
    /// the full names that ABBREVIATIONS maps to, i.e. every option key of the MQTT platforms
    /// (the subset pifleet uses; the test fails on any key outside it). `qos` and `platform`
    /// are full names with no abbreviation in that version (CONF_QOS, CONF_PLATFORM).
    pub const OPTION_KEYS: &[&str] = &[
        "availability_template",
        "availability_topic",
        "brightness_command_topic",
        "brightness_scale",
        "brightness_state_topic",
        "brightness_value_template",
        "command_topic",
        "device_class",
        "entity_category",
        "expire_after",
        "name",
        "payload_available",
        "payload_not_available",
        "payload_off",
        "payload_on",
        "state_class",
        "state_topic",
        "state_value_template",
        "unique_id",
        "unit_of_measurement",
        "value_template",
        "qos",
        "platform",
    ];

    /// homeassistant/components/sensor/const.py @ 00eb6680fbf6bdf7af2499095f2e74fca980a148:
    /// SensorDeviceClass (DEVICE_CLASSES_SCHEMA coerces to it) and SensorStateClass.
    pub const SENSOR_DEVICE_CLASSES: &[&str] = &[
        "date",
        "enum",
        "timestamp",
        "apparent_power",
        "aqi",
        "area",
        "atmospheric_pressure",
        "battery",
        "blood_glucose_concentration",
        "carbon_monoxide",
        "carbon_dioxide",
        "conductivity",
        "current",
        "data_rate",
        "data_size",
        "distance",
        "duration",
        "energy",
        "energy_distance",
        "energy_storage",
        "frequency",
        "gas",
        "humidity",
        "illuminance",
        "irradiance",
        "moisture",
        "monetary",
        "nitrogen_dioxide",
        "nitrogen_monoxide",
        "nitrous_oxide",
        "ozone",
        "ph",
        "pm1",
        "pm10",
        "pm25",
        "power_factor",
        "power",
        "precipitation",
        "precipitation_intensity",
        "pressure",
        "reactive_power",
        "signal_strength",
        "sound_pressure",
        "speed",
        "sulphur_dioxide",
        "temperature",
        "temperature_delta",
        "volatile_organic_compounds",
        "volatile_organic_compounds_parts",
        "voltage",
        "volume",
        "volume_storage",
        "volume_flow_rate",
        "water",
        "weight",
        "wind_direction",
        "wind_speed",
    ];
    pub const SENSOR_STATE_CLASSES: &[&str] = &["measurement", "total", "total_increasing"];

    /// The same file's DEVICE_CLASS_UNITS for the classes pifleet assigns (the UnitOf* values
    /// are homeassistant/const.py's). Home Assistant warns about a unit outside the set.
    pub fn units_of(class: &str) -> &'static [&'static str] {
        match class {
            "temperature" => &["°C", "°F", "K"],
            "humidity" => &["%"],
            "pressure" | "atmospheric_pressure" => &[
                "Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi",
            ],
            "signal_strength" => &["dB", "dBm"],
            "duration" => &["d", "h", "min", "s", "ms"],
            "voltage" => &["V", "mV", "µV", "kV", "MV"],
            "current" => &["A", "mA"],
            "power" => &["mW", "W", "kW", "MW", "GW", "TW", "BTU/h"],
            "frequency" => &["Hz", "kHz", "MHz", "GHz"],
            "illuminance" => &["lx"],
            "data_size" => &["B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"],
            _ => &[],
        }
    }
}

/// Every requirement of [`ha`] on one retained discovery message; the reasons it fails.
fn check_against_home_assistant(topic: &str, payload: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let ok_id = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    // TOPIC_MATCHER: <prefix>/device/<object_id>/config.
    let id = topic
        .strip_prefix("homeassistant/device/")
        .and_then(|r| r.strip_suffix("/config"));
    match id {
        Some(id) if ok_id(id) => {}
        _ => bad.push(format!("topic {topic} does not match TOPIC_MATCHER")),
    }
    let Some(obj) = payload.as_object() else {
        return vec![format!("{topic}: not a JSON object")];
    };
    for k in ha::DEVICE_DISCOVERY_KEYS {
        if !obj.contains_key(*k) {
            bad.push(format!("{topic}: `{k}` is required for device discovery"));
        }
    }
    for k in obj.keys() {
        if !ha::DEVICE_DISCOVERY_KEYS.contains(&k.as_str())
            && !ha::SHARED_OPTIONS.contains(&k.as_str())
        {
            bad.push(format!(
                "{topic}: top-level key `{k}` is not a shared option"
            ));
        }
    }
    let dev = &payload["device"];
    for k in dev
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or(vec![])
    {
        if !ha::DEVICE_KEYS.contains(&k.as_str()) {
            bad.push(format!("{topic}: device key `{k}` unknown"));
        }
    }
    if dev["identifiers"].as_array().is_none_or(|a| a.is_empty()) {
        bad.push(format!("{topic}: device needs identifiers"));
    }
    let origin = &payload["origin"];
    if !origin["name"].is_string() {
        bad.push(format!("{topic}: origin needs a name"));
    }
    for k in origin
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or(vec![])
    {
        if !ha::ORIGIN_KEYS.contains(&k.as_str()) {
            bad.push(format!("{topic}: origin key `{k}` unknown"));
        }
    }
    let Some(cmps) = payload["components"].as_object() else {
        bad.push(format!("{topic}: components is not a map"));
        return bad;
    };
    let mut unique_ids = std::collections::BTreeSet::new();
    for (cid, c) in cmps {
        let at = format!("{topic} component {cid}");
        if !ok_id(cid) {
            bad.push(format!(
                "{at}: id outside [a-zA-Z0-9_-] (discovery ids split at spaces)"
            ));
        }
        let Some(c) = c.as_object() else {
            bad.push(format!("{at}: not an object"));
            continue;
        };
        let platform = c.get("platform").and_then(Value::as_str).unwrap_or("");
        if !ha::PLATFORMS_USED.contains(&platform) {
            bad.push(format!("{at}: platform {platform:?}"));
        }
        if c.len() == 1 {
            continue; // A removal: `{"platform": …}` alone.
        }
        match c.get("unique_id").and_then(Value::as_str) {
            Some(u) if unique_ids.insert(u.to_string()) => {}
            Some(u) => bad.push(format!("{at}: unique_id {u} not unique")),
            None => bad.push(format!("{at}: unique_id required (check_unique_id)")),
        }
        for k in c.keys() {
            if !ha::OPTION_KEYS.contains(&k.as_str()) {
                bad.push(format!("{at}: key `{k}` is not one Home Assistant knows"));
            }
        }
        if let Some(cat) = c.get("entity_category") {
            if !ha::ENTITY_CATEGORIES.contains(&cat.as_str().unwrap_or("")) {
                bad.push(format!("{at}: entity_category {cat}"));
            }
        }
        if platform == "sensor" {
            if let Some(class) = c.get("device_class") {
                let class = class.as_str().unwrap_or("");
                if !ha::SENSOR_DEVICE_CLASSES.contains(&class) {
                    bad.push(format!(
                        "{at}: device_class {class:?} is no SensorDeviceClass"
                    ));
                }
                let unit = c.get("unit_of_measurement").and_then(Value::as_str);
                if !unit.is_some_and(|u| ha::units_of(class).contains(&u)) {
                    bad.push(format!("{at}: unit {unit:?} is not one of {class}'s"));
                }
            }
            if let Some(s) = c.get("state_class") {
                if !ha::SENSOR_STATE_CLASSES.contains(&s.as_str().unwrap_or("")) {
                    bad.push(format!("{at}: state_class {s}"));
                }
            }
            if let Some(e) = c.get("expire_after") {
                if e.as_u64().is_none_or(|e| e == 0) {
                    bad.push(format!("{at}: expire_after {e} is not a positive integer"));
                }
            }
        }
        if platform == "light"
            && c.get("brightness_scale")
                .and_then(Value::as_u64)
                .is_none_or(|s| s == 0)
        {
            bad.push(format!("{at}: brightness_scale must be a positive integer"));
        }
    }
    bad
}

#[test]
fn every_discovery_payload_carries_what_home_assistant_requires() {
    let topics = Topics::default();
    let mut d = pifleet_homeassistant::Discovery::new(topics, "homeassistant");
    let mut out = Vec::new();
    // Names with every character a pifleet name may have.
    let presence = json!({
        "state": "online", "version": "0.1.0",
        "outputs": ["led", "lamp.1", "valve_2"], "dimmable": ["lamp.1"],
        "inputs": ["button", "door.sensor"],
        "sensors": ["cpu_temp", "cpu", "load", "mem", "disk", "up", "wifi", "throttled",
                    "room.t", "room.h", "room.p", "probe"],
        "intervals": {"cpu_temp": 10.0, "room.t": 30.0, "probe": 0.5}
    });
    out.extend(d.handle(
        "pifleet/dev/pi-4.lab_1/status",
        presence.to_string().as_bytes(),
    ));
    // The kinds and units of pifleet's sensors (health, BME280 quantities, probes).
    for (sensor, unit, kind, quantity) in [
        ("cpu_temp", "°C", "cpu_temp", None),
        ("cpu", "%", "cpu_usage", None),
        ("load", "", "load_average", None),
        ("mem", "%", "memory_used", None),
        ("disk", "%", "disk_used", None),
        ("up", "s", "uptime", None),
        ("wifi", "dBm", "wifi_signal", None),
        ("throttled", "", "throttled", Some("undervoltage_occurred")),
        ("room.t", "°C", "bme280", Some("temperature")),
        ("room.h", "%", "bme280", Some("humidity")),
        ("room.p", "hPa", "bme280", Some("pressure")),
        ("probe", "°C", "ds18b20", None),
    ] {
        let mut reading = json!({"value": 1.5, "unit": unit, "kind": kind, "ts": 1});
        if let Some(q) = quantity {
            reading["quantity"] = json!(q);
        }
        out.extend(d.handle(
            &format!("pifleet/dev/pi-4.lab_1/sensor/{sensor}"),
            reading.to_string().as_bytes(),
        ));
    }
    // An output removed: the config then carries its removal.
    let fewer = presence.to_string().replace(r#""led","#, "");
    out.extend(d.handle("pifleet/dev/pi-4.lab_1/status", fewer.as_bytes()));
    out.extend(d.handle("pifleet/dev/x/status", br#"{"state":"online"}"#));
    assert!(out.len() > 10, "{out:?}");
    for r in &out {
        let v: Value = serde_json::from_str(&r.payload).unwrap();
        let bad = check_against_home_assistant(&r.topic, &v);
        assert!(bad.is_empty(), "{}:\n{}", r.payload, bad.join("\n"));
    }
    let last: Value = serde_json::from_str(&out[out.len() - 2].payload).unwrap();
    let c = &last["components"];
    assert_eq!(c["switch_led"], json!({"platform": "switch"}));
    assert_eq!(c["sensor_room_dh"]["device_class"], "humidity");
    assert_eq!(c["sensor_room_dh"]["unit_of_measurement"], "%");
    assert_eq!(c["sensor_room_dp"]["device_class"], "atmospheric_pressure");
    assert_eq!(c["sensor_wifi"]["device_class"], "signal_strength");
    assert_eq!(c["sensor_wifi"]["entity_category"], "diagnostic");
    assert!(c["sensor_room_dt"].get("entity_category").is_none());
    assert!(c["sensor_cpu"].get("device_class").is_none());
    // The check itself catches what Home Assistant refuses.
    let mut broken = last.clone();
    broken["components"]["sensor_cpu"]["device_class"] = json!("cpu");
    broken["components"]["sensor_up"]
        .as_object_mut()
        .unwrap()
        .remove("unique_id");
    broken.as_object_mut().unwrap().remove("origin");
    let bad = check_against_home_assistant("homeassistant/device/a.b/config", &broken);
    for fault in [
        "does not match TOPIC_MATCHER",
        "`origin` is required",
        "is no SensorDeviceClass",
        "unique_id required",
    ] {
        assert!(bad.iter().any(|b| b.contains(fault)), "{fault}: {bad:#?}");
    }
}

/// Messages received by a plain MQTT client subscribed to some filters.
type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Seen(Messages);

impl Seen {
    /// Subscribes (QoS 1) on a thread of its own, returns once subscribed.
    fn subscribe(broker_url: &str, filters: &[&str]) -> Seen {
        let seen = Seen::default();
        let (host, port) = broker_url
            .trim_start_matches("mqtt://")
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap()))
            .unwrap();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let store = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let id = format!("ha-test-{}", pifleet_proto::CommandId::generate());
                let mut opts = rumqttc::MqttOptions::new(id, host, port);
                opts.set_keep_alive(Duration::from_secs(5));
                opts.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut ev) = rumqttc::AsyncClient::new(opts, 100);
                for f in &filters {
                    client
                        .subscribe(f, rumqttc::QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                let mut acks = 0;
                loop {
                    match ev.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            acks += 1;
                            if acks == filters.len() {
                                let _ = ready_tx.send(());
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            store
                                .0
                                .lock()
                                .unwrap()
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("test subscriber ready");
        seen
    }

    /// The latest payload on `topic` that satisfies `pred`, waiting up to 20 s for one.
    fn wait(&self, topic: &str, what: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut found = None;
        wait_until(what, Duration::from_secs(20), || {
            found = self
                .0
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(t, p)| t == topic && pred(p))
                .map(|(_, p)| p.clone());
            found.is_some()
        });
        found.unwrap()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// [`wait`](Self::wait) for a message that arrives after the first `from` ones.
    fn wait_after(
        &self,
        from: usize,
        topic: &str,
        what: &str,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let mut found = None;
        wait_until(what, Duration::from_secs(20), || {
            found = self.0.lock().unwrap()[from..]
                .iter()
                .find(|(t, p)| t == topic && pred(p))
                .map(|(_, p)| p.clone());
            found.is_some()
        });
        found.unwrap()
    }
}

fn json_of(p: &[u8]) -> Value {
    serde_json::from_slice(p).unwrap_or(Value::Null)
}

/// The Python of the venv `.ci/run` makes (`target/ha-venv`, jinja2 from PyPI), or
/// `$PIFLEET_JINJA_PYTHON`; `None` (skipped) without one.
fn jinja_python() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("PIFLEET_JINJA_PYTHON") {
        return Some(p.into());
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ha-venv/bin/python3");
    let path = std::path::PathBuf::from(venv);
    let ok = path.exists()
        && Command::new(&path)
            .args(["-c", "import jinja2"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        Some(path)
    } else {
        skip(
            "no Python with jinja2 in target/ha-venv (.ci/run makes it: python3 -m venv \
             target/ha-venv && target/ha-venv/bin/pip install jinja2)",
        );
        None
    }
}

/// Renders each `(template, payload)` with Jinja2 as Home Assistant does (tests/ha_render.py).
fn render(python: &std::path::Path, cases: &[(&str, &[u8])]) -> Vec<String> {
    let input: Vec<Value> = cases
        .iter()
        .map(|(t, p)| json!({"template": t, "payload": String::from_utf8_lossy(p)}))
        .collect();
    let mut child = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ha_render.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ha_render.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

const PI: &str = "pi.1";
const CONFIG_TOPIC: &str = "homeassistant/device/pifleet_pi_d1/config";

fn agent_extra() -> &'static str {
    "[[output]]\nname = \"led\"\npin = 17\n\n[[output]]\nname = \"lamp\"\npin = 18\nkind = \"pwm\"\n\n\
     [[input]]\nname = \"button\"\npin = 27\npull = \"up\"\nactive_low = true\n\n\
     [[sensor]]\nname = \"room\"\nkind = \"sim\"\ninterval_secs = 1\n"
}

/// The config once it lists all four parts and the sensor's unit (after its first reading).
fn full_config(seen: &Seen) -> Value {
    json_of(&seen.wait(CONFIG_TOPIC, "the full discovery config", |p| {
        let v = json_of(p);
        v["components"]["sensor_room"]["unit_of_measurement"].is_string()
            && v["components"]["light_lamp"].is_object()
    }))
}

/// Clicks a switch and dims a light the way Home Assistant does, on the topics the config
/// names, and checks the confirmed states, read through the config's own templates. Returns the
/// command id the agent gave the switch's `ON`.
fn drive_like_home_assistant(
    broker: &str,
    seen: &Seen,
    config: &Value,
    python: Option<&std::path::Path>,
) -> String {
    let c = &config["components"];
    let (switch, light) = (&c["switch_led"], &c["light_lamp"]);
    let s_topic = switch["state_topic"].as_str().unwrap();
    let l_topic = light["state_topic"].as_str().unwrap();
    assert_eq!(s_topic, "pifleet/dev/pi.1/out/led");

    publish_raw(broker, switch["command_topic"].as_str().unwrap(), b"ON");
    let on = seen.wait(s_topic, "the switch confirmed on", |p| {
        let v = json_of(p);
        v["on"] == true && v["cmd"].is_string() && v["source"] == "command"
    });
    publish_raw(
        broker,
        light["brightness_command_topic"].as_str().unwrap(),
        b"40",
    );
    let dim = seen.wait(l_topic, "the light confirmed at 40 %", |p| {
        json_of(p)["level"] == 40.0
    });
    let from = seen.len();
    publish_raw(broker, light["command_topic"].as_str().unwrap(), b"OFF");
    let off = seen.wait_after(from, l_topic, "the light confirmed off", |p| {
        json_of(p)["on"] == false
    });
    let from = seen.len();
    publish_raw(broker, switch["command_topic"].as_str().unwrap(), b"OFF");
    let s_off = seen.wait_after(from, s_topic, "the switch confirmed off", |p| {
        json_of(p)["on"] == false
    });

    let on_cmd = json_of(&on)["cmd"].as_str().unwrap().to_string();
    let Some(python) = python else {
        return on_cmd;
    };
    let input = seen.wait(
        c["binary_sensor_button"]["state_topic"].as_str().unwrap(),
        "the button",
        |_| true,
    );
    let reading = seen.wait(
        c["sensor_room"]["state_topic"].as_str().unwrap(),
        "a reading",
        |_| true,
    );
    let status = seen.wait(
        config["availability_topic"].as_str().unwrap(),
        "presence",
        |p| json_of(p)["state"] == "online",
    );
    let t = |v: &Value| v.as_str().unwrap().to_string();
    let templates = [
        t(&switch["value_template"]),
        t(&switch["value_template"]),
        t(&light["state_value_template"]),
        t(&light["brightness_value_template"]),
        t(&light["state_value_template"]),
        t(&c["binary_sensor_button"]["value_template"]),
        t(&c["sensor_room"]["value_template"]),
        t(&config["availability_template"]),
    ];
    let payloads: [&[u8]; 8] = [&on, &s_off, &dim, &dim, &off, &input, &reading, &status];
    let cases: Vec<(&str, &[u8])> = templates.iter().map(String::as_str).zip(payloads).collect();
    let got = render(python, &cases);
    let value = json_of(&reading)["value"].as_f64().unwrap();
    assert_eq!(
        got[..6],
        ["ON", "OFF", "ON", "40.0", "OFF", "OFF"],
        "{got:?}"
    );
    assert_eq!(
        got[6].parse::<f64>().unwrap(),
        value,
        "the sensor state is the value"
    );
    assert_eq!(got[7], config["payload_available"].as_str().unwrap());
    // What Home Assistant does with the brightness: brightness_value_template's number over
    // brightness_scale (light/schema_basic.py), i.e. the percent the device reported.
    let scale = light["brightness_scale"].as_f64().unwrap();
    assert_eq!(got[3].parse::<f64>().unwrap() / scale, 0.4);
    on_cmd
}

#[test]
fn the_broker_with_homeassistant_lets_home_assistant_see_and_switch_the_fleet() {
    let python = jinja_python();
    let broker = Broker::start_with(&[
        "--mqtt",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--homeassistant",
    ]);
    broker
        .proc
        .stdout
        .wait_for("discovery running", Duration::from_secs(15), |l| {
            l.starts_with("pifleet-broker: Home Assistant discovery under homeassistant/")
        });
    let url = broker.url();
    let seen = Seen::subscribe(
        &url,
        &[
            "homeassistant/#",
            "pifleet/dev/+/out/+",
            "pifleet/dev/+/in/+",
            "pifleet/dev/+/sensor/+",
            "pifleet/dev/+/status",
        ],
    );
    let mut agent = Agent::start(&url, PI, agent_extra());
    let config = full_config(&seen);
    let bad = check_against_home_assistant(CONFIG_TOPIC, &config);
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(
        config["components"]["sensor_room"]["device_class"],
        "temperature"
    );
    assert_eq!(config["components"]["sensor_room"]["expire_after"], 32);
    let watching = watch(&url, &[]);
    let cmd = drive_like_home_assistant(&url, &seen, &config, python.as_deref());
    // The click is an ordinary, acknowledged command: `pifleet watch` shows it with its id.
    watching
        .stdout
        .wait_for("watch to show the click", Duration::from_secs(10), |l| {
            l.contains(&cmd) && l.contains("\"led\"")
        });

    // The device goes away for good: its retained presence is cleared, and so is its config.
    agent.proc.signal("KILL");
    agent.proc.wait_exit(Duration::from_secs(5));
    seen.wait("pifleet/dev/pi.1/status", "the last will", |p| {
        json_of(p)["state"] == "offline"
    });
    let from = seen.len();
    publish_raw_retained(&url, "pifleet/dev/pi.1/status", b"");
    seen.wait_after(from, CONFIG_TOPIC, "the config removed", |p| p.is_empty());
}

/// A port nobody listens on now (bound and released; mosquitto then binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_standalone_service_works_against_mosquitto_and_answers_home_assistant_coming_online() {
    let mosquitto = "/usr/sbin/mosquitto";
    if !std::path::Path::new(mosquitto).exists() {
        skip("Debian's mosquitto is not installed (apt-get install mosquitto)");
        return;
    }
    let python = jinja_python();
    let dir = temp_dir("mosquitto");
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let mut cmd = Command::new(mosquitto);
    cmd.arg("-c").arg(&conf);
    let _mosquitto = Proc::spawn("mosquitto", cmd);
    let url = format!("mqtt://127.0.0.1:{port}");
    wait_until("mosquitto listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let seen = Seen::subscribe(
        &url,
        &[
            "homeassistant/#",
            "pifleet/dev/+/out/+",
            "pifleet/dev/+/in/+",
            "pifleet/dev/+/sensor/+",
            "pifleet/dev/+/status",
        ],
    );
    let _agent = Agent::start(&url, PI, agent_extra());
    let mut cmd = Command::new(bin("pifleet"));
    cmd.args(["homeassistant", "--broker", &url]);
    let service = Proc::spawn("pifleet homeassistant", cmd);
    service
        .stderr
        .wait_for("the service ready", Duration::from_secs(15), |l| {
            l.contains("publishing Home Assistant discovery")
        });
    let config = full_config(&seen);
    assert!(check_against_home_assistant(CONFIG_TOPIC, &config).is_empty());
    drive_like_home_assistant(&url, &seen, &config, python.as_deref());

    // The config is gone from the broker (say, it lost its retained store); Home Assistant
    // announcing itself brings every config back.
    let from = seen.len();
    publish_raw_retained(&url, CONFIG_TOPIC, b"");
    seen.wait_after(from, CONFIG_TOPIC, "the config deleted", |p| p.is_empty());
    let from = seen.len();
    publish_raw(&url, "homeassistant/status", b"online");
    let again =
        json_of(&seen.wait_after(from, CONFIG_TOPIC, "the config again", |p| !p.is_empty()));
    assert_eq!(again["components"], config["components"]);
}

#[test]
fn after_a_broker_restart_that_lost_its_retained_messages_the_configs_come_back() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--mqtt", listen.as_str(), "--no-ws", "--no-state"];
    let broker = Broker::start_with(&args);
    let url = broker.url();
    let _agent = Agent::start(&url, PI, agent_extra());
    let mut cmd = Command::new(bin("pifleet"));
    cmd.args(["homeassistant", "--broker", &url]);
    let _service = Proc::spawn("pifleet homeassistant", cmd);
    let seen = Seen::subscribe(&url, &["homeassistant/#"]);
    let before = full_config(&seen);

    // The broker restarts with nothing retained. The agent's presence comes back unchanged,
    // which alone would publish nothing: the service's own reconnect must republish.
    drop(broker);
    let _broker = Broker::start_with(&args);
    let seen = Seen::subscribe(&url, &["homeassistant/#"]);
    let after = json_of(&seen.wait(CONFIG_TOPIC, "the config republished", |p| !p.is_empty()));
    assert_eq!(after, before);
}
