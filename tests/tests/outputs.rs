//! Dimmable outputs and pulses end to end: a real broker, real `pifleet-agent`s on the
//! simulated GPIO backend, the real CLI.

use std::time::{Duration, Instant};

use pifleet_proto::report::Outcome;
use pifleet_proto::StateSource;
use pifleet_tests::*;

const LAMP: &str = "[[output]]\nname = \"led\"\npin = 17\n\n\
                    [[output]]\nname = \"lamp\"\npin = 18\nkind = \"pwm\"\n";

/// What the agent's simulator console says about its outputs (`show`), e.g. `led=on`.
fn shown(agent: &mut Agent) -> String {
    let from = agent.proc.stdout.len();
    agent.proc.send_line("show");
    let mut answer = None;
    wait_until(
        "the console's answer to show",
        Duration::from_secs(5),
        || {
            answer = agent
                .proc
                .stdout
                .since(from)
                .into_iter()
                .find(|l| l.contains("outputs: "));
            answer.is_some()
        },
    );
    answer.unwrap()
}

#[test]
fn a_level_is_set_confirmed_shown_and_refused_where_it_does_not_fit() {
    let broker = Broker::start();
    let url = broker.url();
    let _agent = Agent::start(&url, "den", LAMP);
    wait_online(&url, "den");

    let (r, code) = switch(&url, &["set", "den", "--output", "lamp", "--level", "40"]);
    assert_eq!(
        (code, outcome(&r, "den")),
        (Some(0), Outcome::Confirmed),
        "{r:?}"
    );
    assert_eq!(r.results[0].level, Some(40.0));
    assert_eq!(r.results[0].on, Some(true));
    let lamp = &device_status(&url, "den").unwrap().outputs["lamp"];
    assert_eq!((lamp.level, lamp.on), (Some(40.0), true));
    let text = String::from_utf8(cli(&url, &["status", "den"]).stdout).unwrap();
    assert!(text.contains("lamp=40%"), "{text}");

    // on brings back the last level; off is 0.
    let (r, _) = switch(&url, &["off", "den", "--output", "lamp"]);
    assert_eq!(r.results[0].level, Some(0.0));
    let (r, _) = switch(&url, &["on", "den", "--output", "lamp"]);
    assert_eq!(r.results[0].level, Some(40.0));

    // A level for an on/off output: the device refuses it with its reason (exit 1).
    let (r, code) = switch(&url, &["set", "den", "--output", "led", "--level", "40"]);
    assert_eq!(
        (code, outcome(&r, "den")),
        (Some(1), Outcome::Refused),
        "{r:?}"
    );
    let why = r.results[0].message.clone().unwrap();
    assert!(why.contains("on/off only"), "{why}");
    // Out of range never leaves the CLI (exit 2), and a device asked directly refuses it.
    let out = cli(&url, &["set", "den", "--output", "lamp", "--level", "140"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside 0 to 100"));
    let lamp = &device_status(&url, "den").unwrap().outputs["lamp"];
    assert_eq!(lamp.level, Some(40.0), "unchanged");
}

#[test]
fn a_pulse_ends_on_the_device_while_the_broker_is_down() {
    let state = temp_dir("outputs-broker-state");
    let state_dir = state.path().to_str().unwrap().to_string();
    let mut broker = Broker::start_with(&[
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--state-dir",
        &state_dir,
    ]);
    let url = broker.url();
    let mut agent = Agent::start(&url, "gate", "");
    wait_online(&url, "gate");

    let asked = Instant::now();
    let (r, code) = switch(&url, &["on", "gate", "--for", "3s"]);
    assert_eq!(
        (code, outcome(&r, "gate")),
        (Some(0), Outcome::Confirmed),
        "{r:?}"
    );
    let off_at = r.results[0]
        .off_at
        .expect("the pulse's end is in the confirmation");
    let now = pifleet_proto::time::now_ms();
    assert!(
        off_at > now && off_at <= now + 3_100,
        "off_at {off_at}, now {now}"
    );
    let status = device_status(&url, "gate").unwrap();
    assert_eq!(status.outputs["led"].off_at, Some(off_at));

    // The broker goes away; the device's timer does not need it.
    broker.proc.signal("KILL");
    broker.proc.wait_exit(Duration::from_secs(5));
    assert!(shown(&mut agent).contains("led=on"), "still on right after");
    wait_until(
        "the pulse ended on the device",
        Duration::from_secs(10),
        || shown(&mut agent).contains("led=off"),
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(2_500),
        "off by the timer, not by the disconnect ({:?})",
        asked.elapsed()
    );

    // The broker back on the same port: the device republishes the end of the pulse.
    let addr = broker.mqtt.clone();
    let broker = Broker::start_with(&["--mqtt", &addr, "--no-ws", "--state-dir", &state_dir]);
    let url = broker.url();
    wait_until(
        "gate reports the end of its pulse",
        Duration::from_secs(15),
        || {
            device_status(&url, "gate").is_some_and(|d| {
                d.online && !d.outputs["led"].on && d.outputs["led"].source == StateSource::Pulse
            })
        },
    );
}

#[test]
fn an_agent_restarted_mid_pulse_comes_up_off_and_pulse_secs_needs_no_on_time() {
    let broker = Broker::start();
    let url = broker.url();
    let valve = "[[output]]\nname = \"valve\"\npin = 22\ninitial = \"restore\"\npulse_secs = 60\n";
    let mut agent = Agent::start(&url, "garden", valve);
    wait_online(&url, "garden");
    // pulse_secs: a plain `on` is a one-minute pulse.
    let (r, code) = switch(&url, &["on", "garden"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert!(r.results[0].off_at.is_some(), "{r:?}");
    let text = String::from_utf8(cli(&url, &["status", "garden"]).stdout).unwrap();
    assert!(text.contains("valve=on(pulse"), "{text}");

    // Killed mid-pulse (no goodbye, no timer), then started again from its state file.
    agent.proc.signal("KILL");
    agent.proc.wait_exit(Duration::from_secs(5));
    let dir = agent.dir;
    let mut agent = Agent::start_in(dir, &url, "garden", valve);
    wait_until("garden is back", Duration::from_secs(15), || {
        device_status(&url, "garden").is_some_and(|d| d.online && !d.outputs["valve"].on)
    });
    assert!(shown(&mut agent).contains("valve=off"));
}
