//! `pifleet-bench`: the fleet benchmark. Runs the same measurements against each broker given
//! with `--target NAME=URL[@PID]` and prints them side by side. Simulated devices are real
//! agents (the agent library with the simulated GPIO backend), so the figures include the
//! agent's own code; the controller side speaks the CLI's protocol.
//!
//! Figures: command confirmation latency (p50/p99 over `--commands`), fan-out of one command to
//! N devices (p50/max over `--rounds`), QoS 0 telemetry throughput from two publishers with the
//! loss count, broker RSS (idle and with N devices, when a PID is given), the agent's idle RSS
//! and CPU, and whether `pifleet status` lists all N devices. `bench/run.sh` starts
//! pifleet-broker and mosquitto and runs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use pifleet_bench::fleet::{self, Controller, Fleet};
use pifleet_bench::procfs::{cpu_secs, rss_mb};
use pifleet_bench::{pct, print_side_by_side, Results};
use pifleet_client::BrokerUrl;
use pifleet_proto::fleet::decode;
use pifleet_proto::report::{FleetStatus, WatchEvent};
use pifleet_proto::{Action, Command as Cmd, CommandId, Name, Target, Topics};
use rumqttc::QoS;

#[derive(Parser)]
#[command(name = "pifleet-bench")]
struct Args {
    /// A broker to measure: NAME=URL or NAME=URL@PID (the PID enables RSS figures). Repeatable.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Commands for the confirmation-latency figure.
    #[arg(long, default_value = "5000")]
    commands: usize,
    /// Fleet sizes for the fan-out figure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fanout: Vec<usize>,
    /// How long a fleet of N may take to come online before its figures are skipped.
    #[arg(long, default_value = "600")]
    join_timeout: u64,
    /// Fan-out rounds per fleet size.
    #[arg(long, default_value = "5")]
    rounds: usize,
    /// Messages per telemetry publisher.
    #[arg(long, default_value = "200000")]
    telemetry: usize,
    /// Seconds to watch an idle agent process for its CPU figure.
    #[arg(long, default_value = "10")]
    idle_secs: u64,
    /// Confirmation latency only, on every target at once: one command to each in turn, so
    /// that all of them see the same load (the fair side-by-side on a shared machine).
    #[arg(long)]
    latency_only: bool,
    /// With `--latency-only`: QoS 0 telemetry at this many messages a second through each
    /// target (one publisher, one subscriber, 64 B) while the latency is measured: the
    /// confirmation latency of a broker that is also carrying a fleet's sensor traffic.
    #[arg(long, default_value = "0")]
    background: u32,
    /// The most one target's measurements may take, in seconds: a broker that stops making
    /// progress (as stock rumqttd did with 10,000 devices) gets what was measured so far and a
    /// note, and the next target is measured.
    #[arg(long, default_value = "1200")]
    target_deadline: u64,
    /// Directory with the pifleet-agent and pifleet binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct TargetSpec {
    name: String,
    url: BrokerUrl,
    pid: Option<u32>,
}

fn parse_target(s: &str) -> TargetSpec {
    let (name, rest) = s.split_once('=').expect("--target NAME=URL[@PID]");
    let (url, pid) = match rest.rsplit_once('@') {
        Some((u, p)) => (u, Some(p.parse().expect("PID"))),
        None => (rest, None),
    };
    TargetSpec {
        name: name.to_string(),
        url: url.parse().expect("broker URL"),
        pid,
    }
}

