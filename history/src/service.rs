//! The recorder service (cargo feature `service`): an MQTT client of the fleet that subscribes to
//! what devices report (`Topics::fleet_filters(None)`) and feeds a [`Recorder`]. `pifleet-broker`
//! runs it over loopback (on by default, `[history]`), `pifleet record` runs the same code against
//! any broker.
//!
//! Two halves, so that neither waits for the other's kind of I/O:
//! - **The MQTT task** (on the caller's tokio runtime; `pifleet_client::service`, shared with
//!   Home Assistant discovery) polls rumqttc, stamps each message with its
//!   receive time and hands it over a bounded channel. It resubscribes after every reconnect
//!   (rumqttc does not) and backs off between attempts. A full channel stops it polling, which
//!   makes the broker queue for us within its own limits instead of us buffering without bound.
//! - **The recorder thread** owns the [`Recorder`] and its files: it records every message and
//!   ticks every [`TICK`]. It is a thread of its own with a small current-thread runtime because
//!   the recorder does blocking file I/O (reading a day file to continue it, retention walking
//!   the directory, a slow SD card), which must not stall the broker's workers it shares a
//!   process with.
//!
//! One recorder per directory: the service holds an advisory lock on `DATA_DIR/.recorder.lock`
//! (a name no device can have), so a second broker or `pifleet record` on the same machine and
//! directory refuses to start instead of interleaving rows and splitting the caps. Taking the
//! lock is also the check that the directory can be created and written, done once at start so
//! that a wrong path is one clear error.
//!
//! Payloads that do not decode are not recorded; they are logged at most once a minute
//! ([`BadPayloads`]), with a count of those held back, so a broken device cannot flood the log.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pifleet_client::mqtt::SecurityError;
use pifleet_client::service::{ConnectError, Connection, Handler, Login, Subscription};
use pifleet_proto::time::now_ms;
use pifleet_proto::Topics;
use rumqttc::{AsyncClient, Publish, QoS, SubscribeFilter};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::HistoryError;
use crate::writer::{Recorder, RecorderConfig, RecorderStats};

/// How often the recorder thread calls [`Recorder::tick`].
pub const TICK: Duration = Duration::from_millis(200);

/// The lock file inside `DATA_DIR`; it holds the process id of the recorder that has it.
pub const LOCK_FILE: &str = ".recorder.lock";

/// Messages between the MQTT task and the recorder thread.
const QUEUE: usize = 4096;

/// Undecodable payloads are logged at most once per this many milliseconds.
const BAD_PAYLOAD_LOG_MS: u64 = 60_000;

/// What the service needs: where the broker is and how to log in, and the recorder's settings.
pub struct Options {
    pub login: Login,
    pub topics: Topics,
    pub recorder: RecorderConfig,
}

/// Why the service did not start. Once it runs, nothing stops it but [`Recording::stop`]:
/// lost connections are retried and write errors are the recorder's to log and retry.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(HistoryError),
    #[error("cannot create or write the history directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the history directory {} is in use by another recorder{} (another pifleet-broker or \
         `pifleet record` on this machine); give each its own directory",
        dir.display(),
        pid.as_ref().map_or(String::new(), |p| format!(" (process {p})"))
    )]
    InUse { dir: PathBuf, pid: Option<String> },
    #[error("{0}")]
    Security(SecurityError),
    /// The first connection failed, or the broker refused the login or the subscription.
    #[error(transparent)]
    Connect(ConnectError),
}

/// Counters since the service started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Messages received on the fleet's topics.
    pub messages: u64,
    /// Of those, payloads that did not decode (not recorded).
    pub undecodable: u64,
    #[serde(flatten)]
    pub recorder: RecorderStats,
}

/// A running recorder service. Dropping it stops it too, but without waiting: the thread then
/// writes the last rows in the background, and a process that exits at once loses them (under
/// a second of rows), as a `kill -9` would. [`Recording::stop`] waits.
pub struct Recording {
    dir: PathBuf,
    client: AsyncClient,
    mqtt: tokio::task::JoinHandle<()>,
    stats: watch::Receiver<ServiceStats>,
    done: oneshot::Receiver<()>,
}

impl Recording {
    /// The directory it writes into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counters as of the last tick.
    pub fn stats(&self) -> ServiceStats {
        self.stats.borrow().clone()
    }

    /// Disconnects, records what was already received, writes every buffered row and releases
    /// the directory. Returns the final counters.
    pub async fn stop(mut self) -> ServiceStats {
        let _ = self.client.try_disconnect();
        // The task ends once the DISCONNECT is out; while reconnecting it never gets there.
        if tokio::time::timeout(Duration::from_secs(1), &mut self.mqtt)
            .await
            .is_err()
        {
            self.mqtt.abort();
            let _ = (&mut self.mqtt).await;
        }
        // The channel is closed now: the thread drains it, flushes and ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.done).await;
        self.stats.borrow().clone()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Ends the MQTT task (a no-op after `stop`), which closes the channel and so ends the
        // recorder thread after it flushed.
        self.mqtt.abort();
    }
}

