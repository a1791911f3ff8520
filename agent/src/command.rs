//! Commands from the broker: parsing and validation (a refusal still names the command when its
//! id is readable, so that the sender stops waiting), and the ring of recently seen command ids
//! that makes a QoS 1 redelivery harmless.

use std::collections::VecDeque;

use pifleet_proto::{Command, CommandId};

/// How many recent command ids are remembered to ignore QoS 1 redeliveries (a duplicated
/// `toggle` must not toggle twice).
pub const RECENT_COMMANDS: usize = 64;

/// A payload that is no valid command: the `bad_command` event to send about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCommand {
    pub message: String,
    /// The id, when the payload has a readable one.
    pub id: Option<CommandId>,
}

/// Reads a command that arrived on `topic`.
pub fn parse(topic: &str, payload: &[u8]) -> Result<Command, BadCommand> {
    let cmd: Command = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            // Still name the command when the id is readable, so the sender stops waiting.
            let id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(|s| CommandId(s.to_string())));
            let shown = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
            return Err(BadCommand {
                message: format!("refused command on {topic}: {e}: {shown:?}"),
                id,
            });
        }
    };
    if !cmd.id.is_valid() {
        return Err(BadCommand {
            message: format!("refused command on {topic}: the id must be 1 to 64 characters"),
            id: None,
        });
    }
    Ok(cmd)
}

/// The last [`RECENT_COMMANDS`] command ids, oldest first.
#[derive(Debug, Clone)]
pub struct RecentCommands {
    ids: VecDeque<CommandId>,
    capacity: usize,
}

impl Default for RecentCommands {
    fn default() -> Self {
        RecentCommands {
            ids: VecDeque::with_capacity(RECENT_COMMANDS),
            capacity: RECENT_COMMANDS,
        }
    }
}

impl RecentCommands {
    /// Remembers `id` and says whether it is new; false for an id among the last
    /// [`RECENT_COMMANDS`], i.e. a redelivery to ignore. Remembering the 65th forgets the first.
    pub fn first_time(&mut self, id: &CommandId) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.ids.len() == self.capacity {
            self.ids.pop_front();
        }
        self.ids.push_back(id.clone());
        true
    }
}

#[cfg(test)]
mod test {
    use pifleet_proto::{Action, Name};

    use super::*;

    fn id(s: &str) -> CommandId {
        CommandId(s.to_string())
    }

    const TOPIC: &str = "pifleet/dev/k/cmnd";

    #[test]
    fn a_command_with_an_id_an_action_and_an_output_parses() {
        let cmd = parse(TOPIC, br#"{"id":"c1","action":"toggle","output":"relay"}"#).unwrap();
        assert_eq!(
            cmd,
            Command {
                id: id("c1"),
                action: Action::Toggle,
                output: Some(Name::new("relay").unwrap()),
                value: None,
                on_time: None,
            }
        );
    }

    #[test]
    fn bad_json_is_refused_with_the_payload_shown_and_no_id() {
        assert_eq!(
            parse(TOPIC, b"switch it on"),
            Err(BadCommand {
                message: "refused command on pifleet/dev/k/cmnd: expected value at line 1 \
                          column 1: \"switch it on\""
                    .into(),
                id: None,
            })
        );
    }

    #[test]
    fn an_unknown_action_is_refused_naming_the_readable_id() {
        let bad = parse(TOPIC, br#"{"id":"c2","action":"blink"}"#).unwrap_err();
        assert_eq!(bad.id, Some(id("c2")));
        assert!(
            bad.message.starts_with(
                "refused command on pifleet/dev/k/cmnd: unknown variant `blink`, expected one of"
            ),
            "{}",
            bad.message
        );
    }

    #[test]
    fn a_refusal_shows_at_most_200_bytes_of_the_payload() {
        let long = format!("{{\"id\":\"c3\",\"action\":\"{}\"}}", "x".repeat(500));
        let bad = parse(TOPIC, long.as_bytes()).unwrap_err();
        let shown = format!("{:?}", &long[..200]);
        assert!(
            bad.message.ends_with(&format!(": {shown}")),
            "{}",
            bad.message
        );
    }

    #[test]
    fn an_empty_or_overlong_id_is_refused_without_naming_it() {
        let refused = BadCommand {
            message: "refused command on pifleet/dev/k/cmnd: the id must be 1 to 64 characters"
                .into(),
            id: None,
        };
        assert_eq!(
            parse(TOPIC, br#"{"id":"","action":"on"}"#),
            Err(refused.clone())
        );
        let long = format!(r#"{{"id":"{}","action":"on"}}"#, "i".repeat(65));
        assert_eq!(parse(TOPIC, long.as_bytes()), Err(refused));
        let longest = format!(r#"{{"id":"{}","action":"on"}}"#, "i".repeat(64));
        assert!(parse(TOPIC, longest.as_bytes()).is_ok());
    }

    #[test]
    fn a_repeated_command_id_is_not_new() {
        let mut recent = RecentCommands::default();
        assert!(recent.first_time(&id("a")));
        assert!(recent.first_time(&id("b")));
        assert!(!recent.first_time(&id("a")));
        assert!(!recent.first_time(&id("b")));
    }

    #[test]
    fn the_ring_forgets_the_oldest_id_beyond_its_size() {
        let mut recent = RecentCommands::default();
        for i in 0..RECENT_COMMANDS {
            assert!(recent.first_time(&id(&format!("c{i}"))));
        }
        // Full: all 64 are still known.
        assert!(!recent.first_time(&id("c0")));
        assert!(!recent.first_time(&id(&format!("c{}", RECENT_COMMANDS - 1))));
        // The 65th pushes out the oldest, c0, and only it.
        assert!(recent.first_time(&id("c64")));
        assert!(recent.first_time(&id("c0")), "c0 was forgotten");
        // Taking c0 back in pushed out c1, the next oldest; c2 is still known.
        assert!(!recent.first_time(&id("c2")));
        assert!(recent.first_time(&id("c1")));
    }
}
