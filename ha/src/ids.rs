//! Identifiers for Home Assistant. Its discovery topic accepts only `[a-zA-Z0-9_-]` in the
//! node and object id (`TOPIC_MATCHER` in `homeassistant/components/mqtt/discovery.py`), and
//! it splits discovery ids at spaces (`_generate_device_config`, same file); both read at
//! NewBabyFace/core@2077c28a46beca80625c3e888ba7423664f2d419, a full Home Assistant core tree
//! with device-based discovery, which `tests/tests/homeassistant.rs` (`mod ha`) checks against.
//! pifleet names are ASCII letters, digits, `-`, `_` and `.`.
//! [`escape`] maps `_` to `__` and `.` to `_d`: the result is in Home Assistant's alphabet, and
//! no two names map to the same id (read left to right, `_` is always followed by `_` or `d`).

use pifleet_proto::Name;

/// `name` in Home Assistant's id alphabet, distinct for distinct names.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

/// The Home Assistant device id (discovery object id and device identifier) of a device.
pub fn device_id(device: &Name) -> String {
    format!("pifleet_{}", escape(device.as_str()))
}

/// The id of one component inside a device's `components`: its platform and its name, so an
/// output that turns from a switch into a light is a new component, not a changed one.
pub fn component_id(platform: &str, name: &Name) -> String {
    format!("{platform}_{}", escape(name.as_str()))
}

/// The entity's `unique_id`: the device id and the component id. Unique over the fleet because
/// escaped device ids never contain `_` followed by a platform's first letter.
pub fn unique_id(device: &Name, component: &str) -> String {
    format!("{}_{component}", device_id(device))
}

#[cfg(test)]
mod test {
    use super::*;

    fn ha_ok(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn every_pifleet_name_becomes_an_id_home_assistant_accepts() {
        for name in ["kitchen", "pi-4.lab", "a_b", "A.B_c-9", "_..", "_", "x.d"] {
            let id = device_id(&Name::new(name).unwrap());
            assert!(ha_ok(&id), "{name} -> {id}");
        }
    }

    #[test]
    fn names_that_differ_only_in_dot_and_underscore_get_different_ids() {
        let names = ["a.b", "a_b", "a_db", "a__b", "a.db", "a_d", "ad", "a.d"];
        let ids: std::collections::BTreeSet<String> = names.iter().map(|n| escape(n)).collect();
        assert_eq!(ids.len(), names.len(), "{ids:?}");
        assert_eq!(escape("pi-4.lab_1"), "pi-4_dlab__1");
    }
}
