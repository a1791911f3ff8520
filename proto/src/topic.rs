//! The topic tree. Everything lives under one prefix (default `pifleet`) so a fleet can share a
//! broker with other applications, and one subscription (`<prefix>/#`) sees all of it.
//!
//! ```text
//! <prefix>/dev/<device>/status          retained  presence, offline via last will
//! <prefix>/dev/<device>/cmnd            -         commands for one device
//! <prefix>/dev/<device>/cmnd/<output>   -         plain ON / OFF for one output (Home Assistant)
//! <prefix>/dev/<device>/cmnd/<output>/level  -    plain level in percent for one output
//! <prefix>/group/<group>/cmnd           -         commands for every device in a group
//! <prefix>/all/cmnd                     -         commands for the whole fleet
//! <prefix>/dev/<device>/out/<output>    retained  output state + id of the command that set it
//! <prefix>/dev/<device>/in/<input>      retained  input (button) state
//! <prefix>/dev/<device>/sensor/<sensor> retained  latest sensor reading
//! <prefix>/dev/<device>/event           -         what the agent refused or failed at, and why
//! ```
//!
//! Everything a device publishes sits under `<prefix>/dev/<device>/`, and everything it may
//! receive is one of three command topics: that shape is what lets a broker authorize a device
//! from its identity alone. Commands are never retained: a retained command replays on every
//! reconnect and switches outputs nobody touched ("ghost switching").

use std::fmt;

use crate::name::Name;

/// Who a command is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Device(Name),
    Group(Name),
    All,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Device(d) => write!(f, "{d}"),
            Target::Group(g) => write!(f, "group {g}"),
            Target::All => f.write_str("all devices"),
        }
    }
}

/// What a plain per-output command topic carries (see [`Topics::plain_command`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainKind {
    /// `ON` or `OFF`.
    Switch,
    /// A level in percent, as a bare number (`40`, `12.5`).
    Level,
}

/// A parsed pifleet topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Status {
        device: Name,
    },
    Command(Target),
    /// A plain payload for one output, for clients that cannot send JSON commands with an id
    /// (Home Assistant): the agent makes the command and its id.
    PlainCommand {
        device: Name,
        output: Name,
        kind: PlainKind,
    },
    Output {
        device: Name,
        output: Name,
    },
    Input {
        device: Name,
        input: Name,
    },
    Sensor {
        device: Name,
        sensor: Name,
    },
    Event {
        device: Name,
    },
}

impl Topic {
    /// The device a device-owned topic belongs to (`None` for group and fleet commands).
    pub fn device(&self) -> Option<&Name> {
        match self {
            Topic::Status { device }
            | Topic::Output { device, .. }
            | Topic::Input { device, .. }
            | Topic::Sensor { device, .. }
            | Topic::Event { device }
            | Topic::PlainCommand { device, .. }
            | Topic::Command(Target::Device(device)) => Some(device),
            Topic::Command(_) => None,
        }
    }
}

/// Why a topic prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic prefix {0:?} is invalid: use one or more '/'-separated levels without '+', '#' or empty levels")]
pub struct PrefixError(pub String);

