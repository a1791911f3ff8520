//! `pifleet-soak`: one pifleet-broker under attack while a canary device keeps confirming
//! commands. `bench/soak.sh` builds the binaries, starts the broker (TLS, credentials,
//! WebSocket, default limits) and runs this against it; docs/performance.md ("Soak: the broker
//! under attack") records a run.
//!
//! For `--secs` seconds, all at once and each bounded in count: (1) wrong-password CONNECT
//! floods over TLS and plain MQTT, (2) a device subscribing to as many overlapping filters as
//! it can, and to 10,000-level and 40 KB filters and topics, (3) retained messages with 60 KiB
//! payloads under non-reading subscribers, (4) persistent-session floods of a controller and
//! anonymous CONNECTs, (5) WebSocket clients streaming an unfinished 16 MiB frame, an unending
//! fragmented message or nothing after the upgrade, and others that never finish the upgrade,
//! (6) two connections fighting over one client id, (7)
//! non-reading subscribers to a busy topic. Meanwhile the canary ([`canary`]) sends a command
//! every 20 ms and times its confirmation, and a sampler reads the broker's VmRSS and VmHWM.
//!
//! Prints each flood's counts, the canary's p50/p99/max and failures, the broker's peak RSS,
//! and PASS/FAIL against the targets (peak RSS ≤ `--ceiling-mb`, canary p99 < `--p99-ms`, every
//! command confirmed, broker alive). Exit code 0 PASS, 1 FAIL, 2 could not run.
//!
//! Modules: [`raw`] hand-built MQTT/WebSocket clients from chosen loopback addresses,
//! [`floods`] the attackers, [`canary`] the device and controller being timed;
//! [`pifleet_bench::procfs`] reads the broker's memory and CPU.

mod canary;
mod floods;
mod raw;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use floods::{Ctx, Flood, Src};
use pifleet_bench::procfs;
// A thousands separator for counts in the report.
use pifleet_bench::thousands as n;
use raw::{connect_packet, Net, Outcome, Port};

const EXIT_FAIL: u8 = 1;
const EXIT_SETUP: u8 = 2;

