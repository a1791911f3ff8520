//! `pifleet`, the controller CLI: switch outputs with confirmed results, show the fleet, watch
//! events. Library first so tests and other tools can call the same code.
//!
//! Layout:
//! - [`cli`]: argument parsing (clap), nothing else.
//! - [`cmd`]: one module per subcommand (`switch`, `status`, `watch`, `history`, `record`),
//!   each with an `exec`.
//! - [`session`]: the MQTT session: fail-fast connect and the retained-snapshot handshake.
//! - [`table`]: human tables. JSON output uses `pifleet_proto::report`.
//! - [`error`]: errors and the documented exit codes.

pub mod cli;
pub mod cmd;
pub mod error;
pub mod session;
pub mod table;

use std::io::Write;

use cli::{Cli, Command};
use error::{CliError, EXIT_USAGE};
use pifleet_proto::Topics;

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let topics = match Topics::new(&cli.global.prefix) {
        Ok(t) => t,
        Err(e) => return report(CliError::Usage(e.to_string())).max(EXIT_USAGE),
    };
    let result = match &cli.command {
        Command::On(a) => {
            cmd::switch::exec(&cli.global, topics, pifleet_proto::Action::On, None, a).await
        }
        Command::Off(a) => {
            cmd::switch::exec(&cli.global, topics, pifleet_proto::Action::Off, None, a).await
        }
        Command::Toggle(a) => {
            cmd::switch::exec(&cli.global, topics, pifleet_proto::Action::Toggle, None, a).await
        }
        Command::Set(a) => {
            let set = pifleet_proto::Action::Set;
            cmd::switch::exec(&cli.global, topics, set, Some(a.level), &a.switch).await
        }
        Command::Status(a) => cmd::status::exec(&cli.global, topics, a).await,
        Command::Watch(a) => cmd::watch::exec(&cli.global, topics, a).await,
        Command::History(a) => cmd::history::exec(&cli.global, a),
        Command::Record(a) => cmd::record::exec(&cli.global, topics, a).await,
        Command::Homeassistant(a) => cmd::homeassistant::exec(&cli.global, topics, a).await,
        Command::Serve(a) => cmd::serve::exec(&cli.global, topics, a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn report(e: CliError) -> u8 {
    let _ = std::io::stdout().flush();
    eprintln!("pifleet: {e}");
    e.exit_code()
}
