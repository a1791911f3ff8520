//! History on disk, end to end: the recorder service embedded in a real `pifleet-broker` (and
//! run alone as `pifleet record`) records what real simulated agents and raw MQTT clients
//! report, and `pifleet history` reads the files back with the documented JSON types.
//!
//! Every broker records into a temporary directory of its own (`Broker::start_recording`), never
//! into the default one. The recorder writes on a timer (at least every 0.8 s), so the tests poll
//! the files with a deadline rather than sleeping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pifleet_history::{HistoryReader, HistoryRows, Kind, Row, RowFilter, TimeRange, HEADER};
use pifleet_proto::report::Outcome;
use pifleet_proto::time::now_ms;
use pifleet_proto::Name;
use pifleet_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const DAY_MS: u64 = 86_400_000;

/// A simulated sensor reporting five times a second.
const FAST_SENSOR: &str = "[[sensor]]\nname = \"temp\"\nkind = \"sim\"\ninterval_secs = 0.2\n";

/// What the history directory holds for `device` (no rows when it holds nothing yet).
fn recorded(dir: &Path, device: &str) -> HistoryRows {
    let now = now_ms();
    let range = TimeRange::new(now - 2 * DAY_MS, now + DAY_MS).unwrap();
    HistoryReader::new(dir)
        .rows(&Name::new(device).unwrap(), &range, &RowFilter::default())
        .unwrap_or(HistoryRows {
            device: device.into(),
            since_ms: range.since_ms,
            until_ms: range.until_ms,
            rows: vec![],
            skipped: vec![],
            skipped_total: 0,
        })
}

/// Polls `device`'s files until its rows satisfy `pred`; returns them. Panics, showing the rows,
/// after 20 s.
fn wait_rows(dir: &Path, device: &str, what: &str, pred: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = recorded(dir, device).rows;
        if pred(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {device}'s history has {what}; it has {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(rows: &[Row], kind: Kind) -> usize {
    rows.iter().filter(|r| r.kind == kind).count()
}

/// The day files of `device`, oldest first.
fn day_files(dir: &Path, device: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(device))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A sensor reading as an agent publishes it.
fn reading(value: f64, ts: u64) -> String {
    format!(r#"{{"value":{value},"unit":"°C","kind":"sim","ts":{ts}}}"#)
}

/// Publishes `messages` (QoS 1) as MQTT client `client_id`, as fast as the broker takes them,
/// and returns once every one is acknowledged.
fn publish_all(addr: &str, client_id: &str, messages: Vec<(String, String)>) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = MqttOptions::new(client_id, host, port.parse().unwrap());
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let n = messages.len();
        let c = client.clone();
        tokio::spawn(async move {
            for (topic, payload) in messages {
                c.publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        });
        let mut acked = 0;
        tokio::time::timeout(Duration::from_secs(30), async {
            while acked < n {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("{client_id}: publishing failed: {e}"),
                }
            }
        })
        .await
        .expect("every PUBACK within 30 s");
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    });
}

/// `n` readings of `sensor` for `device`, 20.0, 20.5, …, with increasing device timestamps.
fn readings(device: &str, n: usize) -> Vec<(String, String)> {
    let ts = now_ms();
    (0..n)
        .map(|i| {
            (
                format!("pifleet/dev/{device}/sensor/temp"),
                reading(20.0 + i as f64 / 2.0, ts + i as u64),
            )
        })
        .collect()
}