/// The MQTT task's side: each message stamped with its receive time; a refusal after a
/// reconnect logged once (the rows it costs are not recorded), a refused login loudly.
struct Stamp {
    refused_logged: bool,
}

impl Handler for Stamp {
    type Item = (Publish, u64);

    fn message(&mut self, publish: Publish) -> (Publish, u64) {
        (publish, now_ms())
    }

    fn refused(&mut self, message: &str) {
        if !self.refused_logged {
            self.refused_logged = true;
            tracing::error!("history: {message}; those rows are not recorded");
        }
    }

    fn lost(&mut self, message: &str, auth: bool) {
        if auth {
            tracing::error!("history: {message}; retrying");
        } else {
            tracing::warn!("history: {message}; reconnecting");
        }
    }
}

/// Starts the service and returns once it is subscribed, so that everything published from
/// then on is recorded (and the retained state is being replayed to it). The first connection
/// fails fast, with the reason; later losses are retried with backoff, logged.
pub async fn start(opts: Options) -> Result<Recording, StartError> {
    let recorder = Recorder::new(opts.recorder).map_err(StartError::Config)?;
    let dir = recorder.config().dir.clone();
    let lock = DirLock::acquire(&dir)?;
    let connection = Connection::new(&opts.login).map_err(StartError::Security)?;
    let client = connection.client().clone();

    // The recorder first: the retained replay arrives right after the subscription and must
    // find someone emptying the channel.
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stats_tx, stats) = watch::channel(ServiceStats::default());
    let (done_tx, done) = oneshot::channel();
    let topics = opts.topics.clone();
    std::thread::Builder::new()
        .name("history".into())
        .spawn(move || {
            record_thread(recorder, lock, topics, rx, stats_tx);
            let _ = done_tx.send(());
        })
        .expect("spawn the history thread");

    let filters: Vec<SubscribeFilter> = opts
        .topics
        .fleet_filters(None)
        .into_iter()
        // QoS 1: a reading is not lost to a queue that drops QoS 0 first, and a redelivered
        // duplicate is a repeat the recorder skips (same device timestamp).
        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
        .collect();
    let subscription = Subscription {
        name: "history",
        owner: "the recorder",
        filters,
        refused_hint: "(is the account a controller?)",
    };
    let handler = Stamp {
        refused_logged: false,
    };
    match connection.run(subscription, handler, tx).await {
        Ok(mqtt) => Ok(Recording {
            dir,
            client,
            mqtt,
            stats,
            done,
        }),
        Err(e) => {
            // The task has ended, which closed the channel: the thread ends and releases the
            // lock.
            let _ = done.await;
            Err(StartError::Connect(e))
        }
    }
}

/// The recorder thread: records what arrives, ticks, and flushes when the channel closes.
fn record_thread(
    mut recorder: Recorder,
    lock: DirLock,
    topics: Topics,
    mut rx: mpsc::Receiver<(Publish, u64)>,
    stats: watch::Sender<ServiceStats>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("the history thread's runtime");
    let mut s = ServiceStats::default();
    let mut bad = BadPayloads::new(BAD_PAYLOAD_LOG_MS);
    runtime.block_on(async {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some((p, at)) = m else { break };
                    s.messages += 1;
                    if let Err(e) = recorder.record_message(&topics, &p.topic, &p.payload, at) {
                        s.undecodable += 1;
                        if let Some(line) = bad.on_bad(at, &e.to_string()) {
                            tracing::warn!("{line}");
                        }
                    }
                }
                _ = ticks.tick() => {
                    let now = now_ms();
                    recorder.tick(now);
                    if let Some(line) = bad.on_tick(now) {
                        tracing::warn!("{line}");
                    }
                    s.recorder.clone_from(recorder.stats());
                    stats.send_if_modified(|current| {
                        let changed = *current != s;
                        if changed {
                            current.clone_from(&s);
                        }
                        changed
                    });
                }
            }
        }
    });
    recorder.flush();
    if let Some(line) = bad.on_tick(u64::MAX) {
        tracing::warn!("{line}");
    }
    s.recorder.clone_from(recorder.stats());
    let r = &s.recorder;
    tracing::info!(
        "history: stopped; {} messages, {} rows written, {} repeats, {} dropped",
        s.messages,
        r.written,
        r.repeats,
        r.dropped_rate + r.dropped_daily_cap + r.dropped_unwritable
    );
    stats.send_replace(s);
    drop(lock);
}

