//! `pifleet-dashboard-bench`: what the dashboard (and the recorder beside it) costs a broker with
//! 1,000 live devices, and whether the page keeps up. `bench/dashboard.sh` builds the release
//! binaries and runs it; docs/performance.md ("Dashboard at 1,000 devices") records a run.
//!
//! For each sensor interval in `--intervals` (10 s, then 1 s), two fresh release
//! `pifleet-broker`s run side by side on free loopback ports, each with
//! `[limits] max_connections_per_ip = 0` and its own state directory: one as deployed (embedded
//! dashboard and recorder, history in its own directory), one with `--no-dashboard
//! --no-history`. Each gets `--devices` real agents (simulated GPIO: output `led`, input
//! `button`, sensor `temp` every interval, groups `g0`…`g9`). Then:
//!
//! 1. **Window** (`--secs`): `--sse-clients` readers of `GET /api/events` on the dashboard and
//!    one plain MQTT subscriber to the sensor topics on each broker. Both brokers' RSS (highest
//!    sample every 250 ms) and CPU (from `/proc`); every sensor reading (device, ts) with `ts`
//!    in the window that the MQTT subscriber received must reach every SSE client, or it is
//!    counted as lost; a fresh `fleet` snapshot (the server's answer to a client that fell
//!    behind) is counted too. Delay from the reading's timestamp to the SSE client.
//! 2. **API**: `GET /api/fleet` `--fleet-requests` times (time, size, devices online), then
//!    `POST /api/command` All on/off (`--command-rounds`, CSRF token from `/api/session`):
//!    request time and how many of the devices confirmed.
//! 3. **Browser** (headless Chromium over WebDriver, unless `--no-browser`): time from navigation
//!    to all rows online in the table; then for `--browser-secs` while the fleet publishes: the
//!    sensor ages the table shows (sampled every 2 s), rows whose value changed, the page's long
//!    tasks (> 50 ms, PerformanceObserver) and its own counters (events, table updates, their
//!    script time), the browser's CPU and the largest renderer's RSS (`/proc`), the JS heap
//!    (`performance.memory`); a filter by group and by name (time of the input handler, rows
//!    shown); an All-off clicked on the page until its report shows every device confirmed.
//!    A page that stops answering WebDriver is reported as `page: failed`, with the rest.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use pifleet_bench::fleet::{sim_sensor, Controller, Fleet};
use pifleet_bench::procfs::{self, cpu_secs, rss_mb};
use pifleet_bench::{pct, print_side_by_side, thousands, Results};
use pifleet_client::BrokerUrl;
use pifleet_proto::fleet::decode;
use pifleet_proto::report::{FleetStatus, SwitchReport, WatchEvent};
use pifleet_proto::time::now_ms;
use pifleet_proto::{CommandId, Name, Topics};
use pifleet_tests::http;
use pifleet_tests::webdriver::Driver;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "pifleet-dashboard-bench")]
struct Args {
    /// Simulated devices per broker.
    #[arg(long, default_value = "1000")]
    devices: usize,
    /// Sensor intervals to run, in seconds (one pair of brokers each).
    #[arg(long, value_delimiter = ',', default_value = "10,1")]
    intervals: Vec<f64>,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value = "60")]
    secs: u64,
    /// Server-sent event readers on the dashboard during the window.
    #[arg(long, default_value = "3")]
    sse_clients: usize,
    /// `GET /api/fleet` requests timed.
    #[arg(long, default_value = "20")]
    fleet_requests: usize,
    /// All on/off commands through `POST /api/command`.
    #[arg(long, default_value = "3")]
    command_rounds: usize,
    /// Skip the browser figures.
    #[arg(long)]
    no_browser: bool,
    /// Seconds the browser watches the live table.
    #[arg(long, default_value = "30")]
    browser_secs: u64,
    /// Save a screenshot of the page with all devices here (`{interval}` is replaced).
    #[arg(long)]
    screenshot: Option<String>,
    /// Directory with pifleet-broker (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Printed in the header: the command line that ran this (bench/dashboard.sh passes it).
    #[arg(long)]
    command: Option<String>,
    /// Printed in the header: the commit measured.
    #[arg(long)]
    commit: Option<String>,
}