/// A broker config file in `dir` holding `text`; returns its path.
fn config_file(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn lines_containing(lines: &[String], needle: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_broker_records_readings_output_changes_and_presence_in_one_file_per_device_per_utc_day() {
    // With credentials, so the recorder also has to log in (as an internal controller).
    let creds = Creds::new();
    let kitchen_secret = creds.add(&["device", "add", "kitchen"]);
    let garage_secret = creds.add(&["device", "add", "garage"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let broker = Broker::start_recording(&[
        "--credentials",
        creds.path.to_str().unwrap(),
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
    ]);
    let url = broker.url();
    let dir = broker.history_dir();
    let _kitchen = Agent::start(
        &url,
        "kitchen",
        &format!("password = {kitchen_secret:?}\n{FAST_SENSOR}"),
    );
    let mut garage = Agent::start(&url, "garage", &format!("password = {garage_secret:?}\n"));
    let online = |rows: &[Row]| {
        rows.iter()
            .any(|r| r.kind == Kind::Presence && r.value == Some(1.0))
    };
    wait_rows(&dir, "kitchen", "an online presence row", online);
    wait_rows(&dir, "garage", "an online presence row", online);

    let ops = [("PIFLEET_PASSWORD", ops_secret.as_str())];
    let (report, code) = switch_env(&url, &["--user", "ops", "on", "kitchen"], &ops);
    assert_eq!(code, Some(0), "{report:?}");
    assert_eq!(outcome(&report, "kitchen"), Outcome::Confirmed);
    let id = report.command_id.to_string();

    garage.proc.signal("TERM");
    garage.proc.wait_exit(Duration::from_secs(10));

    let kitchen = wait_rows(
        &dir,
        "kitchen",
        "the command's output row and three readings",
        |rows| {
            count(rows, Kind::Sensor) >= 3
                && rows
                    .iter()
                    .any(|r| r.kind == Kind::Output && r.command_id.as_deref() == Some(&id))
        },
    );
    let on = kitchen
        .iter()
        .find(|r| r.command_id.as_deref() == Some(&id))
        .unwrap();
    assert_eq!(
        (on.name.as_str(), on.value, on.source.as_deref()),
        ("led", Some(1.0), Some("command"))
    );
    let temp = kitchen.iter().find(|r| r.kind == Kind::Sensor).unwrap();
    assert_eq!(
        (
            temp.name.as_str(),
            temp.unit.as_deref(),
            temp.source.as_deref()
        ),
        ("temp", Some("°C"), Some("sim"))
    );
    assert!(temp.device_ms.is_some(), "the device's own time is kept");
    let garage_rows = wait_rows(&dir, "garage", "an offline presence row", |rows| {
        rows.iter()
            .any(|r| r.kind == Kind::Presence && r.value == Some(0.0))
    });
    let offline = garage_rows.last().unwrap();
    assert_eq!(
        (offline.kind, offline.detail.as_deref()),
        (Kind::Presence, Some("offline"))
    );

    // The files themselves, as a person would open them.
    assert_eq!(
        HEADER,
        "time,kind,name,value,unit,source,command_id,detail,device_ms,unix_ms"
    );
    for device in ["kitchen", "garage"] {
        let files = day_files(&dir, device);
        assert!(!files.is_empty() && files.len() <= 2, "{files:?}");
        for file in files {
            let day = file.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                day.parse::<pifleet_history::Day>().is_ok(),
                "{} is named YYYY-MM-DD.csv",
                file.display()
            );
            let text = std::fs::read_to_string(&file).unwrap();
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some(HEADER), "{}", file.display());
            for line in lines {
                assert!(
                    line.starts_with(&format!("{day}T")),
                    "a row of another UTC day in {}: {line}",
                    file.display()
                );
            }
        }
    }
    let kitchen_text: String = day_files(&dir, "kitchen")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        kitchen_text.contains(&format!(",output,led,1,,command,{id},,")),
        "{kitchen_text}"
    );
    assert!(kitchen_text.contains(",sensor,temp,"), "{kitchen_text}");
    let garage_text: String = day_files(&dir, "garage")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        garage_text.contains(",presence,,0,,,,offline,"),
        "{garage_text}"
    );
}

