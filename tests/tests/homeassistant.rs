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
//!   code requires, read at one commit (see [`ha`]), and the check itself shown to catch each
//!   fault it names.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pifleet_proto::Topics;
use pifleet_tests::*;
use serde_json::{json, Map, Value};

/// What Home Assistant's MQTT discovery accepts, read at ONE commit of a full Home Assistant
/// core tree with device-based discovery: [`AT`](ha::AT), i.e. the repository NewBabyFace/core
/// (a fork of home-assistant/core; its `homeassistant/const.py` says 2025.7.0.dev0) at commit
/// 2077c28a46beca80625c3e888ba7423664f2d419. Each list names its file in that tree.
///
/// The fork renames the Python package in its imports (`menuai`) and mqtt/const.py's
/// `DEFAULT_PREFIX` (`"menuai"`); the option keys, classes and units below are Home
/// Assistant's own names, unchanged there. The discovery prefix the test uses, `homeassistant`,
/// is pifleet's default (upstream's), not read from that tree.
///
/// Not stored at that commit: mqtt/abbreviations.py (read instead at home-assistant/core @
/// 911803bfd294b1ba1f541af01f6d37666ae4e384) and mqtt/light/schema.py (the light's `schema`
/// key). pifleet sends full key names only, so abbreviations.py matters only in that no key
/// below is an abbreviation of a *different* key there (`name` maps to itself): the payload
/// reaches the schemas as built. The checks therefore reject an abbreviated key outright.
pub mod ha {
    /// The one tree every list below was read from (except as noted in the module docs).
    pub const AT: &str = "NewBabyFace/core@2077c28a46beca80625c3e888ba7423664f2d419";

    // ---- homeassistant/components/mqtt/discovery.py ----

    /// `TOPIC_MATCHER` (`re.match` on the topic with `<prefix>/` removed):
    /// `(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config`,
    /// subscribed as `<prefix>/device/+/config` and `<prefix>/device/+/+/config` for device
    /// discovery (`async_start`). Returns (component, node_id, object_id).
    pub fn topic_matcher(trimmed: &str) -> Option<(&str, Option<&str>, &str)> {
        let rest = trimmed.strip_suffix("/config")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (component, node_id, object_id) = match parts[..] {
            [c, o] => (c, None, o),
            [c, n, o] => (c, Some(n), o),
            _ => return None,
        };
        let word =
            !component.is_empty() && component.chars().all(|c| c.is_alphanumeric() || c == '_');
        (word && node_id.is_none_or(is_id) && is_id(object_id))
            .then_some((component, node_id, object_id))
    }

