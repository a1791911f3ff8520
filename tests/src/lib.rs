//! Fixtures for end-to-end tests: each starts a real binary built by this workspace, forwards its
//! stderr with a prefix (so a failing test shows what every process said), offers readiness
//! checks on its output, and kills it on drop. Ports are always ephemeral (`127.0.0.1:0`).
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`); `cargo test
//! --workspace` builds them first because each binary crate has integration tests of its own.
//!
//! [`raw`] speaks MQTT byte by byte, for what a client library will not send; [`http`] is a
//! tiny HTTP client for the dashboard and WebDriver; [`webdriver`] drives headless Chromium.

pub mod http;
pub mod raw;
pub mod webdriver;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pifleet_proto::report::{DeviceStatus, FleetStatus, Outcome, SwitchReport};

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

pub use tempfile::TempDir;

/// A fresh directory under the system temp dir, removed on drop.
pub fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pifleet-test-{label}-"))
        .tempdir()
        .expect("create temp dir")
}

/// Lines a child printed, with a condition variable to wait on.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, line: String) {
        let (m, c) = &*self.0;
        m.lock().unwrap().push(line);
        c.notify_all();
    }

    /// Waits until some line satisfies `pred`, returning it; panics after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let (m, c) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut lines = m.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(l) = lines[seen..].iter().find(|l| pred(l)) {
                return l.clone();
            }
            seen = lines.len();
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            lines = c.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Lines from index `from` on.
    pub fn since(&self, from: usize) -> Vec<String> {
        self.0 .0.lock().unwrap()[from..].to_vec()
    }

    pub fn len(&self) -> usize {
        self.0 .0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn forward(reader: impl std::io::Read + Send + 'static, label: String, lines: Lines, echo: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[{label}] {line}");
            }
            lines.push(line);
        }
    });
}

