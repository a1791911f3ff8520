//! Queries over the day files: raw rows for a range, and one series downsampled into buckets.
//!
//! Only the files of the days the range touches are opened. Every line is checked the same way
//! (field count, quoting, a known kind, `unix_ms` agreeing with `time`); a line that fails is
//! skipped and reported with its file, line number and reason, never fatal. An unterminated
//! last line is always skipped: it is a write that was cut short (or one in progress).
//!
//! Speed: a 30-day query for one sensor at one reading per 10 s (259,200 points, about 20 MB
//! of CSV) is a sequential read and a split per line, spread over the machine's cores one day
//! file at a time; `docs/performance.md` ("History") has the measured figure.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use memchr::memchr_iter;
use pifleet_proto::Name;

use crate::downsample::{Buckets, MAX_BUCKETS};
use crate::error::HistoryError;
use crate::layout::{day_file, device_dir, parse_day_file, relative};
use crate::report::{HistoryRows, HistorySeries, SkippedLine, MAX_SKIPPED_LISTED};
use crate::row::{Kind, RawRow, Row, HEADER};
use crate::time::{format_rfc3339, Day, TimeCheck};

/// How much [`scan_lines`] reads at once.
const CHUNK: usize = 1 << 20;

/// Calls `f` with every line of `r` (without its `\n`) and whether it was terminated: only the
/// last line can be unterminated. Reads in chunks into `buf` (reused across files, so a query
/// over 30 files allocates once); lines are borrowed from the chunk unless one straddles two
/// reads.
pub(crate) fn scan_lines<R: Read>(
    mut r: R,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8], bool),
) -> io::Result<()> {
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        let mut start = 0;
        for i in memchr_iter(b'\n', chunk) {
            if carry.is_empty() {
                f(&chunk[start..i], true);
            } else {
                carry.extend_from_slice(&chunk[start..i]);
                f(&carry, true);
                carry.clear();
            }
            start = i + 1;
        }
        carry.extend_from_slice(&chunk[start..]);
    }
    if !carry.is_empty() {
        f(&carry, false);
    }
    Ok(())
}

/// A half-open time range `[since_ms, until_ms)` in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub since_ms: u64,
    pub until_ms: u64,
}

impl TimeRange {
    pub fn new(since_ms: u64, until_ms: u64) -> Result<TimeRange, HistoryError> {
        if since_ms >= until_ms {
            return Err(HistoryError::EmptyRange {
                since: format_rfc3339(since_ms),
                until: format_rfc3339(until_ms),
            });
        }
        Ok(TimeRange { since_ms, until_ms })
    }

    pub fn contains(&self, t_ms: u64) -> bool {
        (self.since_ms..self.until_ms).contains(&t_ms)
    }

    /// The first and the last UTC day the range touches.
    pub fn days(&self) -> (Day, Day) {
        (Day::of_ms(self.since_ms), Day::of_ms(self.until_ms - 1))
    }
}

/// Which rows a raw query returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    /// Only rows with this `name` (a sensor, input or output; an event's kind).
    pub name: Option<String>,
    pub kind: Option<Kind>,
}

impl RowFilter {
    fn matches(&self, raw: &RawRow<'_>) -> bool {
        self.kind.is_none_or(|k| k == raw.kind)
            && self
                .name
                .as_deref()
                .is_none_or(|n| n.as_bytes() == raw.name_bytes())
    }
}

/// Skipped lines, listed up to [`MAX_SKIPPED_LISTED`].
#[derive(Debug, Default)]
struct Skipped {
    listed: Vec<SkippedLine>,
    total: u64,
}

impl Skipped {
    fn push(&mut self, file: &str, line: u64, reason: String) {
        self.total += 1;
        if self.listed.len() < MAX_SKIPPED_LISTED {
            self.listed.push(SkippedLine {
                file: file.to_string(),
                line,
                reason,
            });
        }
    }

    fn merge(&mut self, other: Skipped) {
        self.total += other.total;
        let room = MAX_SKIPPED_LISTED - self.listed.len();
        self.listed.extend(other.listed.into_iter().take(room));
    }
}