#[test]
fn pifleet_history_json_returns_the_values_the_broker_recorded() {
    let broker = Broker::start_recording(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let dir = broker.history_dir();
    let sent = readings("probe", 3);
    publish_all(&broker.mqtt, "probe", sent.clone());
    wait_rows(&dir, "probe", "three readings", |rows| {
        count(rows, Kind::Sensor) == 3
    });

    let out = cli(
        &broker.url(),
        &[
            "history",
            "probe",
            "temp",
            "--json",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let got: HistoryRows = serde_json::from_slice(&out.stdout).expect("HistoryRows");
    assert_eq!(got.device, "probe");
    let values: Vec<Option<f64>> = got.rows.iter().map(|r| r.value).collect();
    assert_eq!(values, [Some(20.0), Some(20.5), Some(21.0)]);
    for (row, (_, payload)) in got.rows.iter().zip(&sent) {
        let p: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(row.device_ms, p["ts"].as_u64());
        assert_eq!(
            (row.unit.as_deref(), row.source.as_deref()),
            (Some("°C"), Some("sim"))
        );
    }
    assert!(got.skipped.is_empty());
}

#[test]
fn a_broker_killed_mid_write_leaves_files_that_pifleet_history_reads() {
    let tmp = temp_dir("history-kill");
    // Twenty readings a second: the rate limit would otherwise be the story.
    let config = config_file(&tmp, "[history]\nrows_per_sec = 1000.0\nburst = 1000\n");
    let mut broker =
        Broker::start_recording(&["--config", &config, "--mqtt", "127.0.0.1:0", "--no-ws"]);
    let url = broker.url();
    let dir = broker.history_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    let _kitchen = Agent::start(
        &url,
        "kitchen",
        "[[sensor]]\nname = \"temp\"\nkind = \"sim\"\ninterval_secs = 0.05\n",
    );
    wait_rows(&dir, "kitchen", "30 readings", |rows| {
        count(rows, Kind::Sensor) >= 30
    });

    // Killed while the agent keeps publishing: whole lines only, every one readable.
    broker.proc.signal("KILL");
    broker.proc.wait_exit(Duration::from_secs(10));
    let file = day_files(&dir, "kitchen").pop().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with('\n'), "a kill leaves no partial line");
    let out = cli(&url, &["history", "kitchen", "--csv", "--dir", &dir_arg]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "nothing skipped");
    let before = recorded(&dir, "kitchen").rows.len();

    // What a power cut can add: the file's last line cut short.
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 6)
        .unwrap();
    let out = cli(
        &url,
        &["history", "kitchen", "temp", "--json", "--dir", &dir_arg],
    );
    assert_eq!(out.status.code(), Some(0), "a partial line is not fatal");
    let got: HistoryRows = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
    assert!(
        got.skipped[0].reason.contains("partial"),
        "{:?}",
        got.skipped
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pifleet: skipped line"), "{stderr}");

    // The broker comes back on the same port and directory; the agent reconnects, and its rows
    // follow the damaged line on a fresh one.
    let addr = broker.mqtt.clone();
    let keep = broker.history.take();
    drop(broker);
    let broker = Broker::start_with(&[
        "--config",
        &config,
        "--mqtt",
        &addr,
        "--no-ws",
        "--history-dir",
        &dir_arg,
    ]);
    broker.recording_ready();
    wait_rows(&dir, "kitchen", "new readings after the restart", |rows| {
        rows.len() >= before + 10
    });
    broker
        .proc
        .stderr
        .wait_for("the partial line noticed", Duration::from_secs(5), |l| {
            l.contains("ends in a partial line")
        });
    let after = recorded(&dir, "kitchen");
    assert_eq!(
        after.skipped_total, 1,
        "only the cut line: {:?}",
        after.skipped
    );
    drop(keep);
}

#[test]
fn a_flooding_device_is_capped_with_one_warning_and_one_note_in_its_file() {
    let tmp = temp_dir("history-flood");
    let config = config_file(&tmp, "[history]\nburst = 50\nrows_per_sec = 1.0\n");
    let broker =
        Broker::start_recording(&["--config", &config, "--mqtt", "127.0.0.1:0", "--no-ws"]);
    let dir = broker.history_dir();
    let started = Instant::now();
    publish_all(&broker.mqtt, "flood", readings("flood", 300));
    // Another device, after the flood: not affected by it.
    publish_all(&broker.mqtt, "calm", readings("calm", 3));
    wait_rows(&dir, "calm", "three readings", |rows| {
        count(rows, Kind::Sensor) == 3
    });
    let rows = wait_rows(&dir, "flood", "the recorder's note", |rows| {
        count(rows, Kind::Recorder) == 1
    });
    // Every row read now was received since `started`: the bucket refilled for at most that long.
    let elapsed = started.elapsed().as_secs() as usize;

    let sensor = count(&rows, Kind::Sensor);
    assert!(
        (50..=50 + elapsed + 2).contains(&sensor),
        "a burst of 50, then 1 row/s: {sensor} rows in {elapsed} s"
    );
    let note = rows.iter().find(|r| r.kind == Kind::Recorder).unwrap();
    assert_eq!(note.name, "dropped");
    assert!(
        note.detail
            .as_deref()
            .unwrap()
            .contains("(rows_per_sec, burst)"),
        "{note:?}"
    );
    let text: String = day_files(&dir, "flood")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(text.matches(",recorder,dropped,").count(), 1, "{text}");
    let warnings = lines_containing(&broker.proc.stderr.since(0), "device flood sends more than");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("WARN"), "{warnings:?}");
}

#[test]
fn payloads_that_do_not_decode_are_not_recorded_and_logged_once_not_per_message() {
    let broker = Broker::start_recording(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let dir = broker.history_dir();
    let mut messages: Vec<(String, String)> = (0..50)
        .map(|i| {
            (
                "pifleet/dev/junk/sensor/temp".to_string(),
                format!("garbage {i}"),
            )
        })
        .collect();
    messages.extend(readings("junk", 1));
    publish_all(&broker.mqtt, "junk", messages);
    let rows = wait_rows(&dir, "junk", "the one good reading", |rows| {
        !rows.is_empty()
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    let logged = lines_containing(&broker.proc.stderr.since(0), "history: not recorded");
    assert_eq!(logged.len(), 1, "one line for 50 bad payloads: {logged:?}");
    assert!(
        logged[0].contains("pifleet/dev/junk/sensor/temp"),
        "{logged:?}"
    );
}

#[test]
fn a_history_directory_that_cannot_be_created_is_one_error_and_the_broker_keeps_serving() {
    let tmp = temp_dir("history-blocked");
    let file = tmp.path().join("not-a-directory");
    std::fs::write(&file, "a file where the directory's parent should be").unwrap();
    let dir = file.join("history");
    let broker = Broker::start_with(&[
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--history-dir",
        dir.to_str().unwrap(),
    ]);
    let error = broker
        .proc
        .stderr
        .wait_for("the history error", Duration::from_secs(15), |l| {
            l.contains("not-a-directory/history")
        });
    assert!(
        error.contains("ERROR") && error.contains("cannot create or write"),
        "{error}"
    );

    // MQTT is served as ever.
    let url = broker.url();
    let _kitchen = Agent::start(&url, "kitchen", FAST_SENSOR);
    wait_online(&url, "kitchen");
    let (report, code) = switch(&url, &["on", "kitchen"]);
    assert_eq!(code, Some(0), "{report:?}");
    assert_eq!(outcome(&report, "kitchen"), Outcome::Confirmed);
    let said = broker.proc.stderr.since(0);
    assert_eq!(
        lines_containing(&said, "not-a-directory").len(),
        1,
        "one error, not one per row: {said:?}"
    );
    assert!(!broker
        .proc
        .stdout
        .since(0)
        .iter()
        .any(|l| l.contains("history in")));
}

#[test]
fn a_second_broker_on_the_same_history_directory_does_not_record_into_it() {
    let first = Broker::start_recording(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let dir = first.history_dir();
    let second = Broker::start_with(&[
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--history-dir",
        dir.to_str().unwrap(),
    ]);
    let error = second
        .proc
        .stderr
        .wait_for("the in-use error", Duration::from_secs(15), |l| {
            l.contains("in use by another recorder")
        });
    assert!(
        error.contains(&format!("process {}", first.proc.child.id())),
        "{error}"
    );
    // The second serves MQTT without recording; the first records on.
    publish_all(&second.mqtt, "two", readings("two", 1));
    publish_all(&first.mqtt, "one", readings("one", 1));
    wait_rows(&dir, "one", "the first broker's reading", |rows| {
        rows.len() == 1
    });
    assert!(!dir.join("two").exists(), "nothing from the second broker");
}

#[test]
fn pifleet_record_records_the_same_from_a_broker_that_does_not() {
    let creds = Creds::new();
    let kitchen_secret = creds.add(&["device", "add", "kitchen"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let recorder_secret = creds.add(&["controller", "add", "recorder"]);
    let broker = creds.broker(); // --no-history: the broker records nothing itself
    let url = broker.url();
    let tmp = temp_dir("record");
    let dir = tmp.path().join("history");
    let password = tmp.path().join("recorder.password");
    std::fs::write(&password, format!("{recorder_secret}\n")).unwrap();

    let mut cmd = Command::new(bin("pifleet"));
    cmd.args([
        "record",
        "--broker",
        &url,
        "--user",
        "recorder",
        "--password-file",
    ])
    .arg(&password)
    .arg("--dir")
    .arg(&dir)
    .env_remove("PIFLEET_PASSWORD");
    let mut record = Proc::spawn("pifleet record", cmd);
    record
        .stderr
        .wait_for("the recorder's readiness", Duration::from_secs(15), |l| {
            l.starts_with("pifleet: recording ")
        });

    let mut kitchen = Agent::start(
        &url,
        "kitchen",
        &format!("password = {kitchen_secret:?}\n{FAST_SENSOR}"),
    );
    wait_rows(&dir, "kitchen", "an online presence row", |rows| {
        rows.iter().any(|r| r.kind == Kind::Presence)
    });
    let ops = [("PIFLEET_PASSWORD", ops_secret.as_str())];
    let (report, code) = switch_env(&url, &["--user", "ops", "on", "kitchen"], &ops);
    assert_eq!(code, Some(0), "{report:?}");
    let id = report.command_id.to_string();
    kitchen.proc.signal("TERM");
    kitchen.proc.wait_exit(Duration::from_secs(10));
    wait_rows(
        &dir,
        "kitchen",
        "readings, the command's output row and the offline presence",
        |rows| {
            count(rows, Kind::Sensor) >= 3
                && rows.iter().any(|r| {
                    r.command_id.as_deref() == Some(&id) && r.source.as_deref() == Some("command")
                })
                && rows
                    .iter()
                    .any(|r| r.kind == Kind::Presence && r.value == Some(0.0))
        },
    );
    record.signal("TERM");
    let status = record.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    record
        .stderr
        .wait_for("the recorder's last words", Duration::from_secs(5), |l| {
            l.starts_with("pifleet: stopped recording")
        });

    let out = cli(
        &url,
        &[
            "history",
            "kitchen",
            "led",
            "--json",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let got: HistoryRows = serde_json::from_slice(&out.stdout).unwrap();
    assert!(got
        .rows
        .iter()
        .any(|r| r.command_id.as_deref() == Some(&id)));
}

#[test]
fn the_broker_and_pifleet_history_agree_on_the_default_directory() {
    // A user's broker (XDG state directory) and a systemd unit's (STATE_DIRECTORY).
    for var in ["XDG_STATE_HOME", "STATE_DIRECTORY"] {
        let state = temp_dir("history-default");
        let env = |cmd: &mut Command| {
            cmd.env_remove("XDG_STATE_HOME")
                .env_remove("STATE_DIRECTORY")
                .env_remove("PIFLEET_HISTORY_DIR")
                .env("HOME", state.path().join("home"))
                .env(var, state.path());
        };
        let mut cmd = Command::new(bin("pifleet-broker"));
        cmd.args(["--mqtt", "127.0.0.1:0", "--no-ws"]);
        env(&mut cmd);
        let broker = Broker::ready(Proc::spawn("broker", cmd), false);
        let dir = PathBuf::from(broker.recording_ready());
        let expected = match var {
            "XDG_STATE_HOME" => state.path().join("pifleet/history"),
            _ => state.path().join("history"),
        };
        assert_eq!(dir, expected, "{var}");
        publish_all(&broker.mqtt, "probe", readings("probe", 2));
        wait_rows(&dir, "probe", "two readings", |rows| rows.len() == 2);

        let mut cmd = Command::new(bin("pifleet"));
        cmd.args(["history", "probe", "--json"]);
        env(&mut cmd);
        let out = output_logged("pifleet history probe --json", &mut cmd);
        assert_eq!(out.status.code(), Some(0), "{var}");
        let got: HistoryRows = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got.rows.len(), 2, "{var}");
    }
}