    /// The id alphabet of `TOPIC_MATCHER`'s node_id and object_id: `[a-zA-Z0-9_-]+`.
    pub fn is_id(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    /// The component of a device discovery topic (`if component == CONF_DEVICE`).
    pub const DEVICE_COMPONENT: &str = "device";

    // ---- homeassistant/components/mqtt/schemas.py ----

    /// `SHARED_OPTIONS`: device-level options copied into each component that does not set
    /// them itself (`_merge_common_device_options`, called from the device-component loop of
    /// discovery.py, which also pops `platform` and adds `device` and `origin`).
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
    /// `_MQTT_AVAILABILITY_SCHEMA` (single and list forms); `availability_topic` and
    /// `availability` are `vol.Exclusive` (one group, "availability").
    pub const AVAILABILITY_KEYS: &[&str] = &[
        "availability_topic",
        "availability_template",
        "payload_available",
        "payload_not_available",
        "availability_mode",
        "availability",
    ];
    /// `DEVICE_DISCOVERY_SCHEMA`, checked by `_parse_device_payload` after abbreviations are
    /// replaced: these three required, ...
    pub const DEVICE_DISCOVERY_REQUIRED: &[&str] = &["device", "components", "origin"];
    /// ... and besides [`AVAILABILITY_KEYS`] only these; a plain `vol.Schema`, so any other
    /// top-level key makes the whole payload invalid.
    pub const DEVICE_DISCOVERY_OPTIONAL: &[&str] =
        &["state_topic", "command_topic", "qos", "encoding"];
    /// `MQTT_ENTITY_DEVICE_INFO_SCHEMA` (extra keys invalid), and
    /// `validate_device_has_at_least_one_identifier`: `identifiers` or `connections`.
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
    /// `MQTT_ORIGIN_INFO_SCHEMA` (extra keys invalid): `name` required.
    pub const ORIGIN_KEYS: &[&str] = &["name", "sw_version", "support_url"];
    /// `MQTT_ENTITY_COMMON_SCHEMA`, which every entity platform below extends: the
    /// availability keys and these.
    pub const ENTITY_COMMON_KEYS: &[&str] = &[
        "device",
        "entity_picture",
        "origin",
        "enabled_by_default",
        "entity_category",
        "icon",
        "json_attributes_topic",
        "json_attributes_template",
        "object_id",
        "unique_id",
    ];

    // ---- homeassistant/components/mqtt/config.py (and util.py) ----

    /// `SCHEMA_BASE`: every platform's `qos` (util.py `valid_qos_schema`: 0, 1 or 2) and
    /// `encoding`.
    pub const BASE_KEYS: &[&str] = &["qos", "encoding"];
    /// `MQTT_RO_SCHEMA` (sensor, binary_sensor): `state_topic` required.
    pub const RO_KEYS: &[&str] = &["state_topic", "value_template"];
    /// `MQTT_RW_SCHEMA` (switch, light): `command_topic` required.
    pub const RW_KEYS: &[&str] = &["command_topic", "optimistic", "retain", "state_topic"];

    // ---- homeassistant/components/mqtt/const.py ----

    /// `SUPPORTED_COMPONENTS`: what `_COMPONENT_CONFIG_SCHEMA` takes as `platform`.
    pub const SUPPORTED_COMPONENTS: &[&str] = &[
        "alarm_control_panel",
        "binary_sensor",
        "button",
        "camera",
        "climate",
        "cover",
        "device_automation",
        "device_tracker",
        "event",
        "fan",
        "humidifier",
        "image",
        "lawn_mower",
        "light",
        "lock",
        "notify",
        "number",
        "scene",
        "siren",
        "select",
        "sensor",
        "switch",
        "tag",
        "text",
        "update",
        "vacuum",
        "valve",
        "water_heater",
    ];
    /// `ENTITY_PLATFORMS`: `check_unique_id` (schemas.py) requires a `unique_id` of a component
    /// of these platforms that has more than its `platform`.
    pub const ENTITY_PLATFORMS: &[&str] = &[
        "alarm_control_panel",
        "binary_sensor",
        "button",
        "camera",
        "climate",
        "cover",
        "device_tracker",
        "event",
        "fan",
        "humidifier",
        "image",
        "light",
        "lawn_mower",
        "lock",
        "notify",
        "number",
        "scene",
        "select",
        "sensor",
        "siren",
        "switch",
        "text",
        "update",
        "vacuum",
        "valve",
        "water_heater",
    ];
    /// `AVAILABILITY_MODES`.
    pub const AVAILABILITY_MODES: &[&str] = &["all", "any", "latest"];

    // ---- the platform schemas pifleet uses: PLATFORM_SCHEMA_MODERN's own keys ----

    /// homeassistant/components/mqtt/switch.py (on MQTT_RW_SCHEMA).
    pub const SWITCH_KEYS: &[&str] = &[
        "command_template",
        "name",
        "payload_off",
        "payload_on",
        "state_off",
        "state_on",
        "value_template",
        "device_class",
    ];
    /// homeassistant/components/mqtt/binary_sensor.py (on MQTT_RO_SCHEMA).
    pub const BINARY_SENSOR_KEYS: &[&str] = &[
        "device_class",
        "expire_after",
        "force_update",
        "name",
        "off_delay",
        "payload_off",
        "payload_on",
    ];
    /// homeassistant/components/mqtt/sensor.py `_PLATFORM_SCHEMA_BASE` (on MQTT_RO_SCHEMA).
    pub const SENSOR_KEYS: &[&str] = &[
        "device_class",
        "expire_after",
        "force_update",
        "last_reset_value_template",
        "name",
        "options",
        "suggested_display_precision",
        "state_class",
        "unit_of_measurement",
    ];
    /// homeassistant/components/mqtt/light/schema_basic.py `PLATFORM_SCHEMA_MODERN_BASIC` (on
    /// MQTT_RW_SCHEMA; no `value_template`: the on/off state is `state_value_template`), and
    /// `schema` (light/__init__.py picks the schema by it, default `basic`).
    pub const LIGHT_BASIC_KEYS: &[&str] = &[
        "brightness_command_template",
        "brightness_command_topic",
        "brightness_scale",
        "brightness_state_topic",
        "brightness_value_template",
        "color_mode_state_topic",
        "color_mode_value_template",
        "color_temp_command_template",
        "color_temp_command_topic",
        "color_temp_state_topic",
        "color_temp_value_template",
        "color_temp_kelvin",
        "effect_command_template",
        "effect_command_topic",
        "effect_list",
        "effect_state_topic",
        "effect_value_template",
        "hs_command_template",
        "hs_command_topic",
        "hs_state_topic",
        "hs_value_template",
        "max_mireds",
        "min_mireds",
        "max_kelvin",
        "min_kelvin",
        "name",
        "on_command_type",
        "payload_off",
        "payload_on",
        "rgb_command_template",
        "rgb_command_topic",
        "rgb_state_topic",
        "rgb_value_template",
        "rgbw_command_template",
        "rgbw_command_topic",
        "rgbw_state_topic",
        "rgbw_value_template",
        "rgbww_command_template",
        "rgbww_command_topic",
        "rgbww_state_topic",
        "rgbww_value_template",
        "state_value_template",
        "white_command_topic",
        "white_scale",
        "xy_command_template",
        "xy_command_topic",
        "xy_state_topic",
        "xy_value_template",
        "schema",
    ];

    /// A platform's discovery schema: the file read, the keys it requires, every key it
    /// accepts. Its `DISCOVERY_SCHEMA` is `extra=vol.REMOVE_EXTRA`: a key outside is dropped
    /// without a word, so the option it carries silently does nothing.
    pub struct PlatformSchema {
        pub file: &'static str,
        pub required: &'static [&'static str],
        pub accepted: Vec<&'static str>,
    }

