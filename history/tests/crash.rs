//! The recorder and the reader against real files through a crash: rows written by the
//! recorder, the process gone without a goodbye (simulated, and a real `kill -9` of a child
//! process), the file cut mid-line, read back, reopened and appended to.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pifleet_history::layout::day_file;
use pifleet_history::{
    Day, HistoryReader, Kind, Recorder, RecorderConfig, Row, RowFilter, TimeRange, HEADER,
};
use pifleet_proto::{Name, Topics};

/// A directory removed on drop (no `tempfile` in the tree).
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("pifleet-history-it-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn kitchen() -> Name {
    Name::new("kitchen").unwrap()
}

fn day() -> Day {
    Day::from_ymd(2026, 11, 22).unwrap()
}

fn whole_day() -> TimeRange {
    TimeRange::new(day().start_ms(), day().end_ms()).unwrap()
}

fn sensor_payload(value: f64, ts: u64) -> String {
    format!(r#"{{"value":{value},"unit":"°C","kind":"sim","ts":{ts}}}"#)
}

#[test]
fn a_crash_mid_line_loses_only_that_line_and_the_recorder_continues_after_it() {
    let tmp = TempDir::new("crash");
    let topics = Topics::default();
    let t0 = day().start_ms() + 8 * 3_600_000;
    let config = RecorderConfig::new(tmp.path());

    // One reading per 100 ms for 3 s, an event with quotes and commas, ticks every 200 ms.
    let mut rec = Recorder::new(config.clone()).unwrap();
    for i in 0..30u64 {
        let t = t0 + i * 100;
        rec.record_message(
            &topics,
            "pifleet/dev/kitchen/sensor/temp",
            sensor_payload(20.0 + i as f64 / 10.0, t - 3).as_bytes(),
            t,
        )
        .unwrap();
        if i % 2 == 0 {
            rec.tick(t);
        }
    }
    rec.record_message(
        &topics,
        "pifleet/dev/kitchen/event",
        br#"{"kind":"unknown_output","message":"no output named \"fan\", sorry","cmd":"c2","ts":5}"#,
        t0 + 3_000,
    )
    .unwrap();
    rec.tick(t0 + 3_000 + 800);
    // These are still buffered when the process dies: the loss window.
    rec.record_message(
        &topics,
        "pifleet/dev/kitchen/sensor/temp",
        sensor_payload(99.0, t0 + 3_900).as_bytes(),
        t0 + 3_900,
    )
    .unwrap();
    // `kill -9`: no Drop, no flush.
    std::mem::forget(rec);

    let path = day_file(tmp.path(), &kitchen(), day());
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next(), Some(HEADER));
    assert_eq!(
        text.lines().count(),
        1 + 30 + 1,
        "nothing after the last flush"
    );
    assert!(text.ends_with('\n'));

    // Power loss in the middle of the event's line: the file ends in half a line.
    let cut = text.len() - 20;
    fs::write(&path, &text.as_bytes()[..cut]).unwrap();

    let reader = HistoryReader::new(tmp.path());
    let got = reader
        .rows(&kitchen(), &whole_day(), &RowFilter::default())
        .unwrap();
    assert_eq!(got.rows.len(), 30);
    assert_eq!(got.skipped_total, 1);
    assert_eq!(got.skipped[0].line, 32);
    assert!(got.skipped[0].reason.starts_with("partial last line"));

    // The recorder starts again and appends.
    let t1 = t0 + 60_000;
    {
        let mut rec = Recorder::new(config).unwrap();
        for i in 0..5u64 {
            let t = t1 + i * 100;
            rec.record_message(
                &topics,
                "pifleet/dev/kitchen/sensor/temp",
                sensor_payload(30.0 + i as f64, t).as_bytes(),
                t,
            )
            .unwrap();
        }
        rec.record_message(
            &topics,
            "pifleet/dev/kitchen/out/led",
            br#"{"on":true,"cmd":"c3","source":"command","ts":7}"#,
            t1 + 600,
        )
        .unwrap();
    }
    let got = reader
        .rows(&kitchen(), &whole_day(), &RowFilter::default())
        .unwrap();
    assert_eq!(got.rows.len(), 30 + 5 + 1, "old rows, new rows");
    assert_eq!(got.skipped_total, 1, "only the torn line");
    assert_eq!(got.skipped[0].line, 32);
    assert!(
        got.skipped[0].reason.contains("does not match")
            || got.skipped[0].reason.contains("quoted"),
        "now a line of its own in the middle: {:?}",
        got.skipped[0]
    );
    let led = got.rows.last().unwrap();
    assert_eq!(
        (
            led.kind,
            led.name.as_str(),
            led.source.as_deref(),
            led.command_id.as_deref()
        ),
        (Kind::Output, "led", Some("command"), Some("c3"))
    );
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches(HEADER).count(), 1, "one header");
    let series = reader
        .series(&kitchen(), "temp", &whole_day(), 800)
        .unwrap();
    assert_eq!(series.points, 35);
}

