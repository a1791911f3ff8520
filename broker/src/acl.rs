//! What an authenticated identity may publish and subscribe to. The engine asks on every
//! PUBLISH and for every SUBSCRIBE filter.
//!
//! The fleet's own rules follow from the identity alone, asked of the topic layout itself
//! (`pifleet_proto::Topics`: a device's subtree, and the same list of command topics an agent
//! subscribes to), so the rules and the agents cannot drift apart:
//! - a device publishes only under `<prefix>/dev/<itself>/`, and subscribes only to filters that
//!   lie entirely inside that subtree, plus `<prefix>/group/<g>/cmnd` for each of its groups and
//!   `<prefix>/all/cmnd`: it can neither command nor watch another device;
//! - a controller publishes and subscribes anywhere under `<prefix>/`, and under any extra
//!   controller prefix the broker adds ([`Acl::allow_controllers_under`]: Home Assistant's
//!   discovery prefix while `[homeassistant]` is on);
//! - nobody reaches topics outside the prefix, `$SYS` included.
//!
//! An optional extra ACL file adds rules for topics outside the fleet's own:
//!
//! ```toml
//! [[allow]]
//! who = "role:device"           # a name, "role:device", "role:controller" or "*"
//! publish = ["home/%u/#"]       # %u: the identity's name
//! subscribe = ["weather/#"]
//! ```
//!
//! A publish to topic T is allowed if some pattern matches T. A subscription to filter F is
//! allowed only if a pattern *covers* F, i.e. every topic F can match also matches the pattern:
//! with the rule `home/%u/#`, device `kitchen` may subscribe to `home/kitchen/+` but not to
//! `home/+/#`, although that filter, read as a topic, "matches" the rule.

use std::path::Path;

use pifleet_proto::filter::{valid_filter, valid_topic};
use pifleet_proto::{Name, Topics};
use serde::Deserialize;

use crate::credentials::{Identity, Role};

/// Why the extra ACL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("ACL file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{0}")]
    Prefix(#[from] pifleet_proto::topic::PrefixError),
}

/// The authorization rules of one broker. `PartialEq` tells a reload whether the rules changed
/// (and so whether held subscriptions must be checked again).
#[derive(Debug, Clone, PartialEq)]
pub struct Acl {
    topics: Topics,
    extra: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
enum Subject {
    Name(String),
    Role(Role),
    Anyone,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    who: Subject,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    allow: Vec<RuleRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRecord {
    who: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

impl Acl {
    /// The fleet's rules under `prefix`, plus the rules of the `extra` file if given.
    pub fn new(prefix: &str, extra: Option<&Path>) -> Result<Acl, AclError> {
        let mut acl = Acl {
            topics: Topics::new(prefix)?,
            extra: Vec::new(),
        };
        if let Some(path) = extra {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
                path: origin.clone(),
                source,
            })?;
            acl.extra = parse_rules(&text, &origin)?;
        }
        Ok(acl)
    }

    /// Like [`new`](Self::new) with the extra rules given as TOML text (`origin` names it in
    /// errors).
    pub fn from_toml_str(prefix: &str, text: &str, origin: &str) -> Result<Acl, AclError> {
        Ok(Acl {
            topics: Topics::new(prefix)?,
            extra: parse_rules(text, origin)?,
        })
    }

    /// Lets controllers publish and subscribe under `prefix/` too (e.g. `homeassistant`, for
    /// the discovery service and Home Assistant itself, which log in as controllers).
    pub fn allow_controllers_under(&mut self, prefix: &str) {
        let pattern = format!("{}/#", prefix.trim_end_matches('/'));
        self.extra.push(Rule {
            who: Subject::Role(Role::Controller),
            publish: vec![pattern.clone()],
            subscribe: vec![pattern],
        });
    }

    /// Whether `who` may publish to the topic name `topic` (no wildcards). Allocation-free.
    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        if !valid_topic(topic) || !safe_name(&who.name) {
            return false;
        }
        let own = match who.role {
            Role::Device => self
                .topics
                .device_subtree(&who.name, topic)
                .is_some_and(|rest| !rest.is_empty()),
            Role::Controller => self
                .topics
                .under_prefix(topic)
                .is_some_and(|r| !r.is_empty()),
        };
        own || self
            .rules_for(who)
            .any(|r| r.publish.iter().any(|p| matches(p, topic, &who.name)))
    }