    /// The schemas read, for the platforms pifleet uses; `None` for any other.
    pub fn platform_schema(platform: &str) -> Option<PlatformSchema> {
        let (file, own, rw) = match platform {
            "switch" => ("switch.py", SWITCH_KEYS, true),
            "light" => ("light/schema_basic.py", LIGHT_BASIC_KEYS, true),
            "binary_sensor" => ("binary_sensor.py", BINARY_SENSOR_KEYS, false),
            "sensor" => ("sensor.py", SENSOR_KEYS, false),
            _ => return None,
        };
        let (io, required): (&[&str], &'static [&'static str]) = if rw {
            (RW_KEYS, &["command_topic"])
        } else {
            (RO_KEYS, &["state_topic"])
        };
        let mut accepted: Vec<&'static str> = Vec::new();
        for keys in [own, io, BASE_KEYS, AVAILABILITY_KEYS, ENTITY_COMMON_KEYS] {
            accepted.extend_from_slice(keys);
        }
        Some(PlatformSchema {
            file,
            required,
            accepted,
        })
    }

    // ---- homeassistant/const.py (and helpers/entity.py ENTITY_CATEGORIES_SCHEMA) ----

    /// `EntityCategory`, which `ENTITY_CATEGORIES_SCHEMA` coerces to.
    pub const ENTITY_CATEGORIES: &[&str] = &["config", "diagnostic"];

    // ---- homeassistant/components/sensor/const.py ----

    /// `SensorDeviceClass` (`DEVICE_CLASSES_SCHEMA` coerces to it).
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
        "reactive_energy",
        "reactive_power",
        "signal_strength",
        "sound_pressure",
        "speed",
        "sulphur_dioxide",
        "temperature",
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
    /// `SensorStateClass` (`STATE_CLASSES_SCHEMA`).
    pub const SENSOR_STATE_CLASSES: &[&str] = &[
        "measurement",
        "measurement_angle",
        "total",
        "total_increasing",
    ];
    /// `STATE_CLASS_UNITS`, which sensor.py's `validate_sensor_state_and_device_class_config`
    /// enforces (invalid otherwise): the units a state class allows, where it limits them.
    pub fn state_class_units(state_class: &str) -> Option<&'static [&'static str]> {
        match state_class {
            "measurement_angle" => Some(&["°"]), // DEGREE
            _ => None,
        }
    }

    /// `DEVICE_CLASS_UNITS` for the classes pifleet assigns (the values of homeassistant/
    /// const.py's UnitOf* enums and unit constants); sensor.py warns about a unit outside the
    /// set. Empty for a class not listed here: a new class must be read before it is used.
    pub fn units_of(class: &str) -> &'static [&'static str] {
        match class {
            "temperature" => &["°C", "°F", "K"],
            "humidity" => &["%"],
            "pressure" | "atmospheric_pressure" => &[
                "Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi",
            ],
            "signal_strength" => &["dB", "dBm"],
            // UnitOfTime.MICROSECONDS is "μs" with GREEK SMALL LETTER MU (U+03BC).
            "duration" => &["d", "h", "min", "s", "ms", "\u{3bc}s"],
            // UnitOfElectricPotential.MICROVOLT is "µV" with MICRO SIGN (U+00B5).
            "voltage" => &["\u{b5}V", "mV", "V", "kV", "MV"],
            "current" => &["mA", "A"],
            // Listed one by one in DEVICE_CLASS_UNITS: UnitOfPower's BTU/h is not among them.
            "power" => &["mW", "W", "kW", "MW", "GW", "TW"],
            "frequency" => &["Hz", "kHz", "MHz", "GHz"],
            "illuminance" => &["lx"],
            "data_size" => &[
                "bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB",
                "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB",
            ],
            _ => &[],
        }
    }

    /// `DEVICE_CLASS_STATE_CLASSES` for the same classes: the state classes that fit each.
    pub fn state_classes_of(class: &str) -> &'static [&'static str] {
        match class {
            "duration" | "data_size" => SENSOR_STATE_CLASSES,
            "temperature"
            | "humidity"
            | "pressure"
            | "atmospheric_pressure"
            | "signal_strength"
            | "voltage"
            | "current"
            | "power"
            | "frequency"
            | "illuminance" => &["measurement"],
            _ => &[],
        }
    }
}

