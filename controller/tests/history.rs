//! `pifleet history` run as a user would: the real binary against a history directory written
//! by the real recorder. No broker is involved. The JSON output is decoded with the documented
//! types from `pifleet_history::report`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pifleet_history::layout::day_file;
use pifleet_history::{
    Day, HistoryRows, HistorySeries, Kind, Recorder, RecorderConfig, Row, HEADER,
};
use pifleet_proto::{Name, Topics};

/// A directory removed on drop (no `tempfile` in the tree).
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "pifleet-cli-history-{label}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn pifleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pifleet"))
        .env_remove("PIFLEET_HISTORY_DIR")
        .env_remove("PIFLEET_BROKER")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn day() -> Day {
    Day::from_ymd(2026, 11, 22).unwrap()
}

const WHOLE_DAY: [&str; 4] = ["--since", "2026-11-22", "--until", "2026-11-23"];

/// kitchen on 2026-11-22: presence, a reading every minute from 10:00 for an hour, a button
/// press, an output switched by command c1, a refusal; garage: one reading.
fn fleet_day(dir: &Path) {
    let topics = Topics::default();
    let t0 = day().start_ms() + 10 * 3_600_000;
    let mut rec = Recorder::new(RecorderConfig::new(dir)).unwrap();
    let mut msg = |topic: &str, payload: String, at: u64| {
        rec.record_message(&topics, topic, payload.as_bytes(), at)
            .unwrap()
            .unwrap();
    };
    msg(
        "pifleet/dev/kitchen/status",
        format!(r#"{{"state":"online","version":"0.1.0","started_at":{t0},"ts":{t0}}}"#),
        t0,
    );
    for i in 0..60u64 {
        let t = t0 + i * 60_000 + 10;
        msg(
            "pifleet/dev/kitchen/sensor/temp",
            format!(
                r#"{{"value":{},"unit":"°C","kind":"sim","ts":{t}}}"#,
                20 + i % 5
            ),
            t,
        );
    }
    msg(
        "pifleet/dev/kitchen/in/button",
        format!(r#"{{"active":true,"ts":{}}}"#, t0 + 100),
        t0 + 100,
    );
    msg(
        "pifleet/dev/kitchen/out/led",
        format!(
            r#"{{"on":true,"cmd":"c1","source":"command","ts":{}}}"#,
            t0 + 200
        ),
        t0 + 200,
    );
    msg(
        "pifleet/dev/kitchen/event",
        format!(
            r#"{{"kind":"unknown_output","message":"no output named \"fan\", sorry","cmd":"c2","ts":{}}}"#,
            t0 + 300
        ),
        t0 + 300,
    );
    msg(
        "pifleet/dev/garage/sensor/temp",
        format!(r#"{{"value":5,"unit":"°C","ts":{t0}}}"#),
        t0,
    );
}

#[test]
fn the_default_output_is_a_table_of_every_row_in_the_range() {
    let tmp = TempDir::new("table");
    fleet_day(tmp.path());
    let mut args = vec!["history", "kitchen", "--dir", tmp.arg()];
    args.extend(WHOLE_DAY);
    let out = pifleet(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 60 + 3, "{text}");
    assert!(lines[0].starts_with("TIME "), "{}", lines[0]);
    let row = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        row("presence"),
        "2026-11-22T10:00:00.000Z presence - online - - online, version 0.1.0, started \
         2026-11-22T10:00:00.000Z"
    );
    assert_eq!(
        row("output"),
        "2026-11-22T10:00:00.200Z output led on command c1"
    );
    assert_eq!(
        row("input"),
        "2026-11-22T10:00:00.100Z input button active - -"
    );
    assert_eq!(
        row("event"),
        "2026-11-22T10:00:00.300Z event unknown_output - - c2 no output named \"fan\", sorry"
    );
    assert_eq!(
        row("10:00:00.010Z"),
        "2026-11-22T10:00:00.010Z sensor temp 20 °C sim -"
    );
}

#[test]
fn csv_is_the_files_rows_and_json_is_the_documented_type() {
    let tmp = TempDir::new("csv-json");
    fleet_day(tmp.path());
    let mut args = vec!["history", "kitchen", "--csv", "--dir", tmp.arg()];
    args.extend(WHOLE_DAY);
    let out = pifleet(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let file =
        fs::read_to_string(day_file(tmp.path(), &Name::new("kitchen").unwrap(), day())).unwrap();
    // The file is in arrival order, the output in time order: the same lines either way.
    let mut from_file: Vec<&str> = file.lines().collect();
    let text = stdout(&out);
    let mut printed: Vec<&str> = text.lines().collect();
    assert_eq!(printed[0], HEADER);
    from_file.sort();
    printed.sort();
    assert_eq!(printed, from_file);

    let mut args = vec!["history", "kitchen", "temp", "--json", "--dir", tmp.arg()];
    args.extend([
        "--since",
        "2026-11-22T10:30:00Z",
        "--until",
        "2026-11-22T10:40:00Z",
    ]);
    let out = pifleet(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: HistoryRows = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.device, "kitchen");
    assert_eq!(rows.rows.len(), 10, "10:30 to 10:39, one a minute");
    assert!(rows
        .rows
        .iter()
        .all(|r| r.kind == Kind::Sensor && r.name == "temp"));
    assert_eq!(rows.rows[0].value, Some(20.0));
    assert_eq!(rows.rows[0].unit.as_deref(), Some("°C"));
}

#[test]
fn buckets_downsample_one_sensor() {
    let tmp = TempDir::new("buckets");
    fleet_day(tmp.path());
    let mut args = vec!["history", "kitchen", "temp", "--buckets", "6"];
    args.extend(["--dir", tmp.arg(), "--since", "2026-11-22T10:00:00Z"]);
    args.extend(["--until", "2026-11-22T11:00:00Z", "--json"]);
    let out = pifleet(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s: HistorySeries = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s.points, s.bucket_ms, s.buckets.len()), (60, 600_000, 6));
    assert_eq!(s.unit.as_deref(), Some("°C"));
    let b = &s.buckets[0];
    assert_eq!((b.count, b.min, b.max, b.mean), (10, 20.0, 24.0, 22.0));

    args.pop();
    let out = pifleet(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1 + 6, "{text}");
    assert!(text.lines().next().unwrap().contains("MEAN (°C)"), "{text}");
    assert!(
        text.contains("2026-11-22T10:00:00.000Z  10     20"),
        "{text}"
    );
}

#[test]
fn the_directory_comes_from_the_environment_too_and_durations_count_back_from_now() {
    let tmp = TempDir::new("env");
    let now = pifleet_proto::time::now_ms();
    let mut rec = Recorder::new(RecorderConfig::new(tmp.path())).unwrap();
    let row = Row {
        value: Some(1.0),
        ..Row::new(now - 3_600_000, Kind::Sensor, "temp")
    };
    rec.record(&Name::new("porch").unwrap(), row);
    drop(rec);
    let run = |since: &str| {
        Command::new(env!("CARGO_BIN_EXE_pifleet"))
            .env("PIFLEET_HISTORY_DIR", tmp.path())
            .args(["history", "porch", "--since", since, "--csv"])
            .output()
            .unwrap()
    };
    let out = run("2h");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2);
    let out = run("30m");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("pifleet: no rows for porch from "),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), format!("{HEADER}\n"), "the header alone");
}