/// A pifleet-broker child process in a directory of its own; killed and removed on drop.
struct BrokerProc {
    child: Child,
    dir: PathBuf,
    mqtt: BrokerUrl,
    /// `host:port` of the dashboard, if it serves one.
    dashboard: Option<String>,
}

impl BrokerProc {
    fn start(bin: &Path, dir: PathBuf, with_dashboard: bool) -> BrokerProc {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the broker's directory");
        let config = dir.join("broker.toml");
        std::fs::write(&config, "[limits]\nmax_connections_per_ip = 0\n").unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .args(["--mqtt", "127.0.0.1:0", "--no-ws", "--state-dir"])
            .arg(dir.join("state"))
            .env_remove("PIFLEET_DASHBOARD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("broker.err")).unwrap());
        if with_dashboard {
            cmd.args(["--dashboard", "127.0.0.1:0", "--history-dir"])
                .arg(dir.join("history"));
        } else {
            cmd.args(["--no-dashboard", "--no-history"]);
        }
        let mut child = cmd.spawn().expect("start pifleet-broker");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut mqtt, mut dashboard) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while mqtt.is_none() || (with_dashboard && dashboard.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let err = std::fs::read_to_string(dir.join("broker.err")).unwrap_or_default();
                panic!("pifleet-broker did not start within 20 s:\n{err}");
            };
            if let Some(a) = line.strip_prefix("pifleet-broker: MQTT on ") {
                mqtt = Some(format!("mqtt://{a}").parse().expect("broker address"));
            } else if let Some(u) = line.strip_prefix("pifleet-broker: dashboard on ") {
                let hostport = u.trim_start_matches("http://").trim_end_matches('/');
                dashboard = Some(hostport.to_string());
            }
        }
        BrokerProc {
            child,
            dir,
            mqtt: mqtt.unwrap(),
            dashboard,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Device directories the recorder made.
    fn history_devices(&self) -> usize {
        std::fs::read_dir(self.dir.join("history"))
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sensor readings one client received: (device, reading ts) and the delay from that ts.
#[derive(Default)]
struct Tally {
    readings: HashSet<(String, u64)>,
    /// (reading ts, ms from ts to receipt).
    delays: Vec<(u64, f64)>,
    /// `fleet` snapshots after the first: the server started this client over.
    resyncs: usize,
    /// Any other event (presence, output, input, link).
    other: usize,
}

impl Tally {
    fn sensor(&mut self, device: &str, ts: u64) {
        self.readings.insert((device.to_string(), ts));
        self.delays.push((ts, now_ms().saturating_sub(ts) as f64));
    }

    fn in_window(&self, t0: u64, t1: u64) -> HashSet<&(String, u64)> {
        self.readings
            .iter()
            .filter(|(_, ts)| (t0..=t1).contains(ts))
            .collect()
    }
}

/// Reads `/api/events` on a thread until `stop`.
fn sse_client(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut sse = http::Sse::open(&addr, "/api/events", &[]);
        let mut t = Tally::default();
        let mut snapshots = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let Some((name, data)) = sse.next_before(Instant::now() + Duration::from_millis(200))
            else {
                continue;
            };
            match name.as_str() {
                "fleet" => snapshots += 1,
                "message" => match serde_json::from_str::<WatchEvent>(&data) {
                    Ok(WatchEvent::Sensor {
                        device, reading, ..
                    }) => t.sensor(device.as_str(), reading.ts),
                    Ok(_) => t.other += 1,
                    Err(e) => panic!("an event that is not a WatchEvent ({e}): {data}"),
                },
                _ => t.other += 1,
            }
        }
        t.resyncs = snapshots.saturating_sub(1);
        t
    })
}