/// util.py `valid_topic`, and `valid_publish_topic` (no wildcards) for a `*command_topic`, or
/// `valid_subscribe_topic` (wildcards only as whole levels, `#` last) for any other topic.
fn topic_fault(key: &str, v: &Value) -> Option<String> {
    let Some(t) = v.as_str() else {
        return Some(format!("`{key}` {v} is not a string"));
    };
    if t.is_empty() || t.len() > 65535 {
        return Some(format!("`{key}` {t:?}: empty or longer than 65535 bytes"));
    }
    let bad_char = |c: char| {
        c <= '\u{1f}'
            || ('\u{7f}'..='\u{9f}').contains(&c)
            || ('\u{fdd0}'..='\u{fdef}').contains(&c)
            || matches!(u32::from(c) & 0xFFFF, 0xFFFE | 0xFFFF)
    };
    if t.chars().any(bad_char) {
        return Some(format!("`{key}` {t:?}: a control or non-character"));
    }
    if key.ends_with("command_topic") {
        if t.contains(['+', '#']) {
            return Some(format!("`{key}` {t:?}: a wildcard in a publish topic"));
        }
    } else {
        let levels: Vec<&str> = t.split('/').collect();
        let plus_ok = levels.iter().all(|l| !l.contains('+') || *l == "+");
        let hash_ok = levels
            .iter()
            .enumerate()
            .all(|(i, l)| !l.contains('#') || (*l == "#" && i == levels.len() - 1));
        if !plus_ok || !hash_ok {
            return Some(format!("`{key}` {t:?}: a misplaced wildcard"));
        }
    }
    None
}

/// cv.string: a string, or a number it turns into one.
fn is_cv_string(v: &Value) -> bool {
    v.is_string() || v.is_number()
}