/// Sends `cmd` to `target` and waits for `expect` acknowledgements; returns the elapsed time.
async fn command_round(
    c: &mut Controller,
    topics: &Topics,
    target: &Target,
    expect: usize,
    action: Action,
) -> (Duration, usize) {
    let cmd = Cmd::switch(action, None);
    let payload = serde_json::to_vec(&cmd).unwrap();
    let started = Instant::now();
    c.client
        .publish(topics.command(target), QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked < expect {
        let Ok(Some(p)) = tokio::time::timeout_at(deadline, c.rx.recv()).await else {
            break;
        };
        if let Ok(Some(WatchEvent::Output { state, .. })) = decode(topics, &p.topic, &p.payload) {
            if state.cmd.as_ref() == Some(&cmd.id) {
                acked += 1;
            }
        }
    }
    (started.elapsed(), acked)
}

/// One device and one controller for the confirmation-latency figure.
struct LatencySide {
    fleet: Fleet,
    controller: Controller,
    micros: Vec<f64>,
}

impl LatencySide {
    async fn start(url: &BrokerUrl, topics: &Topics) -> LatencySide {
        let (fleet, _) = Fleet::start(url, "lat", 1, topics, Duration::from_secs(60)).await;
        let mut controller =
            Controller::connect(url, &format!("bench-ctl:{}", CommandId::generate())).await;
        controller.subscribe(vec![topics.output_filter(None)]).await;
        LatencySide {
            fleet,
            controller,
            micros: Vec::new(),
        }
    }

    /// Command number `i` (on and off in turn), timed until its confirmation.
    async fn command(&mut self, topics: &Topics, i: usize) {
        let target = Target::Device(Name::new("lat-0").unwrap());
        let action = if i.is_multiple_of(2) {
            Action::On
        } else {
            Action::Off
        };
        let (d, acked) = command_round(&mut self.controller, topics, &target, 1, action).await;
        assert_eq!(acked, 1, "command {i} was not confirmed");
        self.micros.push(d.as_secs_f64() * 1e6);
    }

    async fn finish(mut self, r: &mut Results, commands: usize, how: &str) {
        self.micros.sort_by(f64::total_cmp);
        r.add(
            format!("confirmation latency p50 / p99 ({commands} commands{how})"),
            format!(
                "{:.0} µs / {:.0} µs",
                pct(&self.micros, 0.5),
                pct(&self.micros, 0.99)
            ),
        );
        self.fleet.stop().await;
    }
}

/// `--background`: a steady stream of QoS 0 sensor messages through one broker, from one
/// publisher to one subscriber, until stopped.
struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    publisher: tokio::task::JoinHandle<u64>,
    subscriber: tokio::task::JoinHandle<u64>,
    started: Instant,
}

impl Background {
    async fn start(url: &BrokerUrl, topics: &Topics, rate: u32) -> Background {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut sub =
            Controller::connect(url, &format!("bench-bg-sub:{}", CommandId::generate())).await;
        sub.subscribe(vec![topics.sensor_filter(None)]).await;
        let stopped = stop.clone();
        let subscriber = tokio::spawn(async move {
            let mut got = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(100), sub.rx.recv()).await {
                    Ok(Some(_)) => got += 1,
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            got
        });
        let (client, mut ev) = fleet::client(
            url,
            &format!("bench-bg-pub:{}", CommandId::generate()),
            |_| {},
        );
        let topic = topics.sensor(&Name::new("bg-0").unwrap(), &Name::new("t").unwrap());
        let stopped = stop.clone();
        let publisher = tokio::spawn(async move {
            let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
            // A burst every millisecond: the rate without a timer per message.
            let per_tick = rate.div_ceil(1000).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut sent = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_tick {
                    if client
                        .publish(topic.clone(), QoS::AtMostOnce, false, vec![b'x'; 64])
                        .await
                        .is_err()
                    {
                        return sent;
                    }
                    sent += 1;
                }
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
            sent
        });
        Background {
            stop,
            publisher,
            subscriber,
            started: Instant::now(),
        }
    }

    /// Stops the stream; the row says what it carried.
    async fn finish(self, r: &mut Results) {
        let secs = self.started.elapsed().as_secs_f64();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.publisher.await.unwrap_or(0);
        let got = self.subscriber.await.unwrap_or(0);
        r.add(
            "background QoS 0 telemetry during the latency figure",
            format!(
                "{:.0} msg/s sent, {:.0} msg/s delivered",
                sent as f64 / secs,
                got as f64 / secs
            ),
        );
    }
}

/// `--latency-only`: the confirmation latency of every target, measured at once (one command
/// to each in turn, the first target rotating), so a busy machine slows all of them alike.
async fn interleaved_latency(targets: &[TargetSpec], args: &Args) -> Vec<Results> {
    let topics = Topics::new(&format!("bench{}", std::process::id())).unwrap();
    let mut sides = Vec::new();
    for t in targets {
        sides.push(LatencySide::start(&t.url, &topics).await);
    }
    let mut background = Vec::new();
    if args.background > 0 {
        for t in targets {
            background.push(Background::start(&t.url, &topics, args.background).await);
        }
        // Let the streams settle before timing anything.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let how = match args.background {
        0 => ", interleaved".to_string(),
        n => format!(", interleaved, {n} msg/s background"),
    };
    for i in 0..args.commands {
        let n = sides.len();
        for k in 0..n {
            sides[(i + k) % n].command(&topics, i).await;
        }
    }
    let mut all = Vec::new();
    let mut background = background.into_iter();
    for (t, side) in targets.iter().zip(sides) {
        let mut r = Results { rows: vec![] };
        println!("== {} ({})", t.name, t.url);
        let bg = background.next();
        side.finish(&mut r, args.commands, &how).await;
        if let Some(bg) = bg {
            bg.finish(&mut r).await;
        }
        all.push(r);
    }
    all
}