/// The advisory lock on `DATA_DIR/.recorder.lock`, held while the service runs (the kernel
/// releases it when the process ends, however it ends).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, StartError> {
        let dir_error = |source| StartError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_error)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(dir_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StartError::InUse {
                    dir: dir.to_path_buf(),
                    pid: (!pid.is_empty()).then(|| pid.to_string()),
                });
            }
            // A file system without locks (some network ones): record anyway, and say so.
            Err(TryLockError::Error(e)) => tracing::warn!(
                "history: cannot lock {}: {e}; another recorder on this directory would not be \
                 noticed",
                path.display()
            ),
        }
        // Who holds it, for the message above.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DirLock { _file: file })
    }
}

/// The log bound for payloads that do not decode: the first one in a window is logged at once,
/// the rest of the window's are counted and summed up in one line when it ends. So a device
/// that sends garbage ten times a second costs one log line a minute, and the log still says
/// what the garbage was. Sans-IO: the caller passes the time.
#[derive(Debug)]
pub(crate) struct BadPayloads {
    every_ms: u64,
    /// When the current window began: a line was logged then.
    window: Option<u64>,
    held_back: u64,
    last: String,
}

impl BadPayloads {
    pub fn new(every_ms: u64) -> BadPayloads {
        BadPayloads {
            every_ms,
            window: None,
            held_back: 0,
            last: String::new(),
        }
    }

    /// A payload that did not decode, at `now_ms`: the line to log, if any.
    pub fn on_bad(&mut self, now_ms: u64, what: &str) -> Option<String> {
        match self.window {
            Some(start) if now_ms < start.saturating_add(self.every_ms) => {
                self.held_back += 1;
                self.last.clear();
                self.last.push_str(what);
                None
            }
            _ => {
                self.window = Some(now_ms);
                Some(format!(
                    "history: not recorded: {what} (such payloads are logged at most once every \
                     {} s)",
                    self.every_ms / 1000
                ))
            }
        }
    }

    /// Called on every tick: when a window ends with payloads held back, the line that sums
    /// them up (and a new window starts, so a steady stream yields one line per window).
    pub fn on_tick(&mut self, now_ms: u64) -> Option<String> {
        let start = self.window?;
        if now_ms < start.saturating_add(self.every_ms) {
            return None;
        }
        if self.held_back == 0 {
            self.window = None;
            return None;
        }
        let line = format!(
            "history: {} more payloads did not decode in the last {} s and were not recorded; \
             the last: {}",
            self.held_back,
            self.every_ms / 1000,
            self.last
        );
        self.held_back = 0;
        self.window = Some(now_ms);
        Some(line)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_stream_of_bad_payloads_is_one_line_then_one_summary_per_window() {
        let mut b = BadPayloads::new(60_000);
        let first = b.on_bad(1_000, "malformed payload on pifleet/dev/k/status: x");
        assert!(first.unwrap().contains("pifleet/dev/k/status"));
        for t in 1..=99 {
            assert_eq!(b.on_bad(1_000 + t * 100, &format!("bad {t}")), None);
            assert_eq!(b.on_tick(1_000 + t * 100), None);
        }
        let summary = b.on_tick(61_000).unwrap();
        assert!(
            summary.contains("99 more payloads") && summary.ends_with("the last: bad 99"),
            "{summary}"
        );
        // The stream goes on: still held back until the next window ends.
        assert_eq!(b.on_bad(61_500, "bad 100"), None);
        assert_eq!(b.on_tick(100_000), None);
        assert!(b.on_tick(121_000).unwrap().contains("1 more payloads"));
    }

    #[test]
    fn a_quiet_window_ends_silently_and_the_next_bad_payload_is_logged_at_once() {
        let mut b = BadPayloads::new(60_000);
        assert!(b.on_bad(0, "a").is_some());
        assert_eq!(b.on_tick(60_000), None);
        assert!(b.on_bad(60_001, "b").is_some());
    }

    #[test]
    fn a_directory_is_recorded_into_by_one_recorder_at_a_time() {
        let dir = crate::testutil::TempDir::new("lock");
        let data = dir.path().join("history");
        let first = DirLock::acquire(&data).expect("creates the directory and locks it");
        let pid = std::process::id().to_string();
        match DirLock::acquire(&data) {
            Err(StartError::InUse { pid: Some(p), .. }) => assert_eq!(p, pid),
            other => panic!("expected InUse, got {:?}", other.err()),
        }
        drop(first);
        DirLock::acquire(&data).expect("free again");
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_an_error_naming_it() {
        let dir = crate::testutil::TempDir::new("nodir");
        let file = dir.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let e = DirLock::acquire(&file.join("history")).err().unwrap();
        assert!(matches!(e, StartError::Dir { .. }), "{e}");
        assert!(e.to_string().contains("a-file/history"), "{e}");
    }
}