/// The value checks shared by the device level and each (merged) component: topics, `qos`,
/// the availability options.
fn check_options(at: &str, c: &Map<String, Value>, bad: &mut Vec<String>) {
    for (k, v) in c {
        if k.ends_with("_topic") {
            if let Some(f) = topic_fault(k, v) {
                bad.push(format!("{at}: {f}"));
            }
        }
        if k.ends_with("_template") && !v.is_string() {
            bad.push(format!("{at}: `{k}` is not a template string"));
        }
        if k.starts_with("payload_") && !is_cv_string(v) {
            bad.push(format!("{at}: `{k}` {v} is not a string"));
        }
    }
    if let Some(q) = c.get("qos") {
        if q.as_u64().is_none_or(|q| q > 2) {
            bad.push(format!("{at}: qos {q} is not 0, 1 or 2 (valid_qos_schema)"));
        }
    }
    if c.contains_key("availability_topic") && c.contains_key("availability") {
        bad.push(format!(
            "{at}: availability_topic and availability are exclusive"
        ));
    }
    if let Some(m) = c.get("availability_mode") {
        if !ha::AVAILABILITY_MODES.contains(&m.as_str().unwrap_or("")) {
            bad.push(format!("{at}: availability_mode {m}"));
        }
    }
    if let Some(list) = c.get("availability") {
        let items = list
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![list.clone()]);
        for a in items {
            let ok = a.as_object().is_some_and(|a| {
                a.keys().all(|k| {
                    [
                        "topic",
                        "payload_available",
                        "payload_not_available",
                        "value_template",
                    ]
                    .contains(&k.as_str())
                }) && a
                    .get("topic")
                    .is_some_and(|t| topic_fault("topic", t).is_none())
            });
            if !ok {
                bad.push(format!(
                    "{at}: availability entry {a} is not one the schema takes"
                ));
            }
        }
    }
}