#[derive(Parser)]
#[command(name = "pifleet-soak")]
/// Floods one pifleet-broker (loopback only) while a canary device keeps confirming commands.
struct Args {
    /// The broker's plain MQTT listener.
    #[arg(long)]
    mqtt: SocketAddr,
    /// Its MQTT-over-TLS listener (certificate for `localhost`).
    #[arg(long)]
    mqtts: SocketAddr,
    /// Its MQTT-over-WebSocket listener.
    #[arg(long)]
    ws: SocketAddr,
    /// The broker's process id, for its memory and CPU.
    #[arg(long)]
    broker_pid: u32,
    /// The CA that signed the broker's certificate.
    #[arg(long)]
    ca_file: PathBuf,
    /// Directory with `<identity>.secret` for canary, attacker, hoarder, fighter, chatter
    /// (devices), soak and probe (controllers).
    #[arg(long)]
    secrets: PathBuf,
    /// How long the floods run.
    #[arg(long, default_value = "60")]
    secs: u64,
    /// Canary commands before the floods start, as a baseline (seconds).
    #[arg(long, default_value = "3")]
    baseline_secs: u64,
    /// The broker's memory ceiling: its peak RSS (VmHWM) must stay at or below it.
    #[arg(long, default_value = "256")]
    ceiling_mb: f64,
    /// The canary's confirmation latency p99 must stay below this.
    #[arg(long, default_value = "50")]
    p99_ms: f64,
    /// Emergency brake: stop every flood at once if the broker's VmRSS passes this (a shared
    /// machine must not be driven out of memory).
    #[arg(long, default_value = "1536")]
    abort_mb: f64,
    /// A canary command every this many ms.
    #[arg(long, default_value = "20")]
    interval_ms: u64,
    /// A canary command not confirmed within this many ms is a failure.
    #[arg(long, default_value = "5000")]
    timeout_ms: u64,
    /// Floods to leave out.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<Kind>,
    /// The login floods start this many seconds after the others, so that the long-lived
    /// attackers (non-reading subscribers, the hoarder, the chatter) have logged in before a
    /// queue of wrong passwords can hold their logins up.
    #[arg(long, default_value = "2")]
    logins_after_secs: u64,
    /// Worker threads for the attackers (the canary has a thread of its own).
    #[arg(long, default_value = "1")]
    attacker_threads: usize,
    /// Printed in the report: the commit under test and the command that ran this.
    #[arg(long, default_value = "")]
    commit: String,
    #[arg(long, default_value = "")]
    command: String,
    #[command(flatten)]
    floods: floods::Opts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Logins,
    Subscriptions,
    Retained,
    Sessions,
    Websocket,
    Takeovers,
    Lurkers,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn secret(dir: &std::path::Path, who: &str) -> Result<String, String> {
    let path = dir.join(format!("{who}.secret"));
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(s.trim_end().to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    pifleet_client::logging::init("warn,rumqttc=error");
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAIL),
        Err(e) => {
            eprintln!("pifleet-soak: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// Finds the separator the broker accepts between a controller's name and a suffix.
async fn probe_separator(net: &Net, soak: &str, seps: &[char]) -> Result<char, String> {
    let mut seen = Vec::new();
    for &sep in seps {
        let c = connect_packet(
            &format!("soak{sep}sep-probe"),
            Some(("soak", soak)),
            true,
            30,
        );
        match raw::connect(net, Port::Mqtt, Src::CANARY, c, floods::LOGIN_WAIT).await {
            Outcome::Accepted(c, _) => {
                c.disconnect().await;
                return Ok(sep);
            }
            other => seen.push(format!("'soak{sep}…': {}", floods::describe(&other))),
        }
    }
    Err(format!(
        "the broker accepts none of the controller client ids tried ({})",
        seen.join("; ")
    ))
}

fn run(args: Args) -> Result<bool, String> {
    let net = Arc::new(Net::new(args.mqtt, args.mqtts, args.ws, &args.ca_file)?);
    let mut secrets = HashMap::new();
    for who in [
        "canary", "attacker", "hoarder", "fighter", "chatter", "soak", "probe",
    ] {
        secrets.insert(who.to_string(), secret(&args.secrets, who)?);
    }
    if !procfs::alive(args.broker_pid) {
        return Err(format!("no broker process {}", args.broker_pid));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = procfs::loadavg();
    println!("pifleet-soak: one pifleet-broker under attack, loopback only");
    println!("  command: {}", args.command);
    println!("  commit:  {}", args.commit);
    println!(
        "  machine: {cores} cores (shared with other work); broker pid {} (MQTT {}, TLS {}, WebSocket {}); floods for {} s",
        args.broker_pid, args.mqtt, args.mqtts, args.ws, args.secs
    );

    let started = Instant::now();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let (samples, sampler) = procfs::sampler(
        args.broker_pid,
        args.abort_mb,
        started,
        stop_sampling.clone(),
        abort.clone(),
    );

    // The canary, first, on a quiet broker.
    let phase = Arc::new(AtomicU8::new(canary::BASELINE));
    let clock = Arc::new(canary::Clock::default());
    let record = Arc::new(Mutex::new(canary::Record::default()));
    let settings = canary::Settings {
        url: format!("mqtts://localhost:{}", args.mqtts.port())
            .parse()
            .map_err(|e| format!("{e}"))?,
        ca_file: args.ca_file.clone(),
        canary_secret: secrets["canary"].clone(),
        soak_secret: secrets["soak"].clone(),
        probe_secret: secrets["probe"].clone(),
        interval: Duration::from_millis(args.interval_ms),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let (ready, canary_thread) = canary::start(
        settings,
        net.clone(),
        phase.clone(),
        clock.clone(),
        record.clone(),
    );
    match ready.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the canary did not get ready within 60 s".into()),
    }
    std::thread::sleep(Duration::from_secs(args.baseline_secs));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.attacker_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sep = rt.block_on(probe_separator(
        &net,
        &secrets["soak"],
        &args.floods.id_seps,
    ))?;
    let o = args.floods.clone();
    let ctx = Arc::new(Ctx {
        net: net.clone(),
        secrets,
        sep,
        o: o.clone(),
    });
    let on = |k: Kind| !args.skip.contains(&k);
    let mut plan: Vec<Arc<Flood>> = Vec::new();
    let flood = |plan: &mut Vec<Arc<Flood>>, name, what: String| {
        let f = Flood::new(name, what);
        plan.push(f.clone());
        f
    };
    // The retained read-back's connection, before any flood (driven by a runtime of its own).
    let readback_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let readback = match on(Kind::Retained) {
        true => {
            let f = Flood::new("retained read-back", String::new());
            readback_rt.block_on(floods::readback_connection(&ctx, &f))
        }
        false => None,
    };
    let cpu_before = procfs::cpu_secs(args.broker_pid).unwrap_or(f64::NAN);
    let own_cpu_before = procfs::cpu_secs(std::process::id()).unwrap_or(f64::NAN);
    *clock.attack_started.lock().unwrap() = Some(Instant::now());
    phase.store(canary::ATTACK, Ordering::Relaxed);
    let attack_started = Instant::now();
    let attack_offset = started.elapsed().as_secs_f64();
    let mut retained_flood = None;
    if on(Kind::Logins) {
        for (port, src, label) in [
            (Port::Mqtts, Src::LOGINS_TLS, "1 wrong-password logins, TLS"),
            (
                Port::Mqtt,
                Src::LOGINS_PLAIN,
                "1 wrong-password logins, plain",
            ),
        ] {
            let f = flood(
                &mut plan,
                label,
                format!(
                    "{} CONNECTs in flight from {src}, from {} s on",
                    o.login_in_flight, args.logins_after_secs
                ),
            );
            let (ctx, after) = (ctx.clone(), Duration::from_secs(args.logins_after_secs));
            rt.spawn(async move {
                tokio::time::sleep(after).await;
                floods::logins(ctx, f, port, src).await
            });
        }
    }
    if on(Kind::Subscriptions) {
        let f = flood(
            &mut plan,
            "2 overlapping + deep subscriptions",
            format!(
                "device attacker: {} overlapping filters, {} matching publishes, 10,000-level/40 KB filters and topics, per connection",
                o.sub_filters, o.sub_publishes
            ),
        );
        rt.spawn(floods::subscriptions(ctx.clone(), f));
    }
    if on(Kind::Retained) {
        let f = flood(
            &mut plan,
            "3 retained 60 KiB messages",
            format!(
                "device hoarder: {} topics × {} KiB at {}/s, 3 non-reading subscribers",
                o.retained, o.retained_kib, o.retained_rate
            ),
        );
        retained_flood = Some(f.clone());
        rt.spawn(floods::retained(ctx.clone(), f));
    }
    if on(Kind::Sessions) {
        let f = flood(
            &mut plan,
            "4 persistent sessions + anonymous",
            format!(
                "controller soak, ids soak{{{}}}<n>, {} at once; 1 in 8 anonymous",
                o.id_seps.iter().collect::<String>(),
                o.session_workers
            ),
        );
        rt.spawn(floods::sessions(ctx.clone(), f));
    }
    if on(Kind::Websocket) {
        for (mode, n, src, name, what) in [
            (
                floods::WsMode::Frame,
                o.ws_frames,
                Src::WS_FRAMES,
                "5 WebSocket unfinished frames",
                format!(
                    "{} upgraded connections, one {} MiB frame each, {} KiB per {} ms, never finished",
                    o.ws_frames, o.ws_frame_mib, o.ws_chunk_kib, o.ws_chunk_ms
                ),
            ),
            (
                floods::WsMode::Fragments,
                o.ws_fragments,
                Src::WS_FRAGMENTS,
                "5 WebSocket unending messages",
                format!(
                    "{} upgraded connections, non-final {} KiB frames every {} ms, up to {} MiB",
                    o.ws_fragments, o.ws_chunk_kib, o.ws_chunk_ms, o.ws_fragment_mib
                ),
            ),
            (
                floods::WsMode::Silent,
                o.ws_silent,
                Src::WS_SILENT,
                "5 WebSocket upgraded, then silent",
                format!("{} upgraded connections that send nothing", o.ws_silent),
            ),
        ] {
            let f = flood(&mut plan, name, what);
            rt.spawn(floods::ws_upgraded(ctx.clone(), f, mode, n, src));
        }
        let f = flood(
            &mut plan,
            "5 WebSocket unfinished upgrades",
            format!("{} connections, half an HTTP request each", o.ws_slow),
        );
        rt.spawn(floods::ws_slow(ctx.clone(), f));
    }
    if on(Kind::Takeovers) {
        let f = flood(
            &mut plan,
            "6 takeovers of one client id",
            format!(
                "device fighter: {} connections reconnecting every {} ms",
                2 * o.takeover_pairs,
                o.takeover_pause_ms
            ),
        );
        rt.spawn(floods::takeovers(ctx.clone(), f));
    }
    if on(Kind::Lurkers) {
        let f = flood(
            &mut plan,
            "7 non-reading subscribers, busy topic",
            format!(
                "{} controller sessions on pifleet/#; device chatter {} msg/s",
                o.lurkers, o.chatter_rate
            ),
        );
        rt.spawn(floods::lurkers(ctx.clone(), f));
    }

    // Run, with a line every 10 s.
    let until = attack_started + Duration::from_secs(args.secs);
    let mut next_line = attack_started + Duration::from_secs(10);
    while Instant::now() < until && !abort.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(10);
            progress(&args, attack_started, &record, &plan);
        }
    }
    let attack_secs = attack_started.elapsed().as_secs_f64();
    let cpu_after = procfs::cpu_secs(args.broker_pid).unwrap_or(f64::NAN);
    let own_cpu = procfs::cpu_secs(std::process::id()).unwrap_or(f64::NAN) - own_cpu_before;
    let load_after = procfs::loadavg();
    phase.store(canary::DONE, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = canary_thread.join();

    // After the floods: what the retained store kept.
    if let Some(f) = &retained_flood {
        if procfs::alive(args.broker_pid) {
            readback_rt.block_on(floods::retained_readback(&ctx, f, readback));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop_sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let alive = procfs::alive(args.broker_pid);
    let hwm = procfs::hwm_mb(args.broker_pid);
    let rss_end = procfs::rss_mb(args.broker_pid);
    let samples = samples.lock().unwrap().clone();
    let record = record.lock().unwrap().clone();

    // The report.
    println!();
    println!("== floods ({attack_secs:.0} s, all at once)");
    println!(
        "| {:<40} | {:>10} | {:>26} | {:>8} |",
        "flood", "attempted", "refused/closed as expected", "other"
    );
    println!("|{:-<42}|{:->12}|{:->28}|{:->10}|", "", "", "", "");
    let tallies: Vec<_> = plan.iter().map(|f| (f, f.counts.snapshot())).collect();
    for (f, t) in &tallies {
        println!(
            "| {:<40} | {:>10} | {:>26} | {:>8} |",
            f.name,
            n(t.attempted()),
            n(t.expected()),
            n(t.other())
        );
    }
    println!();
    for (f, t) in &tallies {
        println!("{} ({}):", f.name, f.what);
        for (k, v) in &t.n {
            if k != "attempts" {
                println!("    {k}: {}", n(*v));
            }
        }
        for (k, v) in &t.samples {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            println!(
                "    {k}: p50 {:.2}, max {:.2} (of {})",
                pct(&v, 0.5),
                v.last().copied().unwrap_or(f64::NAN),
                v.len()
            );
        }
        for (k, (now, max)) in &t.gauges {
            println!("    {k}: at most {max} (at the end {now})");
        }
    }

    println!();
    println!(
        "== canary (device canary and controller soak over TLS; a command every {} ms, {} ms timeout)",
        args.interval_ms, args.timeout_ms
    );
    let summary = |label: &str, s: &[canary::Sample]| {
        let mut ok: Vec<f64> = s.iter().filter_map(|x| x.ms).collect();
        ok.sort_by(f64::total_cmp);
        let failed = s.len() - ok.len();
        println!(
            "  {label}: {} commands, {} confirmed, {} timed out; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            n(s.len() as u64),
            n(ok.len() as u64),
            n(failed as u64),
            pct(&ok, 0.5),
            pct(&ok, 0.99),
            ok.last().copied().unwrap_or(f64::NAN)
        );
        (ok, failed)
    };
    summary(
        &format!("before the floods ({} s)", args.baseline_secs),
        &record.baseline,
    );
    let (attack_ok, attack_failed) = summary(
        &format!("during the floods ({attack_secs:.0} s)"),
        &record.attack,
    );
    let mut slowest: Vec<_> = record.attack.iter().collect();
    slowest.sort_by(|a, b| {
        b.ms.unwrap_or(f64::INFINITY)
            .total_cmp(&a.ms.unwrap_or(f64::INFINITY))
    });
    let worst: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|s| match s.ms {
            Some(ms) => format!("{ms:.0} ms at {:.1} s", s.at),
            None => format!("timed out at {:.1} s", s.at),
        })
        .collect();
    println!("  slowest: {}", worst.join(", "));
    let per10: Vec<String> = (0..(attack_secs / 10.0).ceil() as usize)
        .map(|w| {
            let mut v: Vec<f64> = record
                .attack
                .iter()
                .filter(|s| (s.at / 10.0) as usize == w)
                .filter_map(|s| s.ms)
                .collect();
            v.sort_by(f64::total_cmp);
            match v.is_empty() {
                true => "-".to_string(),
                false => format!("{:.1}", pct(&v, 0.99)),
            }
        })
        .collect();
    println!("  p99 per 10 s (ms): {}", per10.join(" "));
    if !record.controller_errors.is_empty() {
        println!(
            "  controller connection errors: {} (first: {})",
            record.controller_errors.len(),
            record.controller_errors[0]
        );
    }
    let mut probe = record.probe_ms.clone();
    probe.sort_by(f64::total_cmp);
    let mut failures: HashMap<&str, usize> = HashMap::new();
    for f in &record.probe_failed {
        *failures.entry(f.as_str()).or_default() += 1;
    }
    let failures: Vec<String> = failures.iter().map(|(k, v)| format!("{v} × {k}")).collect();
    println!(
        "  legitimate logins during the floods (controller probe over TLS from 127.0.0.1, every 2 s): {} of {} accepted within {} s, p50 {:.0} ms, max {:.0} ms{}",
        probe.len(),
        probe.len() + record.probe_failed.len(),
        floods::LOGIN_WAIT.as_secs(),
        pct(&probe, 0.5),
        probe.last().copied().unwrap_or(f64::NAN),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; not accepted: {}", failures.join(", "))
        }
    );

    println!();
    println!(
        "== broker memory and CPU (/proc/{}/status)",
        args.broker_pid
    );
    let hwm_v = hwm.unwrap_or(f64::NAN);
    println!(
        "  peak RSS (VmHWM): {hwm_v:.1} MB (ceiling {:.0} MB)",
        args.ceiling_mb
    );
    if let Some((t, mb)) = samples.max() {
        println!(
            "  highest sampled VmRSS: {mb:.1} MB at {:.1} s into the floods; at the end {:.1} MB",
            t - attack_offset,
            rss_end.unwrap_or(f64::NAN)
        );
    }
    let windows: Vec<String> = samples
        .per_window(5.0)
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect();
    println!(
        "  VmRSS, highest per 5 s since the canary started (MB): {}",
        windows.join(" ")
    );
    println!(
        "  CPU during the floods: {:.1} s ({:.0} % of one core); this soak process (attackers and canary): {:.0} % of one core",
        cpu_after - cpu_before,
        (cpu_after - cpu_before) / attack_secs * 100.0,
        own_cpu / attack_secs * 100.0
    );
    println!(
        "  machine load average before / at the end of the floods: {load_before} / {load_after}"
    );

    // The verdict.
    let p99 = pct(&attack_ok, 0.99);
    let mut checks: Vec<(bool, String)> = vec![
        (
            alive && samples.died_at.is_none(),
            match samples.died_at {
                Some(t) => format!(
                    "broker alive: it died {:.1} s into the floods",
                    t - attack_offset
                ),
                None if alive => "broker alive at the end".into(),
                None => "broker alive: it was gone at the end".into(),
            },
        ),
        (
            hwm_v <= args.ceiling_mb,
            format!(
                "broker peak RSS (VmHWM) {hwm_v:.1} MB ≤ {:.0} MB",
                args.ceiling_mb
            ),
        ),
        (
            p99 < args.p99_ms,
            format!("canary p99 {p99:.2} ms < {:.0} ms", args.p99_ms),
        ),
        (
            attack_failed == 0 && !record.attack.is_empty(),
            format!(
                "canary: every command confirmed ({} of {} timed out)",
                attack_failed,
                record.attack.len()
            ),
        ),
    ];
    if let Some((t, mb)) = samples.aborted_at {
        checks.push((
            false,
            format!(
                "floods ran their course: stopped {:.1} s in, broker VmRSS {mb:.0} MB passed --abort-mb {:.0}",
                t - attack_offset,
                args.abort_mb
            ),
        ));
    }
    println!();
    println!("== targets");
    for (ok, what) in &checks {
        println!("  [{}] {what}", if *ok { "PASS" } else { "FAIL" });
    }
    let pass = checks.iter().all(|c| c.0);
    println!("RESULT: {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

fn progress(
    args: &Args,
    attack_started: Instant,
    record: &Mutex<canary::Record>,
    plan: &[Arc<Flood>],
) {
    let t = attack_started.elapsed().as_secs_f64();
    let r = record.lock().unwrap();
    let recent: Vec<&canary::Sample> = r.attack.iter().filter(|s| s.at >= t - 10.0).collect();
    let mut ok: Vec<f64> = recent.iter().filter_map(|s| s.ms).collect();
    ok.sort_by(f64::total_cmp);
    let failed = recent.len() - ok.len();
    let probes = (r.probe_ms.len(), r.probe_ms.len() + r.probe_failed.len());
    drop(r);
    let attempts: u64 = plan.iter().map(|f| f.counts.get("attempts")).sum();
    println!(
        "[{t:>4.0} s] broker VmRSS {:.1} MB (VmHWM {:.1}); canary last 10 s: {} confirmed, {} timed out, p99 {:.2} ms; legitimate logins accepted {}/{}; flood items so far {}",
        procfs::rss_mb(args.broker_pid).unwrap_or(f64::NAN),
        procfs::hwm_mb(args.broker_pid).unwrap_or(f64::NAN),
        ok.len(),
        failed,
        pct(&ok, 0.99),
        probes.0,
        probes.1,
        n(attempts)
    );
}
