//! pifleet's history on disk: everything devices report, one plain CSV file per device per UTC
//! day (`DATA_DIR/<device>/<YYYY-MM-DD>.csv`), that a person can open, grep or load into a
//! spreadsheet and a dashboard can chart. `docs/history.md` is the user's description; this
//! crate is the one place that writes and reads the format.
//!
//! Three seams, so the recorder service (an MQTT subscriber, [`service`]) and the dashboard
//! (an HTTP server) are thin:
//! 1. [`message::row_from_message`]: an MQTT message (topic, payload, receive time) to
//!    `Option<(device, Row)>`. Pure.
//! 2. [`Recorder`]: owns the files; buffers, writes at least every second, skips repeats,
//!    rate-limits and caps each device, applies retention. Driven by the caller's clock
//!    ([`Recorder::tick`]), so tests control time.
//! 3. [`HistoryReader`]: raw rows for a range, and one series downsampled into buckets.
//!
//! Layout:
//! - [`time`]: UTC days, RFC 3339, the `--since`/`--until` syntax (Hinnant's civil-date
//!   algorithm; no date crate).
//! - [`csv`]: the CSV dialect: RFC 4180 quoting, one record per line.
//! - [`row`]: [`Row`], its columns, its line (with the torn-line check) and its JSON.
//! - [`layout`]: where files live, and the default directory.
//! - [`message`]: MQTT message → row.
//! - [`keep`]: what is kept: repeats, token bucket, daily cap. Sans-IO.
//! - [`writer`]: the [`Recorder`].
//! - [`downsample`]: time buckets with min/max/mean/count.
//! - [`reader`]: the [`HistoryReader`].
//! - [`report`]: the documented JSON answers ([`HistoryRows`], [`HistorySeries`]), shared by
//!   the CLI and the dashboard.
//! - [`error`]: the crate's error type, [`HistoryError`].
//! - `service` (cargo feature `service`): the recorder service, an MQTT client of the fleet
//!   that feeds a [`Recorder`]; `pifleet-broker` embeds it, `pifleet record` runs it alone.

pub mod csv;
pub mod downsample;
pub mod error;
pub mod keep;
pub mod layout;
pub mod message;
pub mod reader;
pub mod report;
pub mod row;
#[cfg(feature = "service")]
pub mod service;
pub mod time;
pub mod writer;

pub use error::HistoryError;
pub use keep::DropReason;
pub use message::{decode_message, row_from_message};
pub use reader::{HistoryReader, RowFilter, TimeRange};
pub use report::{Bucket, HistoryRows, HistorySeries, SkippedLine};
pub use row::{Kind, Row, HEADER};
pub use time::{parse_when, Day};
pub use writer::{Recorded, Recorder, RecorderConfig, RecorderStats};

#[cfg(test)]
pub(crate) mod testutil {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    /// A directory removed on drop (no `tempfile` in the tree).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "pifleet-history-{label}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Captures what is logged while `f` runs, one string per line.
    pub fn logs<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (out, text.lines().map(String::from).collect())
    }
}
