//! `pifleet-history-bench`: the history recorder's write throughput and the 30-day query time.
//!
//! 1. **Write**: `--rows` sensor messages spread over `--devices` devices, each an MQTT topic and
//!    JSON payload decoded and recorded exactly as the recorder service will (limits lifted,
//!    the recorder's clock advancing 1 ms per message, a tick every 200 ms of it), then
//!    flushed; rows/s over the whole run. Read back with the reader: every device's values
//!    must be 0, 1, 2, … with no gap, or the run fails. The same for prebuilt rows (no JSON).
//! 2. **Query**: one device, sensor `temp` every `--interval-secs` (10) for `--days` (30)
//!    days, 259,200 points, plus a `cpu` reading a minute beside it in the same files; then
//!    the series query for `temp` over the 30 days into `--buckets` (800), `--runs` times:
//!    min / median / max. Raw rows of the same range for comparison.
//!
//! Run it in release: `cargo run --release -p pifleet-bench --bin pifleet-history-bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use pifleet_history::{
    Day, HistoryReader, Kind, Recorder, RecorderConfig, Row, RowFilter, TimeRange,
};
use pifleet_proto::{Name, Topics};

#[derive(Parser)]
#[command(name = "pifleet-history-bench")]
struct Args {
    /// Where to write (default: a fresh directory under the system's temp dir, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Messages for the write figure.
    #[arg(long, default_value = "1000000")]
    rows: u64,
    /// Devices the messages are spread over.
    #[arg(long, default_value = "10")]
    devices: u64,
    /// Days of history for the query figure.
    #[arg(long, default_value = "30")]
    days: u32,
    /// Seconds between two readings of the queried sensor.
    #[arg(long, default_value = "10")]
    interval_secs: u64,
    /// Buckets the query downsamples into.
    #[arg(long, default_value = "800")]
    buckets: usize,
    /// Query repetitions.
    #[arg(long, default_value = "10")]
    runs: usize,
}

fn unlimited(dir: PathBuf) -> RecorderConfig {
    RecorderConfig {
        rows_per_sec: 1e12,
        burst: u32::MAX,
        max_rows_per_day: u64::MAX,
        keep_days: 100_000,
        ..RecorderConfig::new(dir)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args = Args::parse();
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("pifleet-history-bench-{}", std::process::id())),
            true,
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    println!("history bench in {}", dir.display());

    let ok = write_figures(&args, &dir.join("write")) & query_figures(&args, &dir.join("query"));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !ok {
        std::process::exit(1);
    }
}

/// The start of the synthetic clock: some fixed UTC midnight.
fn epoch_day() -> Day {
    Day::from_ymd(2026, 1, 1).expect("a valid date")
}

fn write_figures(args: &Args, dir: &std::path::Path) -> bool {
    let topics = Topics::default();
    let devices: Vec<Name> = (0..args.devices)
        .map(|i| Name::new(format!("pi-{i:03}")).expect("valid"))
        .collect();
    let sensor_topics: Vec<String> = devices
        .iter()
        .map(|d| topics.sensor(d, &Name::new("temp").expect("valid")))
        .collect();
    let t0 = epoch_day().start_ms();
    let mut ok = true;

    for (label, json) in [
        ("MQTT messages (decode + record)", true),
        ("prebuilt rows (record)", false),
    ] {
        let dir = dir.join(if json { "json" } else { "rows" });
        let mut rec = Recorder::new(unlimited(dir.clone())).expect("valid config");
        let n = args.rows;
        let d = args.devices;
        // Payloads are built outside the timed loop, so the figure is the recorder's.
        let payloads: Vec<Vec<u8>> = if json {
            (0..n)
                .map(|i| {
                    format!(
                        r#"{{"value":{},"unit":"°C","kind":"sim","ts":{}}}"#,
                        i / d,
                        t0 + i
                    )
                    .into_bytes()
                })
                .collect()
        } else {
            Vec::new()
        };
        let started = Instant::now();
        for i in 0..n {
            let now = t0 + i;
            let dev = (i % d) as usize;
            if json {
                rec.record_message(&topics, &sensor_topics[dev], &payloads[i as usize], now)
                    .expect("valid payload");
            } else {
                let row = Row {
                    value: Some((i / d) as f64),
                    unit: Some("°C".into()),
                    source: Some("sim".into()),
                    device_ms: Some(now),
                    ..Row::new(now, Kind::Sensor, "temp")
                };
                rec.record(&devices[dev], row);
            }
            if i % 200 == 0 {
                rec.tick(now);
            }
        }
        rec.flush();
        let elapsed = started.elapsed();
        let stats = rec.stats().clone();
        drop(rec);

        // Read everything back: each device's values are 0, 1, 2, … without a gap.
        let reader = HistoryReader::new(&dir);
        let range = TimeRange::new(t0, t0 + n + 1).expect("non-empty");
        let read_started = Instant::now();
        let mut read = 0u64;
        let mut intact = true;
        for dev in &devices {
            let rows = reader
                .rows(dev, &range, &RowFilter::default())
                .expect("readable");
            intact &= rows.skipped_total == 0
                && rows
                    .rows
                    .iter()
                    .enumerate()
                    .all(|(k, r)| r.value == Some(k as f64));
            read += rows.rows.len() as u64;
        }
        let read_elapsed = read_started.elapsed();
        let lost = n - read;
        println!(
            "write, {label}: {n} rows over {d} devices in {:.0} ms = {:.0} rows/s; \
             read back {read} rows in {:.0} ms, lost {lost}, in order and intact: {intact} \
             (recorder: kept {}, written {}, dropped {})",
            ms(elapsed),
            n as f64 / elapsed.as_secs_f64(),
            ms(read_elapsed),
            stats.kept,
            stats.written,
            stats.dropped_rate + stats.dropped_daily_cap + stats.dropped_unwritable,
        );
        ok &= lost == 0 && intact && stats.written == n;
    }
    ok
}