    /// Whether `who` may subscribe to `filter`: only if every topic the filter can match is
    /// one `who` may read.
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        if !valid_filter(filter) || !safe_name(&who.name) {
            return false;
        }
        let own = match who.role {
            Role::Device => self.device_may_subscribe(who, filter),
            // `<prefix>/#` covers exactly what a controller may read.
            Role::Controller => self
                .topics
                .under_prefix(filter)
                .is_some_and(|r| !r.is_empty()),
        };
        own || self
            .rules_for(who)
            .any(|r| r.subscribe.iter().any(|p| covers(p, filter, &who.name)))
    }

    /// A filter inside the device's own subtree, or exactly one of the command topics its agent
    /// subscribes to (its own, its groups', the fleet's).
    fn device_may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        if self
            .topics
            .device_subtree(&who.name, filter)
            .is_some_and(|rest| !rest.is_empty())
        {
            return true;
        }
        // Names, so a group called `+` (impossible from the credentials file) cannot become a
        // wildcard subscription.
        let (Ok(device), Ok(groups)) = (
            Name::new(who.name.as_str()),
            who.groups
                .iter()
                .map(|g| Name::new(g.as_str()))
                .collect::<Result<Vec<_>, _>>(),
        ) else {
            return false;
        };
        self.topics
            .agent_subscriptions(&device, &groups)
            .iter()
            .any(|f| f == filter)
    }

    fn rules_for<'a>(&'a self, who: &'a Identity) -> impl Iterator<Item = &'a Rule> + 'a {
        self.extra.iter().filter(move |r| match &r.who {
            Subject::Anyone => true,
            Subject::Role(role) => *role == who.role,
            Subject::Name(n) => *n == who.name,
        })
    }
}

fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, AclError> {
    let invalid = |message: String| AclError::Invalid {
        path: origin.to_string(),
        message,
    };
    let file: AclFile =
        toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
    let mut rules = Vec::with_capacity(file.allow.len());
    for (i, r) in file.allow.into_iter().enumerate() {
        let at = format!("[[allow]] #{} (who = {:?})", i + 1, r.who);
        let who = match r.who.as_str() {
            "*" => Subject::Anyone,
            "role:device" => Subject::Role(Role::Device),
            "role:controller" => Subject::Role(Role::Controller),
            n if n.starts_with("role:") => {
                return Err(invalid(format!(
                    "{at}: unknown role; use \"role:device\" or \"role:controller\""
                )))
            }
            n => Subject::Name(
                pifleet_proto::Name::new(n)
                    .map_err(|e| invalid(format!("{at}: {e}")))?
                    .to_string(),
            ),
        };
        for p in r.publish.iter().chain(&r.subscribe) {
            check_pattern(p).map_err(|m| invalid(format!("{at}: pattern {p:?}: {m}")))?;
        }
        rules.push(Rule {
            who,
            publish: r.publish,
            subscribe: r.subscribe,
        });
    }
    Ok(rules)
}

/// A pattern is an MQTT filter whose literal levels may contain `%u`.
fn check_pattern(p: &str) -> Result<(), String> {
    if !valid_filter(p) {
        return Err(
            "not a valid MQTT filter ('+' and '#' must each be a whole level, '#' the last)".into(),
        );
    }
    let mut rest = p;
    while let Some(i) = rest.find('%') {
        if !rest[i + 1..].starts_with('u') {
            return Err("'%' must be followed by 'u' (the identity's name)".into());
        }
        rest = &rest[i + 2..];
    }
    Ok(())
}

/// Whether a name may be spliced into topics. Names come from the credentials file, where they
/// are validated; this re-checks what matters here (cheaply, on every call) so that a name with
/// a wildcard or a level separator can never widen a rule or reach another device's subtree,
/// whatever path it took to get here.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('$') && !name.contains(['/', '+', '#', '\0'])
}

