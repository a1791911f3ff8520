//! Security, end to end: per-identity credentials and the ACLs derived from them (a device can
//! neither command, nor watch, nor impersonate another), what a controller may do, refusal codes
//! and how the CLI and the agent take a refused login, TLS with a private CA (including hostile
//! and mistaken clients on the TLS port), and the broker's refusal to serve anonymous clients
//! beyond loopback.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pifleet_proto::report::{DeviceStatus, FleetStatus, Outcome, SwitchReport};
use pifleet_tests::*;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The `pifleet` CLI logged in as a controller (password in `PIFLEET_PASSWORD`, never a flag).
struct Controller {
    url: String,
    user: String,
    password: String,
    /// Extra global flags, e.g. `--ca-file PATH`.
    flags: Vec<String>,
}

impl Controller {
    fn new(url: &str, user: &str, password: &str, flags: &[&str]) -> Controller {
        Controller {
            url: url.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = vec!["--user", &self.user];
        full.extend(self.flags.iter().map(String::as_str));
        full.extend_from_slice(args);
        cli_env(&self.url, &full, &[("PIFLEET_PASSWORD", &self.password)])
    }

    /// `on`/`off`/`toggle ... --json`: the report and the exit code.
    fn switch(&self, args: &[&str]) -> (SwitchReport, Option<i32>) {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.run(&full);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "switch --json is a SwitchReport ({e}); exit {:?}, stderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (report, out.status.code())
    }

    fn status(&self) -> FleetStatus {
        let out = self.run(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "status as {}", self.user);
        serde_json::from_slice(&out.stdout).expect("status --json is a FleetStatus")
    }

    fn device(&self, name: &str) -> Option<DeviceStatus> {
        self.status().devices.into_iter().find(|d| d.device == name)
    }

    fn wait_online(&self, name: &str) {
        wait_until(
            &format!("{name} is online (seen by {})", self.user),
            Duration::from_secs(15),
            || self.device(name).is_some_and(|d| d.online),
        );
    }
}

/// `password = "..."` (and more) for an agent's config.
fn agent_login(secret: &str) -> String {
    format!("password = {secret:?}\n")
}

/// A runtime whose spawned tasks (watchers) keep running while the test blocks on a CLI run.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain MQTT client (rumqttc) for `addr` (`host:port`), logged in with `login` if given.
fn mqtt(addr: &str, id: &str, login: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(id, host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    AsyncClient::new(o, 64)
}

/// Polls until the CONNACK: `Ok` if accepted, else the error (a refusal carries its code).
async fn connect(ev: &mut EventLoop) -> Result<(), ConnectionError> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("a CONNACK (or a refusal) within 10 s")
}

/// The CONNACK return code a fresh client gets from the broker (0: accepted).
async fn connack_code(addr: &str, id: &str, login: Option<(&str, &str)>) -> u8 {
    let (_c, mut ev) = mqtt(addr, id, login);
    match connect(&mut ev).await {
        Ok(()) => 0,
        Err(ConnectionError::ConnectionRefused(code)) => code as u8,
        Err(e) => panic!("expected a CONNACK for {id:?}, got {e:?}"),
    }
}

/// Subscribes to one filter and returns the SUBACK's return code for it.
async fn suback(c: &AsyncClient, ev: &mut EventLoop, filter: &str) -> SubscribeReasonCode {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(s)) = ev.poll().await.expect("connection") {
                assert_eq!(s.return_codes.len(), 1);
                return s.return_codes[0];
            }
        }
    })
    .await
    .expect("SUBACK")
}

fn granted(code: SubscribeReasonCode) -> bool {
    matches!(code, SubscribeReasonCode::Success(_))
}