/// Every figure of one target, into `r` as they are measured (so a measurement stopped by
/// `--target-deadline` keeps what it had).
async fn measure(t: &TargetSpec, args: &Args, bins: &std::path::Path, r: &mut Results) {
    let topics = Topics::new(&format!("bench{}", std::process::id())).unwrap();
    println!("== {} ({})", t.name, t.url);
    if let Some(pid) = t.pid {
        r.add(
            "broker RSS idle",
            format!("{:.1} MB", rss_mb(pid).unwrap_or(f64::NAN)),
        );
    }

    // Confirmation latency: one device, commands one after another.
    {
        let mut side = LatencySide::start(&t.url, &topics).await;
        for i in 0..args.commands {
            side.command(&topics, i).await;
        }
        side.finish(r, args.commands, "").await;
    }

    // Telemetry: two publishers, QoS 0, 64-byte payloads, one subscriber counting.
    {
        let mut sub =
            Controller::connect(&t.url, &format!("bench-tele-sub:{}", CommandId::generate())).await;
        sub.subscribe(vec![topics.sensor_filter(None)]).await;
        let payload = vec![b'x'; 64];
        let per = args.telemetry;
        let mut pubs = Vec::new();
        for k in 0..2 {
            let (client, mut ev) = fleet::client(
                &t.url,
                &format!("bench-tele-pub{k}:{}", CommandId::generate()),
                |_| {},
            );
            let topic = topics.sensor(
                &Name::new(format!("tele-{k}")).unwrap(),
                &Name::new("t").unwrap(),
            );
            let payload = payload.clone();
            pubs.push(tokio::spawn(async move {
                let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
                for _ in 0..per {
                    client
                        .publish(topic.clone(), QoS::AtMostOnce, false, payload.clone())
                        .await
                        .unwrap();
                }
                // Let the event loop drain before stopping it.
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(60), driver).await;
            }));
        }
        let total = 2 * per;
        let mut got = 0usize;
        let mut first = None;
        let mut last = Instant::now();
        while got < total {
            match tokio::time::timeout(Duration::from_secs(3), sub.rx.recv()).await {
                Ok(Some(_)) => {
                    got += 1;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                _ => break,
            }
        }
        for p in pubs {
            let _ = p.await;
        }
        let secs = first.map_or(f64::NAN, |f| last.duration_since(f).as_secs_f64());
        r.add(
            "QoS 0 telemetry, 2 publishers, 64 B",
            format!(
                "{:.0} msg/s delivered, {} of {} lost",
                got as f64 / secs,
                total - got,
                total
            ),
        );
    }

    // Fan-out, memory with N devices, and `pifleet status` at that size.
    for &n in &args.fanout {
        let prefix = format!("f{n}");
        let started = Instant::now();
        let join = Duration::from_secs(args.join_timeout);
        let (fleet, joined) = Fleet::start(&t.url, &prefix, n, &topics, join).await;
        let took = started.elapsed().as_secs_f64();
        let joined_row = format!("{n} agents connected, subscribed, announced");
        if joined < n {
            r.add(joined_row, format!("only {joined} after {took:.0} s"));
            r.add(
                format!(
                    "fan-out to {n}: all acked, p50 / max ({} rounds)",
                    args.rounds
                ),
                "skipped",
            );
            if let Some(pid) = t.pid {
                let rss = rss_mb(pid).unwrap_or(f64::NAN);
                r.add(
                    format!("broker RSS with {n} devices"),
                    format!("{rss:.1} MB ({joined} connected)"),
                );
            }
            r.add(format!("pifleet status lists, of {n}"), "skipped");
            fleet.stop().await;
            continue;
        }
        r.add(joined_row, format!("{took:.1} s"));
        let mut c =
            Controller::connect(&t.url, &format!("bench-fan:{}", CommandId::generate())).await;
        c.subscribe(vec![topics.output_filter(None)]).await;
        let mut times = Vec::new();
        let mut worst_missing = 0;
        for round in 0..args.rounds {
            let action = if round % 2 == 0 {
                Action::On
            } else {
                Action::Off
            };
            let (d, acked) = command_round(&mut c, &topics, &Target::All, n, action).await;
            worst_missing = worst_missing.max(n - acked);
            times.push(d.as_secs_f64() * 1e3);
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        r.add(
            format!(
                "fan-out to {n}: all acked, p50 / max ({} rounds)",
                args.rounds
            ),
            format!(
                "{:.0} ms / {:.0} ms{}",
                pct(&sorted, 0.5),
                sorted.last().copied().unwrap_or(f64::NAN),
                if worst_missing > 0 {
                    format!(" ({worst_missing} never acked)")
                } else {
                    String::new()
                }
            ),
        );
        if let Some(pid) = t.pid {
            r.add(
                format!("broker RSS with {n} devices"),
                format!("{:.1} MB", rss_mb(pid).unwrap_or(f64::NAN)),
            );
        }
        let out = Command::new(bins.join("pifleet"))
            .args([
                "--broker",
                &t.url.to_string(),
                "--prefix",
                topics.prefix(),
                "status",
                "--json",
            ])
            .output()
            .expect("run pifleet status");
        let listed = serde_json::from_slice::<FleetStatus>(&out.stdout)
            .map(|s| {
                s.devices
                    .iter()
                    .filter(|d| d.device.starts_with(&prefix) && d.online)
                    .count()
            })
            .unwrap_or(0);
        r.add(format!("pifleet status lists, of {n}"), format!("{listed}"));
        fleet.stop().await;
    }

    // An idle agent process.
    {
        let dir = std::env::temp_dir().join(format!("pifleet-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "device = \"idle\"\nbroker = \"{}\"\nprefix = \"{}\"\ngpio = \"sim\"\n\
                 [[output]]\nname = \"led\"\npin = 17\n[[input]]\nname = \"button\"\npin = 27\n\
                 [[sensor]]\nname = \"temp\"\nkind = \"sim\"\ninterval_secs = 30\n",
                t.url,
                topics.prefix()
            ),
        )
        .unwrap();
        let mut child = Command::new(bins.join("pifleet-agent"))
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pifleet-agent");
        let pid = child.id();
        tokio::time::sleep(Duration::from_secs(2)).await; // settle: connect and first publications
        let t0 = cpu_secs(pid).unwrap_or(0.0);
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let secs = cpu_secs(pid).unwrap_or(0.0) - t0;
        let cpu = secs / w0.elapsed().as_secs_f64() * 100.0;
        r.add(
            "agent idle RSS / CPU",
            format!("{:.1} MB / {:.2} %", rss_mb(pid).unwrap_or(f64::NAN), cpu),
        );
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn main() {
    let args = Args::parse();
    let bins = pifleet_bench::bin_dir(args.bin_dir.as_deref());
    let targets: Vec<TargetSpec> = args.targets.iter().map(|t| parse_target(t)).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Each measurement runs in a task on the runtime's workers, like the client code it drives,
    // not in `block_on` on the main thread: there every reply would wait for a wake-up of
    // another thread, a cost of the harness rather than of the broker under test.
    let targets = std::sync::Arc::new(targets);
    let args = std::sync::Arc::new(args);
    let bins = std::sync::Arc::new(bins);
    let mut all = Vec::new();
    if args.latency_only {
        let (targets, args) = (targets.clone(), args.clone());
        let task = rt.spawn(async move { interleaved_latency(&targets, &args).await });
        all = rt.block_on(task).expect("measurement task");
    }
    for i in (0..targets.len()).filter(|_| !args.latency_only) {
        let (targets, args, bins) = (targets.clone(), args.clone(), bins.clone());
        let task = rt.spawn(async move {
            let mut r = Results::default();
            let deadline = Duration::from_secs(args.target_deadline);
            let measured = measure(&targets[i], &args, &bins, &mut r);
            if tokio::time::timeout(deadline, measured).await.is_err() {
                // Dropping the measurement stops its agents and clients with it.
                r.add(
                    "measurement stopped",
                    format!(
                        "after {} s (--target-deadline); later figures not measured",
                        args.target_deadline
                    ),
                );
            }
            r
        });
        all.push(rt.block_on(task).expect("measurement task"));
    }
    println!();
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    print_side_by_side(&names, &all);
    rt.shutdown_background();
}