/// Builds and parses topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: crate::DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Topics {
    /// A prefix may have several levels (`home/pifleet`) but no wildcards or empty levels.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let ok = !prefix.is_empty()
            && !prefix.starts_with('$')
            && prefix
                .split('/')
                .all(|l| !l.is_empty() && !l.contains(['+', '#', '\0']));
        if ok {
            Ok(Topics {
                prefix: prefix.to_string(),
            })
        } else {
            Err(PrefixError(prefix.to_string()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn status(&self, device: &Name) -> String {
        format!("{}/dev/{device}/status", self.prefix)
    }

    pub fn command(&self, target: &Target) -> String {
        match target {
            Target::Device(d) => format!("{}/dev/{d}/cmnd", self.prefix),
            Target::Group(g) => format!("{}/group/{g}/cmnd", self.prefix),
            Target::All => format!("{}/all/cmnd", self.prefix),
        }
    }

    /// Where a plain command for one output goes: `ON`/`OFF` ([`PlainKind::Switch`]) on
    /// `<prefix>/dev/<device>/cmnd/<output>`, a level on `…/cmnd/<output>/level`. Inside the
    /// device's command space: never retained, and no other device may publish there.
    pub fn plain_command(&self, device: &Name, output: &Name, kind: PlainKind) -> String {
        match kind {
            PlainKind::Switch => format!("{}/dev/{device}/cmnd/{output}", self.prefix),
            PlainKind::Level => format!("{}/dev/{device}/cmnd/{output}/level", self.prefix),
        }
    }

    pub fn output(&self, device: &Name, output: &Name) -> String {
        format!("{}/dev/{device}/out/{output}", self.prefix)
    }

    pub fn input(&self, device: &Name, input: &Name) -> String {
        format!("{}/dev/{device}/in/{input}", self.prefix)
    }

    pub fn sensor(&self, device: &Name, sensor: &Name) -> String {
        format!("{}/dev/{device}/sensor/{sensor}", self.prefix)
    }

    pub fn event(&self, device: &Name) -> String {
        format!("{}/dev/{device}/event", self.prefix)
    }

    /// Everything one device publishes or is sent (`None`: every device).
    pub fn device_filter(&self, device: Option<&Name>) -> String {
        match device {
            Some(d) => format!("{}/dev/{d}/#", self.prefix),
            None => format!("{}/dev/+/#", self.prefix),
        }
    }

    /// The retained presence of one device or (`None`) of all of them.
    pub fn status_filter(&self, device: Option<&Name>) -> String {
        match device {
            Some(d) => self.status(d),
            None => format!("{}/dev/+/status", self.prefix),
        }
    }

    /// Output states of one device or (`None`) of all of them.
    pub fn output_filter(&self, device: Option<&Name>) -> String {
        match device {
            Some(d) => format!("{}/dev/{d}/out/+", self.prefix),
            None => format!("{}/dev/+/out/+", self.prefix),
        }
    }

    /// Input states of one device or (`None`) of all of them.
    pub fn input_filter(&self, device: Option<&Name>) -> String {
        match device {
            Some(d) => format!("{}/dev/{d}/in/+", self.prefix),
            None => format!("{}/dev/+/in/+", self.prefix),
        }
    }

    /// Sensor readings of one device or (`None`) of all of them.
    pub fn sensor_filter(&self, device: Option<&Name>) -> String {
        match device {
            Some(d) => format!("{}/dev/{d}/sensor/+", self.prefix),
            None => format!("{}/dev/+/sensor/+", self.prefix),
        }
    }

    /// Everything devices report, as one filter per kind. Some brokers cap how many retained
    /// messages one subscription delivers (rumqttd 0.20: 100), so a fleet snapshot asks for each
    /// kind separately rather than through one `dev/+/#`.
    pub fn fleet_filters(&self, device: Option<&Name>) -> Vec<String> {
        vec![
            self.status_filter(device),
            self.output_filter(device),
            self.input_filter(device),
            self.sensor_filter(device),
            self.event_filter(device),
        ]
    }

    /// Where controllers publish the marker that ends a retained snapshot (see the CLI's
    /// session). One shared topic: a topic per controller would leave a filter behind on the
    /// broker for every CLI run.
    pub fn sync(&self) -> String {
        format!("{}/ctl/sync", self.prefix)
    }

    /// Events of one device or (`None`) of all of them.
    pub fn event_filter(&self, device: Option<&Name>) -> String {
        match device {
            Some(d) => self.event(d),
            None => format!("{}/dev/+/event", self.prefix),
        }
    }

    /// The command topics a device listens on: its own, each of its groups', the fleet's, then
    /// its plain per-output ones (`cmnd/+`, `cmnd/+/level`), which lie in its own subtree.
    pub fn agent_subscriptions(&self, device: &Name, groups: &[Name]) -> Vec<String> {
        let own = self.command(&Target::Device(device.clone()));
        let mut subs = vec![own.clone()];
        subs.extend(
            groups
                .iter()
                .map(|g| self.command(&Target::Group(g.clone()))),
        );
        subs.push(self.command(&Target::All));
        subs.push(format!("{own}/+"));
        subs.push(format!("{own}/+/level"));
        subs
    }

    /// What follows `<prefix>/` in `s` (a topic or a filter), if `s` lies under the prefix.
    pub fn under_prefix<'a>(&self, s: &'a str) -> Option<&'a str> {
        s.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }

    /// What follows `<prefix>/dev/<device>/` in `s` (a topic or a filter), if `s` lies in that
    /// device's subtree: everything a device publishes, and all it may read besides its
    /// [`agent_subscriptions`](Self::agent_subscriptions). Matching the trailing `/` is what
    /// keeps device `a` out of device `ab`'s topics.
    pub fn device_subtree<'a>(&self, device: &str, s: &'a str) -> Option<&'a str> {
        self.under_prefix(s)?
            .strip_prefix("dev/")?
            .strip_prefix(device)?
            .strip_prefix('/')
    }

    /// Whether `topic` lies in a command space: `<prefix>/dev/<d>/cmnd`,
    /// `<prefix>/group/<g>/cmnd`, `<prefix>/all/cmnd`, or anything below one of them (whatever
    /// the names). Commands are never retained: a stored command would be executed again on every
    /// reconnect, so a broker refuses to store one.
    pub fn is_command_space(&self, topic: &str) -> bool {
        let Some(rest) = self.under_prefix(topic) else {
            return false;
        };
        let mut levels = rest.split('/');
        let cmnd = match levels.next() {
            Some("all") => levels.next(),
            Some("dev" | "group") => levels.nth(1),
            _ => None,
        };
        cmnd == Some("cmnd")
    }

    /// Parses a topic under this prefix; `None` for anything that is not a pifleet topic
    /// (a different prefix, an unknown shape, or a level that is not a valid name).
    pub fn parse(&self, topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let levels: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| -> Option<Name> { Name::new(s).ok() };
        Some(match levels.as_slice() {
            ["all", "cmnd"] => Topic::Command(Target::All),
            ["group", g, "cmnd"] => Topic::Command(Target::Group(name(g)?)),
            ["dev", d, "cmnd"] => Topic::Command(Target::Device(name(d)?)),
            ["dev", d, "cmnd", o] => Topic::PlainCommand {
                device: name(d)?,
                output: name(o)?,
                kind: PlainKind::Switch,
            },
            ["dev", d, "cmnd", o, "level"] => Topic::PlainCommand {
                device: name(d)?,
                output: name(o)?,
                kind: PlainKind::Level,
            },
            ["dev", d, "status"] => Topic::Status { device: name(d)? },
            ["dev", d, "event"] => Topic::Event { device: name(d)? },
            ["dev", d, "out", o] => Topic::Output {
                device: name(d)?,
                output: name(o)?,
            },
            ["dev", d, "in", i] => Topic::Input {
                device: name(d)?,
                input: name(i)?,
            },
            ["dev", d, "sensor", s] => Topic::Sensor {
                device: name(d)?,
                sensor: name(s)?,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn command_spaces_are_recognised_whatever_the_names() {
        let t = Topics::new("home/fleet").unwrap();
        for yes in [
            "home/fleet/all/cmnd",
            "home/fleet/dev/kitchen/cmnd",
            "home/fleet/dev/not a name/cmnd",
            "home/fleet/group/g/cmnd",
            "home/fleet/dev/kitchen/cmnd/led",
        ] {
            assert!(t.is_command_space(yes), "{yes}");
        }
        for no in [
            "home/fleet/dev/kitchen/status",
            "home/fleet/dev/cmnd",
            "home/fleet/all",
            "home/fleetx/all/cmnd",
            "other/all/cmnd",
            "home/fleet/dev/kitchen/out/cmnd",
        ] {
            assert!(!t.is_command_space(no), "{no}");
        }
    }

    #[test]
    fn literal_topics() {
        let t = Topics::default();
        assert_eq!(t.status(&n("kitchen")), "pifleet/dev/kitchen/status");
        assert_eq!(
            t.command(&Target::Device(n("kitchen"))),
            "pifleet/dev/kitchen/cmnd"
        );
        assert_eq!(
            t.command(&Target::Group(n("down"))),
            "pifleet/group/down/cmnd"
        );
        assert_eq!(t.command(&Target::All), "pifleet/all/cmnd");
        assert_eq!(
            t.output(&n("kitchen"), &n("led")),
            "pifleet/dev/kitchen/out/led"
        );
        assert_eq!(
            t.input(&n("kitchen"), &n("button")),
            "pifleet/dev/kitchen/in/button"
        );
        assert_eq!(
            t.sensor(&n("kitchen"), &n("cpu")),
            "pifleet/dev/kitchen/sensor/cpu"
        );
        assert_eq!(t.event(&n("kitchen")), "pifleet/dev/kitchen/event");
        assert_eq!(t.device_filter(None), "pifleet/dev/+/#");
        assert_eq!(
            t.fleet_filters(Some(&n("k"))),
            vec![
                "pifleet/dev/k/status",
                "pifleet/dev/k/out/+",
                "pifleet/dev/k/in/+",
                "pifleet/dev/k/sensor/+",
                "pifleet/dev/k/event"
            ]
        );
        assert_eq!(t.sync(), "pifleet/ctl/sync");
        assert_eq!(
            t.agent_subscriptions(&n("kitchen"), &[n("down")]),
            vec![
                "pifleet/dev/kitchen/cmnd",
                "pifleet/group/down/cmnd",
                "pifleet/all/cmnd",
                "pifleet/dev/kitchen/cmnd/+",
                "pifleet/dev/kitchen/cmnd/+/level"
            ]
        );
        assert_eq!(
            t.plain_command(&n("kitchen"), &n("led"), PlainKind::Switch),
            "pifleet/dev/kitchen/cmnd/led"
        );
        assert_eq!(
            t.plain_command(&n("kitchen"), &n("lamp.1"), PlainKind::Level),
            "pifleet/dev/kitchen/cmnd/lamp.1/level"
        );
    }

    #[test]
    fn every_built_topic_parses_back() {
        let t = Topics::new("home/pifleet").unwrap();
        let (d, o) = (n("kitchen"), n("led"));
        let cases = [
            (t.status(&d), Topic::Status { device: d.clone() }),
            (t.event(&d), Topic::Event { device: d.clone() }),
            (
                t.command(&Target::Device(d.clone())),
                Topic::Command(Target::Device(d.clone())),
            ),
            (
                t.command(&Target::Group(n("g"))),
                Topic::Command(Target::Group(n("g"))),
            ),
            (t.command(&Target::All), Topic::Command(Target::All)),
            (
                t.plain_command(&d, &o, PlainKind::Switch),
                Topic::PlainCommand {
                    device: d.clone(),
                    output: o.clone(),
                    kind: PlainKind::Switch,
                },
            ),
            (
                t.plain_command(&d, &o, PlainKind::Level),
                Topic::PlainCommand {
                    device: d.clone(),
                    output: o.clone(),
                    kind: PlainKind::Level,
                },
            ),
            (
                t.output(&d, &o),
                Topic::Output {
                    device: d.clone(),
                    output: o.clone(),
                },
            ),
            (
                t.input(&d, &o),
                Topic::Input {
                    device: d.clone(),
                    input: o.clone(),
                },
            ),
            (
                t.sensor(&d, &o),
                Topic::Sensor {
                    device: d.clone(),
                    sensor: o.clone(),
                },
            ),
        ];
        for (topic, parsed) in cases {
            assert_eq!(t.parse(&topic), Some(parsed), "{topic}");
        }
    }

    #[test]
    fn foreign_and_malformed_topics_are_not_ours() {
        let t = Topics::default();
        assert_eq!(t.parse("other/dev/kitchen/status"), None);
        assert_eq!(t.parse("pifleetx/dev/kitchen/status"), None);
        assert_eq!(t.parse("pifleet/dev/kitchen/status/extra"), None);
        assert_eq!(t.parse("pifleet/dev/all/status"), None);
        assert_eq!(t.parse("pifleet/dev//status"), None);
        assert_eq!(t.parse("pifleet"), None);
        assert_eq!(t.parse("pifleet/dev/kitchen/cmnd/led/other"), None);
        assert_eq!(t.parse("pifleet/dev/kitchen/cmnd/a b"), None);
    }

    #[test]
    fn prefix_validation() {
        assert!(Topics::new("pifleet").is_ok());
        assert!(Topics::new("home/pifleet").is_ok());
        for bad in ["", "a/+", "#", "a//b", "/a", "a/", "$SYS"] {
            assert!(Topics::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