/// Reads a history directory. Cheap to create; holds no file open between queries, so it can
/// run beside a recorder writing the same directory.
#[derive(Debug, Clone)]
pub struct HistoryReader {
    dir: PathBuf,
}

impl HistoryReader {
    pub fn new(dir: impl Into<PathBuf>) -> HistoryReader {
        HistoryReader { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory exists and is a directory.
    pub fn check(&self) -> Result<(), HistoryError> {
        match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(HistoryError::NotDir(self.dir.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(HistoryError::NoDir(self.dir.clone()))
            }
            Err(source) => Err(HistoryError::Read {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// Devices with a directory, sorted.
    pub fn devices(&self) -> Result<Vec<Name>, HistoryError> {
        self.check()?;
        let entries = fs::read_dir(&self.dir).map_err(|source| HistoryError::Read {
            path: self.dir.clone(),
            source,
        })?;
        let mut out: Vec<Name> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().and_then(|n| Name::new(n).ok()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Whether `device` has a directory (it has been recorded and not wholly expired).
    pub fn has_device(&self, device: &Name) -> bool {
        device_dir(&self.dir, device).is_dir()
    }

    /// The days `device` has files for, oldest first.
    pub fn days(&self, device: &Name) -> Result<Vec<Day>, HistoryError> {
        self.check()?;
        let dir = device_dir(&self.dir, device);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(HistoryError::Read { path: dir, source }),
        };
        let mut days: Vec<Day> = entries
            .flatten()
            .filter_map(|e| parse_day_file(&e.file_name()))
            .collect();
        days.sort();
        Ok(days)
    }

    fn days_in(&self, device: &Name, range: &TimeRange) -> Result<Vec<Day>, HistoryError> {
        let (first, last) = range.days();
        let mut days = self.days(device)?;
        days.retain(|d| (first..=last).contains(d));
        Ok(days)
    }

    /// Reads one day file, calling `f` with each checked line in the range.
    fn scan_day(
        &self,
        device: &Name,
        day: Day,
        range: &TimeRange,
        scratch: &mut Scratch,
        mut f: impl FnMut(RawRow<'_>, &mut dyn FnMut(String)),
    ) -> Result<(), HistoryError> {
        let path = day_file(&self.dir, device, day);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Deleted by retention since we listed it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(HistoryError::Read { path, source }),
        };
        let rel = relative(device, day);
        let mut line_no = 0u64;
        let Scratch {
            buf,
            check,
            skipped,
        } = scratch;
        scan_lines(file, buf, |line, terminated| {
            line_no += 1;
            let mut skip = |reason: String| skipped.push(&rel, line_no, reason);
            if !terminated {
                skip("partial last line (no line end: the write was cut short)".to_string());
                return;
            }
            if line.is_empty() || line == HEADER.as_bytes() {
                return;
            }
            match RawRow::parse(line, check) {
                Ok(raw) if range.contains(raw.unix_ms) => f(raw, &mut skip),
                Ok(_) => {}
                Err(e) => skip(e.to_string()),
            }
        })
        .map_err(|source| HistoryError::Read { path, source })
    }

    /// Calls `f` with every row of `device` in `range` that matches `filter`, in file order
    /// (oldest day first, each file as written), without holding them all in memory: for a
    /// CSV download of a month. Returns what was skipped.
    pub fn for_each_row(
        &self,
        device: &Name,
        range: &TimeRange,
        filter: &RowFilter,
        mut f: impl FnMut(Row),
    ) -> Result<(Vec<SkippedLine>, u64), HistoryError> {
        let mut scratch = Scratch::default();
        for day in self.days_in(device, range)? {
            self.scan_day(device, day, range, &mut scratch, |raw, skip| {
                if filter.matches(&raw) {
                    match raw.into_row() {
                        Ok(row) => f(row),
                        Err(e) => skip(e.to_string()),
                    }
                }
            })?;
        }
        Ok((scratch.skipped.listed, scratch.skipped.total))
    }

    /// The rows of `device` in `range` matching `filter`, sorted by time.
    pub fn rows(
        &self,
        device: &Name,
        range: &TimeRange,
        filter: &RowFilter,
    ) -> Result<HistoryRows, HistoryError> {
        let mut rows = Vec::new();
        let (skipped, skipped_total) =
            self.for_each_row(device, range, filter, |r| rows.push(r))?;
        // Files are in time order unless the recorder's clock stepped back.
        rows.sort_by_key(|r| r.unix_ms);
        Ok(HistoryRows {
            device: device.to_string(),
            since_ms: range.since_ms,
            until_ms: range.until_ms,
            rows,
            skipped,
            skipped_total,
        })
    }

    /// The numeric rows named `name` (a sensor's readings, or an input or output as 1/0) of
    /// `device` in `range`, downsampled into at most `buckets` buckets. Day files are read in
    /// parallel, one thread per core.
    pub fn series(
        &self,
        device: &Name,
        name: &str,
        range: &TimeRange,
        buckets: usize,
    ) -> Result<HistorySeries, HistoryError> {
        if !(1..=MAX_BUCKETS).contains(&buckets) {
            return Err(HistoryError::Buckets(buckets));
        }
        let days = self.days_in(device, range)?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, days.len().max(1));
        let chunks: Vec<Vec<Day>> = (0..threads)
            .map(|t| days.iter().copied().skip(t).step_by(threads).collect())
            .collect();
        let partials: Vec<Result<Part, HistoryError>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| s.spawn(|| self.series_part(device, name, range, buckets, chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a series worker panicked"))
                .collect()
        });
        let mut total = Part::new(range, buckets);
        for p in partials {
            let p = p?;
            total.buckets.merge(&p.buckets);
            total.skipped.merge(p.skipped);
            if p.unit
                .as_ref()
                .is_some_and(|(t, _)| total.unit.as_ref().is_none_or(|(u, _)| t >= u))
            {
                total.unit = p.unit;
            }
        }
        // Sorted by start time, so the skipped list reads in file order.
        total
            .skipped
            .listed
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Ok(HistorySeries {
            device: device.to_string(),
            name: name.to_string(),
            unit: total.unit.map(|(_, u)| u).filter(|u| !u.is_empty()),
            since_ms: range.since_ms,
            until_ms: range.until_ms,
            bucket_ms: total.buckets.width_ms(),
            points: total.buckets.points(),
            buckets: total.buckets.finish(),
            skipped: total.skipped.listed,
            skipped_total: total.skipped.total,
        })
    }

    fn series_part(
        &self,
        device: &Name,
        name: &str,
        range: &TimeRange,
        buckets: usize,
        days: &[Day],
    ) -> Result<Part, HistoryError> {
        let mut part = Part::new(range, buckets);
        let mut scratch = Scratch::default();
        for &day in days {
            let Part { buckets, unit, .. } = &mut part;
            self.scan_day(device, day, range, &mut scratch, |raw, skip| {
                if !matches!(raw.kind, Kind::Sensor | Kind::Input | Kind::Output)
                    || raw.name_bytes() != name.as_bytes()
                {
                    return;
                }
                match raw.value() {
                    Ok(Some(v)) => {
                        buckets.add(raw.unix_ms, v);
                        // The unit of the newest point; compared as bytes, copied on change.
                        let u = raw.bytes(4);
                        match unit {
                            Some((t, cur)) if *t <= raw.unix_ms => {
                                *t = raw.unix_ms;
                                if cur.as_bytes() != u {
                                    *cur = raw.field(4).unwrap_or_default().to_string();
                                }
                            }
                            None => {
                                let u = raw.field(4).unwrap_or_default().to_string();
                                *unit = Some((raw.unix_ms, u));
                            }
                            _ => {}
                        }
                    }
                    Ok(None) => {}
                    Err(e) => skip(e.to_string()),
                }
            })?;
        }
        part.skipped = scratch.skipped;
        Ok(part)
    }
}

/// What scanning files needs besides the files: a read buffer, the date cache of the torn-line
/// check, and the lines skipped so far. One per worker, reused across its files.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    check: TimeCheck,
    skipped: Skipped,
}

/// One worker's share of a series query.
struct Part {
    buckets: Buckets,
    /// The newest point's time and unit.
    unit: Option<(u64, String)>,
    skipped: Skipped,
}

impl Part {
    fn new(range: &TimeRange, n: usize) -> Part {
        Part {
            buckets: Buckets::new(range.since_ms, range.until_ms, n),
            unit: None,
            skipped: Skipped::default(),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::testutil::TempDir;

    fn dev(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn day() -> Day {
        Day::from_ymd(2026, 11, 22).unwrap()
    }

    fn reading(at: u64, name: &str, value: f64) -> Row {
        Row {
            value: Some(value),
            unit: Some("°C".into()),
            ..Row::new(at, Kind::Sensor, name)
        }
    }

    /// Writes a day file by hand: the header, then `rows`, then `tail` verbatim.
    fn write_day(dir: &Path, device: &str, day: Day, rows: &[Row], tail: &str) {
        let mut text = format!("{HEADER}\n");
        for r in rows {
            text.push_str(&r.to_line());
        }
        text.push_str(tail);
        let path = day_file(dir, &dev(device), day);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn rows_of_a_range_span_day_files_and_filter_by_name() {
        let tmp = TempDir::new("rows");
        let d0 = day();
        let d1 = d0.next();
        let output = Row {
            value: Some(1.0),
            source: Some("command".into()),
            command_id: Some("c1".into()),
            ..Row::new(d1.start_ms() + 5, Kind::Output, "led")
        };
        write_day(
            tmp.path(),
            "kitchen",
            d0,
            &[
                reading(d0.start_ms() + 1, "temp", 1.0),
                reading(d0.end_ms() - 1, "temp", 2.0),
            ],
            "",
        );
        write_day(
            tmp.path(),
            "kitchen",
            d1,
            &[
                reading(d1.start_ms(), "temp", 3.0),
                output.clone(),
                reading(d1.start_ms() + 9, "cpu", 40.0),
            ],
            "",
        );
        let r = HistoryReader::new(tmp.path());
        let all = TimeRange::new(d0.start_ms(), d1.end_ms()).unwrap();
        let got = r
            .rows(&dev("kitchen"), &all, &RowFilter::default())
            .unwrap();
        assert_eq!(got.rows.len(), 5);
        assert!(got.skipped.is_empty());
        let temp = RowFilter {
            name: Some("temp".into()),
            ..Default::default()
        };
        // Half-open and across midnight: from the last millisecond of one day to the first of
        // the next, inclusive of since and exclusive of until.
        let edge = TimeRange::new(d0.end_ms() - 1, d1.start_ms() + 1).unwrap();
        let got = r.rows(&dev("kitchen"), &edge, &temp).unwrap();
        let values: Vec<_> = got.rows.iter().map(|r| r.value.unwrap()).collect();
        assert_eq!(values, [2.0, 3.0]);
        let edge = TimeRange::new(d0.end_ms() - 1, d1.start_ms()).unwrap();
        assert_eq!(r.rows(&dev("kitchen"), &edge, &temp).unwrap().rows.len(), 1);
        let outputs = RowFilter {
            kind: Some(Kind::Output),
            ..Default::default()
        };
        assert_eq!(
            r.rows(&dev("kitchen"), &all, &outputs).unwrap().rows,
            [output]
        );
        assert_eq!(r.devices().unwrap(), [dev("kitchen")]);
        assert_eq!(r.days(&dev("kitchen")).unwrap(), [d0, d1]);
    }

    #[test]
    fn a_partial_last_line_and_a_damaged_line_are_skipped_and_reported() {
        let tmp = TempDir::new("torn");
        let rows: Vec<Row> = (0..3)
            .map(|i| reading(day().start_ms() + i, "temp", i as f64))
            .collect();
        let torn = reading(day().start_ms() + 10, "temp", 9.0).to_line();
        let middle = format!("{}\n", &torn[..torn.len() - 5]);
        let last = &torn[..torn.len() - 1 - 3];
        write_day(
            tmp.path(),
            "kitchen",
            day(),
            &rows,
            &format!("{middle}{}{last}", rows[0].to_line()),
        );
        let r = HistoryReader::new(tmp.path());
        let range = TimeRange::new(day().start_ms(), day().end_ms()).unwrap();
        let got = r
            .rows(&dev("kitchen"), &range, &RowFilter::default())
            .unwrap();
        assert_eq!(got.rows.len(), 4);
        assert_eq!(got.skipped_total, 2);
        assert_eq!(
            got.skipped[0],
            SkippedLine {
                file: "kitchen/2026-11-22.csv".into(),
                line: 5,
                reason: "unix_ms \"179530560\" does not match time \"2026-11-22T00:00:00.010Z\" \
                         (a line cut short?)"
                    .into()
            }
        );
        assert_eq!(got.skipped[1].line, 7);
        assert!(
            got.skipped[1].reason.starts_with("partial last line"),
            "{:?}",
            got.skipped[1]
        );
        let s = r.series(&dev("kitchen"), "temp", &range, 10).unwrap();
        assert_eq!((s.points, s.skipped_total), (4, 2));
    }

    #[test]
    fn a_series_over_three_days_matches_bucketing_by_hand() {
        let tmp = TempDir::new("series");
        let start = day().start_ms();
        let mut all = Vec::new();
        for d in 0..3u32 {
            let this = Day::from_number(day().number() + d);
            let rows: Vec<Row> = (0..8_640u64)
                .map(|i| this.start_ms() + i * 10_000)
                .map(|t| reading(t, "temp", ((t / 1000) % 97) as f64))
                .collect();
            all.extend(rows.iter().map(|r| (r.unix_ms, r.value.unwrap())));
            let mut with_others = rows.clone();
            with_others.push(reading(this.start_ms() + 3, "cpu", 1e9));
            write_day(tmp.path(), "kitchen", this, &with_others, "");
        }
        let r = HistoryReader::new(tmp.path());
        // From noon on the first day to noon on the third: two days of readings.
        let range =
            TimeRange::new(start + 43_200_000, start + 2 * 86_400_000 + 43_200_000).unwrap();
        let s = r.series(&dev("kitchen"), "temp", &range, 800).unwrap();
        assert_eq!(s.bucket_ms, 216_000);
        assert_eq!(s.points, 2 * 8_640);
        assert_eq!(s.unit.as_deref(), Some("°C"));
        assert_eq!(s.buckets.len(), 800);
        let mut hand = Buckets::new(range.since_ms, range.until_ms, 800);
        for (t, v) in all {
            hand.add(t, v);
        }
        assert_eq!(s.buckets, hand.finish());
        assert!(
            s.buckets.iter().all(|b| b.max < 97.0),
            "the cpu series is not mixed in"
        );
        assert!(matches!(
            r.series(&dev("kitchen"), "temp", &range, 0),
            Err(HistoryError::Buckets(0))
        ));
    }

    #[test]
    fn a_missing_directory_is_an_error_but_a_missing_device_has_no_rows() {
        let tmp = TempDir::new("missing");
        let range = TimeRange::new(0, 1).unwrap();
        let r = HistoryReader::new(tmp.path().join("nope"));
        assert!(matches!(
            r.rows(&dev("kitchen"), &range, &RowFilter::default()),
            Err(HistoryError::NoDir(_))
        ));
        let r = HistoryReader::new(tmp.path());
        assert!(!r.has_device(&dev("kitchen")));
        assert!(r
            .rows(&dev("kitchen"), &range, &RowFilter::default())
            .unwrap()
            .rows
            .is_empty());
        assert!(TimeRange::new(5, 5).is_err());
    }

    #[test]
    fn a_file_of_garbage_lists_a_hundred_skipped_lines_and_counts_them_all() {
        let tmp = TempDir::new("garbage");
        write_day(
            tmp.path(),
            "kitchen",
            day(),
            &[],
            &"garbage\n".repeat(1_000),
        );
        let r = HistoryReader::new(tmp.path());
        let range = TimeRange::new(day().start_ms(), day().end_ms()).unwrap();
        let got = r
            .rows(&dev("kitchen"), &range, &RowFilter::default())
            .unwrap();
        assert_eq!(
            (got.skipped.len(), got.skipped_total),
            (MAX_SKIPPED_LISTED, 1_000)
        );
    }
}