/// An MQTT subscriber to every sensor topic of `url`: what the broker carried.
async fn mqtt_tally(
    url: &BrokerUrl,
    topics: &Topics,
) -> (Arc<Mutex<Tally>>, tokio::task::JoinHandle<()>) {
    let mut c = Controller::connect(url, &format!("bench-count:{}", CommandId::generate())).await;
    c.subscribe(vec![topics.sensor_filter(None)]).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t = tally.clone();
    let topics = topics.clone();
    let task = tokio::spawn(async move {
        let _client = c.client;
        while let Some(p) = c.rx.recv().await {
            if let Ok(Some(WatchEvent::Sensor {
                device, reading, ..
            })) = decode(&topics, &p.topic, &p.payload)
            {
                t.lock().unwrap().sensor(device.as_str(), reading.ts);
            }
        }
    });
    (tally, task)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb(x: Option<f64>) -> String {
    x.map_or("?".into(), |v| format!("{v:.1} MB"))
}

fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

/// The dashboard-only figures of the API: `/api/fleet` and All on/off.
fn api_figures(r: &mut Results, addr: &str, n: usize, args: &Args) {
    let mut times = Vec::new();
    let mut size = 0;
    let mut online = 0;
    for _ in 0..args.fleet_requests.max(1) {
        let t = Instant::now();
        let resp = http::get(addr, "/api/fleet", &[]);
        times.push(ms(t.elapsed()));
        assert_eq!(resp.status, 200, "/api/fleet: {}", resp.text());
        size = resp.body.len();
        let fleet: FleetStatus = resp.json();
        online = fleet.devices.iter().filter(|d| d.online).count();
    }
    times.sort_by(f64::total_cmp);
    r.add(
        format!("GET /api/fleet: p50 / max ({} requests)", times.len()),
        format!(
            "{:.1} ms / {:.1} ms, {} KB, {} of {} online",
            pct(&times, 0.5),
            times.last().unwrap(),
            size / 1000,
            thousands(online as u64),
            thousands(n as u64)
        ),
    );

    let session: Value = http::get(addr, "/api/session", &[]).json();
    let csrf = session["csrf"].as_str().expect("a CSRF token").to_string();
    let mut rounds = Vec::new();
    let mut worst = n;
    for i in 0..args.command_rounds {
        let action = if i % 2 == 0 { "on" } else { "off" };
        let t = Instant::now();
        let resp = http::post_json(
            addr,
            "/api/command",
            &[("X-CSRF-Token", csrf.as_str())],
            &json!({"target": "all", "action": action, "timeout_ms": 30000}),
        );
        let took = ms(t.elapsed());
        assert_eq!(resp.status, 200, "/api/command: {}", resp.text());
        let report: SwitchReport = resp.json();
        let ok = report
            .results
            .iter()
            .filter(|x| x.outcome.is_success())
            .count();
        worst = worst.min(ok);
        let slowest = report
            .results
            .iter()
            .filter_map(|x| x.latency_ms)
            .fold(0.0, f64::max);
        rounds.push(format!(
            "{action} {took:.0} ms (slowest device {slowest:.0} ms)"
        ));
    }
    r.add(
        format!("All on/off via POST /api/command ({} rounds)", rounds.len()),
        format!(
            "{}; fewest confirmed {} of {}",
            rounds.join(", "),
            thousands(worst as u64),
            thousands(n as u64)
        ),
    );
}

/// Total CPU seconds of `pids`.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(*p)).sum()
}

const ROWS_ONLINE: &str =
    "return document.querySelectorAll('#fleet tbody tr[data-presence=online]').length";

/// Ages the table shows for sensor `temp`, in seconds, one per row that has it.
const AGES: &str =
    "return [...document.querySelectorAll('#fleet tbody tr [data-sensor=temp] .age')].map(a => { \
    const m = /(\\d+) (s|min|h|d) ago/.exec(a.textContent); if (!m) return -1; \
    return Number(m[1]) * {s: 1, min: 60, h: 3600, d: 86400}[m[2]]; })";

/// The page's own counters: events, table updates and their script time (ms).
const STATS: &str =
    "return typeof stats === 'object' ? [stats.events, stats.flushes, stats.flushMs] : null";

const VALUES: &str = "return [...document.querySelectorAll('#fleet tbody tr')].map(r => { \
    const v = r.querySelector('[data-sensor=temp] .v'); return r.dataset.device + '=' + (v ? v.textContent : ''); })";

/// The browser's profile directory.
fn profile_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "pifleet-dashboard-bench-chromium-{}",
        std::process::id()
    ))
}

