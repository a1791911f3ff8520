//! The broker's state survives it: retained messages (an offline device's presence and last
//! states) and persistent sessions with their queued QoS 1 messages come back after `kill -9`
//! and a restart on the same state directory, the last wills of the connections a crash ended
//! are published unless their clients come back within their grace, and damaged state
//! files are reported and their intact part served (docs/broker.md).
//!
//! Before each `kill -9` the test waits until what it needs is in the state files (a retained
//! marker published after it shows up on disk: records are committed in order), so the test
//! checks recovery, not the luck of the 200 ms commit window.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pifleet_proto::report::Outcome;
use pifleet_proto::Presence;
use pifleet_tests::raw::{self, Client, Connect, Packet};
use pifleet_tests::*;

/// A broker on `state` (no WebSocket), restartable on the same directory.
fn broker_on(state: &Path) -> Broker {
    Broker::start_with(&[
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--state-dir",
        state.to_str().unwrap(),
    ])
}

/// Everything in the state directory's files, concatenated.
fn state_bytes(state: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in std::fs::read_dir(state).unwrap() {
        let path = f.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(path).unwrap_or_default());
        }
    }
    all
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Publishes a retained marker and waits until it is committed to `state`: everything the
/// broker handled before it is then on disk too.
fn committed(broker: &Broker, state: &Path, marker: &str) {
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("durability-marker"));
    c.publish_acked("durability/marker", marker.as_bytes(), true, 1);
    c.disconnect();
    wait_until(
        &format!("marker {marker} is in the state files"),
        Duration::from_secs(10),
        || find(&state_bytes(state), marker.as_bytes()).is_some(),
    );
}

fn kill_9(broker: &mut Broker) {
    broker.proc.signal("KILL");
    broker.proc.wait_exit(Duration::from_secs(5));
}

/// The retained messages under `filter` that a new subscriber gets, as (topic, text).
fn retained(addr: &str, filter: &str) -> Vec<(String, String)> {
    let mut c = Client::accepted(addr, &Connect::new("durability-reader"));
    c.subscribe(1, &[(filter, 0), ("durability/end", 0)]);
    c.send(&raw::publish_packet("durability/end", b"", 0, false, 0));
    let mut got: Vec<_> = c
        .publishes_until("durability/end")
        .into_iter()
        .map(|p| (p.topic.clone(), p.text()))
        .collect();
    got.sort();
    got
}

#[test]
fn an_offline_device_and_its_last_states_survive_kill_9_mid_traffic() {
    let state = temp_dir("durability-fleet");
    let mut broker = broker_on(state.path());
    let url = broker.url();
    let mut agent = Agent::start(&url, "attic", "");
    wait_online(&url, "attic");
    let (r, code) = switch(&url, &["on", "attic"]);
    assert_eq!((code, outcome(&r, "attic")), (Some(0), Outcome::Confirmed));
    agent.proc.signal("TERM");
    agent.proc.wait_exit(Duration::from_secs(10));
    wait_until("attic is offline", Duration::from_secs(15), || {
        device_status(&url, "attic").is_some_and(|d| !d.online)
    });
    committed(&broker, state.path(), "attic-offline");

    // Traffic while the broker dies: retained and QoS 1 publishes that keep the log busy.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (addr, stop) = (broker.mqtt.clone(), stop.clone());
        std::thread::spawn(move || {
            let Ok(s) = std::net::TcpStream::connect(&addr) else {
                return;
            };
            let mut s = s;
            use std::io::Write;
            let _ = s.write_all(&raw::connect_packet("durability-noise", 30, None));
            let mut i: u32 = 0;
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                i += 1;
                let topic = format!("noise/{}", i % 50);
                let p = raw::publish_packet(&topic, &[b'n'; 200], 1, true, (i % 60_000 + 1) as u16);
                if s.write_all(&p).is_err() {
                    return;
                }
            }
        })
    };
    wait_until("the noise reaches the log", Duration::from_secs(10), || {
        find(&state_bytes(state.path()), b"noise/").is_some()
    });
    kill_9(&mut broker);
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();

    let broker = broker_on(state.path());
    let url = broker.url();
    let attic = device_status(&url, "attic").expect("attic is still listed after kill -9");
    assert!(!attic.online, "its retained presence says offline");
    assert!(attic.outputs["led"].on, "its last output state: {attic:?}");
    // And the CLI says so to a person too.
    let out = cli(&url, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("attic"), "{text}");
}