/// Everything a logged-in controller receives on one filter, collected in the background.
struct Watcher {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(rt: &tokio::runtime::Runtime, addr: &str, login: (&str, &str), filter: &str) -> Self {
        let id = format!("{}:watcher", login.0);
        let (c, mut ev) = mqtt(addr, &id, Some(login));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = {
            let seen = seen.clone();
            move |p: rumqttc::Publish| {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                seen.lock().unwrap().push((p.topic, payload));
            }
        };
        rt.block_on(async {
            connect(&mut ev).await.expect("the controller logs in");
            c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            // Retained messages may arrive before the SUBACK: keep them too.
            loop {
                match ev.poll().await.expect("connection") {
                    Event::Incoming(Packet::SubAck(s)) => {
                        assert!(
                            granted(s.return_codes[0]),
                            "a controller may watch {filter}"
                        );
                        break;
                    }
                    Event::Incoming(Packet::Publish(p)) => record(p),
                    _ => {}
                }
            }
        });
        let task = rt.spawn(async move {
            let _client = c; // dropping it would end the event loop
            while let Ok(e) = ev.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = e {
                    record(p);
                }
            }
        });
        Watcher { seen, _task: task }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str, &str) -> bool) {
        wait_until(what, Duration::from_secs(10), || {
            self.seen().iter().any(|(t, p)| pred(t, p))
        });
    }
}

// ---------------------------------------------------------------------------------------------
// 1. One device cannot switch, watch or impersonate another.

#[test]
fn a_device_can_neither_switch_nor_watch_nor_impersonate_another_device() {
    let creds = Creds::new();
    let a_secret = creds.add(&["device", "add", "a"]);
    let b_secret = creds.add(&["device", "add", "b"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    let url = broker.url();
    let ops = Controller::new(&url, "ops", &ops_secret, &[]);
    let agent_b = Agent::start(&url, "b", &agent_login(&b_secret));
    ops.wait_online("b");
    assert!(!ops.device("b").unwrap().outputs["led"].on, "b starts off");

    let rt = rt();
    // A controller watching everything b says (and every command sent to it).
    let watcher = Watcher::start(&rt, &broker.mqtt, ("ops", &ops_secret), "pifleet/dev/b/#");

    // Device a, as an attacker with a's own valid credentials would connect.
    let (a, mut aev) = mqtt(&broker.mqtt, "a", Some(("a", &a_secret)));
    rt.block_on(async {
        connect(&mut aev).await.expect("a logs in as itself");
        // Its own subtree is allowed, so the refusals below come from the ACL, not a bad login.
        let own = suback(&a, &mut aev, "pifleet/dev/a/#").await;
        assert!(granted(own), "a may subscribe to its own topics: {own:?}");
        for filter in ["pifleet/dev/b/#", "pifleet/dev/+/cmnd"] {
            let code = suback(&a, &mut aev, filter).await;
            assert_eq!(
                code,
                SubscribeReasonCode::Failure,
                "a must not subscribe to {filter}"
            );
        }

        // A valid command to b. MQTT 3.1.1 has no way to refuse a publish, so the broker
        // acknowledges it and drops it.
        a.publish(
            "pifleet/dev/b/cmnd",
            QoS::AtLeastOnce,
            false,
            r#"{"id":"from-a-1","action":"on"}"#,
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Event::Incoming(Packet::PubAck(_)) = aev.poll().await.expect("connection") {
                    return;
                }
            }
        })
        .await
        .expect("PUBACK for the first denied publish");
        // One denial does not close the connection: a's own topics still work.
        a.publish("pifleet/dev/a/probe", QoS::AtLeastOnce, false, "still here")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = aev.poll().await.expect("connection") {
                    if p.topic == "pifleet/dev/a/probe" {
                        return;
                    }
                }
            }
        })
        .await
        .expect("a receives its own publish after one denial");

        // A second denied publish closes the connection.
        a.publish(
            "pifleet/dev/b/cmnd",
            QoS::AtLeastOnce,
            false,
            r#"{"id":"from-a-2","action":"on"}"#,
        )
        .await
        .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match aev.poll().await {
                    Ok(_) => {}
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("the broker closes a's connection after the second denied publish");
        eprintln!("a's connection ended: {closed:?}");
    });

    // A command from the controller after a's attempts, for an output b does not have (so it
    // leaves the LED alone): once b refused it, b would already have received and acknowledged
    // anything a's publishes had delivered.
    let (r, code) = ops.switch(&["on", "b", "--output", "fan", "--timeout", "10"]);
    assert_eq!((code, outcome(&r, "b")), (Some(1), Outcome::Refused));
    let barrier = r.command_id.to_string();
    watcher.wait_for("b's refusal of the controller's command", |t, p| {
        t == "pifleet/dev/b/event" && p.contains(&barrier)
    });
    let b = ops.device("b").unwrap();
    assert!(!b.outputs["led"].on, "b's LED stayed off: {b:?}");
    assert_eq!(
        b.outputs["led"].cmd, None,
        "no command ever switched b: {b:?}"
    );
    let leaked: Vec<_> = watcher
        .seen()
        .into_iter()
        .filter(|(_, p)| p.contains("from-a-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "a's commands reached b's topics: {leaked:?}"
    );

    // a cannot take b's client id (which would kick b off and fire its last will).
    let code = rt.block_on(connack_code(&broker.mqtt, "b", Some(("a", &a_secret))));
    assert_eq!(
        code,
        ConnectReturnCode::BadClientId as u8,
        "user a with client id b must be refused with CONNACK 2"
    );
    let (r, code) = ops.switch(&["on", "b"]);
    assert_eq!((code, outcome(&r, "b")), (Some(0), Outcome::Confirmed));
    let barrier = r.command_id.to_string();
    watcher.wait_for("b's acknowledgement of the second command", |t, p| {
        t == "pifleet/dev/b/out/led" && p.contains(&barrier)
    });
    let offline: Vec<_> = watcher
        .seen()
        .into_iter()
        .filter(|(t, p)| t == "pifleet/dev/b/status" && p.contains("offline"))
        .collect();
    assert!(offline.is_empty(), "b was kicked off: {offline:?}");
    let dropped: Vec<_> = agent_b
        .proc
        .stderr
        .since(0)
        .into_iter()
        .filter(|l| l.contains("reconnecting") || l.contains("retrying"))
        .collect();
    assert!(dropped.is_empty(), "b lost its connection: {dropped:?}");
    drop(a);
}

