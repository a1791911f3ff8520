//! Logging setup shared by the three binaries: human-readable lines on stderr (stdout is for
//! output scripts read), colour only on a terminal, `RUST_LOG` overrides the default filter.
//!
//! A log line must never take the process down. When stderr has gone away (a closed pipe, as
//! in `pifleet-broker 2>&1 | head -1`, or a supervisor that closed its end), writing to it fails
//! with EPIPE. tracing-subscriber then reports the failure with `eprintln!`, which panics on the
//! same closed stderr; in the broker the panic hook's own `eprintln!` panics again and the
//! process aborts, in the agent the panic ends `main` (exit 101). Since a remote client can make
//! the broker log (a wrong password is enough), that was a remote kill switch. [`QuietStderr`]
//! swallows write errors instead, and tracing-subscriber's internal error reports are off.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(QuietStderr)
        .with_ansi(io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
}

/// stderr for log lines, where a line that cannot be written is dropped: a log line is not
/// worth a crash, and there is nowhere left to report the failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietStderr;

impl Write for QuietStderr {
    /// Writes all of `buf` (tracing-subscriber hands over one whole formatted line) and reports
    /// success whatever happened.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QuietStderr {
    type Writer = QuietStderr;

    fn make_writer(&'a self) -> QuietStderr {
        QuietStderr
    }
}

/// Writes one line to stdout and ignores failure: for start-up messages such as the broker's
/// readiness line, which scripts read, but which must not stop the process when nobody does
/// (`println!` panics on a closed stdout). Use it through [`say!`](crate::say).
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// [`say`] for stderr: messages for the operator (a configuration error, a warning at start)
/// that must not panic when stderr is closed (`eprintln!` does). Use it through
/// [`tell!`](crate::tell).
pub fn tell(line: std::fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(line);
    let _ = err.write_all(b"\n");
}

/// `println!` that cannot panic: see [`logging::say`](crate::logging::say).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::say(format_args!($($arg)*))
    };
}

/// `eprintln!` that cannot panic: see [`logging::tell`](crate::logging::tell).
#[macro_export]
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::logging::tell(format_args!($($arg)*))
    };
}
