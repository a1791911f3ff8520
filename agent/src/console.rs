//! The simulator console: with the `sim` GPIO backend, lines typed on the agent's standard input
//! press and release simulated buttons and show the simulated LEDs. Tests drive agents the same
//! way a newcomer does.
//!
//! ```text
//! press [input]     release [input]     click [input]     show     help
//! ```

use pifleet_proto::Name;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::handle::AgentHandle;

pub const HELP: &str = "commands: press [input] | release [input] | click [input] | show | help";

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// Drive an input active (`true`) or inactive; `None` is the first input.
    Drive(Option<Name>, bool),
    /// Press and release.
    Click(Option<Name>),
    Show,
    Help,
}

/// Parses one line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<ConsoleCommand>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let name = |w: Option<&&str>| -> Result<Option<Name>, String> {
        w.map(|w| Name::new(*w).map_err(|e| e.to_string()))
            .transpose()
    };
    let cmd = match words.as_slice() {
        [] => return Ok(None),
        ["press", rest @ ..] if rest.len() <= 1 => ConsoleCommand::Drive(name(rest.first())?, true),
        ["release", rest @ ..] if rest.len() <= 1 => {
            ConsoleCommand::Drive(name(rest.first())?, false)
        }
        ["click", rest @ ..] if rest.len() <= 1 => ConsoleCommand::Click(name(rest.first())?),
        ["show"] => ConsoleCommand::Show,
        ["help"] | ["?"] => ConsoleCommand::Help,
        _ => return Err(format!("unknown command {line:?}; {HELP}")),
    };
    Ok(Some(cmd))
}

/// Executes one command against an agent, writing the answer to `out`.
pub async fn execute(
    handle: &AgentHandle,
    cmd: ConsoleCommand,
    label: &str,
    out: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<()> {
    let text = match cmd {
        ConsoleCommand::Help => HELP.to_string(),
        ConsoleCommand::Show => match handle.snapshot().await {
            Some(s) => {
                let fmt = |v: &[(Name, bool)], on: &str, off: &str| {
                    v.iter()
                        .map(|(n, b)| format!("{n}={}", if *b { on } else { off }))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                format!(
                    "{label}outputs: {} | inputs: {} | broker: {}",
                    fmt(&s.outputs, "on", "off"),
                    fmt(&s.inputs, "pressed", "released"),
                    if s.connected {
                        "connected"
                    } else {
                        "disconnected"
                    }
                )
            }
            None => "the agent has stopped".to_string(),
        },
        ConsoleCommand::Drive(input, active) => drive(handle, input, active, label).await,
        ConsoleCommand::Click(input) => {
            let first = drive(handle, input.clone(), true, label).await;
            if first.ends_with("pressed") {
                let second = drive(handle, input, false, label).await;
                format!("{first}\n{second}")
            } else {
                first
            }
        }
    };
    out.write_all(text.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await
}

async fn drive(handle: &AgentHandle, input: Option<Name>, active: bool, label: &str) -> String {
    let input = match input {
        Some(n) => n,
        None => match handle
            .snapshot()
            .await
            .and_then(|s| s.inputs.first().cloned())
        {
            Some((n, _)) => n,
            None => return "this device has no inputs".to_string(),
        },
    };
    match handle.drive_input(input.clone(), active).await {
        Ok(()) => format!(
            "{label}{input} {}",
            if active { "pressed" } else { "released" }
        ),
        Err(e) => format!("{label}{e}"),
    }
}

/// Reads commands from standard input until it closes.
pub async fn run_stdin(handle: AgentHandle) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let result = match parse(&line) {
            Ok(Some(cmd)) => execute(&handle, cmd, "", &mut out).await,
            Ok(None) => Ok(()),
            Err(e) => out.write_all(format!("{e}\n").as_bytes()).await,
        };
        if result.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_console_lines() {
        assert_eq!(parse("  ").unwrap(), None);
        assert_eq!(
            parse("press").unwrap(),
            Some(ConsoleCommand::Drive(None, true))
        );
        assert_eq!(
            parse("release button").unwrap(),
            Some(ConsoleCommand::Drive(
                Some(Name::new("button").unwrap()),
                false
            ))
        );
        assert_eq!(parse("show").unwrap(), Some(ConsoleCommand::Show));
        assert!(parse("press a b").is_err());
        assert!(parse("press a/b").unwrap_err().contains("'/'"));
        assert!(parse("explode").unwrap_err().contains("commands:"));
    }
}