/// The browser figures, against the dashboard at `addr` with `n` devices publishing.
fn browser_figures(r: &mut Results, addr: &str, n: usize, args: &Args, label: &str) {
    if args.no_browser {
        return;
    }
    if !pifleet_tests::have("chromium") || !pifleet_tests::have("chromedriver") {
        r.add("browser", "skipped: no chromium and chromedriver");
        return;
    }
    let profile = profile_dir();
    let _ = std::fs::remove_dir_all(&profile);
    let d = Driver::start_with(&profile, &["--enable-precise-memory-info"]);
    let url = format!("http://{addr}/");
    let started = Instant::now();
    d.goto(&url);
    let all_rows = format!(
        "return document.querySelectorAll('#fleet tbody tr[data-presence=online]').length >= {n}"
    );
    let shown = d.poll(Duration::from_secs(120), &all_rows);
    match shown {
        Some(_) => r.add(
            format!(
                "page: navigation to all {} rows online",
                thousands(n as u64)
            ),
            format!("{:.2} s", started.elapsed().as_secs_f64()),
        ),
        None => {
            let rows = d.js(ROWS_ONLINE);
            r.add(
                format!(
                    "page: navigation to all {} rows online",
                    thousands(n as u64)
                ),
                format!("not within 120 s ({rows} rows)"),
            );
        }
    }
    // Long tasks from here on.
    d.js(
        "window.__bench = {lt: []}; new PerformanceObserver((l) => { \
          for (const e of l.getEntries()) window.__bench.lt.push(e.duration); }) \
          .observe({type: 'longtask'}); return 1;",
    );
    std::thread::sleep(Duration::from_secs(2));
    d.js("window.__bench.lt = []; return 1;");
    let browser = pifleet_tests::descendants(d.pid());
    let renderers: Vec<u32> = browser
        .iter()
        .copied()
        .filter(|p| pifleet_tests::cmdline(*p).contains("--type=renderer"))
        .collect();
    let before: Vec<String> = serde_json::from_value(d.js(VALUES)).unwrap_or_default();
    let stats0 = d.js(STATS);
    let cpu0 = cpu_of(&browser);
    let renderer_cpu0 = cpu_of(&renderers);
    let w0 = Instant::now();
    let mut ages: Vec<f64> = Vec::new();
    let mut missing_age = 0usize;
    let mut rtt = Vec::new();
    while w0.elapsed() < Duration::from_secs(args.browser_secs) {
        let t = Instant::now();
        let a: Vec<f64> = serde_json::from_value(d.js(AGES)).unwrap_or_default();
        rtt.push(ms(t.elapsed()));
        missing_age += a.iter().filter(|x| **x < 0.0).count() + n.saturating_sub(a.len());
        ages.extend(a.into_iter().filter(|x| *x >= 0.0));
        std::thread::sleep(Duration::from_secs(2));
    }
    let secs = w0.elapsed().as_secs_f64();
    let cpu = (cpu_of(&browser) - cpu0) / secs * 100.0;
    let renderer_cpu = (cpu_of(&renderers) - renderer_cpu0) / secs * 100.0;
    let after: Vec<String> = serde_json::from_value(d.js(VALUES)).unwrap_or_default();
    let stats1 = d.js(STATS);
    let changed = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && a.split('=').next() == b.split('=').next())
        .count();
    ages.sort_by(f64::total_cmp);
    rtt.sort_by(f64::total_cmp);
    let long: Vec<f64> =
        serde_json::from_value(d.js("return window.__bench.lt")).unwrap_or_default();
    let heap = d.js(
        "return performance.memory ? [performance.memory.usedJSHeapSize, performance.memory.totalJSHeapSize] : null",
    );
    // Each renderer's RSS counts the shared libraries again: the largest one is the page's.
    let renderer_rss = renderers
        .iter()
        .filter_map(|p| rss_mb(*p))
        .fold(0.0, f64::max);
    let window = format!("{:.0} s", secs);
    r.add(
        format!("page: sensor age shown, p50 / p99 / max ({window})"),
        format!(
            "{:.0} s / {:.0} s / {:.0} s ({} samples{})",
            pct(&ages, 0.5),
            pct(&ages, 0.99),
            ages.last().copied().unwrap_or(f64::NAN),
            thousands(ages.len() as u64),
            if missing_age > 0 {
                format!(", {missing_age} rows without an age")
            } else {
                String::new()
            }
        ),
    );
    r.add(
        format!("page: rows whose reading changed on screen ({window})"),
        format!(
            "{} of {}",
            thousands(changed as u64),
            thousands(before.len() as u64)
        ),
    );
    let delta =
        |i: usize| stats1[i].as_f64().unwrap_or(f64::NAN) - stats0[i].as_f64().unwrap_or(f64::NAN);
    r.add(
        format!("page: events handled; table updates, their script time ({window})"),
        if stats1.is_array() {
            format!(
                "{} ({:.0}/s); {} updates, {:.0} ms in all",
                thousands(delta(0) as u64),
                delta(0) / secs,
                delta(1),
                delta(2)
            )
        } else {
            "not available (no stats in this page)".to_string()
        },
    );
    let total_long: f64 = long.iter().sum();
    r.add(
        format!("page: long tasks > 50 ms ({window})"),
        format!(
            "{} ({:.0} ms in all, longest {:.0} ms)",
            long.len(),
            total_long,
            long.iter().copied().fold(0.0, f64::max)
        ),
    );
    r.add(
        format!("page: WebDriver script round trip p50 / max ({window})"),
        format!(
            "{:.0} ms / {:.0} ms",
            pct(&rtt, 0.5),
            rtt.last().copied().unwrap_or(f64::NAN)
        ),
    );
    r.add(
        format!("browser CPU, all processes / renderer ({window})"),
        format!("{cpu:.1} % / {renderer_cpu:.1} % of one core"),
    );
    r.add(
        "page: JS heap used / total; largest renderer's RSS",
        match heap.as_array() {
            Some(h) if h.len() == 2 => format!(
                "{:.1} MB / {:.1} MB; {renderer_rss:.0} MB",
                h[0].as_f64().unwrap_or(f64::NAN) / 1e6,
                h[1].as_f64().unwrap_or(f64::NAN) / 1e6
            ),
            _ => format!("not available; {renderer_rss:.0} MB"),
        },
    );

    // Filters: the input handler's time, and what it shows.
    let filter = |q: &str| -> (f64, u64) {
        let v = d.js(&format!(
            "const f = document.getElementById('filter'); const t = performance.now(); \
             f.value = {q:?}; f.dispatchEvent(new Event('input')); const took = performance.now() - t; \
             return [took, [...document.querySelectorAll('#fleet tbody tr')].filter(r => !r.hidden).length]"
        ));
        (
            v[0].as_f64().unwrap_or(f64::NAN),
            v[1].as_u64().unwrap_or(0),
        )
    };
    let (tg, ng) = filter("g3");
    let (tn, nn) = filter("dev-12");
    let (tc, nc) = filter("");
    r.add(
        "page: filter by group g3 / name dev-12 / cleared",
        format!(
            "{tg:.1} ms ({} rows) / {tn:.1} ms ({} rows) / {tc:.1} ms ({} rows)",
            thousands(ng),
            thousands(nn),
            thousands(nc)
        ),
    );

    // All off, clicked.
    let t = Instant::now();
    d.click("#ctl-off");
    let done = format!(
        "return document.getElementById('results-caption').textContent.includes('off → all devices: {n} of {n} confirmed')"
    );
    let clicked = d.poll(Duration::from_secs(60), &done);
    r.add(
        "page: All off clicked, until its report shows all confirmed",
        match clicked {
            Some(_) => format!("{:.2} s", t.elapsed().as_secs_f64()),
            None => format!(
                "not within 60 s: {}",
                d.js("return document.getElementById('results-caption').textContent")
            ),
        },
    );
    let error =
        d.js("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent");
    r.add(
        "page: error banner at the end",
        match error.as_str() {
            Some("") => "none".to_string(),
            _ => error.to_string(),
        },
    );
    if let Some(path) = &args.screenshot {
        let path = path.replace("{interval}", label);
        std::fs::write(&path, d.screenshot()).expect("write the screenshot");
        println!("  (screenshot: {path})");
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&profile);
}

