//! The recorder: owns the open day files, buffers rows, hands them to the OS at least every
//! second, applies the limits of [`crate::keep`] and deletes day files past retention.
//!
//! It never reads a clock and never sleeps. Every row carries its receive time, and the caller
//! calls [`Recorder::tick`] with the current time (every 200 ms, say); rows are written when the
//! first row buffered since the last write is `flush_ms` old. So tests control time, and the
//! recorder service decides how it waits (a tokio interval next to its MQTT loop).
//!
//! Durability:
//! - **Process killed** (`kill -9`, OOM, panic elsewhere): rows already written survive in
//!   the page cache; at most `flush_ms` plus one tick period of rows is lost (800 ms + 200 ms
//!   with the defaults). Each flush is one `write` per file of whole lines, so a kill never
//!   leaves half a line.
//! - **Power loss, full disk**: a file can end in a partial line. The reader skips and reports
//!   it ([`crate::reader`]); when the recorder opens a file whose last byte is not a line end,
//!   it starts a fresh line first, so the damage stays on that one line. There is no `fsync`:
//!   on an SD card that would cost wear for little; the kernel writes dirty pages back within
//!   about 30 s (Linux's default `dirty_expire_centisecs`).
//! - **Unwritable directory, full disk**: logged (one error when it starts, one line when it
//!   ends), never a panic. Rows wait in memory, up to `max_pending_bytes` per device, and are
//!   written once the disk accepts them again; beyond that they are dropped and counted.
//!
//! Restart: the first row of a device on a day reads that day's file, so a restarted recorder
//! neither resets the daily cap nor records again the retained state the broker replays to it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use pifleet_proto::fleet::PayloadError;
use pifleet_proto::{Name, Topics};
use serde::{Deserialize, Serialize};

use crate::error::HistoryError;
use crate::keep::{Budget, DropReason, Repeats};
use crate::layout::{day_file, default_dir, device_dir, parse_day_file};
use crate::message::decode_message;
use crate::reader::scan_lines;
use crate::row::{Kind, RawRow, Row, HEADER};
use crate::time::{Day, TimeCheck};

/// The recorder's settings. Serde-ready (`#[serde(default)]`), so a service can take a
/// `[history]` section of its TOML file with only the fields it wants to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    /// `DATA_DIR`: one subdirectory per device. Default: [`crate::layout::default_dir`].
    pub dir: PathBuf,
    /// Day files are deleted once their day is more than this many days before today (UTC),
    /// so history always reaches back at least `keep_days` × 24 h.
    pub keep_days: u32,
    /// Rows per device per UTC day; the rest of the day's rows are dropped.
    pub max_rows_per_day: u64,
    /// Sustained rows per second per device (token bucket refill rate).
    pub rows_per_sec: f64,
    /// Rows a device may send at once before `rows_per_sec` applies (bucket capacity): an
    /// agent's reconnect republishes all its state at once.
    pub burst: u32,
    /// A buffered row is written at the first `tick`/`record` at least this long after it.
    pub flush_ms: u64,
    /// Open day files kept at most; the least recently written is closed beyond that.
    pub max_open_files: usize,
    /// Bytes buffered per device while its file cannot be written; rows beyond are dropped.
    pub max_pending_bytes: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            dir: default_dir(),
            keep_days: 30,
            max_rows_per_day: 100_000,
            rows_per_sec: 2.0,
            burst: 600,
            flush_ms: 800,
            max_open_files: 256,
            max_pending_bytes: 1 << 20,
        }
    }
}

impl RecorderConfig {
    /// The defaults, writing into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecorderConfig {
            dir: dir.into(),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), HistoryError> {
        let bad = |s: &str| Err(HistoryError::Config(s.to_string()));
        if self.keep_days == 0 {
            return bad("keep_days must be at least 1");
        }
        if self.max_rows_per_day == 0 {
            return bad("max_rows_per_day must be at least 1");
        }
        if !(self.rows_per_sec.is_finite() && self.rows_per_sec > 0.0) {
            return bad("rows_per_sec must be a positive number");
        }
        if self.burst == 0 {
            return bad("burst must be at least 1");
        }
        if !(1..=60_000).contains(&self.flush_ms) {
            return bad("flush_ms must be between 1 and 60000");
        }
        if self.max_open_files == 0 {
            return bad("max_open_files must be at least 1");
        }
        Ok(())
    }
}