#[test]
fn a_persistent_session_gets_every_queued_qos1_message_after_kill_9() {
    let state = temp_dir("durability-session");
    let mut broker = broker_on(state.path());
    let addr = broker.mqtt.clone();
    let me = Connect::new("night-shift").persistent();
    let mut sub = Client::accepted(&addr, &me);
    sub.subscribe(1, &[("jobs/#", 1)]);
    let mut publisher = Client::accepted(&addr, &Connect::new("dispatcher"));
    // Job 0 reaches the subscriber, which dies before acknowledging it: it is in flight.
    publisher.publish_acked("jobs/0", b"job 0", false, 1);
    let first_pkid = sub.read_until("job 0", |p| match p {
        Packet::Publish { topic, pkid, .. } if topic == "jobs/0" => Some(*pkid),
        _ => None,
    });
    drop(sub);
    // Jobs 1..=40 are queued while it is offline; the broker acknowledges each.
    for i in 1..=40u16 {
        publisher.publish_acked(
            &format!("jobs/{i}"),
            format!("job {i}").as_bytes(),
            false,
            i + 1,
        );
    }
    committed(&broker, state.path(), "jobs-queued");
    kill_9(&mut broker);

    let broker = broker_on(state.path());
    let (mut sub, present, code) = Client::connect(&broker.mqtt, &me);
    assert_eq!(
        (present, code),
        (true, 0),
        "session_present = 1 after the restart"
    );
    let mut got = Vec::new();
    while got.len() < 41 {
        match sub.read() {
            Packet::Publish {
                topic,
                payload,
                qos,
                dup,
                pkid,
                ..
            } => {
                assert_eq!(qos, 1, "{topic}");
                if topic == "jobs/0" {
                    assert!(dup, "the in-flight job is re-sent as a duplicate");
                    assert_eq!(pkid, first_pkid, "under its packet id");
                }
                sub.send(&raw::puback_packet(pkid));
                got.push(String::from_utf8(payload).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<String> = (0..=40).map(|i| format!("job {i}")).collect();
    assert_eq!(got, want, "every queued message, once, in order");
    // Acknowledged means gone: a further restart delivers nothing again.
    sub.disconnect();
    let mut broker = broker;
    committed(&broker, state.path(), "jobs-acknowledged");
    kill_9(&mut broker);
    let broker = broker_on(state.path());
    let (mut sub, present, _) = Client::connect(&broker.mqtt, &me);
    assert!(present);
    assert!(
        sub.ping().is_empty(),
        "nothing left to deliver after the acknowledgements were committed"
    );
}

/// The byte offset the broker's damage report names for `file`.
fn reported_offset(broker: &Broker, file: &Path) -> u64 {
    let name = file.display().to_string();
    let line = broker
        .proc
        .stderr
        .wait_for("the damage report", Duration::from_secs(10), |l| {
            l.contains(&format!("state file {name} is damaged at byte offset "))
        });
    let rest = line.split("damaged at byte offset ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_truncated_log_and_a_corrupted_snapshot_are_reported_and_their_intact_part_served() {
    let state = temp_dir("durability-damage");
    let mut broker = broker_on(state.path());
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("writer"));
    c.publish_acked("t/1", b"first-intact", true, 1);
    c.publish_acked("t/2", b"second-intact", true, 2);
    c.publish_acked("t/3", b"third-torn-off", true, 3);
    c.disconnect();
    committed(&broker, state.path(), "three-written");
    kill_9(&mut broker);

    // A write cut short: the log ends inside t/3's record.
    let log = state.path().join("log.1");
    let bytes = std::fs::read(&log).unwrap();
    let third = find(&bytes, b"third-torn-off").expect("t/3 is in log.1");
    let second = find(&bytes, b"second-intact").unwrap();
    std::fs::write(&log, &bytes[..third + 5]).unwrap();
    let mut broker = broker_on(state.path());
    let at = reported_offset(&broker, &log);
    assert!(
        at as usize > second && (at as usize) < third,
        "the report names where t/3's record starts: {at}"
    );
    assert_eq!(
        retained(&broker.mqtt, "t/#"),
        [
            ("t/1".to_string(), "first-intact".to_string()),
            ("t/2".to_string(), "second-intact".to_string()),
        ]
    );
    assert!(state.path().join("log.1.damaged").exists());
    // That start compacted t/1 and t/2 into a fresh snapshot.
    kill_9(&mut broker);

    // A flipped bit in the middle of the snapshot, inside t/2's payload.
    let snapshot = state.path().join("snapshot");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let flip = find(&bytes, b"second-intact").expect("t/2 is in the snapshot") + 3;
    let first = find(&bytes, b"first-intact").unwrap();
    bytes[flip] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();
    let broker = broker_on(state.path());
    let at = reported_offset(&broker, &snapshot);
    assert!(
        at as usize > first && (at as usize) < flip,
        "the report names where t/2's record starts: {at}"
    );
    assert_eq!(
        retained(&broker.mqtt, "t/#"),
        [("t/1".to_string(), "first-intact".to_string())],
        "the intact prefix is served; the broker started all the same"
    );
    assert!(state.path().join("snapshot.damaged").exists());
}

/// The keep-alive of the agents in the will tests.
const AGENT_KEEP_ALIVE_SECS: u64 = 4;

/// The will tests' `[state] will_grace_secs`: the grace after a restart is the longer of this
/// and 1.5 x the keep-alive, and this is longer (as the default 60 s is for the agents' 10 s
/// keep-alive), so the tests take the path users get. Shorter than the default to keep them
/// quick, but still longer than the agents' reconnect back-off ([`AGENT_RECONNECT_MAX_SECS`]),
/// as the default is longer than the agents' default 30 s.
const WILL_GRACE_SECS: u64 = 8;
const AGENT_RECONNECT_MAX_SECS: f64 = 2.0;

fn will_grace() -> Duration {
    Duration::from_millis((AGENT_KEEP_ALIVE_SECS * 1500).max(WILL_GRACE_SECS * 1000))
}

/// A broker on `state` listening on `mqtt`, with [`WILL_GRACE_SECS`] in its config file (in
/// `conf`).
fn broker_with_grace(state: &Path, conf: &Path, mqtt: &str) -> Broker {
    broker_with_grace_and(state, conf, mqtt, &[])
}

/// [`broker_with_grace`] with more arguments.
fn broker_with_grace_and(state: &Path, conf: &Path, mqtt: &str, more: &[&str]) -> Broker {
    let file = conf.join("broker.toml");
    let toml = format!("[state]\nwill_grace_secs = {WILL_GRACE_SECS}\n");
    std::fs::write(&file, toml).unwrap();
    let mut args = vec![
        "--config",
        file.to_str().unwrap(),
        "--mqtt",
        mqtt,
        "--no-ws",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend(more);
    Broker::start_with(&args)
}

/// An agent with [`AGENT_KEEP_ALIVE_SECS`] (longer than the fixtures' 2 s, so that a loaded
/// machine still checks the restored presence well within the grace).
fn agent_with_keep_alive(broker_url: &str, device: &str) -> Agent {
    let dir = temp_dir(device);
    let state = dir.path().join("state.json");
    let config = format!(
        "device = {device:?}\nbroker = {broker_url:?}\ngpio = \"sim\"\n\
         keep_alive_secs = {AGENT_KEEP_ALIVE_SECS}\nreconnect_max_secs = {AGENT_RECONNECT_MAX_SECS:?}\n\
         state_file = {state:?}\n\n[[output]]\nname = \"led\"\npin = 17\n"
    );
    Agent::start_config(dir, device, &config)
}

/// A device dies while the broker is down: after the restart its restored presence says
/// online for the grace its last will gets (its client might be reconnecting), then the will
/// is published and the fleet sees it offline.
#[test]
fn a_device_that_died_while_the_broker_was_down_goes_offline_after_the_grace() {
    let grace = will_grace();
    let state = temp_dir("durability-will");
    let conf = temp_dir("durability-will-conf");
    let mut broker = broker_with_grace(state.path(), conf.path(), "127.0.0.1:0");
    let url = broker.url();
    let mut agent = agent_with_keep_alive(&url, "cellar");
    wait_online(&url, "cellar");
    // Its will was recorded at its CONNECT, before this marker.
    committed(&broker, state.path(), "cellar-online");
    kill_9(&mut broker);
    agent.proc.signal("KILL");
    agent.proc.wait_exit(Duration::from_secs(5));

    let started = std::time::Instant::now();
    let broker = broker_with_grace(state.path(), conf.path(), "127.0.0.1:0");
    let url = broker.url();
    let cellar = device_status(&url, "cellar").expect("cellar is listed after the restart");
    let checked = started.elapsed();
    assert!(
        checked < grace,
        "the restored presence was checked {checked:?} after the restart, past the {grace:?} \
         grace: this machine is too slow for this test"
    );
    assert!(cellar.online, "within the grace: its restored presence");
    wait_until("cellar is offline", Duration::from_secs(30), || {
        device_status(&url, "cellar").is_some_and(|d| !d.online)
    });
    let offline = started.elapsed();
    assert!(
        offline >= grace,
        "its will is published only once the grace is over, not after {offline:?}"
    );
    // `pifleet status --json` says so, and so does a person's `pifleet status`.
    assert!(!device_status(&url, "cellar").unwrap().online);
    let out = cli(&url, &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cellar"));
}

/// A device that outlives the broker's crash reconnects within the grace: its pending will is
/// dropped, it stays online, and no offline presence is published in between.
#[test]
fn a_device_that_comes_back_within_the_grace_stays_online_without_an_offline_blip() {
    let grace = will_grace();
    let state = temp_dir("durability-will-back");
    let conf = temp_dir("durability-will-back-conf");
    let mut broker = broker_with_grace(state.path(), conf.path(), "127.0.0.1:0");
    let url = broker.url();
    let _agent = agent_with_keep_alive(&url, "porch");
    wait_online(&url, "porch");
    committed(&broker, state.path(), "porch-online");
    kill_9(&mut broker);

    // The same port, so the agent finds the broker again.
    let port = broker.mqtt.clone();
    drop(broker);
    let started = std::time::Instant::now();
    let broker = broker_with_grace(state.path(), conf.path(), &port);
    let topic = "pifleet/dev/porch/status";
    let mut watch = Client::accepted(&broker.mqtt, &Connect::new("presence-watch"));
    watch.subscribe(1, &[(topic, 1), ("durability/end", 0)]);
    // Past the grace, with room for the sweeper and a slow machine.
    std::thread::sleep((grace + Duration::from_secs(2)).saturating_sub(started.elapsed()));
    watch.send(&raw::publish_packet("durability/end", b"", 0, false, 0));
    let seen: Vec<Presence> = watch
        .publishes_until("durability/end")
        .into_iter()
        .filter(|p| p.topic == topic)
        .map(|p| serde_json::from_slice(&p.payload).expect("a presence"))
        .collect();
    assert!(!seen.is_empty(), "the watcher sees porch's presence");
    assert!(
        seen.iter().all(|p| p.is_online()),
        "no offline presence between the restart and now: {seen:?}"
    );
    let porch = device_status(&broker.url(), "porch").expect("porch is listed");
    assert!(porch.online, "porch stays online after the grace");
}

/// The review's demo: controller mallory connects with a last will that switches every
/// device's LED on, the broker is killed, `controller remove mallory` runs while it is down;
/// after the restart the fleet never gets mallory's command. Controller keeper, still in the
/// credentials file, left a will too: it is published once the grace is over, so the test
/// knows the wills were pending and the grace is over when it looks.
#[test]
fn a_will_of_a_controller_removed_while_the_broker_was_down_never_reaches_the_fleet() {
    let creds = Creds::new();
    let mallory = creds.add(&["controller", "add", "mallory"]);
    let keeper = creds.add(&["controller", "add", "keeper"]);
    let ops = creds.add(&["controller", "add", "ops"]);
    let state = temp_dir("durability-will-removed");
    let conf = temp_dir("durability-will-removed-conf");
    let path = creds.path.to_str().unwrap();
    let with_creds = ["--credentials", path];
    let start = || {
        let b = broker_with_grace_and(state.path(), conf.path(), "127.0.0.1:0", &with_creds);
        auth_announced(&b);
        b
    };
    let mut broker = start();
    let all = "pifleet/all/cmnd";
    let leave_will = |name: &'static str, secret: &str, payload: &'static str| {
        // 1.5 x 4 s is less than the floor: the grace after the restart is WILL_GRACE_SECS.
        let c = Connect {
            keep_alive: 4,
            will: Some((all, payload)),
            ..Connect::new(name).login(name, secret)
        };
        Client::accepted(&broker.mqtt, &c)
    };
    let _m = leave_will("mallory", &mallory, r#"{"led":"on"}"#);
    let _k = leave_will("keeper", &keeper, "keeper-gone");
    // Both wills were recorded at their CONNECTs, before this marker.
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("ops").login("ops", &ops));
    c.publish_acked("pifleet/test/marker", b"wills-recorded", true, 1);
    c.disconnect();
    wait_until(
        "the marker is in the state files",
        Duration::from_secs(10),
        || find(&state_bytes(state.path()), b"wills-recorded").is_some(),
    );
    kill_9(&mut broker);
    creds.admin(&["controller", "remove", "mallory"]);

    let started = std::time::Instant::now();
    let broker = start();
    let mut watch = Client::accepted(&broker.mqtt, &Connect::new("ops").login("ops", &ops));
    watch.subscribe(1, &[(all, 0), ("pifleet/test/end", 0)]);
    let seen = watch.next_publish();
    assert_eq!(
        (seen.topic.as_str(), seen.text()),
        (all, "keeper-gone".to_string()),
        "keeper's will, and only it"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(WILL_GRACE_SECS),
        "published once the grace is over"
    );
    std::thread::sleep(Duration::from_secs(1));
    watch.send(&raw::publish_packet("pifleet/test/end", b"", 0, false, 0));
    let rest: Vec<_> = watch
        .publishes_until("pifleet/test/end")
        .into_iter()
        .map(|p| p.text())
        .collect();
    assert!(
        rest.is_empty(),
        "mallory's command reached the fleet: {rest:?}"
    );
}