fn query_figures(args: &Args, dir: &std::path::Path) -> bool {
    let device = Name::new("kitchen").expect("valid");
    let first = epoch_day();
    let until_day = Day::from_number(first.number() + args.days);
    let interval = args.interval_secs * 1000;

    let started = Instant::now();
    let mut rec = Recorder::new(unlimited(dir.to_path_buf())).expect("valid config");
    let mut t = first.start_ms();
    let mut points = 0u64;
    while t < until_day.start_ms() {
        let row = Row {
            value: Some(20.0 + ((t / 1000) % 1000) as f64 / 100.0),
            unit: Some("°C".into()),
            source: Some("ds18b20".into()),
            device_ms: Some(t - 7),
            ..Row::new(t, Kind::Sensor, "temp")
        };
        rec.record(&device, row);
        points += 1;
        if (t / 1000).is_multiple_of(60) {
            let cpu = Row {
                value: Some(45.5),
                unit: Some("°C".into()),
                source: Some("cpu_temp".into()),
                device_ms: Some(t - 3),
                ..Row::new(t + 1, Kind::Sensor, "cpu")
            };
            rec.record(&device, cpu);
        }
        rec.tick(t);
        t += interval;
    }
    drop(rec);
    let bytes: u64 = std::fs::read_dir(dir.join(device.as_str()))
        .expect("written")
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    println!(
        "query data: {points} temp readings (every {} s for {} days) plus a cpu reading a \
         minute, {} files, {:.1} MB, written in {:.0} ms",
        args.interval_secs,
        args.days,
        args.days,
        bytes as f64 / 1e6,
        ms(started.elapsed())
    );

    let reader = HistoryReader::new(dir);
    let range = TimeRange::new(first.start_ms(), until_day.start_ms()).expect("non-empty");
    let mut times = Vec::new();
    let mut ok = true;
    let cpu_before = cpu_ms();
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let s = reader
            .series(&device, "temp", &range, args.buckets)
            .expect("readable");
        times.push(started.elapsed());
        ok &= s.points == points && s.buckets.len() <= args.buckets && s.skipped_total == 0;
    }
    let cpu = cpu_ms()
        .zip(cpu_before)
        .map(|(a, b)| (a - b) / times.len() as f64);
    times.sort();
    println!(
        "query: series temp over {} days into {} buckets, {points} points: min {:.1} ms, \
         median {:.1} ms, max {:.1} ms, CPU {} per query ({} runs, files in the page cache, \
         {} threads); correct: {ok}",
        args.days,
        args.buckets,
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        cpu.map_or("?".into(), |c| format!("{c:.0} ms")),
        times.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let started = Instant::now();
    let raw = reader
        .rows(
            &device,
            &range,
            &RowFilter {
                name: Some("temp".into()),
                kind: None,
            },
        )
        .expect("readable");
    println!(
        "query: raw rows of temp over {} days: {} rows in {:.1} ms",
        args.days,
        raw.rows.len(),
        ms(started.elapsed())
    );
    ok && raw.rows.len() as u64 == points
}

/// CPU time this process has used (user + system, all threads), from `/proc/self/stat`, in
/// milliseconds; `None` off Linux. Wall time on a shared machine says as much about the
/// neighbours as about the query; CPU time does not. Assumes the usual 100 clock ticks per
/// second.
fn cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime), counted after the name (field 2).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * 10.0)
}