/// What [`Recorder::record`] did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Buffered; written at the next flush.
    Kept,
    /// Equal to its series' last kept row (a retained replay, a presence heartbeat).
    Repeat,
    Dropped(DropReason),
}

/// Counters since the recorder started, for the service's status page and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecorderStats {
    /// Rows accepted into the buffers (with the recorder's own `recorder` notes).
    pub kept: u64,
    /// Rows handed to the OS.
    pub written: u64,
    pub repeats: u64,
    pub dropped_rate: u64,
    pub dropped_daily_cap: u64,
    /// Rows lost because their file could not be written.
    pub dropped_unwritable: u64,
    /// Failed writes, opens and directory creations.
    pub write_errors: u64,
    /// Day files deleted by retention.
    pub files_deleted: u64,
}

struct Device {
    name: Name,
    budget: Budget,
    repeats: Repeats,
    /// The day whose file was read into `budget` and `repeats`.
    seeded: Option<Day>,
    /// Whole lines for the file of `budget.day`, not yet written.
    pending: Vec<u8>,
    pending_rows: u64,
    file: Option<File>,
    /// For closing the least recently written file first.
    last_write: u64,
}

/// An error episode: logged when it starts and when it ends, not on every retry.
struct Failure {
    since_ms: u64,
    dropped_at_start: u64,
}

/// Writes `DATA_DIR/<device>/<YYYY-MM-DD>.csv`. See the module documentation for the
/// guarantees; dropping it flushes.
pub struct Recorder {
    config: RecorderConfig,
    devices: HashMap<Name, Device>,
    open_files: usize,
    /// When buffered rows are due: `flush_ms` after the first row buffered since the last flush.
    flush_due: Option<u64>,
    retention_day: Option<Day>,
    failure: Option<Failure>,
    writes: u64,
    now_ms: u64,
    stats: RecorderStats,
}

impl Recorder {
    /// Checks the configuration; touches no file (an unwritable directory is an error to log
    /// and retry, not a reason not to start).
    pub fn new(config: RecorderConfig) -> Result<Recorder, HistoryError> {
        config.validate()?;
        Ok(Recorder {
            config,
            devices: HashMap::new(),
            open_files: 0,
            flush_due: None,
            retention_day: None,
            failure: None,
            writes: 0,
            now_ms: 0,
            stats: RecorderStats::default(),
        })
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.config
    }

    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    /// Decodes an MQTT message received at `received_ms` and records it. `Ok(None)`: not
    /// device history (commands, foreign topics).
    pub fn record_message(
        &mut self,
        topics: &Topics,
        topic: &str,
        payload: &[u8],
        received_ms: u64,
    ) -> Result<Option<Recorded>, PayloadError> {
        Ok(decode_message(topics, topic, payload, received_ms)?
            .map(|(device, row)| self.record(&device, row)))
    }