/// Set in the child process of the kill test: where to write.
const CHILD_DIR: &str = "PIFLEET_HISTORY_KILL_TEST_DIR";

/// Not a test of its own: the child of the next test, recording numbered readings until it
/// is killed. Returns at once unless started by it.
#[test]
fn child_recording_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mut rec = Recorder::new(RecorderConfig {
        rows_per_sec: 1e9,
        burst: u32::MAX,
        max_rows_per_day: u64::MAX,
        ..RecorderConfig::new(dir)
    })
    .unwrap();
    let device = kitchen();
    let base = day().start_ms();
    let started = Instant::now();
    for seq in 0u64.. {
        // The recorder's clock, advancing with real time from a fixed day.
        let now = base + started.elapsed().as_millis() as u64;
        let row = Row {
            value: Some(seq as f64),
            device_ms: Some(seq),
            ..Row::new(now, Kind::Sensor, "seq")
        };
        rec.record(&device, row);
        rec.tick(now);
        if seq % 64 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_real_kill_9_leaves_whole_lines_only_and_the_next_recorder_appends() {
    let tmp = TempDir::new("kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_recording_until_killed", "--nocapture"])
        .env(CHILD_DIR, tmp.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let path = day_file(tmp.path(), &kitchen(), day());
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::metadata(&path).map_or(0, |m| m.len()) < 200_000 {
        assert!(Instant::now() < deadline, "the child wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let reader = HistoryReader::new(tmp.path());
    let got = reader
        .rows(&kitchen(), &whole_day(), &RowFilter::default())
        .unwrap();
    // A kill can land inside the one `write` of a flush, which the kernel may have done in
    // part: at most the last line is then cut, and it is skipped and reported, never read.
    let torn = got.skipped_total;
    assert!(
        torn == 0 || (torn == 1 && got.skipped[0].reason.starts_with("partial last line")),
        "only a cut last line may be skipped: {:?}",
        got.skipped
    );
    let n = got.rows.len() as u64;
    assert!(n > 1_000, "{n}");
    let seqs: Vec<u64> = got.rows.iter().map(|r| r.value.unwrap() as u64).collect();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "no gap, no duplicate");

    let last = got.rows.last().unwrap().unix_ms;
    let mut rec = Recorder::new(RecorderConfig::new(tmp.path())).unwrap();
    rec.record(
        &kitchen(),
        Row {
            value: Some(-1.0),
            ..Row::new(last + 1, Kind::Sensor, "seq")
        },
    );
    drop(rec);
    let got = reader
        .rows(&kitchen(), &whole_day(), &RowFilter::default())
        .unwrap();
    // The new recorder started a fresh line after any cut one, which stays skipped.
    assert_eq!((got.rows.len() as u64, got.skipped_total), (n + 1, torn));
}