/// Whether a literal pattern level, with `%u` standing for `name`, equals `level`.
fn literal_eq(pattern: &str, level: &str, name: &str) -> bool {
    let mut pieces = pattern.split("%u");
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = level.strip_prefix(first) else {
        return false;
    };
    for piece in pieces {
        match rest.strip_prefix(name).and_then(|r| r.strip_prefix(piece)) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// MQTT matching of a topic name against a pattern (a filter with `%u`). Wildcards in the
/// first level never match a `$` topic, as in MQTT, so `#` does not grant `$SYS`.
fn matches(pattern: &str, topic: &str, name: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    let mut first = true;
    loop {
        match (p.next(), t.next()) {
            (Some("#"), tl) => return !(first && tl.is_some_and(|l| l.starts_with('$'))),
            (Some("+"), Some(tl)) => {
                if first && tl.starts_with('$') {
                    return false;
                }
            }
            (Some(pl), Some(tl)) => {
                if !literal_eq(pl, tl, name) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether every topic matching `filter` also matches `pattern`, level by level: `#` in the
/// pattern covers anything from there on, `+` covers a literal or `+` but not `#`, a literal
/// covers only the same literal.
fn covers(pattern: &str, filter: &str, name: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    let mut first = true;
    loop {
        match (p.next(), f.next()) {
            // A filter starting with a wildcard matches no `$` topic, and a pattern starting
            // with one matches none either, so only a `$` filter level needs care.
            (Some("#"), fl) => return !(first && fl.is_some_and(|l| l.starts_with('$'))),
            (Some("+"), Some(fl)) => {
                if fl == "#" || (first && fl.starts_with('$')) {
                    return false;
                }
            }
            (Some(pl), Some(fl)) => {
                if fl == "+" || fl == "#" || !literal_eq(pl, fl, name) {
                    return false;
                }
            }
            (None, None) => return true,
            // `a/#` also matches `a`, and `a` is not covered by a longer pattern unless that
            // pattern goes on with `#` alone (handled above); a filter longer than the pattern
            // reaches topics the pattern does not.
            _ => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn device(name: &str, groups: &[&str]) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Device,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn controller(name: &str) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Controller,
            groups: vec![],
        }
    }

    fn fleet() -> Acl {
        Acl::new("pifleet", None).unwrap()
    }

    #[test]
    fn an_extra_controller_prefix_admits_controllers_only() {
        let mut acl = fleet();
        let ha = controller("ha");
        let pi = device("kitchen", &[]);
        assert!(!acl.may_publish(&ha, "homeassistant/device/pifleet_kitchen/config"));
        acl.allow_controllers_under("homeassistant");
        assert!(acl.may_publish(&ha, "homeassistant/device/pifleet_kitchen/config"));
        assert!(acl.may_subscribe(&ha, "homeassistant/status"));
        assert!(acl.may_subscribe(&ha, "homeassistant/#"));
        assert!(!acl.may_publish(&pi, "homeassistant/device/pifleet_kitchen/config"));
        assert!(!acl.may_subscribe(&pi, "homeassistant/#"));
        assert!(!acl.may_publish(&ha, "homeassistantx/a"));
    }

    #[test]
    fn a_device_publishes_only_under_its_own_subtree() {
        let acl = fleet();
        let a = device("a", &["down"]);
        for ok in [
            "pifleet/dev/a/status",
            "pifleet/dev/a/out/led",
            "pifleet/dev/a/in/button",
            "pifleet/dev/a/sensor/cpu",
            "pifleet/dev/a/event",
            "pifleet/dev/a/deeper/still/more",
        ] {
            assert!(acl.may_publish(&a, ok), "{ok}");
        }
        for no in [
            "pifleet/dev/b/cmnd",
            "pifleet/dev/b/status",
            "pifleet/dev/ab/status",
            "pifleet/dev/a",
            "pifleet/dev/a/",
            "pifleet/group/down/cmnd",
            "pifleet/all/cmnd",
            "pifleet/ctl/sync",
            "pifleetx/dev/a/status",
            "other/dev/a/status",
            "$SYS/broker/uptime",
            "pifleet/dev/a/+",
            "pifleet/dev/a/#",
            "",
        ] {
            assert!(!acl.may_publish(&a, no), "{no}");
        }
    }

    #[test]
    fn a_device_subscribes_to_its_own_topics_groups_and_the_fleet() {
        let acl = fleet();
        let a = device("a", &["down", "lights"]);
        for ok in [
            "pifleet/dev/a/cmnd",
            "pifleet/dev/a/status",
            "pifleet/dev/a/#",
            "pifleet/dev/a/out/+",
            "pifleet/group/down/cmnd",
            "pifleet/group/lights/cmnd",
            "pifleet/all/cmnd",
        ] {
            assert!(acl.may_subscribe(&a, ok), "{ok}");
        }
        for no in [
            "pifleet/dev/b/cmnd",
            "pifleet/dev/b/#",
            "pifleet/dev/ab/cmnd",
            "pifleet/dev/+/cmnd",
            "pifleet/dev/+/#",
            "pifleet/dev/#",
            "pifleet/dev/a",
            "pifleet/group/up/cmnd",
            "pifleet/group/+/cmnd",
            "pifleet/group/down/#",
            "pifleet/group/down/cmnd/x",
            "pifleet/all/#",
            "pifleet/+/cmnd",
            "pifleet/#",
            "pifleet/ctl/sync",
            "#",
            "+/dev/a/cmnd",
            "$SYS/#",
            "pifleet/dev/a/#/x",
            "pifleet/dev/a/c+",
        ] {
            assert!(!acl.may_subscribe(&a, no), "{no}");
        }
    }

    #[test]
    fn a_name_that_prefixes_another_gets_nothing_of_it() {
        let acl = fleet();
        let a = device("a", &["g"]);
        assert!(!acl.may_publish(&a, "pifleet/dev/ab/status"));
        assert!(!acl.may_subscribe(&a, "pifleet/dev/ab/cmnd"));
        assert!(!acl.may_subscribe(&a, "pifleet/group/gh/cmnd"));
        let ab = device("ab", &[]);
        assert!(!acl.may_publish(&ab, "pifleet/dev/a/status"));
        assert!(acl.may_publish(&ab, "pifleet/dev/ab/status"));
    }

    #[test]
    fn a_controller_has_the_whole_prefix_and_nothing_else() {
        let acl = fleet();
        let c = controller("laptop");
        for ok in [
            "pifleet/dev/+/status",
            "pifleet/dev/+/out/+",
            "pifleet/#",
            "pifleet/dev/kitchen/#",
            "pifleet/ctl/sync",
        ] {
            assert!(acl.may_subscribe(&c, ok), "{ok}");
        }
        for no in [
            "#",
            "+/dev/+/status",
            "+/#",
            "pifleetx/#",
            "$SYS/#",
            "other/x",
        ] {
            assert!(!acl.may_subscribe(&c, no), "{no}");
        }
        for ok in [
            "pifleet/dev/kitchen/cmnd",
            "pifleet/group/down/cmnd",
            "pifleet/all/cmnd",
            "pifleet/ctl/sync",
        ] {
            assert!(acl.may_publish(&c, ok), "{ok}");
        }
        for no in [
            "other/topic",
            "pifleet",
            "pifleetx/a",
            "$SYS/x",
            "pifleet/+",
        ] {
            assert!(!acl.may_publish(&c, no), "{no}");
        }
    }

    #[test]
    fn a_multi_level_prefix_works() {
        let acl = Acl::new("home/pifleet", None).unwrap();
        let a = device("a", &[]);
        assert!(acl.may_publish(&a, "home/pifleet/dev/a/status"));
        assert!(!acl.may_publish(&a, "pifleet/dev/a/status"));
        assert!(acl.may_subscribe(&controller("c"), "home/pifleet/#"));
        assert!(!acl.may_subscribe(&controller("c"), "home/#"));
        assert!(Acl::new("a/+", None).is_err());
    }

    const EXTRA: &str = r#"
        [[allow]]
        who = "role:device"
        publish = ["home/%u/#", "log/%u-out"]
        subscribe = ["weather/#", "home/%u/+/set"]

        [[allow]]
        who = "kitchen"
        subscribe = ["garden/+/temp"]

        [[allow]]
        who = "role:controller"
        subscribe = ["$SYS/#", "home/#"]

        [[allow]]
        who = "*"
        publish = ["hello"]
    "#;

    #[test]
    fn extra_rules_with_names() {
        let acl = Acl::from_toml_str("pifleet", EXTRA, "extra").unwrap();
        let k = device("kitchen", &[]);
        let g = device("garage", &[]);
        let c = controller("laptop");
        assert!(acl.may_publish(&k, "home/kitchen/light"));
        assert!(acl.may_publish(&k, "home/kitchen"));
        assert!(acl.may_publish(&k, "log/kitchen-out"));
        assert!(!acl.may_publish(&k, "log/garage-out"));
        assert!(!acl.may_publish(&k, "home/garage/light"));
        assert!(!acl.may_publish(&k, "home/kitchenx/light"));
        assert!(acl.may_publish(&k, "hello") && acl.may_publish(&c, "hello"));
        assert!(!acl.may_publish(&c, "home/laptop/x"));

        assert!(acl.may_subscribe(&k, "weather/#"));
        assert!(acl.may_subscribe(&k, "weather/+/wind"));
        assert!(acl.may_subscribe(&k, "home/kitchen/+/set"));
        assert!(acl.may_subscribe(&k, "home/kitchen/door/set"));
        assert!(!acl.may_subscribe(&k, "home/+/door/set"));
        assert!(!acl.may_subscribe(&k, "home/kitchen/#"));
        // `weather/#` matches `weather` itself too, as in MQTT.
        assert!(acl.may_subscribe(&k, "weather"));
        assert!(!acl.may_subscribe(&k, "weatherx/#"));
        assert!(acl.may_subscribe(&k, "garden/+/temp"));
        assert!(!acl.may_subscribe(&g, "garden/+/temp"));
        assert!(!acl.may_subscribe(&k, "garden/#"));

        // `$SYS` only because a rule says so, and only for controllers.
        assert!(acl.may_subscribe(&c, "$SYS/#"));
        assert!(acl.may_subscribe(&c, "$SYS/broker/+"));
        assert!(!acl.may_subscribe(&k, "$SYS/#"));
        assert!(acl.may_subscribe(&c, "home/#"));
        assert!(!acl.may_subscribe(&c, "#"));
    }

    #[test]
    fn a_name_with_wildcards_never_widens_a_rule() {
        let acl = Acl::from_toml_str("pifleet", EXTRA, "extra").unwrap();
        // Such names cannot come out of the credentials file; the ACL refuses them anyway.
        for bad in ["+", "#", "a/b", "", "$SYS"] {
            let d = device(bad, &[]);
            assert!(!acl.may_publish(&d, &format!("home/{bad}/x")), "{bad:?}");
            assert!(!acl.may_subscribe(&d, "home/x/+/set"), "{bad:?}");
            assert!(!acl.may_subscribe(&d, "home/+/+/set"), "{bad:?}");
            assert!(
                !acl.may_subscribe(&d, &format!("pifleet/dev/{bad}/#")),
                "{bad:?}"
            );
            assert!(!acl.may_subscribe(&d, "weather/#"), "{bad:?}");
        }
        let d = device("a", &["+", "#"]);
        assert!(!acl.may_subscribe(&d, "pifleet/group/+/cmnd"));
        assert!(!acl.may_subscribe(&d, "pifleet/group/#/cmnd"));
    }

    #[test]
    fn bad_extra_files_are_refused_with_the_reason() {
        for (text, needle) in [
            ("[[allow]]\nwho = \"role:admin\"\n", "unknown role"),
            ("[[allow]]\nwho = \"a/b\"\n", "contains '/'"),
            (
                "[[allow]]\nwho = \"*\"\npublish = [\"a/#/b\"]\n",
                "valid MQTT filter",
            ),
            (
                "[[allow]]\nwho = \"*\"\npublish = [\"a/b+\"]\n",
                "valid MQTT filter",
            ),
            ("[[allow]]\nwho = \"*\"\npublish = [\"a/%c\"]\n", "'%'"),
            (
                "[[allow]]\nwho = \"*\"\npublish = [\"\"]\n",
                "valid MQTT filter",
            ),
            ("[[allow]]\nwho = \"*\"\npublsh = [\"a\"]\n", "publsh"),
        ] {
            let e = Acl::from_toml_str("pifleet", text, "acl.toml").unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
            assert!(e.to_string().contains("acl.toml"), "{e}");
        }
        let e = Acl::new("pifleet", Some(Path::new("/nonexistent/acl.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/acl.toml"), "{e}");
    }

    #[test]
    fn the_extra_file_is_read_from_disk() {
        let dir = crate::credentials::test::temp_dir("acl");
        let path = dir.path().join("acl.toml");
        std::fs::write(&path, EXTRA).unwrap();
        let acl = Acl::new("pifleet", Some(&path)).unwrap();
        assert!(acl.may_subscribe(&device("kitchen", &[]), "weather/#"));
    }

    #[test]
    fn matching_follows_mqtt() {
        let m = |p: &str, t: &str| matches(p, t, "me");
        assert!(m("#", "a/b"));
        assert!(m("a/#", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(m("a/+/c", "a/b/c"));
        assert!(!m("a/+/c", "a/b/d"));
        assert!(!m("a/+", "a/b/c"));
        assert!(m("+/+", "/x"));
        assert!(m("x/%u/y", "x/me/y"));
        assert!(m("x/p-%u-%u", "x/p-me-me"));
        assert!(!m("x/%u", "x/%u"));
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/x", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn covering_is_stricter_than_matching() {
        let c = |p: &str, f: &str| covers(p, f, "me");
        assert!(c("#", "#"));
        assert!(c("#", "a/+/#"));
        assert!(c("a/#", "a"));
        assert!(c("a/#", "a/#"));
        assert!(c("a/+", "a/+"));
        assert!(c("a/+", "a/b"));
        assert!(!c("a/+", "a/#"));
        assert!(!c("a/+", "a/b/c"));
        assert!(!c("a/b", "a/+"));
        assert!(!c("a/b", "a/#"));
        assert!(!c("a/b/#", "a"));
        assert!(!c("a/b/c", "a/b"));
        assert!(c("u/%u/#", "u/me/+"));
        assert!(!c("u/%u/#", "u/+/x"));
        assert!(!c("#", "$SYS/#"));
        assert!(!c("+/#", "$SYS/x"));
        assert!(c("$SYS/#", "$SYS/+"));
    }
}