// ---------------------------------------------------------------------------------------------
// 2. A controller may switch every device, by name, group and fleet.

#[test]
fn a_controller_switches_devices_by_name_group_and_fleet_and_agents_confirm() {
    let creds = Creds::new();
    let a_secret = creds.add(&["device", "add", "a"]);
    let b_secret = creds.add(&["device", "add", "b", "--group", "garden"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    let url = broker.url();
    let _a = Agent::start(&url, "a", &agent_login(&a_secret));
    let _b = Agent::start(
        &url,
        "b",
        &format!("{}groups = [\"garden\"]\n", agent_login(&b_secret)),
    );
    let ops = Controller::new(&url, "ops", &ops_secret, &[]);
    ops.wait_online("a");
    ops.wait_online("b");

    let (r, code) = ops.switch(&["on", "a"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert_eq!(r.results.len(), 1);
    assert_eq!(outcome(&r, "a"), Outcome::Confirmed);
    assert_eq!(r.results[0].on, Some(true));

    // The fleet topic.
    let (r, code) = ops.switch(&["on", "--all"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert_eq!(r.results.len(), 2, "{r:?}");
    assert_eq!(outcome(&r, "a"), Outcome::Confirmed);
    assert_eq!(outcome(&r, "b"), Outcome::Confirmed);
    assert!(r.results.iter().all(|x| x.on == Some(true)), "{r:?}");

    // The group topic: b is in `garden` (credentials and agent config), a is not.
    let (r, code) = ops.switch(&["off", "--group", "garden"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert_eq!(r.results.len(), 1, "only b is in garden: {r:?}");
    assert_eq!(outcome(&r, "b"), Outcome::Confirmed);
    assert_eq!(r.results[0].on, Some(false));

    let fleet = ops.status();
    let get = |n: &str| fleet.devices.iter().find(|d| d.device == n).unwrap();
    assert!(get("a").outputs["led"].on, "a stays on");
    assert!(!get("b").outputs["led"].on, "b was switched off by group");
    assert_eq!(get("b").outputs["led"].cmd.as_ref(), Some(&r.command_id));
    assert_eq!(get("b").groups, vec!["garden"]);

    let (r, code) = ops.switch(&["off", "--all"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert_eq!(r.results.len(), 2, "{r:?}");
    assert!(r.all_confirmed(), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. Refused logins.

#[test]
fn bad_logins_get_connack_4_or_5_and_the_cli_exits_4_with_a_sentence() {
    let creds = Creds::new();
    let a_secret = creds.add(&["device", "add", "a"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    let addr = broker.mqtt.clone();
    let rt = rt();
    rt.block_on(async {
        assert_eq!(
            connack_code(&addr, "a", Some(("a", &a_secret))).await,
            0,
            "the right password is accepted"
        );
        assert_eq!(
            connack_code(&addr, "a", Some(("a", "not-the-password-1234"))).await,
            ConnectReturnCode::BadUserNamePassword as u8,
            "wrong password"
        );
        assert_eq!(
            connack_code(&addr, "ops:x", Some(("ops", &a_secret))).await,
            4,
            "another identity's password"
        );
        assert_eq!(
            connack_code(&addr, "mallory", Some(("mallory", "whatever-password-1"))).await,
            4,
            "unknown user"
        );
        assert_eq!(
            connack_code(&addr, "anon", None).await,
            ConnectReturnCode::NotAuthorized as u8,
            "no credentials"
        );
    });

    let url = broker.url();
    let wrong = Controller::new(&url, "ops", "not-the-password-1234", &[]);
    for args in [&["status"][..], &["on", "--all"][..]] {
        let out = wrong.run(args);
        assert_eq!(out.status.code(), Some(4), "wrong password: exit 4");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("authentication failed for controller 'ops'"),
            "stderr: {stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
    }
    // Without any login the CLI is refused too, with a different code path (CONNACK 5).
    let out = cli(&url, &["status"]);
    assert_eq!(out.status.code(), Some(4), "no login: exit 4");
    // And the right password works.
    let ok = Controller::new(&url, "ops", &ops_secret, &[]);
    assert_eq!(ok.run(&["status"]).status.code(), Some(0));
}

/// An agent with a wrong password keeps retrying, but with growing, jittered delays: over a
/// 6 s window the broker sees a handful of attempts, where a tight loop (each refusal takes the
/// broker's ~0.3 s anti-guessing pause) would make about 18.
#[test]
fn an_agent_with_a_wrong_password_backs_off_and_never_shows_up_online() {
    const WINDOW: Duration = Duration::from_secs(6);
    let creds = Creds::new();
    creds.add(&["device", "add", "c"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    let url = broker.url();
    let ops = Controller::new(&url, "ops", &ops_secret, &[]);

    // The agent's own reconnect settings (not the fast ones of `Agent::start`).
    let dir = temp_dir("c");
    let config = format!(
        "device = \"c\"\nbroker = {url:?}\ngpio = \"sim\"\nkeep_alive_secs = 2\n\
         password = \"not-the-password-1234\"\n\n[[output]]\nname = \"led\"\npin = 17\n"
    );
    let mut agent = Agent::start_config(dir, "c", &config);

    let refusal = |l: &str| l.contains("refused") && l.contains("user=c");
    broker.proc.stderr.wait_for(
        "the broker's first refusal of c",
        Duration::from_secs(15),
        refusal,
    );
    let started = Instant::now();
    while started.elapsed() < WINDOW {
        let c = ops.device("c");
        assert!(
            c.as_ref().is_none_or(|d| !d.online),
            "c must not be online: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refusals = broker
        .proc
        .stderr
        .since(0)
        .into_iter()
        .filter(|l| refusal(l))
        .count();
    eprintln!("{refusals} refusals of c in about {WINDOW:?}");
    assert!(
        agent.proc.child.try_wait().unwrap().is_none(),
        "a refused login does not stop the agent"
    );
    assert!(
        refusals >= 3,
        "the agent keeps retrying ({refusals} attempts)"
    );
    assert!(
        refusals <= 10,
        "{refusals} attempts in {WINDOW:?}: the agent does not back off"
    );
    // The agent says why, once per attempt.
    let said = agent
        .proc
        .stderr
        .since(0)
        .into_iter()
        .filter(|l| l.contains("authentication failed for device 'c'"))
        .count();
    assert!(said >= 2, "the agent logs each refusal as a sentence");
}

// ---------------------------------------------------------------------------------------------
// 4. TLS.

/// `pifleet-broker tls self-signed --host localhost --out DIR`; returns DIR/ca.pem.
fn self_signed(dir: &Path) -> PathBuf {
    let out = output_logged(
        "pifleet-broker tls self-signed",
        Command::new(bin("pifleet-broker"))
            .args(["tls", "self-signed", "--host", "localhost", "--out"])
            .arg(dir),
    );
    assert!(out.status.success(), "tls self-signed failed");
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        assert!(dir.join(f).exists(), "{f} was written");
    }
    dir.join("ca.pem")
}

#[test]
fn tls_with_a_private_ca_serves_agents_and_the_cli_and_shrugs_off_wrong_clients() {
    let creds = Creds::new();
    let t_secret = creds.add(&["device", "add", "t"]);
    let ops_secret = creds.add(&["controller", "add", "ops"]);
    let tls_dir = creds.dir.path().join("tls");
    let ca = self_signed(&tls_dir);
    let config = creds.dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\n\
             [auth]\ncredentials = {:?}\n",
            tls_dir.join("server.pem"),
            tls_dir.join("server.key"),
            creds.path,
        ),
    )
    .unwrap();
    let broker = Broker::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
    ]);
    let tls_addr = broker
        .proc
        .stdout
        .wait_for("the TLS listener", Duration::from_secs(10), |l| {
            l.starts_with("pifleet-broker: MQTT over TLS on ")
        })
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    auth_announced(&broker);
    let port = tls_addr.rsplit_once(':').unwrap().1.to_string();
    let tls_url = format!("mqtts://localhost:{port}");
    let ca_str = ca.to_str().unwrap();

    // Agent and CLI over TLS, trusting the generated CA.
    let _agent = Agent::start(
        &tls_url,
        "t",
        &format!("{}ca_file = {ca_str:?}\n", agent_login(&t_secret)),
    );
    let ops = Controller::new(&tls_url, "ops", &ops_secret, &["--ca-file", ca_str]);
    ops.wait_online("t");
    let (r, code) = ops.switch(&["on", "t"]);
    assert_eq!(
        (code, outcome(&r, "t")),
        (Some(0), Outcome::Confirmed),
        "{r:?}"
    );
    assert!(ops.device("t").unwrap().outputs["led"].on);

    // A plain MQTT client on the TLS port: a prompt, clean failure (not its own timeout).
    let plain = Controller::new(
        &format!("mqtt://127.0.0.1:{port}"),
        "ops",
        &ops_secret,
        &["--connect-timeout", "10"],
    );
    let started = Instant::now();
    let out = plain.run(&["status"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "plain MQTT to the TLS port must fail: {:?}",
        out.status
    );
    assert!(
        took < Duration::from_secs(5),
        "plain MQTT to the TLS port took {took:?}"
    );
    assert!(
        !stderr.is_empty() && stderr.lines().count() == 1 && !stderr.contains("panicked"),
        "one sentence: {stderr:?}"
    );

    // A client trusting another CA refuses the broker's certificate.
    let other_ca = self_signed(&creds.dir.path().join("other-tls"));
    let other = Controller::new(
        &tls_url,
        "ops",
        &ops_secret,
        &["--ca-file", other_ca.to_str().unwrap()],
    );
    let out = other.run(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "untrusted certificate: exit 3");
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the message names the certificate: {stderr}"
    );

    // 50 half-open connections (TCP connected, no ClientHello, held open) do not hold up a
    // legitimate client.
    let half_open: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&tls_addr).expect("TCP connect to the TLS port"))
        .collect();
    let started = Instant::now();
    let ops_slow = Controller::new(
        &tls_url,
        "ops",
        &ops_secret,
        &["--ca-file", ca_str, "--connect-timeout", "10"],
    );
    let (r, code) = ops_slow.switch(&["off", "t"]);
    let took = started.elapsed();
    assert_eq!(
        (code, outcome(&r, "t")),
        (Some(0), Outcome::Confirmed),
        "{r:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "with 50 half-open TLS connections the CLI took {took:?}"
    );
    let still_open = half_open
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!(std::io::Read::read(&mut &**s, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    eprintln!("CLI confirmed in {took:?} while {still_open} of 50 half-open connections were open");
}

/// `pifleet-broker init` is the whole first-run step: with nothing but a config naming the
/// files, the broker then serves TLS, the printed secret logs the CLI in, a device added with
/// `--secret-file` comes online with that file as its password file, and anonymous clients are
/// refused. The Compose deployment runs exactly this (tests/tests/multihost_compose.rs).
#[test]
fn init_sets_up_tls_and_a_controller_whose_printed_secret_logs_in() {
    let dir = temp_dir("init");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\n\
         key = \"tls/server.key\"\n\n[auth]\ncredentials = \"credentials.toml\"\n",
    )
    .unwrap();
    let admin = |args: &[&str]| {
        output_logged(
            &format!("pifleet-broker {}", args.join(" ")),
            Command::new(bin("pifleet-broker"))
                .env_remove("PIFLEET_CREDENTIALS")
                .arg("--config")
                .arg(&config)
                .args(args),
        )
    };
    let out = admin(&["init", "--controller", "ops"]);
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let password = dir.path().join("pi").join("password");
    let out = admin(&[
        "device",
        "add",
        "pi",
        "--secret-file",
        password.to_str().unwrap(),
    ]);
    assert!(out.status.success());

    let broker = Broker::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
    ]);
    let tls_addr = broker
        .proc
        .stdout
        .wait_for("the TLS listener", Duration::from_secs(10), |l| {
            l.starts_with("pifleet-broker: MQTT over TLS on ")
        })
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    auth_announced(&broker);
    let port = tls_addr.rsplit_once(':').unwrap().1;
    let tls_url = format!("mqtts://localhost:{port}");
    let ca = dir.path().join("tls").join("ca.pem");
    let ca = ca.to_str().unwrap();

    let _agent = Agent::start(
        &tls_url,
        "pi",
        &format!("ca_file = {ca:?}\npassword_file = {:?}\n", password),
    );
    let ops = Controller::new(&tls_url, "ops", &secret, &["--ca-file", ca]);
    ops.wait_online("pi");
    let (r, code) = ops.switch(&["on", "pi"]);
    assert_eq!(
        (code, outcome(&r, "pi")),
        (Some(0), Outcome::Confirmed),
        "{r:?}"
    );

    // Anonymous, or with a wrong secret: refused (exit 4), over TLS as over plain MQTT.
    let out = cli_env(&tls_url, &["--ca-file", ca, "status"], &[]);
    assert_eq!(out.status.code(), Some(4), "anonymous over TLS");
    let out = cli(&broker.url(), &["status"]);
    assert_eq!(out.status.code(), Some(4), "anonymous over plain MQTT");
    let wrong = Controller::new(&tls_url, "ops", "not-the-secret-123", &["--ca-file", ca]);
    assert_eq!(wrong.run(&["status"]).status.code(), Some(4));
}

// ---------------------------------------------------------------------------------------------
// 5. No anonymous service beyond loopback unless asked for.

#[test]
fn the_broker_refuses_anonymous_clients_on_a_public_address_unless_allowed() {
    let mut cmd = Command::new(bin("pifleet-broker"));
    cmd.args(["--mqtt", "0.0.0.0:0", "--no-ws", "--no-history"]);
    let mut refused = Proc::spawn("broker-public", cmd);
    let status = refused.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "exit 2 for a configuration refusal");
    let line = refused
        .stderr
        .wait_for("the refusal", Duration::from_secs(5), |l| {
            l.contains("--allow-anonymous")
        });
    assert!(line.contains("credentials"), "{line}");
    assert!(
        refused
            .stdout
            .since(0)
            .iter()
            .all(|l| !l.contains("MQTT on")),
        "it never listened"
    );

    let allowed = Broker::start_with(&["--mqtt", "0.0.0.0:0", "--no-ws", "--allow-anonymous"]);
    allowed
        .proc
        .stderr
        .wait_for("the warning", Duration::from_secs(5), |l| {
            l.contains("WARNING")
        });
    let port = allowed.mqtt.rsplit_once(':').unwrap().1;
    let out = cli(&format!("mqtt://127.0.0.1:{port}"), &["status"]);
    assert_eq!(out.status.code(), Some(0), "the anonymous broker serves");
}
