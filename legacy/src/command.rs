//! The legacy commands and their exact replies: the LED server's `on`/`off`/`q` and the button
//! server's `go`, plus pifleet's optional extension that names a target (`kitchen on`,
//! `all off`) for shims that front several devices.

use pifleet_proto::Name;

pub const LED_ON: &str = "Led ON.";
pub const LED_OFF: &str = "Led OFF.";
pub const QUIT: &str = "Server ended. Stay rock.";
pub const UNRECOGNIZED: &str = "Unrecognized command.";
pub const PRESSED: &str = "Button pressed";
pub const RELEASED: &str = "Button released";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    On,
    Off,
    /// Read the button.
    Go,
    /// End this client's session.
    Quit,
}

/// Whom a targeted command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressee {
    /// The listener's configured device.
    Default,
    Device(Name),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub who: Addressee,
    pub verb: Verb,
}

/// Parses a frame's text. `None` means `Unrecognized command.`. Surrounding whitespace (a
/// trailing newline from a hand-typed client) is ignored; words are case-sensitive, as in the
/// originals.
pub fn parse(text: &str) -> Option<Request> {
    let verb = |w: &str| match w {
        "on" => Some(Verb::On),
        "off" => Some(Verb::Off),
        "go" => Some(Verb::Go),
        "q" => Some(Verb::Quit),
        _ => None,
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [v] => Some(Request {
            who: Addressee::Default,
            verb: verb(v)?,
        }),
        [target, v] => {
            let verb = verb(v).filter(|v| *v != Verb::Quit)?;
            let who = if *target == "all" {
                Addressee::All
            } else {
                Addressee::Device(Name::new(*target).ok()?)
            };
            Some(Request { who, verb })
        }
        _ => None,
    }
}

pub fn led_reply(on: bool) -> &'static str {
    if on {
        LED_ON
    } else {
        LED_OFF
    }
}

pub fn button_reply(pressed: bool) -> &'static str {
    if pressed {
        PRESSED
    } else {
        RELEASED
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_the_original_commands_and_the_extension() {
        assert_eq!(
            parse("on"),
            Some(Request {
                who: Addressee::Default,
                verb: Verb::On
            })
        );
        assert_eq!(
            parse("off\n"),
            Some(Request {
                who: Addressee::Default,
                verb: Verb::Off
            })
        );
        assert_eq!(
            parse("go"),
            Some(Request {
                who: Addressee::Default,
                verb: Verb::Go
            })
        );
        assert_eq!(
            parse("q"),
            Some(Request {
                who: Addressee::Default,
                verb: Verb::Quit
            })
        );
        assert_eq!(
            parse("kitchen on"),
            Some(Request {
                who: Addressee::Device(Name::new("kitchen").unwrap()),
                verb: Verb::On
            })
        );
        assert_eq!(
            parse("all off"),
            Some(Request {
                who: Addressee::All,
                verb: Verb::Off
            })
        );
        for bad in ["ON", "", "blink", "a/b on", "kitchen q", "a b c"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