/// A running child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    stdin: Option<ChildStdin>,
    pub label: String,
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command) -> Proc {
        // A broker's dashboard would take the fixed port 8080 and add an MQTT client to every
        // test broker: off unless a test asks for it (`--dashboard ADDR` beats this).
        if !cmd.get_envs().any(|(k, _)| k == "PIFLEET_DASHBOARD") {
            cmd.env("PIFLEET_DASHBOARD", "off");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info,rumqttc=warn");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let stdout = Lines::default();
        let stderr = Lines::default();
        forward(
            child.stdout.take().unwrap(),
            format!("{label} out"),
            stdout.clone(),
            true,
        );
        forward(
            child.stderr.take().unwrap(),
            label.to_string(),
            stderr.clone(),
            true,
        );
        Proc {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            label: label.to_string(),
        }
    }

    /// Starts a child whose stderr is a pipe nobody reads: its read end is closed at once, so
    /// every write to stderr fails (EPIPE), as under `2>&1 | head -1` or a supervisor that went
    /// away. stdout is read until a line starting with `ready` (if given), which is returned,
    /// and then its read end is closed too. The returned [`Proc`]'s `stdout` and `stderr` stay
    /// empty.
    pub fn spawn_unheard(label: &str, mut cmd: Command, ready: Option<&str>) -> (Proc, String) {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info,rumqttc=warn");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        drop(child.stderr.take());
        let stdout = child.stdout.take().unwrap();
        let mut proc = Proc {
            stdin: child.stdin.take(),
            child,
            stdout: Lines::default(),
            stderr: Lines::default(),
            label: label.to_string(),
        };
        let mut line = String::new();
        match ready {
            None => drop(stdout),
            Some(prefix) => {
                // A reading thread with a deadline: a child that dies or hangs fails the test.
                let (tx, rx) = std::sync::mpsc::channel();
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    // Dropping the reader (at the end of the chain) closes the read end.
                    let found = BufReader::new(stdout)
                        .lines()
                        .map_while(Result::ok)
                        .find(|l| l.starts_with(&prefix));
                    let _ = tx.send(found);
                });
                line = match rx.recv_timeout(Duration::from_secs(15)) {
                    Ok(Some(l)) => l,
                    Ok(None) => panic!(
                        "{label} closed stdout before its readiness line: {:?}",
                        proc.child.wait()
                    ),
                    Err(_) => panic!("{label} printed no readiness line within 15 s"),
                };
            }
        }
        (proc, line)
    }

    /// Whether the process is still running (it has not exited, by any signal or code).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Writes one line to the child's standard input.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child stdin");
        stdin.flush().unwrap();
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"KILL"`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {}", self.label);
    }

    /// Whether the process is still running (it has not exited, crashed or been killed).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// A memory figure of the running process from `/proc/<pid>/status`, in KiB: `"VmRSS"`
    /// (resident now) or `"VmHWM"` (the most it has ever been resident).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: cannot read {path}: {e}", self.label));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no {field} in {path}", self.label))
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `pifleet-broker` on ephemeral loopback ports.
///
/// History (on by default in the broker) is off unless a test asks for it, with
/// [`Broker::start_recording`] or its own `--history-dir`: the default directory is shared by
/// every broker of a user, so tests must never write there, and a broker whose limits a test
/// counts should not have a recorder among its clients.
pub struct Broker {
    pub proc: Proc,
    pub mqtt: String,
    pub ws: Option<String>,
    /// Its own state directory (removed after the broker is killed), unless the test chose
    /// one (`--state-dir`) or none (`--no-state`).
    pub state: Option<TempDir>,
    /// The temporary history directory of [`Broker::start_recording`], removed on drop.
    pub history: Option<TempDir>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(&["--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"])
    }

    /// Starts with explicit arguments; waits for the printed listener addresses. Each broker
    /// keeps its state in a fresh temporary directory unless `args` say `--state-dir` or
    /// `--no-state`, so parallel tests never share state (nor touch the user's own), and adds
    /// `--no-history` unless `args` say where to record (`--history-dir`) or `--no-history`.
    pub fn start_with(args: &[&str]) -> Broker {
        let mut cmd = Command::new(bin("pifleet-broker"));
        cmd.args(args);
        if !args
            .iter()
            .any(|a| *a == "--history-dir" || *a == "--no-history")
        {
            cmd.arg("--no-history");
        }
        let state = (!args.contains(&"--state-dir") && !args.contains(&"--no-state")).then(|| {
            let dir = temp_dir("broker-state");
            cmd.arg("--state-dir").arg(dir.path());
            dir
        });
        let mut broker = Broker::ready(Proc::spawn("broker", cmd), !args.contains(&"--no-ws"));
        broker.state = state;
        broker
    }

    /// [`Broker::start_with`] recording history into a fresh temporary directory of its own
    /// (`broker.history_dir()`); returns once the recorder is subscribed.
    pub fn start_recording(args: &[&str]) -> Broker {
        let dir = temp_dir("history");
        let path = dir.path().join("history");
        let mut all = args.to_vec();
        all.extend(["--history-dir", path.to_str().unwrap()]);
        let mut broker = Broker::start_with(&all);
        broker.history = Some(dir);
        broker.recording_ready();
        broker
    }

    /// Waits for the broker's statement that it records history (its recorder is subscribed).
    pub fn recording_ready(&self) -> String {
        let line = self.proc.stdout.wait_for(
            "the broker to record history",
            Duration::from_secs(15),
            |l| l.starts_with("pifleet-broker: history in "),
        );
        line["pifleet-broker: history in ".len()..].to_string()
    }

    /// The history directory of [`Broker::start_recording`].
    pub fn history_dir(&self) -> PathBuf {
        self.history
            .as_ref()
            .expect("started with start_recording")
            .path()
            .join("history")
    }

    /// Waits until an already started broker process printed its listener addresses (the
    /// WebSocket one too when `websocket`). Pass `--no-history` (or a `--history-dir`) to a
    /// broker started this way, for the reason given at [`Broker`].
    pub fn ready(proc: Proc, websocket: bool) -> Broker {
        let addr_of = |what: &str, prefix: &str| {
            let line = proc
                .stdout
                .wait_for(what, Duration::from_secs(15), |l| l.starts_with(prefix));
            line.rsplit(' ').next().unwrap().to_string()
        };
        let mqtt = addr_of("broker readiness", "pifleet-broker: MQTT on ");
        let ws = websocket.then(|| {
            addr_of(
                "websocket readiness",
                "pifleet-broker: MQTT over WebSocket on ",
            )
        });
        Broker {
            proc,
            mqtt,
            ws,
            state: None,
            history: None,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.mqtt)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/mqtt", self.ws.as_ref().expect("websocket enabled"))
    }
}

/// A `pifleet-agent` with the simulated backend and a config written to a temp dir.
pub struct Agent {
    pub proc: Proc,
    pub device: String,
    pub dir: TempDir,
}

impl Agent {
    /// `extra` is appended to a minimal config (device, broker, sim GPIO, fast reconnects).
    pub fn start(broker_url: &str, device: &str, extra: &str) -> Agent {
        let dir = temp_dir(device);
        Agent::start_in(dir, broker_url, device, extra)
    }

    /// Starts (or restarts) an agent whose config and state live in `dir`. Unless `extra`
    /// declares its own, the agent has an LED `led` on pin 17 and a button `button` on pin 27.
    pub fn start_in(dir: TempDir, broker_url: &str, device: &str, extra: &str) -> Agent {
        let state = dir.path().join("state.json");
        let mut extra = extra.to_string();
        if !extra.contains("[[output]]") {
            extra.push_str("\n[[output]]\nname = \"led\"\npin = 17\n");
        }
        if !extra.contains("[[input]]") {
            extra.push_str(
                "\n[[input]]\nname = \"button\"\npin = 27\npull = \"up\"\nactive_low = true\n",
            );
        }
        let config = format!(
            "device = {device:?}\nbroker = {broker_url:?}\ngpio = \"sim\"\nkeep_alive_secs = 2\n\
             reconnect_max_secs = 0.5\nstate_file = {state:?}\n{extra}\n"
        );
        Agent::start_config(dir, device, &config)
    }

    /// Starts an agent with exactly `config` as its config file (written to `dir/agent.toml`),
    /// for tests that need settings the minimal config of [`Agent::start_in`] fixes.
    pub fn start_config(dir: TempDir, device: &str, config: &str) -> Agent {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(bin("pifleet-agent"));
        cmd.arg("--config").arg(&path);
        let proc = Proc::spawn(device, cmd);
        Agent {
            proc,
            device: device.to_string(),
            dir,
        }
    }
}

/// Runs a command to completion and echoes what it printed under `label`, so a failing test
/// shows every command's output.
pub fn output_logged(label: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {label}: {e}"));
    eprintln!(
        "[{label}] exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `pifleet` with `args` against `broker_url` and returns its output.
pub fn cli(broker_url: &str, args: &[&str]) -> Output {
    cli_env(broker_url, args, &[])
}

/// [`cli`] with extra environment variables, e.g. `("PIFLEET_PASSWORD", secret)`.
pub fn cli_env(broker_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("pifleet"));
    cmd.args(args)
        .env("PIFLEET_BROKER", broker_url)
        .env_remove("PIFLEET_PREFIX");
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_logged(&format!("pifleet {}", args.join(" ")), &mut cmd)
}

/// A credentials file in a temporary directory, filled with `pifleet-broker device|controller
/// add`, exactly as an administrator would.
pub struct Creds {
    pub dir: TempDir,
    pub path: PathBuf,
}

