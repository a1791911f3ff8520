//! The writer thread: group commit and compaction.
//!
//! Every `commit_interval_ms` it takes what the engine buffered ([`Journal`]), appends it to the
//! current log segment with one write and waits for one fdatasync. A commit that takes longer
//! than the interval is followed by the next at once. Nothing changed, nothing written.
//!
//! When the segment outgrows both [`COMPACT_AT`] and the last snapshot, it cuts: the engine's
//! state is captured under its lock together with what was buffered up to that instant; that
//! remainder ends the old segment, a new segment starts, and a second thread writes the
//! snapshot while commits go on into the new segment, so a compaction never widens the
//! durability window. Once the snapshot is durable, the older segments are deleted.
//!
//! A failed write (a full disk) is logged; the files may then miss that batch, so the next
//! successful snapshot, retried every [`RETRY`], makes them whole again.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::files::{LogFile, StateDir};
use super::{Journal, Snapshot};

/// A log segment is compacted once it is larger than this and than the last snapshot, so the
/// log never costs more than one snapshot's worth of replay and disk.
const COMPACT_AT: u64 = 4 * 1024 * 1024;
/// How soon a failed snapshot is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Takes the engine's state and the records buffered up to that moment (`None` once the
/// engine is gone).
pub type Capture = Box<dyn Fn() -> Option<(Vec<u8>, Snapshot)> + Send>;

/// The running writer. Dropping it lets the thread commit what is left and stop on its own;
/// [`Handle::close`] also waits for that.
pub struct Handle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Commits everything buffered so far, finishes a running compaction, and stops.
    pub fn close(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    dir: Arc<StateDir>,
    journal: Arc<Journal>,
    capture: Capture,
    interval: Duration,
    /// The segment being appended to; `None` after a write to it failed, until the next cut.
    log: Option<LogFile>,
    generation: u64,
    snapshot_bytes: u64,
    /// The snapshot being written, and its generation.
    compaction: Option<(u64, JoinHandle<io::Result<u64>>)>,
    /// The files miss some change (a failed write): a snapshot of at least this generation
    /// makes them whole again.
    dirty: Option<u64>,
    /// No cut before this (after a failure).
    retry_at: Instant,
    errors: u64,
    batch: Vec<u8>,
}

/// Writes the snapshot of the state the engine was just rebuilt to (generation `after + 1`)
/// before returning, then starts the thread. What was buffered while rebuilding is dropped:
/// the snapshot holds its effect.
pub fn start(
    dir: StateDir,
    journal: Arc<Journal>,
    after: u64,
    interval: Duration,
    capture: Capture,
) -> Handle {
    let mut w = Writer {
        dir: Arc::new(dir),
        journal,
        capture,
        interval,
        log: None,
        generation: after,
        snapshot_bytes: 0,
        compaction: None,
        dirty: None,
        retry_at: Instant::now(),
        errors: 0,
        batch: Vec::new(),
    };
    w.cut(true);
    let (stop, stopped) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("state-writer".into())
        .spawn(move || w.run(stopped))
        .expect("spawn the state writer");
    Handle {
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Writer {
    fn run(mut self, stopped: mpsc::Receiver<()>) {
        let mut next = Instant::now() + self.interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            let last = matches!(
                stopped.recv_timeout(wait),
                Err(RecvTimeoutError::Disconnected)
            );
            self.commit();
            if last {
                if let Some((g, t)) = self.compaction.take() {
                    self.finished(g, join(t));
                }
                return;
            }
            next = (next + self.interval).max(Instant::now());
        }
    }

    /// One group commit, then a cut if one is due.
    fn commit(&mut self) {
        if let Some((g, t)) = self.compaction.take_if(|(_, t)| t.is_finished()) {
            self.finished(g, join(t));
        }
        self.journal.take(&mut self.batch);
        if let (Some(log), false) = (&mut self.log, self.batch.is_empty()) {
            if let Err(e) = log.commit(&self.batch) {
                // The segment may end inside this batch: nothing more goes after it, and only
                // a snapshot (at once) restores what the batch held.
                self.log = None;
                self.dirty.get_or_insert(self.generation + 1);
                self.failed("append to the log", &e);
            }
        }
        let due = match (&self.log, self.dirty) {
            (Some(log), None) => log.bytes > COMPACT_AT.max(self.snapshot_bytes),
            _ => true,
        };
        if due && self.compaction.is_none() && Instant::now() >= self.retry_at {
            self.cut(false);
        }
    }

    /// Ends the current segment at a capture of the engine and starts the next generation: its
    /// segment now, its snapshot on a thread of its own (before returning, at `startup`).
    fn cut(&mut self, startup: bool) {
        let Some((before, snapshot)) = (self.capture)() else {
            return;
        };
        if let (Some(log), false) = (&mut self.log, before.is_empty()) {
            if let Err(e) = log.commit(&before) {
                self.dirty.get_or_insert(self.generation + 1);
                self.failed("append to the log", &e);
            }
        }
        let generation = self.generation + 1;
        match self.dir.create_log(generation) {
            Ok(log) => {
                self.log = Some(log);
                self.generation = generation;
            }
            Err(e) => {
                self.log = None;
                self.dirty.get_or_insert(generation);
                self.retry_at = Instant::now() + RETRY;
                self.failed("start a log segment", &e);
                return;
            }
        }
        if startup {
            // The engine was renumbered: until this snapshot exists, the files do not
            // describe it.
            self.dirty.get_or_insert(generation);
        }
        let dir = self.dir.clone();
        let mut snapshot = snapshot;
        let mut write = move || {
            // In topic order: the same state always makes the same file.
            snapshot
                .retained
                .sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
            let bytes = dir.write_snapshot(generation, |put| snapshot.write(put))?;
            dir.remove_logs_before(generation)?;
            Ok(bytes)
        };
        if startup {
            self.finished(generation, write());
        } else {
            let t = std::thread::Builder::new()
                .name("state-snapshot".into())
                .spawn(write)
                .expect("spawn the snapshot writer");
            self.compaction = Some((generation, t));
        }
    }

    fn finished(&mut self, generation: u64, written: io::Result<u64>) {
        match written {
            Ok(bytes) => {
                self.snapshot_bytes = bytes;
                if self.dirty.is_some_and(|d| generation >= d) {
                    self.dirty = None;
                    if self.errors > 0 {
                        tracing::info!(
                            "state: {} is whole again (snapshot {generation} written)",
                            self.dir.path.display()
                        );
                    }
                }
            }
            Err(e) => {
                self.retry_at = Instant::now() + RETRY;
                self.failed("write a snapshot", &e);
            }
        }
    }

    fn failed(&mut self, what: &str, e: &io::Error) {
        self.errors += 1;
        if self.errors.is_power_of_two() {
            tracing::error!(
                errors = self.errors,
                "state directory {}: cannot {what}: {e}; changes may not survive a restart \
                 until a later write succeeds (retrying)",
                self.dir.path.display()
            );
        }
    }
}

fn join(t: JoinHandle<io::Result<u64>>) -> io::Result<u64> {
    t.join()
        .unwrap_or_else(|_| Err(io::Error::other("the snapshot writer panicked")))
}