/// One interval: both brokers, their fleets, the window, the API and the browser.
fn run_interval(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    bin: &Path,
    interval: f64,
) -> [Results; 2] {
    let n = args.devices;
    let label = format!("{interval}s");
    println!(
        "== {} devices, sensor temp every {interval} s",
        thousands(n as u64)
    );
    let base = std::env::temp_dir().join(format!("pifleet-dashboard-bench-{}", std::process::id()));
    let dash = BrokerProc::start(bin, base.join("dashboard"), true);
    let bare = BrokerProc::start(bin, base.join("bare"), false);
    let addr = dash.dashboard.clone().unwrap();
    let (mut rd, mut rb) = (Results::default(), Results::default());
    let topics = Topics::default();
    for (r, b) in [(&mut rd, &dash), (&mut rb, &bare)] {
        r.add("broker RSS before the devices", mb(rss_mb(b.pid())));
    }

    let configure = |i: usize, c: &mut pifleet_agent::config::Config| {
        c.sensors = vec![sim_sensor("temp", interval)];
        c.groups = vec![Name::new(format!("g{}", i % 10)).unwrap()];
    };
    let join = Duration::from_secs(120);
    let started = Instant::now();
    let ((fd, jd), (fb, jb)) = rt.block_on(async {
        tokio::join!(
            Fleet::start_with(&dash.mqtt, "dev", n, &topics, join, configure),
            Fleet::start_with(&bare.mqtt, "dev", n, &topics, join, configure),
        )
    });
    let took = started.elapsed().as_secs_f64();
    for (r, j) in [(&mut rd, jd), (&mut rb, jb)] {
        r.add(
            format!(
                "{} agents joined (both fleets at once)",
                thousands(n as u64)
            ),
            format!("{} in {took:.1} s", thousands(j as u64)),
        );
    }

    // The window.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.sse_clients)
        .map(|_| sse_client(addr.clone(), stop.clone()))
        .collect();
    let ((count_d, task_d), (count_b, task_b)) = rt.block_on(async {
        (
            mqtt_tally(&dash.mqtt, &topics).await,
            mqtt_tally(&bare.mqtt, &topics).await,
        )
    });
    std::thread::sleep(Duration::from_secs(5)); // retained replays and the first readings
    let sampling = Arc::new(AtomicBool::new(false));
    let ignore = Arc::new(AtomicBool::new(false));
    let t0 = now_ms();
    let w0 = Instant::now();
    let samplers: Vec<_> = [dash.pid(), bare.pid()]
        .iter()
        .map(|&p| procfs::sampler(p, f64::INFINITY, w0, sampling.clone(), ignore.clone()))
        .collect();
    let cpu0 = [
        cpu_secs(dash.pid()),
        cpu_secs(bare.pid()),
        cpu_secs(std::process::id()),
    ];
    let load0 = procfs::loadavg();
    std::thread::sleep(Duration::from_secs(args.secs));
    let secs = w0.elapsed().as_secs_f64();
    let t1 = now_ms();
    let cpu1 = [
        cpu_secs(dash.pid()),
        cpu_secs(bare.pid()),
        cpu_secs(std::process::id()),
    ];
    let load1 = procfs::loadavg();
    sampling.store(true, Ordering::Relaxed);
    let cpu: Vec<f64> = (0..3)
        .map(|i| match (cpu0[i], cpu1[i]) {
            (Some(a), Some(b)) => (b - a) / secs * 100.0,
            _ => f64::NAN,
        })
        .collect();
    // Stragglers: readings from the end of the window still on their way.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = clients
        .into_iter()
        .map(|c| c.join().expect("an SSE client failed (see above)"))
        .collect();
    let window = format!("{secs:.0} s");
    for (i, (r, (s, _))) in [(&mut rd, &samplers[0]), (&mut rb, &samplers[1])]
        .into_iter()
        .enumerate()
    {
        let s = s.lock().unwrap();
        r.add(
            format!("broker RSS at the end / highest ({window})"),
            format!(
                "{} / {}",
                mb(s.rss.last().map(|x| x.1)),
                mb(s.max().map(|x| x.1))
            ),
        );
        r.add(
            format!("broker CPU ({window})"),
            format!("{:.1} % of one core", cpu[i]),
        );
    }
    for (r, c) in [(&mut rd, &count_d), (&mut rb, &count_b)] {
        let c = c.lock().unwrap();
        let carried = c.in_window(t0, t1).len();
        r.add(
            format!("sensor readings carried to an MQTT subscriber ({window})"),
            format!(
                "{} ({:.0}/s)",
                thousands(carried as u64),
                carried as f64 / secs
            ),
        );
    }
    let expected: HashSet<(String, u64)> = count_d
        .lock()
        .unwrap()
        .in_window(t0, t1)
        .into_iter()
        .cloned()
        .collect();
    let expected: HashSet<&(String, u64)> = expected.iter().collect();
    let mut lost = Vec::new();
    let mut extra = 0;
    let mut delays = Vec::new();
    let mut resyncs = Vec::new();
    for t in &tallies {
        let got = t.in_window(t0, t1);
        lost.push(expected.difference(&got).count());
        extra += got.difference(&expected).count();
        delays.extend(
            t.delays
                .iter()
                .filter(|(ts, _)| (t0..=t1).contains(ts))
                .map(|x| x.1),
        );
        resyncs.push(t.resyncs);
    }
    delays.sort_by(f64::total_cmp);
    rd.add(
        format!("SSE: readings lost, per client ({} clients)", tallies.len()),
        format!(
            "{} of {} each; {} fresh snapshots (fell behind); {extra} unexpected",
            lost.iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            thousands(expected.len() as u64),
            resyncs
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
        ),
    );
    rd.add(
        "SSE: reading ts to client, p50 / p99 / max",
        format!(
            "{:.0} ms / {:.0} ms / {:.0} ms",
            pct(&delays, 0.5),
            pct(&delays, 0.99),
            delays.last().copied().unwrap_or(f64::NAN)
        ),
    );
    rd.add(
        format!(
            "bench process CPU (2 × {} agents, clients)",
            thousands(n as u64)
        ),
        format!(
            "{:.1} % of one core; load average {load0} → {load1}",
            cpu[2]
        ),
    );
    rd.add("dashboard + recorder cost: RSS / CPU (end of window)", {
        let end = |s: &Arc<Mutex<procfs::Samples>>| s.lock().unwrap().rss.last().map(|x| x.1);
        match (end(&samplers[0].0), end(&samplers[1].0)) {
            (Some(a), Some(b)) => {
                format!("{:+.1} MB / {:+.1} % of one core", a - b, cpu[0] - cpu[1])
            }
            _ => "?".into(),
        }
    });
    for (_, h) in samplers {
        let _ = h.join();
    }

    api_figures(&mut rd, &addr, n, args);
    // A page that stops answering fails its WebDriver calls: that is a figure, not the end.
    let browser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser_figures(&mut rd, &addr, n, args, &label)
    }));
    if let Err(e) = browser {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let why: String = why.chars().take(300).collect();
        rd.add("page: failed", why);
        let _ = std::fs::remove_dir_all(profile_dir());
    }
    rd.add(
        "broker RSS after the API and the page",
        mb(rss_mb(dash.pid())),
    );
    rd.add(
        "recorder: device directories in its history",
        thousands(dash.history_devices() as u64),
    );
    task_d.abort();
    task_b.abort();
    rt.block_on(async {
        tokio::join!(fd.stop(), fb.stop());
    });
    drop(dash);
    drop(bare);
    let _ = std::fs::remove_dir_all(&base);
    [rd, rb]
}