/// Every requirement of [`ha`] on one retained discovery message; the reasons it fails.
fn check_against_home_assistant(topic: &str, payload: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    // discovery.py: the topic less `<prefix>/`, against TOPIC_MATCHER, for the device component.
    match topic
        .strip_prefix("homeassistant/")
        .and_then(ha::topic_matcher)
    {
        Some((ha::DEVICE_COMPONENT, _, _)) => {}
        Some((c, _, _)) => bad.push(format!("{topic}: component {c}, not device discovery")),
        None => bad.push(format!("topic {topic} does not match TOPIC_MATCHER")),
    }
    let Some(obj) = payload.as_object() else {
        return vec![format!("{topic}: not a JSON object")];
    };
    // schemas.py DEVICE_DISCOVERY_SCHEMA.
    for k in ha::DEVICE_DISCOVERY_REQUIRED {
        if !obj.contains_key(*k) {
            bad.push(format!("{topic}: `{k}` is required for device discovery"));
        }
    }
    for k in obj.keys() {
        let k = k.as_str();
        if !ha::DEVICE_DISCOVERY_REQUIRED.contains(&k)
            && !ha::DEVICE_DISCOVERY_OPTIONAL.contains(&k)
            && !ha::AVAILABILITY_KEYS.contains(&k)
        {
            bad.push(format!(
                "{topic}: top-level key `{k}` is not in DEVICE_DISCOVERY_SCHEMA"
            ));
        }
    }
    check_options(topic, obj, &mut bad);
    // MQTT_ENTITY_DEVICE_INFO_SCHEMA.
    let empty = Map::new();
    let dev = payload["device"].as_object().unwrap_or(&empty);
    for (k, v) in dev {
        match k.as_str() {
            "identifiers" => {
                let ok =
                    is_cv_string(v) || v.as_array().is_some_and(|a| a.iter().all(is_cv_string));
                if !ok {
                    bad.push(format!("{topic}: device identifiers {v}"));
                }
            }
            "connections" => {
                let pair = |p: &Value| {
                    p.as_array()
                        .is_some_and(|p| p.len() == 2 && p.iter().all(is_cv_string))
                };
                if !v.as_array().is_some_and(|a| a.iter().all(pair)) {
                    bad.push(format!("{topic}: device connections {v}"));
                }
            }
            k if ha::DEVICE_KEYS.contains(&k) => {
                if !is_cv_string(v) {
                    bad.push(format!("{topic}: device `{k}` {v} is not a string"));
                }
            }
            k => bad.push(format!("{topic}: device key `{k}` unknown")),
        }
    }
    let non_empty = |v: Option<&Value>| match v {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(v) => is_cv_string(v),
        None => false,
    };
    if !non_empty(dev.get("identifiers")) && !non_empty(dev.get("connections")) {
        bad.push(format!(
            "{topic}: device needs identifiers or connections (validate_device_has_at_least_one_identifier)"
        ));
    }
    // MQTT_ORIGIN_INFO_SCHEMA.
    let origin = payload["origin"].as_object().unwrap_or(&empty);
    if !origin.get("name").is_some_and(is_cv_string) {
        bad.push(format!("{topic}: origin needs a name"));
    }
    for (k, v) in origin {
        if !ha::ORIGIN_KEYS.contains(&k.as_str()) {
            bad.push(format!("{topic}: origin key `{k}` unknown"));
        } else if k == "support_url" {
            // cv.configuration_url: http(s) with a host (or the app's own scheme).
            let url = v.as_str().unwrap_or("");
            let host = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                bad.push(format!("{topic}: origin support_url {v} is not a URL"));
            }
        } else if !is_cv_string(v) {
            bad.push(format!("{topic}: origin `{k}` {v} is not a string"));
        }
    }
    let Some(cmps) = payload["components"].as_object() else {
        bad.push(format!("{topic}: components is not a map"));
        return bad;
    };
    let mut unique_ids = std::collections::BTreeSet::new();
    for (cid, c) in cmps {
        let at = format!("{topic} component {cid}");
        // pifleet's own rule, stricter than the schema's `{str: …}`: TOPIC_MATCHER's alphabet,
        // so never a space (`_generate_device_config` splits discovery ids at spaces).
        if !ha::is_id(cid) {
            bad.push(format!("{at}: id outside [a-zA-Z0-9_-]"));
        }
        let Some(c) = c.as_object() else {
            bad.push(format!("{at}: not an object"));
            continue;
        };
        // _COMPONENT_CONFIG_SCHEMA: `platform` in SUPPORTED_COMPONENTS, then check_unique_id.
        let platform = c.get("platform").and_then(Value::as_str).unwrap_or("");
        if !ha::SUPPORTED_COMPONENTS.contains(&platform) {
            bad.push(format!(
                "{at}: platform {platform:?} is not in SUPPORTED_COMPONENTS"
            ));
        }
        if ha::ENTITY_PLATFORMS.contains(&platform) && c.len() > 1 {
            match c.get("unique_id") {
                Some(Value::String(u)) if unique_ids.insert(u.clone()) => {}
                Some(Value::String(u)) => bad.push(format!("{at}: unique_id {u} not unique")),
                _ => bad.push(format!("{at}: unique_id required (check_unique_id)")),
            }
        }
        if c.len() == 1 {
            continue; // A removal: `{"platform": …}` alone is empty once `platform` is popped.
        }
        // The device-component loop: `platform` popped, `device` and `origin` added, shared
        // options merged where the component does not set them; the platform's schema then
        // sees the result.
        let mut merged = c.clone();
        merged.remove("platform");
        merged.insert("device".into(), payload["device"].clone());
        merged.insert("origin".into(), payload["origin"].clone());
        for option in ha::SHARED_OPTIONS {
            if let (Some(v), false) = (obj.get(*option), merged.contains_key(*option)) {
                merged.insert(option.to_string(), v.clone());
            }
        }
        let Some(schema) = ha::platform_schema(platform) else {
            bad.push(format!(
                "{at}: no schema of platform {platform:?} was read (see `ha`)"
            ));
            continue;
        };
        for k in schema.required {
            if !merged.contains_key(*k) {
                bad.push(format!("{at}: `{k}` is required by {}", schema.file));
            }
        }
        for k in merged.keys() {
            if !schema.accepted.contains(&k.as_str()) {
                bad.push(format!(
                    "{at}: key `{k}` is not accepted by {} (its DISCOVERY_SCHEMA drops it)",
                    schema.file
                ));
            }
        }
        check_options(&at, &merged, &mut bad);
        if let Some(n) = c.get("name") {
            if !(n.is_null() || is_cv_string(n)) {
                bad.push(format!("{at}: name {n}"));
            }
        }
        if let Some(cat) = c.get("entity_category") {
            if !ha::ENTITY_CATEGORIES.contains(&cat.as_str().unwrap_or("")) {
                bad.push(format!("{at}: entity_category {cat} is no EntityCategory"));
            }
        }
        // cv.positive_int takes 0 too, but 0 turns expiry off (sensor.py and binary_sensor.py
        // expire only with `expire_after` > 0): pifleet sends it to have readings expire.
        if let Some(e) = c.get("expire_after") {
            if e.as_u64().is_none_or(|e| e == 0) {
                bad.push(format!("{at}: expire_after {e} is not a positive integer"));
            }
        }
        match platform {
            "sensor" => check_sensor(&at, c, &mut bad),
            "light" => {
                // schema_basic.py: vol.All(vol.Coerce(int), vol.Range(min=1)), default 255;
                // pifleet's levels are percent, so it must say 100.
                match c.get("brightness_scale").map(Value::as_u64) {
                    Some(Some(s)) if s >= 1 => {}
                    Some(_) => bad.push(format!("{at}: brightness_scale must be an integer >= 1")),
                    None => bad.push(format!(
                        "{at}: brightness_scale missing (Home Assistant would assume 255)"
                    )),
                }
                if c.get("schema").is_some_and(|s| s != "basic") {
                    bad.push(format!("{at}: only light's basic schema was read"));
                }
            }
            // switch.py and binary_sensor.py take their platform's DEVICE_CLASSES_SCHEMA,
            // which was not read: pifleet sends no device_class there.
            _ => {
                if c.contains_key("device_class") {
                    bad.push(format!(
                        "{at}: the device classes of {platform} were not read"
                    ));
                }
            }
        }
    }
    bad
}