#[allow(clippy::new_without_default)]
impl Creds {
    pub fn new() -> Creds {
        let dir = temp_dir("creds");
        let path = dir.path().join("credentials.toml");
        Creds { dir, path }
    }

    /// Runs `pifleet-broker --credentials FILE <args>` and returns its standard output, which
    /// for `device add` and `controller add` is the generated secret alone.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = output_logged(
            &format!("pifleet-broker {}", args.join(" ")),
            Command::new(bin("pifleet-broker"))
                .arg("--credentials")
                .arg(&self.path)
                .args(args),
        );
        assert!(out.status.success(), "pifleet-broker {args:?} failed");
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// Adds an identity and returns its secret (one line on standard output, nothing else).
    pub fn add(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        let secret = out.strip_suffix('\n').unwrap_or(&out);
        assert!(
            !secret.is_empty() && !secret.contains(char::is_whitespace),
            "`add` prints the secret alone on stdout, got {out:?}"
        );
        secret.to_string()
    }

    /// A broker that requires logins, on ephemeral loopback ports.
    pub fn broker(&self) -> Broker {
        let path = self.path.to_str().unwrap();
        let broker =
            Broker::start_with(&["--credentials", path, "--mqtt", "127.0.0.1:0", "--no-ws"]);
        auth_announced(&broker);
        broker
    }
}

/// Waits for the broker's statement that clients must log in (printed after the listeners).
pub fn auth_announced(broker: &Broker) {
    broker.proc.stdout.wait_for(
        "the broker to require logins",
        Duration::from_secs(10),
        |l| l.contains("clients must log in"),
    );
}

