//! The web dashboard's HTTP API end to end: a real broker with its embedded dashboard (and
//! `pifleet serve`), real simulated agents, requests over loopback with the documented types.

use std::process::Command;
use std::time::Duration;

use pifleet_history::{HistorySeries, Recorder, RecorderConfig};
use pifleet_proto::report::{FleetStatus, Outcome, SwitchReport, WatchEvent};
use pifleet_tests::http::{self, Sse};
use pifleet_tests::*;
use serde_json::json;

const SENSOR: &str = "[[sensor]]\nname = \"temp\"\nkind = \"sim\"\ninterval_secs = 0.5\n";

/// Starts a broker with its dashboard on `dashboard`; returns it and the dashboard address.
fn broker(extra: &[&str], env: &[(&str, &str)], dashboard: &str) -> (Broker, String) {
    let mut cmd = Command::new(bin("pifleet-broker"));
    // State in memory, and no history unless the test gives a directory: never the user's.
    cmd.args(["--mqtt", "127.0.0.1:0", "--no-ws", "--no-state"])
        .args(["--dashboard", dashboard])
        .args(extra);
    if !extra.contains(&"--history-dir") {
        cmd.arg("--no-history");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let b = Broker::ready(Proc::spawn("broker", cmd), false);
    let line = b
        .proc
        .stdout
        .wait_for("the dashboard", Duration::from_secs(15), |l| {
            l.starts_with("pifleet-broker: dashboard on ")
        });
    let addr = line
        .rsplit("://")
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    (b, addr)
}

fn csrf(addr: &str, cookie: Option<&str>) -> String {
    let h: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    let r = http::get(addr, "/api/session", &h);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json::<serde_json::Value>()["csrf"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_fleet(addr: &str, n: usize) -> FleetStatus {
    let mut last = FleetStatus::default();
    wait_until(
        &format!("{n} devices online in /api/fleet"),
        Duration::from_secs(15),
        || {
            last = http::get(addr, "/api/fleet", &[]).json();
            last.devices.iter().filter(|d| d.online).count() == n
        },
    );
    last
}

#[test]
fn dashboard_lists_the_devices_and_all_on_is_confirmed_by_every_device() {
    let (b, addr) = broker(&[], &[], "127.0.0.1:0");
    let _agents: Vec<_> = ["d1", "d2", "d3"]
        .iter()
        .map(|d| Agent::start(&b.url(), d, SENSOR))
        .collect();
    let fleet = wait_fleet(&addr, 3);
    let names: Vec<_> = fleet.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, ["d1", "d2", "d3"]);
    assert!(fleet.devices.iter().all(|d| d.last_seen.is_some()));

    let page = http::get(&addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("pifleet dashboard"));

    let token = csrf(&addr, None);
    let cmd = json!({"target": "all", "action": "on"});
    let r = http::post_json(&addr, "/api/command", &[("X-CSRF-Token", &token)], &cmd);
    assert_eq!(r.status, 200, "{}", r.text());
    let report: SwitchReport = r.json();
    assert_eq!(report.results.len(), 3, "{report:?}");
    for d in ["d1", "d2", "d3"] {
        assert_eq!(outcome(&report, d), Outcome::Confirmed, "{report:?}");
    }
    assert!(report.results.iter().all(|r| r.on == Some(true)));

    // A device that does not exist is reported, not waited for.
    let cmd = json!({"target": "device", "name": "ghost", "action": "off"});
    let r = http::post_json(&addr, "/api/command", &[("X-CSRF-Token", &token)], &cmd);
    assert_eq!(outcome(&r.json(), "ghost"), Outcome::Unknown);
}

#[test]
fn a_post_without_the_csrf_token_or_from_a_foreign_host_is_refused() {
    let (b, addr) = broker(&[], &[], "127.0.0.1:0");
    let _a = Agent::start(&b.url(), "k", "");
    wait_fleet(&addr, 1);
    let cmd = json!({"target": "all", "action": "on"});
    let r = http::post_json(&addr, "/api/command", &[], &cmd);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http::post_json(&addr, "/api/command", &[("X-CSRF-Token", "guess")], &cmd);
    assert_eq!(r.status, 403, "{}", r.text());
    // DNS rebinding: the right port under another name.
    let r = http::request("GET", &addr, "/api/fleet", &[("Host", "evil.example")], b"");
    assert!(
        r.status == 403 || r.status == 400,
        "{} {}",
        r.status,
        r.text()
    );
    let led = device_status(&b.url(), "k").unwrap().outputs["led"].on;
    assert!(!led, "no refused request switched anything");
}

#[test]
fn server_sent_events_deliver_a_button_press() {
    let (b, addr) = broker(&[], &[], "127.0.0.1:0");
    let mut agent = Agent::start(&b.url(), "k", "");
    wait_fleet(&addr, 1);
    let mut sse = Sse::open(&addr, "/api/events", &[]);
    let (_, fleet) = sse.wait_for(Duration::from_secs(5), |n, _| n == "fleet");
    let fleet: FleetStatus = serde_json::from_str(&fleet).unwrap();
    assert_eq!(fleet.devices.len(), 1);
    agent.proc.send_line("press");
    let (_, data) = sse.wait_for(Duration::from_secs(10), |n, d| {
        n == "message"
            && matches!(serde_json::from_str(d),
                Ok(WatchEvent::Input { ref device, ref state, .. }) if device.as_str() == "k" && state.active)
    });
    assert!(data.contains("\"button\""), "{data}");
}

#[test]
fn history_series_returns_points_and_the_day_file_downloads() {
    let dir = temp_dir("dash-history");
    let now = pifleet_proto::time::now_ms();
    {
        let topics = pifleet_proto::Topics::default();
        let mut rec = Recorder::new(RecorderConfig::new(dir.path())).unwrap();
        for i in 0..20u64 {
            let ts = now - (20 - i) * 60_000;
            let payload = format!(r#"{{"value":{},"unit":"C","ts":{ts}}}"#, 20 + i);
            rec.record_message(&topics, "pifleet/dev/k/sensor/temp", payload.as_bytes(), ts)
                .unwrap();
        }
        rec.tick(now);
        rec.flush();
    }
    let d = dir.path().to_str().unwrap();
    let (_b, addr) = broker(&["--history-dir", d], &[], "127.0.0.1:0");
    let r = http::get(&addr, "/api/history/k/temp?since=1h&buckets=100", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let s: HistorySeries = r.json();
    assert_eq!(s.points, 20, "{s:?}");
    assert!(!s.buckets.is_empty() && s.buckets.len() <= 100);
    assert_eq!(s.unit.as_deref(), Some("C"));

    let day = pifleet_history::Day::of_ms(now - 60_000);
    let r = http::get(&addr, &format!("/api/history/k/{day}.csv"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        r.text().starts_with(pifleet_history::HEADER),
        "{}",
        r.text()
    );
    let r = http::get(&addr, "/api/history/nobody/temp", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = http::get(&addr, "/api/history/k/temp?since=soon", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn off_loopback_a_controller_login_is_required_and_a_device_identity_is_refused() {
    let creds = Creds::new();
    let device = creds.add(&["device", "add", "k"]);
    let alice = creds.add(&["controller", "add", "alice"]);
    let path = creds.path.to_str().unwrap();
    // 0.0.0.0 is not loopback; the requests still go to 127.0.0.1.
    let (b, addr) = broker(&["--credentials", path], &[], "0.0.0.0:0");
    auth_announced(&b);
    let addr = addr.replace("0.0.0.0", "127.0.0.1");

    assert_eq!(http::get(&addr, "/api/fleet", &[]).status, 401);
    assert_eq!(http::get(&addr, "/api/session", &[]).status, 401);
    let login = |user: &str, password: &str| {
        http::post_json(
            &addr,
            "/api/login",
            &[],
            &json!({"user": user, "password": password}),
        )
    };
    assert_eq!(login("alice", "wrong-password-123").status, 401);
    let r = login("k", &device);
    assert_eq!(r.status, 403, "a device identity is refused: {}", r.text());
    assert!(r.header("set-cookie").is_none());

    let r = login("alice", &alice);
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let r = http::get(&addr, "/api/fleet", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let cmd = json!({"target": "all", "action": "on"});
    let r = http::post_json(&addr, "/api/command", &[("Cookie", &cookie)], &cmd);
    assert_eq!(r.status, 403, "no CSRF token: {}", r.text());
    let token = csrf(&addr, Some(&cookie));
    let r = http::post_json(
        &addr,
        "/api/command",
        &[("Cookie", &cookie), ("X-CSRF-Token", &token)],
        &cmd,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Another session's token does not do.
    let other = login("alice", &alice);
    let other = other
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = http::post_json(
        &addr,
        "/api/command",
        &[("Cookie", &other), ("X-CSRF-Token", &token)],
        &cmd,
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn the_broker_refuses_an_exposed_dashboard_without_credentials() {
    let out = output_logged(
        "pifleet-broker --dashboard 0.0.0.0:0",
        Command::new(bin("pifleet-broker")).args([
            "--mqtt",
            "127.0.0.1:0",
            "--no-ws",
            "--no-state",
            "--no-history",
            "--dashboard",
            "0.0.0.0:0",
        ]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve the dashboard"));
}

#[test]
fn pifleet_serve_runs_the_dashboard_standalone() {
    let b = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let _a = Agent::start(&b.url(), "k", "");
    wait_online(&b.url(), "k");
    let mut cmd = Command::new(bin("pifleet"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("PIFLEET_BROKER", b.url());
    let p = Proc::spawn("serve", cmd);
    let line = p.stdout.wait_for("serve", Duration::from_secs(15), |l| {
        l.starts_with("pifleet: dashboard on ")
    });
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    wait_fleet(&addr, 1);
    let token = csrf(&addr, None);
    let cmd = json!({"target": "device", "name": "k", "action": "toggle"});
    let r = http::post_json(&addr, "/api/command", &[("X-CSRF-Token", &token)], &cmd);
    assert_eq!(outcome(&r.json(), "k"), Outcome::Confirmed);
}

#[test]
fn with_tls_on_the_dashboard_serves_https_with_the_brokers_certificate_and_a_secure_cookie() {
    let creds = Creds::new();
    let alice = creds.add(&["controller", "add", "alice"]);
    let tls = creds.dir.path().join("tls");
    let out = output_logged(
        "pifleet-broker tls self-signed",
        Command::new(bin("pifleet-broker"))
            .args(["tls", "self-signed", "--host", "localhost", "--out"])
            .arg(&tls),
    );
    assert!(out.status.success(), "tls self-signed failed");
    let ca = tls.join("ca.pem");
    let config = creds.dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
            tls.join("server.pem"),
            tls.join("server.key"),
        ),
    )
    .unwrap();
    let (b, addr) = broker(
        &[
            "--config",
            config.to_str().unwrap(),
            "--credentials",
            creds.path.to_str().unwrap(),
        ],
        &[],
        "0.0.0.0:0",
    );
    auth_announced(&b);
    let line = b
        .proc
        .stdout
        .wait_for("the dashboard line", Duration::from_secs(5), |l| {
            l.starts_with("pifleet-broker: dashboard on ")
        });
    assert!(line.contains("https://0.0.0.0:"), "{line}");
    let addr = addr.replace("0.0.0.0", "127.0.0.1");

    let login = json!({"user": "alice", "password": alice}).to_string();
    let r = http::request_tls(
        &ca,
        "localhost",
        "POST",
        &addr,
        "/api/login",
        &[("Content-Type", "application/json")],
        login.as_bytes(),
    )
    .expect("an HTTPS connection with the broker's certificate");
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let r = http::request_tls(
        &ca,
        "localhost",
        "GET",
        &addr,
        "/api/fleet",
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // A certificate from another CA is not trusted: the dashboard really is the broker's TLS.
    let other = creds.dir.path().join("other");
    assert!(output_logged(
        "pifleet-broker tls self-signed",
        Command::new(bin("pifleet-broker"))
            .args(["tls", "self-signed", "--host", "localhost", "--out"])
            .arg(&other),
    )
    .status
    .success());
    let e = http::request_tls(
        &other.join("ca.pem"),
        "localhost",
        "GET",
        &addr,
        "/",
        &[],
        b"",
    )
    .expect_err("another CA must not verify the dashboard's certificate");
    assert!(e.contains("certificate"), "{e}");

    // Plain HTTP on the same port gets no HTTP answer (no session cookie in clear text).
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn a_controller_removed_from_the_credentials_can_no_longer_log_in_to_the_dashboard() {
    let creds = Creds::new();
    let alice = creds.add(&["controller", "add", "alice"]);
    let path = creds.path.to_str().unwrap();
    let (b, addr) = broker(&["--credentials", path], &[], "0.0.0.0:0");
    auth_announced(&b);
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let login = || {
        http::post_json(
            &addr,
            "/api/login",
            &[],
            &json!({"user": "alice", "password": alice}),
        )
        .status
    };
    assert_eq!(login(), 200);
    let reloads = |b: &Broker| {
        b.proc
            .stderr
            .since(0)
            .iter()
            .filter(|l| l.contains("credentials re-read"))
            .count()
    };
    let before = reloads(&b);
    creds.admin(&["controller", "remove", "alice"]);
    b.proc.signal("HUP");
    wait_until(
        "the broker re-read its credentials",
        Duration::from_secs(10),
        || reloads(&b) > before,
    );
    assert_eq!(
        login(),
        401,
        "the dashboard checks the credentials the broker holds now"
    );
}
