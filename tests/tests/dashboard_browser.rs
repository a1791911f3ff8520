//! The dashboard as a user sees it: headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver by `pifleet_tests::webdriver`,
//! loads the page of a real broker with simulated agents, clicks "On" for All and sees every
//! device confirmed, sees a button press arrive live, sees the live and history charts draw
//! points, and leaves a screenshot in `target/dashboard.png` (and in `docs/dashboard.png`, the
//! README's image, with `PIFLEET_SCREENSHOT_DOCS=1`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pifleet_history::{Recorder, RecorderConfig};
use pifleet_tests::webdriver::Driver;
use pifleet_tests::*;
use serde_json::{json, Value};

const PAGE_STATE: &str = "return JSON.stringify({error: document.getElementById('error').hidden ? null : \
    document.getElementById('error').textContent, rows: [...document.querySelectorAll('#fleet tbody tr')]\
    .map(r => r.dataset.device + ':' + r.dataset.presence + ':' + r.className + ':' + r.textContent), \
    results: document.querySelector('#results tbody').textContent});";

/// Whether the browser is missing (then the test is skipped, or fails under CI).
fn no_browser() -> bool {
    if have("chromium") && have("chromedriver") {
        return false;
    }
    skip("chromium and chromedriver (Debian: apt-get install chromium chromium-driver)");
    true
}

/// A broker in memory with its dashboard on a free loopback port, its charts reading `history`
/// (no recorder without it); and the dashboard's URL.
fn dashboard_broker(history: Option<&std::path::Path>) -> (Broker, String) {
    let mut cmd = Command::new(bin("pifleet-broker"));
    cmd.args([
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--dashboard",
        "127.0.0.1:0",
        "--no-state",
    ]);
    match history {
        Some(dir) => cmd.arg("--history-dir").arg(dir),
        None => cmd.arg("--no-history"),
    };
    let broker = Broker::ready(Proc::spawn("broker", cmd), false);
    let url = dashboard_url(&broker);
    (broker, url)
}

/// The dashboard's URL, from the broker's readiness line.
fn dashboard_url(broker: &Broker) -> String {
    let line = broker
        .proc
        .stdout
        .wait_for("the dashboard", Duration::from_secs(15), |l| {
            l.starts_with("pifleet-broker: dashboard on ")
        });
    line.rsplit(' ').next().unwrap().to_string()
}

/// A browser on `url`, once its table shows `online` online devices.
fn open_page(url: &str, online: usize) -> (TempDir, Driver) {
    let profile = temp_dir("chromium-profile");
    let d = Driver::start(profile.path());
    d.goto(url);
    d.wait(
        &format!("{online} online devices"),
        Duration::from_secs(30),
        &format!(
            "return document.querySelectorAll('#fleet tbody tr[data-presence=online]').length === {online}"
        ),
        PAGE_STATE,
    );
    (profile, d)
}