/// sensor.py `validate_sensor_state_and_device_class_config`, and the sensor classes and
/// units of sensor/const.py.
fn check_sensor(at: &str, c: &Map<String, Value>, bad: &mut Vec<String>) {
    let state_class = c.get("state_class").and_then(Value::as_str);
    let unit = c.get("unit_of_measurement").and_then(Value::as_str);
    let class = c.get("device_class").map(|v| v.as_str().unwrap_or(""));
    if let Some(class) = class {
        if !ha::SENSOR_DEVICE_CLASSES.contains(&class) {
            bad.push(format!(
                "{at}: device_class {class:?} is no SensorDeviceClass"
            ));
        }
        if !unit.is_some_and(|u| ha::units_of(class).contains(&u)) {
            bad.push(format!(
                "{at}: unit {unit:?} is not one of {class}'s (DEVICE_CLASS_UNITS)"
            ));
        }
        if let Some(s) = state_class {
            if !ha::state_classes_of(class).contains(&s) {
                bad.push(format!(
                    "{at}: state_class {s} does not fit {class} (DEVICE_CLASS_STATE_CLASSES)"
                ));
            }
        }
    }
    if let Some(s) = c.get("state_class") {
        let s = s.as_str().unwrap_or("");
        if !ha::SENSOR_STATE_CLASSES.contains(&s) {
            bad.push(format!("{at}: state_class {s:?} is no SensorStateClass"));
        }
        if let Some(units) = ha::state_class_units(s) {
            if !unit.is_some_and(|u| units.contains(&u)) {
                bad.push(format!(
                    "{at}: unit {unit:?} is not valid with state class {s}"
                ));
            }
        }
    }
    if c.contains_key("last_reset_value_template") && state_class != Some("total") {
        bad.push(format!(
            "{at}: last_reset_value_template needs state class total"
        ));
    }
    if let Some(options) = c.get("options") {
        let ok = options.as_array().is_some_and(|o| !o.is_empty())
            && class == Some("enum")
            && state_class.is_none()
            && unit.is_none();
        if !ok {
            bad.push(format!(
                "{at}: options need device_class enum, no state_class and no unit"
            ));
        }
    }
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
        assert!(
            bad.is_empty(),
            "against {}:\n{}:\n{}",
            ha::AT,
            r.payload,
            bad.join("\n")
        );
    }
    let last_topic = &out[out.len() - 2].topic;
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

    // The check itself catches each fault it names, one at a time, on that good config.
    type Break = fn(&mut Value);
    let faults: &[(&str, Break, &str)] = &[
        (
            "homeassistant/device/a.b/config",
            |_| {},
            "does not match TOPIC_MATCHER",
        ),
        (
            "homeassistant/switch/a/config",
            |_| {},
            "not device discovery",
        ),
        (
            "",
            |v| drop(v.as_object_mut().unwrap().remove("origin")),
            "`origin` is required",
        ),
        (
            "",
            |v| drop(v["origin"].as_object_mut().unwrap().remove("name")),
            "origin needs a name",
        ),
        (
            "",
            |v| v["origin"]["support_url"] = json!("pifleet"),
            "is not a URL",
        ),
        (
            "",
            |v| v["origin"]["url"] = json!("https://x"),
            "origin key `url` unknown",
        ),
        (
            "",
            |v| drop(v["device"].as_object_mut().unwrap().remove("identifiers")),
            "device needs identifiers or connections",
        ),
        (
            "",
            |v| v["device"]["serial"] = json!("1"),
            "device key `serial` unknown",
        ),
        (
            "",
            |v| v["retain"] = json!(true),
            "not in DEVICE_DISCOVERY_SCHEMA",
        ),
        ("", |v| v["qos"] = json!(3), "is not 0, 1 or 2"),
        (
            "",
            |v| v["availability"] = json!([{"topic": "a/b"}]),
            "are exclusive",
        ),
        (
            "",
            |v| v["availability_topic"] = json!("a/#/b"),
            "misplaced wildcard",
        ),
        (
            "",
            |v| v["components"]["switch_valve__2"]["command_topic"] = json!("a/+/b"),
            "a wildcard in a publish topic",
        ),
        (
            "",
            |v| {
                drop(
                    v["components"]["switch_valve__2"]
                        .as_object_mut()
                        .unwrap()
                        .remove("command_topic"),
                )
            },
            "`command_topic` is required by switch.py",
        ),
        (
            "",
            |v| v["components"]["switch_valve__2"]["brightness_scale"] = json!(100),
            "`brightness_scale` is not accepted by switch.py",
        ),
        (
            "",
            |v| v["components"]["light_lamp_d1"]["value_template"] = json!("{{ 1 }}"),
            "`value_template` is not accepted by light/schema_basic.py",
        ),
        (
            "",
            |v| v["components"]["binary_sensor_button"]["state_class"] = json!("measurement"),
            "`state_class` is not accepted by binary_sensor.py",
        ),
        (
            "",
            |v| v["command_topic"] = json!("a/b"),
            "`command_topic` is not accepted by sensor.py",
        ),
        (
            "",
            |v| v["components"]["sensor_up"]["uniq_id"] = json!("x"),
            "`uniq_id` is not accepted by sensor.py",
        ),
        (
            "",
            |v| {
                drop(
                    v["components"]["sensor_up"]
                        .as_object_mut()
                        .unwrap()
                        .remove("unique_id"),
                )
            },
            "unique_id required (check_unique_id)",
        ),
        (
            "",
            |v| {
                v["components"]["sensor_up"]["unique_id"] =
                    v["components"]["sensor_cpu"]["unique_id"].clone()
            },
            "not unique",
        ),
        (
            "",
            |v| v["components"]["switch_led"]["platform"] = json!("switches"),
            "not in SUPPORTED_COMPONENTS",
        ),
        (
            "",
            |v| v["components"]["x y"] = json!({"platform": "switch"}),
            "id outside",
        ),
        (
            "",
            |v| v["components"]["sensor_cpu"]["device_class"] = json!("cpu"),
            "is no SensorDeviceClass",
        ),
        (
            "",
            |v| v["components"]["sensor_cpu"]["state_class"] = json!("average"),
            "is no SensorStateClass",
        ),
        (
            "",
            |v| v["components"]["sensor_room_dt"]["unit_of_measurement"] = json!("C"),
            "DEVICE_CLASS_UNITS",
        ),
        (
            "",
            |v| v["components"]["sensor_room_dt"]["state_class"] = json!("total"),
            "DEVICE_CLASS_STATE_CLASSES",
        ),
        (
            "",
            |v| v["components"]["sensor_cpu"]["state_class"] = json!("measurement_angle"),
            "not valid with state class measurement_angle",
        ),
        (
            "",
            |v| v["components"]["sensor_wifi"]["entity_category"] = json!("diag"),
            "is no EntityCategory",
        ),
        (
            "",
            |v| v["components"]["sensor_room_dt"]["expire_after"] = json!(0),
            "expire_after 0",
        ),
        (
            "",
            |v| v["components"]["light_lamp_d1"]["brightness_scale"] = json!(0),
            "brightness_scale must be",
        ),
        (
            "",
            |v| v["components"]["sensor_wifi"]["qos"] = json!("2x"),
            "is not 0, 1 or 2",
        ),
        (
            "",
            |v| v["components"]["binary_sensor_button"]["device_class"] = json!("door"),
            "device classes of binary_sensor were not read",
        ),
        (
            "",
            |v| v["components"]["lock_x"] = json!({"platform": "lock", "unique_id": "u"}),
            "no schema of platform",
        ),
    ];
    for (topic, brk, fault) in faults {
        let topic = if topic.is_empty() {
            last_topic.as_str()
        } else {
            topic
        };
        let mut broken = last.clone();
        brk(&mut broken);
        let bad = check_against_home_assistant(topic, &broken);
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
