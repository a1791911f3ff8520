//! Logging setup shared by the three binaries: human-readable lines on stderr (stdout is for
//! output scripts read), colour only on a terminal, `RUST_LOG` overrides the default filter.

use std::io::IsTerminal;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