#[test]
fn a_browser_sees_the_fleet_switches_all_on_sees_a_press_and_charts() {
    if no_browser() {
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
    let (broker, url) = dashboard_broker(Some(history.path()));
    let mut agents: Vec<Agent> = [("garage", "outside"), ("kitchen", "downstairs"), ("porch", "outside")]
        .iter()
        .map(|(d, g)| {
            let mut extra = format!(
                "groups = [\"{g}\"]\n[[sensor]]\nname = \"temp\"\nkind = \"sim\"\ninterval_secs = 0.5\n"
            );
            if *d == "kitchen" {
                // A dimmable output beside the LED: the page gives it a level control.
                extra.push_str(
                    "[[output]]\nname = \"led\"\npin = 17\n\
                     [[output]]\nname = \"lamp\"\npin = 18\nkind = \"pwm\"\n",
                );
            }
            Agent::start(&broker.url(), d, &extra)
        })
        .collect();
    for a in &agents {
        wait_online(&broker.url(), &a.device);
    }

    let (_profile, d) = open_page(&url, 3);

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

    // The kitchen's dimmable lamp: a level typed into its own control, confirmed and shown.
    d.wait(
        "the lamp's level control",
        Duration::from_secs(5),
        "return !!document.querySelector('tr[data-device=kitchen] input[data-level-for=lamp]');",
        PAGE_STATE,
    );
    d.js(
        "const i = document.querySelector('tr[data-device=kitchen] input[data-level-for=lamp]'); \
          i.value = '30'; return 1;",
    );
    d.click("tr[data-device=kitchen] [data-output=lamp] button[data-action=set]");
    d.wait(
        "the kitchen lamp at 30 %",
        Duration::from_secs(10),
        "const s = document.querySelector('tr[data-device=kitchen] [data-output=lamp] .state'); \
         return !!s && s.textContent === '30 %';",
        PAGE_STATE,
    );
    d.wait(
        "the lamp's confirmation in the results",
        Duration::from_secs(5),
        "const r = [...document.querySelectorAll('#results tbody tr')]; \
         return r.length === 1 && r[0].dataset.outcome === 'confirmed';",
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

    let png = d.screenshot();
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

/// Rows in the table, in order: `device:hidden`.
const ROWS: &str = "return [...document.querySelectorAll('#fleet tbody tr')].map(r => r.dataset.device + (r.hidden ? ':hidden' : '')).join()";

fn set_filter(d: &Driver, q: &str) {
    d.js(&format!(
        "const f = document.getElementById('filter'); f.value = {q:?}; f.dispatchEvent(new Event('input')); return 1;"
    ));
}

#[test]
fn a_browser_lists_hundreds_of_devices_in_name_order_filters_them_and_updates_one_row_in_place() {
    if no_browser() {
        return;
    }
    let (broker, url) = dashboard_broker(None);
    // 400 devices (retained presence and a reading each, as agents leave them), published in
    // reverse order, four groups.
    let now = pifleet_proto::time::now_ms();
    let groups = ["north", "south", "east", "west"];
    let n = 400;
    let mut msgs = Vec::new();
    for i in (0..n).rev() {
        let dev = format!("node-{i:03}");
        let status = format!(
            r#"{{"state":"online","groups":["{}"],"ts":{now}}}"#,
            groups[i % 4]
        );
        let reading = format!(r#"{{"value":{}.25,"unit":"°C","ts":{now}}}"#, 10 + i % 7);
        msgs.push((format!("pifleet/dev/{dev}/status"), status.into_bytes()));
        msgs.push((
            format!("pifleet/dev/{dev}/sensor/temp"),
            reading.into_bytes(),
        ));
    }
    publish_raw_many(&broker.url(), &msgs, true);
    let names: Vec<String> = (0..n).map(|i| format!("node-{i:03}")).collect();

    let (_profile, d) = open_page(&url, n);
    assert_eq!(d.js(ROWS), json!(names.join(",")), "rows in name order");

    // By group: exactly that group's devices stay visible, in order.
    set_filter(&d, "south");
    let south: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i % 4 == 1 {
                n.clone()
            } else {
                format!("{n}:hidden")
            }
        })
        .collect();
    assert_eq!(d.js(ROWS), json!(south.join(",")));
    let count = d.js("return document.getElementById('count').textContent");
    assert_eq!(count, json!("400 online of 400, 100 shown"));
    // By name; the live chart compares the first devices the filter shows, at most 8.
    set_filter(&d, "node-01");
    let shown = d.js("return [...document.querySelectorAll('#fleet tbody tr')].filter(r => !r.hidden).map(r => r.dataset.device).join()");
    let expected: Vec<String> = (10..20).map(|i| format!("node-{i:03}")).collect();
    assert_eq!(shown, json!(expected.join(",")));
    d.wait(
        "a live chart of 8 of the 10 devices shown",
        Duration::from_secs(5),
        "const c = document.querySelector('canvas[data-live=temp]'); \
         return !!c && c.dataset.series === '8' && document.querySelector('[data-live-note=temp]').textContent.includes('8 of 10 devices')",
        "return document.getElementById('live').outerHTML",
    );
    d.wait(
        "8 history checkboxes",
        Duration::from_secs(5),
        "return document.querySelectorAll('#h-devices input').length === 8",
        "return document.getElementById('h-devices').outerHTML",
    );
    set_filter(&d, "");
    assert_eq!(d.js(ROWS), json!(names.join(",")));

    // One device's reading changes its row in place: no row is rebuilt.
    d.js(
        "window.__row = document.querySelector('tr[data-device=node-123]'); \
          window.__first = document.querySelector('#fleet tbody tr'); return 1;",
    );
    let reading = format!(r#"{{"value":99.5,"unit":"°C","ts":{}}}"#, now + 1000);
    publish_raw(
        &broker.url(),
        "pifleet/dev/node-123/sensor/temp",
        reading.as_bytes(),
    );
    d.wait(
        "node-123's new reading",
        Duration::from_secs(10),
        "return document.querySelector('tr[data-device=node-123] [data-sensor=temp] .v').textContent === 'temp=99.50°C'",
        PAGE_STATE,
    );
    assert_eq!(
        d.js(
            "return window.__row === document.querySelector('tr[data-device=node-123]') && \
              window.__first === document.querySelector('#fleet tbody tr')"
        ),
        json!(true),
        "the rows were rebuilt"
    );
    // A device that appears later takes its place in name order.
    let status = format!(r#"{{"state":"online","groups":["north"],"ts":{now}}}"#);
    publish_raw(
        &broker.url(),
        "pifleet/dev/node-1995/status",
        status.as_bytes(),
    );
    d.wait(
        "node-1995 after node-199",
        Duration::from_secs(10),
        "const r = document.querySelector('tr[data-device=node-1995]'); \
         return !!r && r.previousElementSibling.dataset.device === 'node-199' && \
         r.nextElementSibling.dataset.device === 'node-200'",
        PAGE_STATE,
    );
    let error = d.js("return document.getElementById('error').hidden");
    assert_eq!(error, json!(true), "the page shows an error");
}
