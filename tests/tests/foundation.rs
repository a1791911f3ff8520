//! The foundation, end to end: real broker, real agents (simulated GPIO), the real CLI.

use std::process::Command;
use std::time::{Duration, Instant};

use pifleet_proto::report::{Outcome, WatchEvent};
use pifleet_tests::*;

#[test]
fn switch_all_then_a_group_and_status_shows_what_agents_report() {
    let broker = Broker::start();
    let url = broker.url();
    let _a = Agent::start(&url, "alpha", "groups = [\"kitchen\"]");
    let _b = Agent::start(&url, "bravo", "");
    wait_online(&url, "alpha");
    wait_online(&url, "bravo");

    let (r, code) = switch(&url, &["on", "--all"]);
    assert_eq!(code, Some(0));
    assert_eq!(r.results.len(), 2);
    assert_eq!(outcome(&r, "alpha"), Outcome::Confirmed);
    assert_eq!(outcome(&r, "bravo"), Outcome::Confirmed);
    assert!(r
        .results
        .iter()
        .all(|x| x.on == Some(true) && x.latency_ms.is_some()));

    let (r, code) = switch(&url, &["off", "--group", "kitchen"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        r.results.len(),
        1,
        "only the kitchen device is targeted: {r:?}"
    );
    assert_eq!(outcome(&r, "alpha"), Outcome::Confirmed);
    assert_eq!(r.results[0].on, Some(false));

    let fleet = status(&url);
    let a = fleet.devices.iter().find(|d| d.device == "alpha").unwrap();
    let b = fleet.devices.iter().find(|d| d.device == "bravo").unwrap();
    assert!(a.online && b.online);
    assert!(!a.outputs["led"].on);
    assert!(b.outputs["led"].on);
    assert_eq!(a.groups, vec!["kitchen"]);
    assert_eq!(a.outputs["led"].cmd.as_ref().unwrap(), &r.command_id);
}

#[test]
fn a_simulated_button_press_reaches_watch_and_status() {
    let broker = Broker::start();
    let url = broker.url();
    let mut agent = Agent::start(&url, "charlie", "");
    wait_online(&url, "charlie");
    let watch = watch(&url, &[]);

    agent.proc.send_line("press button");
    let line = watch
        .stdout
        .wait_for("the button event", Duration::from_secs(10), |l| {
            l.contains("\"input\"")
        });
    let event: WatchEvent = serde_json::from_str(&line).unwrap();
    match event {
        WatchEvent::Input {
            device,
            input,
            state,
        } => {
            assert_eq!(
                (device.as_str(), input.as_str(), state.active),
                ("charlie", "button", true)
            );
        }
        other => panic!("unexpected event {other:?}"),
    }
    let d = device_status(&url, "charlie").unwrap();
    assert!(d.inputs["button"].active);

    let human = cli(&url, &["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("button=pressed"));
}

#[test]
fn a_killed_agent_goes_offline_and_is_reported_offline_without_waiting() {
    let broker = Broker::start();
    let url = broker.url();
    let agent = Agent::start(&url, "delta", "");
    wait_online(&url, "delta");
    agent.proc.signal("KILL");
    wait_until(
        "delta is offline (last will)",
        Duration::from_secs(10),
        || device_status(&url, "delta").is_some_and(|d| !d.online),
    );

    let started = Instant::now();
    let (r, code) = switch(&url, &["on", "delta", "--timeout", "10"]);
    assert_eq!(code, Some(1));
    assert_eq!(outcome(&r, "delta"), Outcome::Offline);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an offline device is not waited for ({:?})",
        started.elapsed()
    );
}

#[test]
fn agents_reconnect_resubscribe_and_republish_after_a_broker_restart() {
    let broker = Broker::start();
    let url = broker.url();
    let addr = broker.mqtt.clone();
    let _a = Agent::start(&url, "echo", "groups = [\"g\"]");
    let _b = Agent::start(&url, "foxtrot", "");
    wait_online(&url, "echo");
    wait_online(&url, "foxtrot");
    drop(broker); // SIGKILL: the retained state the broker kept in memory is gone.

    let _broker = Broker::start_with(&["--mqtt", &addr, "--no-ws"]);
    wait_online(&url, "echo");
    wait_online(&url, "foxtrot");
    let (r, code) = switch(&url, &["on", "--all"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert_eq!(outcome(&r, "echo"), Outcome::Confirmed);
    assert_eq!(outcome(&r, "foxtrot"), Outcome::Confirmed);
    // Group subscriptions were restored too.
    let (r, code) = switch(&url, &["off", "--group", "g"]);
    assert_eq!((code, outcome(&r, "echo")), (Some(0), Outcome::Confirmed));
}

#[test]
fn a_malformed_command_is_refused_with_an_event_and_the_agent_keeps_serving() {
    let broker = Broker::start();
    let url = broker.url();
    let _agent = Agent::start(&url, "golf", "");
    wait_online(&url, "golf");
    let watch = watch(&url, &["golf"]);

    publish_raw(&url, "pifleet/dev/golf/cmnd", b"this is not json");
    let line = watch
        .stdout
        .wait_for("the bad_command event", Duration::from_secs(10), |l| {
            l.contains("bad_command")
        });
    let event: WatchEvent = serde_json::from_str(&line).unwrap();
    assert!(matches!(event, WatchEvent::Event { .. }));
    publish_raw(
        &url,
        "pifleet/dev/golf/cmnd",
        br#"{"id":"x1","action":"explode"}"#,
    );
    watch
        .stdout
        .wait_for("the second refusal", Duration::from_secs(10), |l| {
            l.contains("\"x1\"")
        });
    publish_raw(
        &url,
        "pifleet/dev/golf/cmnd",
        br#"{"id":"x2","action":"on","output":"fan"}"#,
    );
    watch
        .stdout
        .wait_for("the unknown output refusal", Duration::from_secs(10), |l| {
            l.contains("unknown_output") && l.contains("\"x2\"")
        });

    let (r, code) = switch(&url, &["on", "golf"]);
    assert_eq!((code, outcome(&r, "golf")), (Some(0), Outcome::Confirmed));
    // A command naming a missing output is reported as refused, not as a timeout.
    let (r, code) = switch(&url, &["on", "golf", "--output", "fan", "--timeout", "10"]);
    assert_eq!((code, outcome(&r, "golf")), (Some(1), Outcome::Refused));
}

#[test]
fn restore_brings_the_led_back_after_a_restart() {
    let broker = Broker::start();
    let url = broker.url();
    let config =
        "groups = [\"upstairs\"]\n[[output]]\nname = \"led\"\npin = 17\ninitial = \"restore\"\n";
    let mut agent = Agent::start(&url, "hotel", config);
    wait_online(&url, "hotel");
    let (_, code) = switch(&url, &["on", "hotel"]);
    assert_eq!(code, Some(0));
    let state_file = agent.dir.path().join("state.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(saved["led"], true);

    agent.proc.signal("TERM");
    let exit = agent.proc.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    wait_until("hotel says goodbye", Duration::from_secs(10), || {
        device_status(&url, "hotel").is_some_and(|d| !d.online)
    });
    // A group member that said goodbye is reported offline, not forgotten.
    let (r, code) = switch(&url, &["off", "--group", "upstairs"]);
    assert_eq!((code, outcome(&r, "hotel")), (Some(1), Outcome::Offline));

    let dir = std::mem::replace(&mut agent.dir, temp_dir("unused"));
    let _agent = Agent::start_in(dir, &url, "hotel", config);
    wait_until(
        "hotel is back online with the LED on",
        Duration::from_secs(15),
        || {
            device_status(&url, "hotel").is_some_and(|d| {
                d.online
                    && d.outputs
                        .get("led")
                        .is_some_and(|o| o.on && o.source == pifleet_proto::StateSource::Restore)
            })
        },
    );
}

#[test]
fn mosquitto_clients_interoperate_using_the_documented_protocol() {
    if !have("mosquitto_pub") || !have("mosquitto_sub") {
        skip("mosquitto-clients is not installed (.ci/run installs it)");
        return;
    }
    let broker = Broker::start();
    let url = broker.url();
    let (host, port) = broker.mqtt.rsplit_once(':').unwrap();
    let _agent = Agent::start(&url, "india", "");
    wait_online(&url, "india");

    // Read the retained state, as docs/protocol.md describes it.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-t",
            "pifleet/dev/india/out/led",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["on"], false);

    // Listen for the acknowledgement, then send a command by hand.
    let mut sub = Command::new("mosquitto_sub");
    sub.args([
        "-h",
        host,
        "-p",
        port,
        "-t",
        "pifleet/dev/india/out/led",
        "-v",
    ]);
    let sub = Proc::spawn("mosquitto_sub", sub);
    sub.stdout
        .wait_for("the retained state", Duration::from_secs(5), |l| {
            l.contains("\"on\":false")
        });
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-q",
            "1",
            "-t",
            "pifleet/dev/india/cmnd",
        ])
        .args(["-m", r#"{"id":"by-hand-1","action":"on"}"#])
        .status()
        .unwrap();
    assert!(status.success());
    let line = sub
        .stdout
        .wait_for("the acknowledgement", Duration::from_secs(5), |l| {
            l.contains("by-hand-1")
        });
    assert!(line.contains("\"on\":true"), "{line}");
}

#[test]
fn a_websocket_device_publishes_a_sensor_and_receives_commands() {
    let broker = Broker::start();
    let url = broker.url();
    let sensor = "[[sensor]]\nname = \"water\"\nkind = \"sim\"\ninterval_secs = 0.2\n";
    let _agent = Agent::start(&broker.ws_url(), "juliet", sensor);
    wait_until(
        "juliet's sensor reading arrives over WebSocket",
        Duration::from_secs(15),
        || {
            device_status(&url, "juliet")
                .is_some_and(|d| d.online && d.sensors.contains_key("water"))
        },
    );
    let d = device_status(&url, "juliet").unwrap();
    assert_eq!(d.sensors["water"].unit, "°C");
    let human = cli(&url, &["status", "juliet"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("water="));

    let (r, code) = switch(&url, &["toggle", "juliet"]);
    assert_eq!((code, outcome(&r, "juliet")), (Some(0), Outcome::Confirmed));
    assert_eq!(r.results[0].on, Some(true));
}

#[test]
fn a_fleet_of_thirty_is_shown_and_switched_completely() {
    // Four retained messages per device: subscribed with QoS 1 they would hit rumqttd's cap of
    // 100 retained messages per connection at 25 devices.
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws", "--demo", "30"]);
    let url = broker.url();
    wait_until(
        "all 30 demo devices report everything",
        Duration::from_secs(30),
        || {
            let fleet = status(&url);
            fleet.devices.len() == 30
                && fleet.devices.iter().all(|d| {
                    d.online
                        && d.outputs.contains_key("led")
                        && d.inputs.contains_key("button")
                        && d.sensors.contains_key("temp")
                })
        },
    );
    let (r, code) = switch(&url, &["on", "--all"]);
    assert_eq!(code, Some(0));
    assert_eq!(r.results.len(), 30);
    assert!(r.results.iter().all(|x| x.outcome == Outcome::Confirmed));
}

#[test]
fn watch_rides_out_a_broker_restart() {
    let broker = Broker::start();
    let url = broker.url();
    let addr = broker.mqtt.clone();
    let mut agent = Agent::start(&url, "oscar", "");
    wait_online(&url, "oscar");
    let watch = watch(&url, &["oscar"]);
    drop(broker);
    watch
        .stderr
        .wait_for("the reconnect notice", Duration::from_secs(10), |l| {
            l.contains("reconnecting")
        });
    let _broker = Broker::start_with(&["--mqtt", &addr, "--no-ws"]);
    watch
        .stderr
        .wait_for("the reconnection", Duration::from_secs(15), |l| {
            l.contains("reconnected")
        });
    wait_online(&url, "oscar");
    agent.proc.send_line("press button");
    let line = watch.stdout.wait_for(
        "the press after the restart",
        Duration::from_secs(10),
        |l| l.contains("\"input\"") && l.contains("\"active\":true"),
    );
    assert!(line.contains("oscar"));
}