fn main() {
    let args = Args::parse();
    let bins = pifleet_bench::bin_dir(args.bin_dir.as_deref());
    let bin = bins.join("pifleet-broker");
    assert!(
        bin.exists(),
        "{} is missing (cargo build --release -p pifleet-broker)",
        bin.display()
    );
    let need = 4 * args.devices as u64 + 256;
    if let Some(limit) = open_files_limit().filter(|l| *l < need) {
        eprintln!(
            "pifleet-dashboard-bench: the open-files limit is {limit}; {need} are needed (ulimit -n 65536)"
        );
        std::process::exit(2);
    }
    println!(
        "command: {}",
        args.command.as_deref().unwrap_or("pifleet-dashboard-bench")
    );
    println!("commit: {}", args.commit.as_deref().unwrap_or("unknown"));
    println!(
        "machine: {} cores, load average {} at the start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        procfs::loadavg()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tables = Vec::new();
    for &interval in &args.intervals {
        tables.push((interval, run_interval(&rt, &args, &bin, interval)));
    }
    for (interval, results) in &tables {
        println!();
        println!(
            "{} devices, sensor every {interval} s:",
            thousands(args.devices as u64)
        );
        print_side_by_side(
            &["with dashboard + recorder", "--no-dashboard --no-history"],
            results,
        );
    }
    println!("load average at the end: {}", procfs::loadavg());
    rt.shutdown_background();
}
