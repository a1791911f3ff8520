//! The CLI's errors and the exit codes scripts can rely on (documented in README.md, "Using
//! the CLI", and in `pifleet --help`).

use pifleet_client::service::ConnectError;

/// Every command finished and every targeted device confirmed.
pub const EXIT_OK: u8 = 0;
/// The command ran, but at least one device did not confirm (timed out, offline, refused,
/// unknown), or a requested device is unknown to `status`.
pub const EXIT_INCOMPLETE: u8 = 1;
/// Bad usage: invalid arguments or names (clap's own parse errors also exit 2).
pub const EXIT_USAGE: u8 = 2;
/// The broker could not be reached (TLS handshake failures included), refused the connection for
/// a reason other than the login, or the connection was lost: worth retrying later.
pub const EXIT_BROKER: u8 = 3;
/// The broker refused the login (CONNACK 4, bad user name or password, or 5, not authorized):
/// not worth retrying until the credentials or the broker's ACL change, hence a code of its own.
pub const EXIT_AUTH: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// One sentence naming the broker and what went wrong.
    #[error("{0}")]
    Broker(String),
    /// One sentence naming the broker and the user it refused.
    #[error("{0}")]
    Auth(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// A service's first connection: a refused login or subscription is exit 4, since retrying with
/// the same account will not help; anything else is the broker's, exit 3.
impl From<ConnectError> for CliError {
    fn from(e: ConnectError) -> CliError {
        if e.auth {
            CliError::Auth(e.message)
        } else {
            CliError::Broker(e.message)
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Broker(_) => EXIT_BROKER,
            CliError::Auth(_) => EXIT_AUTH,
            CliError::Output(_) => EXIT_INCOMPLETE,
        }
    }
}
