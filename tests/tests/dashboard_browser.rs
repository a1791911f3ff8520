//! The dashboard as a user sees it: headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver with the tiny HTTP client of `pifleet_tests::http`,
//! loads the page of a real broker with simulated agents, clicks "On" for All and sees every
//! device confirmed, sees a button press arrive live, sees the live and history charts draw
//! points, and leaves a screenshot in `target/dashboard.png` (and in `docs/dashboard.png`, the
//! README's image, with `PIFLEET_SCREENSHOT_DOCS=1`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pifleet_history::{Recorder, RecorderConfig};
use pifleet_tests::http;
use pifleet_tests::*;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    _proc: Proc,
    addr: String,
    session: String,
}

impl Driver {
    fn start(profile: &std::path::Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let proc = Proc::spawn("chromedriver", cmd);
        let addr = format!("127.0.0.1:{port}");
        wait_until("chromedriver listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1100", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r = http::post_json(&addr, "/session", &[], &caps);
        assert_eq!(r.status, 200, "new WebDriver session: {}", r.text());
        let v: Value = r.json();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Driver {
            _proc: proc,
            addr,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let r = if method == "GET" {
            http::get(&self.addr, &path, &[])
        } else {
            http::post_json(&self.addr, &path, &[], &body)
        };
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {}", r.text());
        r.json::<Value>()["value"].take()
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    fn click(&self, css: &str) {
        let e = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        let id = e[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("element id in {e}"))
            .to_string();
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Polls `script` until it returns true; on timeout fails with what `explain` returns.
    fn wait(&self, what: &str, timeout: Duration, script: &str, explain: &str) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.js(script) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the page did not show {what} within {timeout:?}: {}",
            self.js(explain)
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http::request(
            "DELETE",
            &self.addr,
            &format!("/session/{}", self.session),
            &[],
            b"",
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

const PAGE_STATE: &str = "return JSON.stringify({error: document.getElementById('error').hidden ? null : \
    document.getElementById('error').textContent, rows: [...document.querySelectorAll('#fleet tbody tr')]\
    .map(r => r.dataset.device + ':' + r.dataset.presence + ':' + r.className + ':' + r.textContent), \
    results: document.querySelector('#results tbody').textContent});";

#[test]
fn a_browser_sees_the_fleet_switches_all_on_sees_a_press_and_charts() {
    if !have("chromium") || !have("chromedriver") {
        skip("chromium and chromedriver (Debian: apt-get install chromium chromium-driver)");
        return;
    }
    // Recorded history for the history chart: an hour of readings per device.
    let history = temp_dir("browser-history");
    let now = pifleet_proto::time::now_ms();
    {
        let topics = pifleet_proto::Topics::default();
        let mut rec = Recorder::new(RecorderConfig::new(history.path())).unwrap();
        for (k, dev) in ["garage", "kitchen", "porch"].iter().enumerate() {
            for i in 0..60u64 {
                let ts = now - (60 - i) * 60_000;
                let v = 18.0 + k as f64 * 2.0 + ((i as f64) / 8.0).sin();
                let p = format!(r#"{{"value":{v:.2},"unit":"°C","ts":{ts}}}"#);
                rec.record_message(
                    &topics,
                    &format!("pifleet/dev/{dev}/sensor/temp"),
                    p.as_bytes(),
                    ts,
                )
                .unwrap();
            }
        }
        rec.tick(now);
        rec.flush();
    }
    let mut cmd = Command::new(bin("pifleet-broker"));
    cmd.args([
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--dashboard",
        "127.0.0.1:0",
    ])
    .arg("--no-state")
    .arg("--history-dir")
    .arg(history.path());
    let broker = Broker::ready(Proc::spawn("broker", cmd), false);
    let line = broker
        .proc
        .stdout
        .wait_for("the dashboard", Duration::from_secs(15), |l| {
            l.starts_with("pifleet-broker: dashboard on ")
        });
    let url = line.rsplit(' ').next().unwrap().to_string();
    let mut agents: Vec<Agent> = [("garage", "outside"), ("kitchen", "downstairs"), ("porch", "outside")]
        .iter()
        .map(|(d, g)| {
            let extra = format!(
                "groups = [\"{g}\"]\n[[sensor]]\nname = \"temp\"\nkind = \"sim\"\ninterval_secs = 0.5\n"
            );
            Agent::start(&broker.url(), d, &extra)
        })
        .collect();
    for a in &agents {
        wait_online(&broker.url(), &a.device);
    }

    let profile = temp_dir("chromium-profile");
    let d = Driver::start(profile.path());
    d.call("POST", "/url", json!({"url": url}));
    d.wait(
        "three online devices",
        Duration::from_secs(15),
        "return [...document.querySelectorAll('#fleet tbody tr[data-presence=online]')].length === 3",
        PAGE_STATE,
    );

    // On, for All (the default target), by a real click.
    d.click("#ctl-on");
    d.wait(
        "every device confirmed",
        Duration::from_secs(10),
        "const r = [...document.querySelectorAll('#results tbody tr')]; \
         return r.length === 3 && r.every(x => x.dataset.outcome === 'confirmed');",
        PAGE_STATE,
    );
    d.wait(
        "every LED on in the table",
        Duration::from_secs(5),
        "const o = [...document.querySelectorAll('#fleet [data-output=led]')]; \
         return o.length === 3 && o.every(x => x.dataset.on === 'true');",
        PAGE_STATE,
    );

    // A button press on the kitchen's simulated board shows up live.
    let kitchen = agents.iter_mut().find(|a| a.device == "kitchen").unwrap();
    kitchen.proc.send_line("press");
    d.wait(
        "the kitchen button pressed",
        Duration::from_secs(10),
        "const b = document.querySelector('tr[data-device=kitchen] [data-input=button]'); \
         return !!b && b.dataset.active === 'true';",
        PAGE_STATE,
    );

    // Charts: live readings and the recorded hour.
    d.wait(
        "a live temp chart with points",
        Duration::from_secs(10),
        "const c = document.querySelector('canvas[data-live=temp]'); return !!c && Number(c.dataset.points) >= 6;",
        PAGE_STATE,
    );
    d.wait(
        "a history chart with points",
        Duration::from_secs(10),
        "return Number(document.getElementById('h-chart').dataset.points) >= 150;",
        "return document.getElementById('h-note').textContent",
    );
    // The filter box hides what does not match.
    d.js("const f = document.getElementById('filter'); f.value = 'outside'; f.dispatchEvent(new Event('input')); return 1;");
    d.wait(
        "only the outside group",
        Duration::from_secs(5),
        "return [...document.querySelectorAll('#fleet tbody tr')].filter(r => !r.hidden).map(r => r.dataset.device).join() === 'garage,porch'",
        PAGE_STATE,
    );
    d.js("const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); return 1;");

    // No error banner, no stale row, a working CSV link.
    let state: Value = serde_json::from_str(d.js(PAGE_STATE).as_str().unwrap()).unwrap();
    assert!(state["error"].is_null(), "the page shows an error: {state}");
    let stale =
        d.js("return document.querySelectorAll('#fleet tr.stale, #fleet tr.offline').length");
    assert_eq!(stale, json!(0), "stale or offline rows: {state}");
    let href = d.js("return document.getElementById('csv').getAttribute('href')");
    assert!(href.as_str().unwrap().ends_with(".csv"), "{href}");

    let png = base64_decode(d.call("GET", "/screenshot", Value::Null).as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let target = bin("pifleet")
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap();
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    if std::env::var_os("PIFLEET_SCREENSHOT_DOCS").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
        std::fs::write(docs, &png).unwrap();
    }
}