/// `pifleet status --json`, decoded with the documented types.
pub fn status(broker_url: &str) -> FleetStatus {
    let out = cli(broker_url, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status --json is a FleetStatus")
}

/// One device from `status`, if known.
pub fn device_status(broker_url: &str, device: &str) -> Option<DeviceStatus> {
    status(broker_url)
        .devices
        .into_iter()
        .find(|d| d.device == device)
}

/// Polls `cond` (a readiness check, not a fixed sleep) until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Every live descendant of `pid` (children, their children, …), from each process's parent
/// in `/proc/<pid>/stat`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|pp| pp.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parents.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// The process's command line, arguments separated by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Waits until `device` is online in `pifleet status`.
pub fn wait_online(broker_url: &str, device: &str) {
    wait_until(
        &format!("{device} is online"),
        Duration::from_secs(15),
        || device_status(broker_url, device).is_some_and(|d| d.online),
    );
}

/// Whether a program is on PATH (for suites that need an external tool).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Gives up on a test whose requirement (a tool, root, free ports) is missing here. Outside CI
/// it prints `SKIPPED: reason` and the caller returns; under `CI=true` it panics with the
/// reason, because in CI a test must not pass by skipping (`.ci/run` installs what they need).
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Publishes one message with a plain MQTT client (rumqttc), as any third-party tool would.
pub fn publish_raw(broker_url: &str, topic: &str, payload: &[u8]) {
    publish_raw_with(broker_url, topic, payload, false)
}

/// [`publish_raw`] with the RETAIN flag set: what a careless tool does to a command topic.
pub fn publish_raw_retained(broker_url: &str, topic: &str, payload: &[u8]) {
    publish_raw_with(broker_url, topic, payload, true)
}

fn publish_raw_with(broker_url: &str, topic: &str, payload: &[u8], retain: bool) {
    publish_raw_many(broker_url, &[(topic.to_string(), payload.to_vec())], retain);
}

/// Publishes `messages` (topic, payload) in order over one plain MQTT connection, QoS 1, and
/// returns once the broker acknowledged every one.
pub fn publish_raw_many(broker_url: &str, messages: &[(String, Vec<u8>)], retain: bool) {
    let addr = broker_url.trim_start_matches("mqtt://").to_string();
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = rumqttc::MqttOptions::new("pifleet-test-raw", host, port.parse().unwrap());
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, messages.len() + 10);
        for (topic, payload) in messages {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.clone())
                .await
                .unwrap();
        }
        let mut acks = 0;
        let acked = async {
            while acks < messages.len() {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acks += 1,
                    Ok(_) => {}
                    Err(e) => panic!("raw publish failed: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), acked)
            .await
            .expect("PUBACK");
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    });
}

/// `pifleet watch --json` running in the background, ready once it printed its banner.
pub fn watch(broker_url: &str, args: &[&str]) -> Proc {
    watch_env(broker_url, args, &[])
}

/// [`watch`] with extra environment variables, e.g. a login.
pub fn watch_env(broker_url: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin("pifleet"));
    cmd.arg("watch")
        .arg("--json")
        .args(args)
        .env("PIFLEET_BROKER", broker_url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc::spawn("watch", cmd);
    proc.stderr
        .wait_for("watch readiness", Duration::from_secs(10), |l| {
            l.contains("watching")
        });
    proc
}

/// Runs `tests/legacy_client.py` (a client written like the originals); `None` without python3.
pub fn legacy_client(addr: &str, args: &[&str]) -> Option<Vec<String>> {
    if !have("python3") {
        skip("python3 is not installed");
        return None;
    }
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/legacy_client.py");
    let out = output_logged(
        &format!("legacy_client {}", args.join(" ")),
        Command::new("python3")
            .arg(script)
            .arg(host)
            .arg(port)
            .args(args),
    );
    assert!(out.status.success(), "legacy client failed");
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// `pifleet on|off|toggle ... --json` against `broker_url`: the report and the exit code.
pub fn switch(broker_url: &str, args: &[&str]) -> (SwitchReport, Option<i32>) {
    switch_env(broker_url, args, &[])
}

/// [`switch`] with extra environment variables, e.g. a login.
pub fn switch_env(
    broker_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (SwitchReport, Option<i32>) {
    let mut full = args.to_vec();
    full.push("--json");
    let out = cli_env(broker_url, &full, env);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "switch --json is a SwitchReport ({e}); exit {:?}",
            out.status.code()
        )
    });
    (report, out.status.code())
}

/// What a switch report says about `device` (panics, naming the report, if it is missing).
pub fn outcome(r: &SwitchReport, device: &str) -> Outcome {
    r.results
        .iter()
        .find(|x| x.device == device)
        .unwrap_or_else(|| panic!("{device} missing from {r:?}"))
        .outcome
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_spawned_child_is_among_the_descendants() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(cmdline(std::process::id()).len() > 1);
    }
}