#[test]
fn a_partial_line_is_reported_on_stderr_and_the_rest_is_read() {
    let tmp = TempDir::new("torn");
    fleet_day(tmp.path());
    let path = day_file(tmp.path(), &Name::new("garage").unwrap(), day());
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("2026-11-22T11:00:00.000Z,sensor,temp,6,°");
    fs::write(&path, text).unwrap();
    let mut args = vec!["history", "garage", "--dir", tmp.arg()];
    args.extend(WHOLE_DAY);
    let out = pifleet(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2);
    assert_eq!(
        stderr(&out),
        "pifleet: skipped line 3 of garage/2026-11-22.csv: partial last line (no line end: the \
         write was cut short)\n"
    );
}

#[test]
fn nothing_found_exits_1_and_usage_errors_exit_2() {
    let tmp = TempDir::new("codes");
    fleet_day(tmp.path());
    let dir = tmp.arg();
    let out = pifleet(&["history", "porch", "--dir", dir]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("pifleet: no history for device porch in {dir}\n")
    );
    let out = pifleet(&[
        "history",
        "kitchen",
        "--dir",
        dir,
        "--since",
        "2026-11-23",
        "--until",
        "2026-11-24",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = pifleet(&[
        "history",
        "kitchen",
        "humidity",
        "--json",
        "--dir",
        dir,
        "--since",
        "2026-11-22",
        "--until",
        "2026-11-23",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let empty: HistoryRows = serde_json::from_slice(&out.stdout).unwrap();
    assert!(empty.rows.is_empty(), "JSON is printed even when empty");

    let missing = format!("{dir}/nope");
    let usage: [&[&str]; 8] = [
        &["history", "kitchen", "--dir", &missing],
        &["history", "kitchen", "--dir", dir, "--since", "yesterday"],
        &[
            "history", "kitchen", "--dir", dir, "--since", "1h", "--until", "2h",
        ],
        &["history", "kitchen", "--dir", dir, "--csv", "--json"],
        &["history", "kitchen", "--dir", dir, "--buckets", "10"],
        &["history", "kitchen", "temp", "--dir", dir, "--buckets", "0"],
        &["history", "a/b", "--dir", dir],
        &["history", "--dir", dir],
    ];
    for args in usage {
        let out = pifleet(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = pifleet(&["history", "kitchen", "--dir", &missing]);
    assert_eq!(
        stderr(&out),
        format!(
            "pifleet: history directory {missing} does not exist (give --dir or set \
             PIFLEET_HISTORY_DIR; history is recorded on the broker's machine)\n"
        )
    );
    let out = pifleet(&["history", "kitchen", "--dir", dir, "--since", "yesterday"]);
    assert!(
        stderr(&out).contains("90s, 15m, 24h, 7d"),
        "{}",
        stderr(&out)
    );
}