    /// Records one row of `device` (its `unix_ms` is the receive time, and the recorder's idea
    /// of now). May write, if buffered rows are due.
    pub fn record(&mut self, device: &Name, mut row: Row) -> Recorded {
        row.sanitize();
        let now = row.unix_ms;
        self.now_ms = self.now_ms.max(now);
        let day = Day::of_ms(now);
        if !self.devices.contains_key(device) {
            let d = Device {
                name: device.clone(),
                budget: Budget::new(day, self.config.rows_per_sec, self.config.burst),
                repeats: Repeats::default(),
                seeded: None,
                pending: Vec::new(),
                pending_rows: 0,
                file: None,
                last_write: 0,
            };
            self.devices.insert(device.clone(), d);
        }
        if self.devices[device].budget.day != day {
            self.switch_day(device, day);
        }
        if self.devices[device].seeded != Some(day) {
            self.seed(device, day);
        }
        let cfg = &self.config;
        let dev = self.devices.get_mut(device).expect("inserted above");
        if dev.repeats.is_repeat(&row) {
            self.stats.repeats += 1;
            return Recorded::Repeat;
        }
        if let Err(reason) = dev.budget.admit(now, cfg.max_rows_per_day) {
            match reason {
                DropReason::DailyCap => self.stats.dropped_daily_cap += 1,
                _ => self.stats.dropped_rate += 1,
            }
            if dev.budget.first_drop_today() {
                let (why, what) = match reason {
                    DropReason::DailyCap => (
                        format!(
                            "reached {} rows today (max_rows_per_day)",
                            cfg.max_rows_per_day
                        ),
                        "its further rows today are dropped",
                    ),
                    _ => (
                        format!(
                            "sends more than {} rows/s after a burst of {} (rows_per_sec, burst)",
                            cfg.rows_per_sec, cfg.burst
                        ),
                        "its rows beyond that rate are dropped",
                    ),
                };
                tracing::warn!(
                    "history: device {device} {why}; {what} (warned once per device per UTC day)"
                );
                let note = Row {
                    detail: Some(format!("from here on rows are dropped today: {why}")),
                    ..Row::new(now, Kind::Recorder, "dropped")
                };
                if Self::buffer(dev, &note, cfg.max_pending_bytes) {
                    self.stats.kept += 1;
                    self.flush_due.get_or_insert(now + cfg.flush_ms);
                }
            }
            return Recorded::Dropped(reason);
        }
        if !Self::buffer(dev, &row, cfg.max_pending_bytes) {
            // Not written, so not counted against the day's cap either.
            dev.budget.rows_today -= 1;
            self.stats.dropped_unwritable += 1;
            return Recorded::Dropped(DropReason::Unwritable);
        }
        dev.repeats.remember(&row);
        self.stats.kept += 1;
        self.flush_due.get_or_insert(now + cfg.flush_ms);
        self.tick(now);
        Recorded::Kept
    }

    /// Appends a row's line to the device's buffer unless that would pass `max`.
    fn buffer(dev: &mut Device, row: &Row, max: usize) -> bool {
        let before = dev.pending.len();
        row.write_line(&mut dev.pending);
        if dev.pending.len() > max && before > 0 {
            dev.pending.truncate(before);
            return false;
        }
        dev.pending_rows += 1;
        true
    }

