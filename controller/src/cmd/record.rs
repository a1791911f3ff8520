//! `pifleet record`: the recorder service on its own, against any broker. The same code
//! (`pifleet_history::service`) that `pifleet-broker` runs embedded: it subscribes to what
//! devices report and writes `DATA_DIR/<device>/<YYYY-MM-DD>.csv` (docs/history.md) until
//! SIGINT or SIGTERM, then writes what it buffered and exits 0. For a broker other than
//! pifleet-broker (mosquitto, EMQX), or to keep the history on another machine than the broker.
//!
//! The first connection fails fast like every command (exit 3, or 4 for a refused login); once
//! recording, a lost connection is retried with backoff until stopped, since a recorder is a
//! service that must ride out broker restarts. A directory that cannot be created or written,
//! or that another recorder holds, is exit 2.

use std::path::PathBuf;

use clap::Args;
use pifleet_history::layout::DIR_ENV;
use pifleet_history::service::{self, Options, StartError};
use pifleet_history::RecorderConfig;
use pifleet_proto::Topics;

use super::service_login;
use crate::cli::Global;
use crate::error::{CliError, EXIT_OK};

#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    /// The history directory to write into (default: the broker's default,
    /// $STATE_DIRECTORY/history, else $XDG_STATE_HOME/pifleet/history or
    /// ~/.local/state/pifleet/history).
    #[arg(long, env = DIR_ENV, value_name = "DATA_DIR")]
    pub dir: Option<PathBuf>,
    /// Delete day files once their day is more than this many days before today (default 30).
    #[arg(long, value_name = "DAYS")]
    pub keep_days: Option<u32>,
    /// Rows per device per UTC day (default 100000).
    #[arg(long, value_name = "N")]
    pub max_rows_per_day: Option<u64>,
    /// Sustained rows per second per device, after the burst (default 2).
    #[arg(long, value_name = "N")]
    pub rows_per_sec: Option<f64>,
    /// Rows a device may send at once (default 600).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
}

impl RecordArgs {
    fn recorder(&self) -> RecorderConfig {
        let mut c = RecorderConfig::default();
        if let Some(d) = &self.dir {
            c.dir = d.clone();
        }
        c.keep_days = self.keep_days.unwrap_or(c.keep_days);
        c.max_rows_per_day = self.max_rows_per_day.unwrap_or(c.max_rows_per_day);
        c.rows_per_sec = self.rows_per_sec.unwrap_or(c.rows_per_sec);
        c.burst = self.burst.unwrap_or(c.burst);
        c
    }
}

pub async fn exec(g: &Global, topics: Topics, a: &RecordArgs) -> Result<u8, CliError> {
    let options = Options {
        login: service_login(g, "pifleet-record")?,
        topics,
        recorder: a.recorder(),
    };
    let recording = service::start(options).await.map_err(|e| match e {
        StartError::Connect(e) => e.into(),
        other => CliError::Usage(other.to_string()),
    })?;
    // The readiness line: subscribed, so everything published from now on is recorded.
    eprintln!(
        "pifleet: recording {} into {} (Ctrl-C to stop)",
        g.broker,
        recording.dir().display()
    );
    pifleet_client::signal::shutdown().await;
    let stats = recording.stop().await;
    eprintln!(
        "pifleet: stopped recording; {} rows written",
        stats.recorder.written
    );
    Ok(EXIT_OK)
}
