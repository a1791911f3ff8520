//! Names of devices, groups, outputs, inputs and sensors.
//!
//! Every name becomes one MQTT topic level, so a name with `/`, `+` or `#` would silently change
//! what a subscription matches, and one starting with `$` would land in the broker's system tree.
//! Rather than escape such names we refuse them up front with a sentence that says why; the
//! allowed alphabet (ASCII letters, digits, `-`, `_`, `.`) is also safe in file names, shell
//! arguments and Home Assistant entity ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest name accepted. Topics stay short, and a fleet table stays readable.
pub const MAX_NAME_LEN: usize = 64;

/// Words that mean something else where names are used: `all` addresses the whole fleet on the
/// command line and in the legacy shim, `group`/`dev` are topic levels of their own.
pub const RESERVED: &[&str] = &["all", "group", "dev"];

/// A validated name: safe to use as a single topic level.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("name {0:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    #[error(
        "name {name:?} contains {ch:?}; use only letters, digits, '-', '_' and '.' \
         (MQTT treats '/', '+' and '#' specially)"
    )]
    BadChar { name: String, ch: char },
    #[error("name {0:?} may not start with '.' or '-'")]
    BadStart(String),
    #[error("name {0:?} is reserved (it addresses the whole fleet or a topic level)")]
    Reserved(String),
}

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.chars().count() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s));
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::BadChar { name: s, ch });
        }
        if s.starts_with(['.', '-']) {
            return Err(NameError::BadStart(s));
        }
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s)) {
            return Err(NameError::Reserved(s));
        }
        Ok(Name(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["kitchen", "pi-4", "garage_door", "led.1", "A9"] {
            assert_eq!(Name::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_topic_metacharacters_with_a_reason() {
        let err = Name::new("a/b").unwrap_err();
        assert_eq!(
            err,
            NameError::BadChar {
                name: "a/b".into(),
                ch: '/'
            }
        );
        assert!(err.to_string().contains("'/', '+' and '#'"));
        assert!(matches!(
            Name::new("x+"),
            Err(NameError::BadChar { ch: '+', .. })
        ));
        assert!(matches!(
            Name::new("#"),
            Err(NameError::BadChar { ch: '#', .. })
        ));
        assert!(matches!(
            Name::new("a b"),
            Err(NameError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Name::new("küche"),
            Err(NameError::BadChar { ch: 'ü', .. })
        ));
    }

    #[test]
    fn refuses_empty_long_reserved_and_bad_starts() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(matches!(
            Name::new("x".repeat(65)),
            Err(NameError::TooLong(_))
        ));
        assert!(Name::new("x".repeat(64)).is_ok());
        assert!(matches!(Name::new("all"), Err(NameError::Reserved(_))));
        assert!(matches!(Name::new("ALL"), Err(NameError::Reserved(_))));
        assert!(matches!(Name::new("$SYS"), Err(NameError::BadChar { .. })));
        assert!(matches!(Name::new("-x"), Err(NameError::BadStart(_))));
    }

    #[test]
    fn deserializing_validates() {
        let ok: Name = serde_json::from_str("\"kitchen\"").unwrap();
        assert_eq!(ok.as_str(), "kitchen");
        let err = serde_json::from_str::<Name>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("contains '/'"), "{err}");
    }
}