    /// Call at least every 200 ms with the current time: writes buffered rows when they are
    /// due and, once per UTC day, deletes day files past `keep_days`.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.flush_due.is_some_and(|due| now_ms >= due) {
            self.flush();
        }
        let today = Day::of_ms(now_ms);
        if self.retention_day != Some(today) {
            self.retention_day = Some(today);
            self.apply_retention(today);
        }
    }

    /// Writes every buffered row now (also done when the recorder is dropped).
    pub fn flush(&mut self) {
        let names: Vec<Name> = self
            .devices
            .values()
            .filter(|d| !d.pending.is_empty())
            .map(|d| d.name.clone())
            .collect();
        let mut failed = false;
        for name in names {
            failed |= self.write_device(&name).is_err();
        }
        let pending = self.devices.values().any(|d| !d.pending.is_empty());
        self.flush_due = pending.then_some(self.now_ms + self.config.flush_ms);
        if !failed && !pending {
            if let Some(f) = self.failure.take() {
                tracing::warn!(
                    "history: writing to {} again after {} s; {} rows were lost meanwhile",
                    self.config.dir.display(),
                    self.now_ms.saturating_sub(f.since_ms) / 1000,
                    self.stats.dropped_unwritable - f.dropped_at_start
                );
            }
        }
    }

    fn fail(&mut self, what: &str, path: &Path, e: &io::Error) {
        self.stats.write_errors += 1;
        if self.failure.is_none() {
            tracing::error!(
                "history: cannot {what} {}: {e}; rows wait in memory (up to {} bytes per device) \
                 and writing is retried every {} ms",
                path.display(),
                self.config.max_pending_bytes,
                self.config.flush_ms
            );
            self.failure = Some(Failure {
                since_ms: self.now_ms,
                dropped_at_start: self.stats.dropped_unwritable,
            });
        }
    }

    /// Writes one device's buffer to its day file, opening the file first if needed. On an
    /// error the file is closed (the next attempt reopens it, which also copes with a handle
    /// gone bad) and the lines not completely written stay buffered.
    fn write_device(&mut self, name: &Name) -> Result<(), ()> {
        let dir = self.config.dir.clone();
        let day = self.devices[name].budget.day;
        let path = day_file(&dir, name, day);
        // What the file needs before the buffered lines: the header, or a line end after a
        // partial last line.
        let mut buf = Vec::new();
        if self.devices[name].file.is_none() {
            if self.open_files >= self.config.max_open_files {
                self.close_least_recent(name);
            }
            if let Err(e) = fs::create_dir_all(device_dir(&dir, name)) {
                self.fail("create", &device_dir(&dir, name), &e);
                return Err(());
            }
            let (file, tail) = match open_for_append(&path) {
                Ok(opened) => opened,
                Err(e) => {
                    self.fail("open", &path, &e);
                    return Err(());
                }
            };
            match tail {
                Tail::Empty => {
                    buf.extend_from_slice(HEADER.as_bytes());
                    buf.push(b'\n');
                }
                Tail::Torn => {
                    tracing::warn!(
                        "history: {} ends in a partial line (the recorder stopped mid-write); \
                         continuing on a fresh line",
                        path.display()
                    );
                    buf.push(b'\n');
                }
                Tail::LineEnd => {}
            }
            self.devices.get_mut(name).expect("known").file = Some(file);
            self.open_files += 1;
        }
        let prefix_len = buf.len();
        self.writes += 1;
        let stamp = self.writes;
        let dev = self.devices.get_mut(name).expect("known");
        dev.last_write = stamp;
        if buf.is_empty() {
            buf = std::mem::take(&mut dev.pending);
        } else {
            buf.append(&mut dev.pending);
        }
        let file = dev.file.as_mut().expect("opened above");
        // One `write` of whole lines, in practice: a killed process cannot leave half of one.
        let mut written = 0;
        let result = loop {
            if written == buf.len() {
                break Ok(());
            }
            match file.write(&buf[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                self.stats.written += dev.pending_rows;
                dev.pending_rows = 0;
                // Reuse the allocation for the next second's rows.
                buf.clear();
                dev.pending = buf;
                Ok(())
            }
            Err(e) => {
                // Keep every line not completely written, whole: on reopen the torn piece gets
                // a line end of its own and the line follows intact. The prefix is not kept;
                // reopening works out again what the file needs.
                let keep = memchr::memrchr(b'\n', &buf[..written])
                    .map_or(0, |i| i + 1)
                    .max(prefix_len);
                let done = buf[prefix_len..keep]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64;
                self.stats.written += done;
                dev.pending_rows -= done;
                dev.pending = buf[keep..].to_vec();
                dev.file = None;
                self.open_files -= 1;
                self.fail("write", &path, &e);
                Err(())
            }
        }
    }

    fn close_least_recent(&mut self, except: &Name) {
        if let Some(dev) = self
            .devices
            .values_mut()
            .filter(|d| d.file.is_some() && &d.name != except)
            .min_by_key(|d| d.last_write)
        {
            dev.file = None;
            self.open_files -= 1;
        }
    }

    /// A row of another UTC day arrived (midnight, or the clock stepped): the old day's rows
    /// are written to the old day's file, which is then closed.
    fn switch_day(&mut self, name: &Name, day: Day) {
        if !self.devices[name].pending.is_empty() && self.write_device(name).is_err() {
            let dev = self.devices.get_mut(name).expect("known");
            self.stats.dropped_unwritable += dev.pending_rows;
            dev.pending.clear();
            dev.pending_rows = 0;
        }
        let dev = self.devices.get_mut(name).expect("known");
        if dev.file.take().is_some() {
            self.open_files -= 1;
        }
        dev.budget.start_day(day);
    }

    /// Reads what an earlier run wrote today: rows count against the cap, and the last row of
    /// each series is what a retained replay is compared with.
    fn seed(&mut self, name: &Name, day: Day) {
        let path = day_file(&self.config.dir, name, day);
        let dev = self.devices.get_mut(name).expect("known");
        dev.seeded = Some(day);
        let file = match File::open(&path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(
                    "history: cannot read {} to continue it: {e}; today's cap starts from zero",
                    path.display()
                );
                return;
            }
        };
        let mut rows = 0;
        let mut check = TimeCheck::default();
        let result = scan_lines(file, &mut Vec::new(), |line, _complete| {
            if let Ok(row) = RawRow::parse(line, &mut check).and_then(RawRow::into_row) {
                rows += 1;
                dev.repeats.remember(&row);
            }
        });
        if let Err(e) = result {
            tracing::warn!("history: cannot read {}: {e}", path.display());
        }
        dev.budget.rows_today += rows;
    }

    /// Deletes day files older than `keep_days` before `today`, and device directories left
    /// empty. Only names this crate writes are touched: `<valid device name>/<YYYY-MM-DD>.csv`.
    fn apply_retention(&mut self, today: Day) {
        let oldest_kept = today.minus(self.config.keep_days);
        let Ok(devices) = fs::read_dir(&self.config.dir) else {
            return;
        };
        for entry in devices.flatten() {
            let Some(name) = entry.file_name().to_str().and_then(|n| Name::new(n).ok()) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            let Ok(files) = fs::read_dir(&dir) else {
                continue;
            };
            for f in files.flatten() {
                if parse_day_file(&f.file_name()).is_some_and(|d| d < oldest_kept) {
                    match fs::remove_file(f.path()) {
                        Ok(()) => self.stats.files_deleted += 1,
                        Err(e) => tracing::warn!(
                            "history: cannot delete {} (past keep_days = {}): {e}",
                            f.path().display(),
                            self.config.keep_days
                        ),
                    }
                }
            }
            if self.devices.get(&name).is_none_or(|d| d.file.is_none()) {
                // Fails, harmlessly, unless the directory is empty.
                let _ = fs::remove_dir(&dir);
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

enum Tail {
    /// A new or empty file: it needs the header.
    Empty,
    /// Ends in a line end (or is not a regular file, where there is nothing to check).
    LineEnd,
    /// Ends in a partial line.
    Torn,
}

fn open_for_append(path: &Path) -> io::Result<(File, Tail)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok((file, Tail::LineEnd));
    }
    if meta.len() == 0 {
        return Ok((file, Tail::Empty));
    }
    let mut r = File::open(path)?;
    r.seek(SeekFrom::End(-1))?;
    let mut last = [0];
    r.read_exact(&mut last)?;
    Ok((
        file,
        if last[0] == b'\n' {
            Tail::LineEnd
        } else {
            Tail::Torn
        },
    ))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::testutil::{logs, TempDir};

    fn dev(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn day() -> Day {
        Day::from_ymd(2026, 11, 22).unwrap()
    }

    /// 2026-11-22T10:00:00Z
    fn t0() -> u64 {
        day().start_ms() + 10 * 3_600_000
    }

    fn reading(at: u64, value: f64) -> Row {
        Row {
            value: Some(value),
            unit: Some("°C".into()),
            device_ms: Some(at - 5),
            ..Row::new(at, Kind::Sensor, "temp")
        }
    }

    fn lines(dir: &Path, device: &str, day: Day) -> Vec<String> {
        fs::read_to_string(day_file(dir, &dev(device), day))
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default()
    }

    fn config(dir: &Path) -> RecorderConfig {
        RecorderConfig::new(dir)
    }

    #[test]
    fn rows_reach_the_file_once_flush_ms_has_passed_and_not_before() {
        let tmp = TempDir::new("flush");
        let mut rec = Recorder::new(config(tmp.path())).unwrap();
        assert_eq!(
            rec.record(&dev("kitchen"), reading(t0(), 20.5)),
            Recorded::Kept
        );
        rec.record(&dev("kitchen"), reading(t0() + 300, 20.6));
        rec.tick(t0() + 799);
        assert!(lines(tmp.path(), "kitchen", day()).is_empty());
        rec.tick(t0() + 800);
        assert_eq!(
            lines(tmp.path(), "kitchen", day()),
            [
                HEADER,
                "2026-11-22T10:00:00.000Z,sensor,temp,20.5,°C,,,,1795341599995,1795341600000",
                "2026-11-22T10:00:00.300Z,sensor,temp,20.6,°C,,,,1795341600295,1795341600300",
            ]
        );
        assert_eq!(rec.stats().written, 2);
        // A flood writes every flush_ms from record() alone, without ticks.
        for i in 1..=2_000 {
            rec.record(&dev("kitchen"), reading(t0() + 1_000 + i, 1.0));
        }
        assert!(lines(tmp.path(), "kitchen", day()).len() > 500);
    }

    #[test]
    fn a_row_after_utc_midnight_goes_into_the_next_days_file() {
        let tmp = TempDir::new("midnight");
        let mut rec = Recorder::new(config(tmp.path())).unwrap();
        let midnight = day().end_ms();
        rec.record(&dev("kitchen"), reading(midnight - 1, 1.0));
        rec.record(&dev("kitchen"), reading(midnight, 2.0));
        rec.flush();
        let before = lines(tmp.path(), "kitchen", day());
        let after = lines(tmp.path(), "kitchen", day().next());
        assert_eq!(before.len(), 2, "{before:?}");
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(before[1].starts_with("2026-11-22T23:59:59.999Z,"));
        assert_eq!(after[0], HEADER);
        assert!(after[1].starts_with("2026-11-23T00:00:00.000Z,"));
    }

    #[test]
    fn a_flooding_device_is_slowed_then_capped_with_one_warning_a_day_and_a_note_in_its_file() {
        let tmp = TempDir::new("flood");
        let cfg = RecorderConfig {
            rows_per_sec: 2.0,
            burst: 10,
            max_rows_per_day: 100,
            ..config(tmp.path())
        };
        let (rec, logged) = logs(|| {
            let mut rec = Recorder::new(cfg).unwrap();
            // kitchen: 1,000 readings/s for 60 s; garage: one every 10 s.
            for ms in 0..60_000u64 {
                let t = t0() + ms;
                rec.record(&dev("kitchen"), reading(t, ms as f64));
                if ms % 10_000 == 0 {
                    rec.record(&dev("garage"), reading(t, 1.0));
                }
                if ms % 200 == 0 {
                    rec.tick(t);
                }
            }
            // The next day: a new allowance, and a new warning.
            let next = day().next().start_ms();
            for ms in 0..1_000u64 {
                rec.record(&dev("kitchen"), reading(next + ms, 1.0));
            }
            rec.flush();
            rec
        });
        let warnings: Vec<_> = logged.iter().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{logged:#?}");
        assert!(
            warnings[0].contains("device kitchen sends more than 2 rows/s after a burst of 10"),
            "{}",
            warnings[0]
        );
        let kitchen = lines(tmp.path(), "kitchen", day());
        // The header, 100 rows (10 at once, then 2/s for 45 s), one note.
        assert_eq!(kitchen.len(), 1 + 100 + 1);
        assert!(
            kitchen[11].contains(",recorder,dropped,") && kitchen[11].contains("rows_per_sec"),
            "{}",
            kitchen[11]
        );
        assert_eq!(
            lines(tmp.path(), "garage", day()).len(),
            1 + 6,
            "garage is unaffected"
        );
        let s = rec.stats();
        assert_eq!(
            s.dropped_rate + s.dropped_daily_cap,
            60_000 - 100 + 1_000 - 11,
            "the next day: 10 at once, 1 after 500 ms"
        );
        assert!(s.dropped_daily_cap > 0 && s.dropped_rate > 0);
        assert_eq!(s.written, s.kept);
    }

    #[test]
    fn a_restarted_recorder_continues_the_days_cap_and_skips_the_replayed_retained_state() {
        let tmp = TempDir::new("restart");
        let cfg = RecorderConfig {
            max_rows_per_day: 3,
            ..config(tmp.path())
        };
        let state = |at: u64| Row {
            value: Some(1.0),
            source: Some("command".into()),
            command_id: Some("c1".into()),
            device_ms: Some(t0() - 60_000),
            ..Row::new(at, Kind::Output, "led")
        };
        {
            let mut rec = Recorder::new(cfg.clone()).unwrap();
            assert_eq!(rec.record(&dev("kitchen"), state(t0())), Recorded::Kept);
            assert_eq!(
                rec.record(&dev("kitchen"), state(t0() + 1)),
                Recorded::Repeat
            );
            rec.record(&dev("kitchen"), reading(t0() + 2, 1.0));
        }
        let mut rec = Recorder::new(cfg).unwrap();
        // The broker replays the retained output state to the new subscriber.
        assert_eq!(
            rec.record(&dev("kitchen"), state(t0() + 10_000)),
            Recorded::Repeat
        );
        assert_eq!(
            rec.record(&dev("kitchen"), reading(t0() + 10_001, 2.0)),
            Recorded::Kept
        );
        assert_eq!(
            rec.record(&dev("kitchen"), reading(t0() + 10_002, 3.0)),
            Recorded::Dropped(DropReason::DailyCap)
        );
        drop(rec);
        assert_eq!(lines(tmp.path(), "kitchen", day()).len(), 1 + 3 + 1);
    }

    #[test]
    fn retention_deletes_day_files_older_than_keep_days_and_nothing_else() {
        let tmp = TempDir::new("retention");
        let today = day();
        let old = tmp.path().join("old");
        fs::create_dir_all(&old).unwrap();
        let kitchen = tmp.path().join("kitchen");
        fs::create_dir_all(&kitchen).unwrap();
        for back in [0, 1, 29, 30, 31, 400] {
            let d = today.minus(back);
            fs::write(kitchen.join(format!("{d}.csv")), "x\n").unwrap();
        }
        fs::write(old.join(format!("{}.csv", today.minus(31))), "x\n").unwrap();
        // Not ours: kept whatever their age.
        let foreign = [
            kitchen.join("notes.txt"),
            kitchen.join("2020-01-01.csv.bak"),
            tmp.path().join(".hidden").join("2020-01-01.csv"),
            tmp.path().join("not a device").join("2020-01-01.csv"),
            tmp.path().join("2020-01-01.csv"),
        ];
        for f in &foreign {
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, "x").unwrap();
        }
        let mut rec = Recorder::new(config(tmp.path())).unwrap();
        rec.tick(today.start_ms() + 1);
        let mut left: Vec<String> = fs::read_dir(&kitchen)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".csv"))
            .collect();
        left.sort();
        let expect: Vec<String> = [30, 29, 1, 0]
            .iter()
            .map(|b| format!("{}.csv", today.minus(*b)))
            .collect();
        assert_eq!(left, expect, "today and the 30 days before it are kept");
        assert!(!old.exists(), "a device directory left empty is removed");
        for f in &foreign {
            assert!(f.exists(), "{}", f.display());
        }
        assert_eq!(rec.stats().files_deleted, 3);
        // Once a day: another tick the same day does not scan again.
        fs::write(kitchen.join(format!("{}.csv", today.minus(50))), "x").unwrap();
        rec.tick(today.end_ms() - 1);
        assert!(kitchen.join(format!("{}.csv", today.minus(50))).exists());
        rec.tick(today.end_ms());
        assert!(!kitchen.join(format!("{}.csv", today.minus(50))).exists());
    }

    #[test]
    fn an_unwritable_directory_is_one_logged_error_and_writing_resumes_when_it_is_fixed() {
        let tmp = TempDir::new("unwritable");
        // A file where the device's directory should be: creating it fails, even as root.
        let blocker = tmp.path().join("kitchen");
        fs::write(&blocker, "in the way").unwrap();
        let (rec, logged) = logs(|| {
            let mut rec = Recorder::new(config(tmp.path())).unwrap();
            for s in 0..10u64 {
                rec.record(&dev("kitchen"), reading(t0() + s * 1000, s as f64));
                rec.tick(t0() + s * 1000 + 900);
            }
            fs::remove_file(&blocker).unwrap();
            rec.tick(t0() + 20_000);
            rec
        });
        let errors: Vec<_> = logged.iter().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{logged:#?}");
        assert!(errors[0].contains("cannot create"), "{}", errors[0]);
        assert!(
            logged
                .iter()
                .any(|l| l.contains("writing to") && l.contains("again")),
            "{logged:#?}"
        );
        assert_eq!(
            lines(tmp.path(), "kitchen", day()).len(),
            1 + 10,
            "nothing lost"
        );
        assert!(rec.stats().write_errors >= 10);
        assert_eq!(rec.stats().written, 10);
    }

    #[test]
    fn a_full_disk_keeps_rows_in_memory_up_to_max_pending_bytes_then_drops_them() {
        if !Path::new("/dev/full").exists() {
            eprintln!("SKIPPED: no /dev/full");
            return;
        }
        let tmp = TempDir::new("full");
        let kitchen = tmp.path().join("kitchen");
        fs::create_dir_all(&kitchen).unwrap();
        let file = day_file(tmp.path(), &dev("kitchen"), day());
        std::os::unix::fs::symlink("/dev/full", &file).unwrap();
        let line_len = reading(t0(), 1.0).to_line().len();
        let cfg = RecorderConfig {
            max_pending_bytes: 20 * line_len,
            ..config(tmp.path())
        };
        let (rec, logged) = logs(|| {
            let mut rec = Recorder::new(cfg).unwrap();
            let mut outcomes = Vec::new();
            for i in 0..30u64 {
                outcomes.push(rec.record(&dev("kitchen"), reading(t0() + i * 100, 1.0)));
                rec.tick(t0() + i * 100);
            }
            assert_eq!(
                outcomes.iter().filter(|o| **o == Recorded::Kept).count(),
                20
            );
            assert_eq!(outcomes[29], Recorded::Dropped(DropReason::Unwritable));
            // The disk has room again.
            fs::remove_file(&file).unwrap();
            rec.tick(t0() + 10_000);
            rec
        });
        let errors: Vec<_> = logged.iter().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{logged:#?}");
        assert!(errors[0].contains("cannot write"), "{}", errors[0]);
        assert!(
            logged.iter().any(|l| l.contains("10 rows were lost")),
            "{logged:#?}"
        );
        assert_eq!(lines(tmp.path(), "kitchen", day()).len(), 1 + 20);
        assert_eq!(rec.stats().dropped_unwritable, 10);
    }

    #[test]
    fn more_devices_than_max_open_files_are_all_written() {
        let tmp = TempDir::new("lru");
        let cfg = RecorderConfig {
            max_open_files: 2,
            ..config(tmp.path())
        };
        let mut rec = Recorder::new(cfg).unwrap();
        let names = ["a", "b", "c", "d", "e"];
        for s in 0..5u64 {
            for n in names {
                rec.record(&dev(n), reading(t0() + s * 1_000 + 1, s as f64));
            }
            rec.tick(t0() + s * 1_000 + 900);
            assert!(rec.open_files <= 2);
        }
        drop(rec);
        for n in names {
            assert_eq!(lines(tmp.path(), n, day()).len(), 1 + 5, "{n}");
        }
    }

    #[test]
    fn bad_configurations_are_refused_with_the_setting_named() {
        for (cfg, what) in [
            (
                RecorderConfig {
                    keep_days: 0,
                    ..Default::default()
                },
                "keep_days",
            ),
            (
                RecorderConfig {
                    rows_per_sec: f64::NAN,
                    ..Default::default()
                },
                "rows_per_sec",
            ),
            (
                RecorderConfig {
                    flush_ms: 0,
                    ..Default::default()
                },
                "flush_ms",
            ),
        ] {
            let e = Recorder::new(cfg).err().unwrap();
            assert!(e.to_string().contains(what), "{e}");
        }
    }
}
