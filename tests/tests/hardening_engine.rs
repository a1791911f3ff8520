//! The engine's hardening against hostile and careless clients, end to end against a real
//! `pifleet-broker` process, with the raw MQTT client of `pifleet_tests::raw` (a client library
//! would not send most of this): topic bounds (`max_topic_len`, `max_topic_levels`), queues that
//! stay bounded for subscribers that stop reading (retained bursts included), retained-store
//! caps, subscriptions per client, one copy for overlapping filters, session caps and expiry,
//! commands that are never retained, packets pipelined behind the CONNECT, races between a
//! takeover and the old connection's last packets, and the answer to an MQTT 5 CONNECT.
//!
//! Each broker gets small `[limits]` through a config file, so a limit is reached in a few
//! hundred packets. Where a race is the bug, the scenario runs a bounded number of times.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pifleet_tests::raw::{self, Client, Connect, Packet, Received, REFUSED};
use pifleet_tests::{bin, output_logged, temp_dir, Broker, TempDir};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A broker whose config file (in `dir`, so relative paths there work) is `config`, on an
/// ephemeral loopback port.
fn broker_in(dir: &TempDir, config: &str) -> Broker {
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).unwrap();
    Broker::start_with(&[
        "--config",
        path.to_str().unwrap(),
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
    ])
}

/// A broker with `config` (typically a `[limits]` section) and anonymous clients.
fn broker_with(config: &str) -> (Broker, TempDir) {
    let dir = temp_dir("hardening");
    (broker_in(&dir, config), dir)
}

/// Adds `role` (`device` or `controller`) `name` to `dir/credentials.toml` with
/// `pifleet-broker … add`, as an administrator would, and returns its secret.
fn add_identity(dir: &TempDir, role: &str, name: &str) -> String {
    let out = output_logged(
        &format!("pifleet-broker {role} add {name}"),
        Command::new(bin("pifleet-broker"))
            .arg("--credentials")
            .arg(dir.path().join("credentials.toml"))
            .args([role, "add", name]),
    );
    assert!(out.status.success(), "{role} add {name} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Fails the test with what became of the broker if its process ended or ends within 2 s (a
/// stack overflow kills it); returns if it is still running.
fn fail_if_dead(broker: &mut Broker, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(status) = broker.proc.child.try_wait().unwrap() {
            let n = broker.proc.stderr.len();
            let last = broker.proc.stderr.since(n.saturating_sub(3));
            panic!("the broker process died after {after} ({status}); its last words: {last:#?}");
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The broker is alive and serving: a new subscriber receives a new publisher's message.
fn assert_serving(broker: &mut Broker, after: &str) {
    assert!(
        broker.proc.running(),
        "the broker process died after {after}"
    );
    let round_trip = || {
        let mut sub = Client::accepted(&broker.mqtt, &Connect::new("alive-sub"));
        assert_eq!(sub.subscribe(1, &[("alive/check", 1)]), [1]);
        let mut publisher = Client::accepted(&broker.mqtt, &Connect::new("alive-pub"));
        publisher.publish_acked("alive/check", b"yes", false, 1);
        let got = sub.next_publish();
        assert_eq!(
            (got.topic.as_str(), got.text().as_str()),
            ("alive/check", "yes")
        );
    };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(round_trip)).is_err() {
        fail_if_dead(broker, after);
        panic!("the broker is running but does not serve clients after {after}");
    }
}

/// The return codes of the SUBACK for packet id 1, or a failure saying the broker died.
fn suback_or_death(broker: &mut Broker, c: &mut Client, after: &str) -> Vec<u8> {
    match c.try_read() {
        Ok(Some(Packet::SubAck { pkid: 1, codes })) => codes,
        other => {
            fail_if_dead(broker, after);
            panic!("SUBACK expected after {after}, got {other:?}");
        }
    }
}

/// `levels` copies of `level` joined by `/`.
fn deep(level: &str, levels: usize) -> String {
    vec![level; levels].join("/")
}

/// What a new subscription to `filter` delivers on its own: the retained messages. A fresh
/// client subscribes to `filter` and to a marker topic; another publishes the marker, again
/// every 300 ms until it arrives (a queue that the retained burst filled may drop it); what
/// came before the first marker is returned.
fn retained(broker: &Broker, filter: &str) -> Vec<Received> {
    let marker = "zz-marker/retained";
    let mut sub = Client::accepted(&broker.mqtt, &Connect::new("retained-probe"));
    let codes = sub.subscribe(1, &[(filter, 0), (marker, 0)]);
    assert_eq!(codes, [0, 0], "probe subscription to {filter}");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut publisher = Client::accepted(&broker.mqtt, &Connect::new("retained-marker"));
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                publisher.publish_acked(marker, b"m", false, 1);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let got = sub.publishes_until(marker);
        done.store(true, Ordering::Relaxed);
        got.into_iter().filter(|p| p.topic != marker).collect()
    })
}

/// Topics of `got`, sorted.
fn topics(got: &[Received]) -> Vec<String> {
    let mut t: Vec<String> = got.iter().map(|p| p.topic.clone()).collect();
    t.sort();
    t
}

/// Publishes `n` retained messages `prefix/0 … prefix/<n-1>` (payload `payload`) in one
/// write, then one with QoS 1 whose PUBACK says all of them were routed.
fn store_retained(broker: &Broker, prefix: &str, n: usize, payload: &[u8]) {
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("retained-writer"));
    let mut burst = Vec::new();
    for i in 0..n - 1 {
        burst.extend(raw::publish_packet(
            &format!("{prefix}/{i}"),
            payload,
            0,
            true,
            0,
        ));
    }
    c.send(&burst);
    c.publish_acked(&format!("{prefix}/{}", n - 1), payload, true, 1);
    c.disconnect();
}

/// Whether the broker has logged a warning about dropped (or otherwise unqueued) messages
/// since line `from` of its stderr.
fn logged_a_drop(broker: &Broker, from: usize) -> bool {
    broker.proc.stderr.since(from).iter().any(|l| {
        let l = l.to_lowercase();
        l.contains("warn") && ["drop", "discard", "queue"].iter().any(|w| l.contains(w))
    })
}

/// `memory_kib` figures are in KiB.
const MIB_IN_KIB: u64 = 1024;

// ---------------------------------------------------------------------------------------------
// 1. Topic bounds

/// 10,000 levels (20 KB, well within the 64 KiB packet limit) used to overflow the stack of the
/// thread that walked the topic trees recursively, killing the whole broker.
#[test]
fn an_anonymous_subscription_deeper_than_max_topic_levels_is_refused_and_the_broker_survives() {
    let mut broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let filter = deep("a", 10_000);
    assert!(filter.len() < 20_000);
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("deep-sub"));
    c.send(&raw::subscribe_packet(
        1,
        &[(filter.as_str(), 0), ("shallow/ok", 0)],
    ));
    let codes = suback_or_death(&mut broker, &mut c, "a 10,000-level SUBSCRIBE");
    // Leaving used to walk the 10,000 levels recursively too: check the broker first.
    c.disconnect();
    assert_serving(&mut broker, "a 10,000-level SUBSCRIBE and DISCONNECT");
    assert_eq!(
        codes,
        [REFUSED, 0],
        "the deep filter is refused, the other one in the packet is not"
    );
}

/// The same depth inside a device's own subtree, where its ACL allows every filter: the topic
/// bound, not the ACL, must refuse it.
#[test]
fn a_device_subscription_deep_inside_its_own_subtree_is_refused_and_the_broker_survives() {
    let dir = temp_dir("hardening-deep-device");
    let secret = add_identity(&dir, "device", "porch");
    let mut broker = broker_in(&dir, "[auth]\ncredentials = \"credentials.toml\"\n");
    let filter = format!("pifleet/dev/porch/{}", deep("a", 10_000));
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("porch").login("porch", &secret));
    c.send(&raw::subscribe_packet(
        1,
        &[(filter.as_str(), 0), ("pifleet/dev/porch/cmnd", 1)],
    ));
    let codes = suback_or_death(&mut broker, &mut c, "a device's 10,000-level SUBSCRIBE");
    c.disconnect();
    fail_if_dead(
        &mut broker,
        "a device's 10,000-level SUBSCRIBE and DISCONNECT",
    );
    // Still serving: the device (anonymous clients are refused here) talks to itself.
    let mut again = Client::accepted(&broker.mqtt, &Connect::new("porch").login("porch", &secret));
    assert_eq!(again.subscribe(1, &[("pifleet/dev/porch/check", 1)]), [1]);
    again.publish_acked("pifleet/dev/porch/check", b"yes", false, 2);
    assert_eq!(again.next_publish().text(), "yes");
    assert_eq!(codes, [REFUSED, 1]);
}

/// A 30,000-level retained topic (60 KB) used to be stored, and clearing it (or a `#`
/// subscriber reading it) recursed once per level.
#[test]
fn a_retained_publish_deeper_than_max_topic_levels_closes_the_connection_and_keeps_the_store() {
    let mut broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut keeper = Client::accepted(&broker.mqtt, &Connect::new("keeper"));
    keeper.publish_acked("keep/me", b"kept", true, 1);
    keeper.disconnect();

    let topic = deep("a", 30_000);
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("deep-pub"));
    let mut both = raw::publish_packet(&topic, b"x", 0, true, 0);
    both.extend(raw::publish_packet(&topic, b"", 0, true, 0));
    // The broker may close the connection before it has read the second one.
    let _ = c.stream.write_all(&both);
    assert!(
        raw::closed(&mut c.stream),
        "a 30,000-level topic closes the connection"
    );
    fail_if_dead(
        &mut broker,
        "a 30,000-level retained PUBLISH and its clearing",
    );
    let got = retained(&broker, "#");
    assert!(
        got.iter()
            .any(|p| (p.topic.as_str(), p.text().as_str(), p.retain) == ("keep/me", "kept", true)),
        "the earlier retained message is still delivered: {got:?}"
    );
    assert!(
        got.iter().all(|p| !p.topic.starts_with("a/a/")),
        "the deep topic is not stored"
    );
    assert_serving(&mut broker, "a 30,000-level retained PUBLISH");
}

#[test]
fn a_publish_beyond_max_topic_len_or_max_topic_levels_closes_only_that_connection() {
    let mut broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut bystander = Client::accepted(&broker.mqtt, &Connect::new("bystander"));
    assert_eq!(bystander.subscribe(1, &[("t/#", 0)]), [0]);

    // At the bounds: 1,024 bytes, 32 levels. Delivered.
    let longest = format!("t/{}", "x".repeat(1022));
    let deepest = format!("t/{}", deep("x", 31));
    let mut ok = Client::accepted(&broker.mqtt, &Connect::new("at-the-bounds"));
    ok.publish_acked(&longest, b"long", false, 1);
    ok.publish_acked(&deepest, b"deep", false, 2);
    let got: Vec<String> = (0..2).map(|_| bystander.next_publish().text()).collect();
    assert_eq!(got, ["long", "deep"], "topics at the bounds are delivered");

    // Beyond them: 2,000 bytes; 33 levels.
    for (what, topic) in [
        ("a 2,000-byte topic", format!("t/{}", "x".repeat(1998))),
        ("a 33-level topic", format!("t/{}", deep("x", 32))),
    ] {
        let mut c = Client::accepted(&broker.mqtt, &Connect::new("too-long"));
        c.send(&raw::publish_packet(&topic, b"no", 1, false, 1));
        assert!(raw::closed(&mut c.stream), "{what} closes the connection");
    }
    ok.publish_acked("t/after", b"after", false, 3);
    let next = bystander.next_publish();
    assert_eq!(
        (next.topic.as_str(), next.text().as_str()),
        ("t/after", "after"),
        "the bystander got nothing of the refused publishes and still gets messages"
    );
    assert_serving(&mut broker, "publishes beyond the topic bounds");
}

#[test]
fn filters_beyond_max_topic_len_or_max_topic_levels_are_refused_and_those_at_the_bounds_granted() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("bounds"));
    let len_1024 = format!("f/{}", "x".repeat(1022));
    let len_1025 = format!("f/{}", "x".repeat(1023));
    let levels_32 = format!("f/{}", deep("+", 30)) + "/#";
    let levels_33 = format!("f/{}", deep("+", 31)) + "/#";
    let codes = c.subscribe(
        1,
        &[
            (len_1024.as_str(), 0),
            (len_1025.as_str(), 0),
            (levels_32.as_str(), 1),
            (levels_33.as_str(), 1),
        ],
    );
    assert_eq!(codes, [0, REFUSED, 1, REFUSED]);
}

// ---------------------------------------------------------------------------------------------
// 2. Queues stay bounded for subscribers that do not keep up

const SMALL_QUEUE: &str =
    "[limits]\nmax_queued_messages = 100\nmax_retained_per_subscription = 100\n";

/// A SUBSCRIBE's retained messages used to bypass every queue bound (`usize::MAX`). They are
/// bounded by `max_retained_per_subscription` per client (not by `max_queued_messages`, which
/// is for live traffic: a `pifleet status` of 10,000 devices needs ~50,000 retained messages)
/// and by `max_queued_bytes`.
#[test]
fn retained_messages_for_a_new_subscription_count_against_its_queue_bound() {
    let (broker, _dir) = broker_with(SMALL_QUEUE);
    store_retained(&broker, "t", 1000, b"sixteen bytes...");
    let from = broker.proc.stderr.len();
    let got = retained(&broker, "t/#");
    assert!(!got.is_empty(), "some retained messages are delivered");
    assert!(
        got.len() < 1000,
        "all 1,000 retained messages were queued for a client that may hold 100"
    );
    assert!(
        logged_a_drop(&broker, from),
        "the broker logs that it dropped messages for the client"
    );
}

/// A client that never reads but keeps subscribing to `t/#` (1,000 retained messages behind
/// it) made the broker queue 1,000 more deliveries per SUBSCRIBE: 2,000 SUBSCRIBEs, 2 million
/// deliveries, over 30 MB. Its queue bound must hold instead.
#[test]
fn a_subscriber_that_never_reads_cannot_make_the_broker_queue_retained_messages_without_bound() {
    let (broker, _dir) = broker_with(SMALL_QUEUE);
    store_retained(&broker, "t", 1000, b"sixteen bytes...");
    let mut probe = Client::accepted(&broker.mqtt, &Connect::new("probe"));
    assert_eq!(probe.subscribe(1, &[("done/#", 0)]), [0]);
    let before = broker.proc.memory_kib("VmRSS");

    let mut hog = Client::accepted(&broker.mqtt, &Connect::new("hog"));
    let mut burst = Vec::new();
    for i in 0..2000u16 {
        burst.extend(raw::subscribe_packet(i + 1, &[("t/#", 0)]));
    }
    // Handled after every SUBSCRIBE before it, unless the broker stops reading from a client
    // that does not read (also fine: then it cannot queue more either).
    burst.extend(raw::publish_packet("done/hog", b"", 0, false, 0));
    let sent = Instant::now();
    hog.send(&burst);
    probe
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let handled = matches!(probe.try_read(), Ok(Some(Packet::Publish { .. })));
    eprintln!("hog's burst handled: {handled} after {:?}", sent.elapsed());
    let peak = broker.proc.memory_kib("VmHWM");
    let grown = peak.saturating_sub(before);
    eprintln!("broker RSS before {before} KiB, peak {peak} KiB");
    assert!(
        grown < 8 * MIB_IN_KIB,
        "the broker grew by {grown} KiB for a client that never reads"
    );
    drop(hog);
}

/// 500 messages of 60 KB for a subscriber that stopped reading: the old engine queued them all
/// (its message bound, 10,000, was never reached), about 30 MB.
#[test]
fn a_subscriber_that_never_reads_holds_at_most_max_queued_bytes() {
    let (broker, _dir) = broker_with("[limits]\nmax_queued_bytes = 1048576\n");
    let mut sleeper = Client::accepted(&broker.mqtt, &Connect::new("sleeper"));
    assert_eq!(sleeper.subscribe(1, &[("big/#", 0)]), [0]);
    let before = broker.proc.memory_kib("VmRSS");
    let mut publisher = Client::accepted(&broker.mqtt, &Connect::new("firehose"));
    let payload = vec![b'x'; 60_000];
    for i in 0..500 {
        publisher.send(&raw::publish_packet(
            &format!("big/{}", i % 10),
            &payload,
            0,
            false,
            0,
        ));
    }
    // Acknowledged once the 500 before it are routed.
    publisher.publish_acked("other/end", b"", false, 1);
    let peak = broker.proc.memory_kib("VmHWM");
    let grown = peak.saturating_sub(before);
    eprintln!("broker RSS before {before} KiB, peak {peak} KiB");
    assert!(
        grown < 7 * MIB_IN_KIB,
        "the broker grew by {grown} KiB for a client that never reads (bound: 1 MiB queued)"
    );
    drop(sleeper);
}

// ---------------------------------------------------------------------------------------------
// 3. Retained-store caps

#[test]
fn the_retained_store_keeps_at_most_max_retained_messages_and_still_delivers_the_rest_live() {
    let (broker, _dir) = broker_with("[limits]\nmax_retained_messages = 50\n");
    let mut live = Client::accepted(&broker.mqtt, &Connect::new("live"));
    assert_eq!(live.subscribe(1, &[("r/#", 0), ("mark", 0)]), [0, 0]);
    let mut writer = Client::accepted(&broker.mqtt, &Connect::new("writer"));
    for i in 0..51u16 {
        writer.publish_acked(&format!("r/{i}"), format!("v{i}").as_bytes(), true, i + 1);
    }
    writer.publish_acked("mark", b"", false, 100);
    let got = live.publishes_until("mark");
    assert_eq!(
        got.len(),
        51,
        "every message is delivered live, the 51st too"
    );
    assert_eq!(got[50].topic, "r/50");

    let want: Vec<String> = (0..50).map(|i| format!("r/{i}")).collect();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(
        topics(&retained(&broker, "r/#")),
        sorted_want,
        "50 stored, the 51st topic not"
    );

    // Replacing a stored topic needs no room.
    writer.publish_acked("r/0", b"replaced", true, 101);
    let got = retained(&broker, "r/#");
    assert_eq!(topics(&got), sorted_want);
    let r0 = got.iter().find(|p| p.topic == "r/0").unwrap();
    assert_eq!(r0.text(), "replaced");

    // Clearing one makes room for a new topic.
    writer.publish_acked("r/1", b"", true, 102);
    writer.publish_acked("r/51", b"in", true, 103);
    let mut now: Vec<String> = want.into_iter().filter(|t| t != "r/1").collect();
    now.push("r/51".into());
    now.sort();
    assert_eq!(topics(&retained(&broker, "r/#")), now);
}

#[test]
fn the_retained_store_keeps_at_most_max_retained_bytes() {
    let (broker, _dir) = broker_with("[limits]\nmax_retained_bytes = 1048576\n");
    let mut live = Client::accepted(&broker.mqtt, &Connect::new("live"));
    assert_eq!(live.subscribe(1, &[("b/#", 0), ("mark", 0)]), [0, 0]);
    let mut writer = Client::accepted(&broker.mqtt, &Connect::new("writer"));
    let payload = vec![b'r'; 60_000];
    for i in 0..30u16 {
        writer.publish_acked(&format!("b/{i:02}"), &payload, true, i + 1);
    }
    writer.publish_acked("mark", b"", false, 100);
    assert_eq!(live.publishes_until("mark").len(), 30, "all delivered live");

    let stored = topics(&retained(&broker, "b/#"));
    let n = stored.len();
    // 1 MiB / 60 KB = 17.5; topics and per-entry costs take a little more.
    assert!(
        (8..=17).contains(&n),
        "{n} retained messages of 60 KB stored under a 1 MiB bound"
    );
    let first: Vec<String> = (0..n).map(|i| format!("b/{i:02}")).collect();
    assert_eq!(stored, first, "the earliest topics are the stored ones");
}

// ---------------------------------------------------------------------------------------------
// 4. Subscriptions per client

#[test]
fn a_client_holds_at_most_max_subscriptions_per_client_filters() {
    let (broker, _dir) = broker_with("[limits]\nmax_subscriptions_per_client = 10\n");
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("collector"));
    let ten: Vec<String> = (0..10).map(|i| format!("s/{i}")).collect();
    let filters: Vec<(&str, u8)> = ten.iter().map(|f| (f.as_str(), 0)).collect();
    assert_eq!(c.subscribe(1, &filters), [0; 10]);
    assert_eq!(
        c.subscribe(2, &[("s/0", 1), ("s/10", 0)]),
        [1, REFUSED],
        "re-subscribing is not a new subscription; the 11th filter is refused"
    );
    c.unsubscribe(3, &["s/3"]);
    assert_eq!(
        c.subscribe(4, &[("s/10", 0)]),
        [0],
        "unsubscribing frees a slot"
    );
    assert_eq!(c.subscribe(5, &[("s/11", 0)]), [REFUSED]);

    let mut publisher = Client::accepted(&broker.mqtt, &Connect::new("publisher"));
    for (i, t) in ["s/11", "s/3", "s/10"].iter().enumerate() {
        publisher.publish_acked(t, t.as_bytes(), false, i as u16 + 1);
    }
    assert_eq!(
        c.next_publish().topic,
        "s/10",
        "refused and unsubscribed filters deliver nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Overlapping filters

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_granted_qos() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("overlap"));
    assert_eq!(
        c.subscribe(1, &[("a/#", 0), ("a/+", 1), ("a/b", 0), ("mark", 0)]),
        [0, 1, 0, 0]
    );
    let mut publisher = Client::accepted(&broker.mqtt, &Connect::new("publisher"));
    publisher.publish_acked("a/b", b"qos1", false, 1);
    publisher.send(&raw::publish_packet("a/b", b"qos0", 0, false, 0));
    publisher.publish_acked("a/c", b"two-filters", false, 2);
    publisher.publish_acked("mark", b"", false, 3);
    let got: Vec<(String, String, u8)> = c
        .publishes_until("mark")
        .into_iter()
        .map(|p| (p.topic.clone(), p.text(), p.qos))
        .collect();
    let want = [
        ("a/b", "qos1", 1),
        ("a/b", "qos0", 0),
        ("a/c", "two-filters", 1),
    ]
    .map(|(t, p, q)| (t.to_string(), p.to_string(), q));
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------
// 6. Sessions

#[test]
fn the_broker_holds_at_most_max_sessions_sessions_online_or_offline() {
    let (broker, _dir) = broker_with("[limits]\nmax_sessions = 5\n");
    let addr = broker.mqtt.as_str();
    let mut clean: Vec<Client> = (1..=4)
        .map(|i| Client::accepted(addr, &Connect::new(&format!("c{i}"))))
        .collect();
    let keeper = Client::accepted(addr, &Connect::new("p5").persistent());
    let code = |id: &str, persistent: bool| {
        let c = Connect::new(id);
        Client::connect(addr, &if persistent { c.persistent() } else { c }).2
    };
    assert_eq!(
        code("c6", false),
        3,
        "a 6th clean session: server unavailable"
    );
    assert_eq!(code("p6", true), 3, "a 6th persistent session too");
    keeper.disconnect();
    assert_eq!(
        code("c6", false),
        3,
        "an offline persistent session still counts"
    );
    clean.remove(0).disconnect();
    let (_c6, _, code6) = Client::connect(addr, &Connect::new("c6"));
    assert_eq!(code6, 0, "a clean session that ended made room");
}

/// Time-based by nature: the session must be gone a couple of seconds after its expiry, and
/// reconnecting to look would resume it, so this waits rather than polls.
#[test]
fn an_offline_persistent_session_is_forgotten_after_session_expiry_secs() {
    let (broker, _dir) = broker_with("[limits]\nsession_expiry_secs = 1\n");
    let addr = broker.mqtt.as_str();
    let sleepy = Connect::new("sleepy").persistent();
    let (mut c, present, _) = Client::connect(addr, &sleepy);
    assert!(!present);
    assert_eq!(c.subscribe(1, &[("q/x", 1)]), [1]);
    c.disconnect();
    let mut publisher = Client::accepted(addr, &Connect::new("publisher"));
    publisher.publish_acked("q/x", b"m1", false, 1);

    let (mut c, present, _) = Client::connect(addr, &sleepy);
    assert!(present, "within the expiry the session resumes");
    assert_eq!(c.next_publish().text(), "m1");
    c.disconnect();
    publisher.publish_acked("q/x", b"m2", false, 2);

    std::thread::sleep(Duration::from_secs(3));
    let (mut c, present, _) = Client::connect(addr, &sleepy);
    assert!(
        !present,
        "3 s after it went offline the 1 s session is gone"
    );
    assert_eq!(
        c.ping(),
        [],
        "nothing queued for the expired session is delivered"
    );
}

/// IDENTITY CASE: needs controller client ids `name:<anything>` (a parallel change; on a branch
/// without it `ops:1` is refused with CONNACK 2 before any session limit applies).
#[test]
fn an_identity_beyond_max_sessions_per_identity_replaces_its_oldest_offline_session() {
    let dir = temp_dir("hardening-identity");
    let secret = add_identity(&dir, "controller", "ops");
    let broker = broker_in(
        &dir,
        "[auth]\ncredentials = \"credentials.toml\"\n\n[limits]\nmax_sessions_per_identity = 3\n",
    );
    let addr = broker.mqtt.as_str();
    let ops = |id: &'static str| Connect::new(id).persistent().login("ops", &secret);
    let connect = |id: &'static str| {
        let (c, present, code) = Client::connect(addr, &ops(id));
        assert_eq!(
            code, 0,
            "{id} as controller ops (client ids `name:<anything>`)"
        );
        (c, present)
    };
    let online: Vec<Client> = ["ops:1", "ops:2", "ops:3"]
        .into_iter()
        .map(|id| connect(id).0)
        .collect();
    assert_eq!(
        Client::connect(addr, &ops("ops:4")).2,
        3,
        "a 4th session while all three are online: server unavailable"
    );
    // Offline in this order: ops:1 is the oldest.
    for c in online {
        c.disconnect();
    }
    let (_ops4, present) = connect("ops:4");
    assert!(!present);
    let (c3, present) = connect("ops:3");
    assert!(present, "ops:3 was not the oldest offline session");
    c3.disconnect();
    let (_c1, present) = connect("ops:1");
    assert!(
        !present,
        "ops:1, the oldest offline session, made room for ops:4"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Commands are never retained

#[test]
fn retained_commands_are_delivered_live_but_not_stored() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut live = Client::accepted(&broker.mqtt, &Connect::new("live"));
    assert_eq!(live.subscribe(1, &[("pifleet/#", 0), ("mark", 0)]), [0, 0]);
    let mut c = Client::accepted(&broker.mqtt, &Connect::new("anyone"));
    let all = [
        "pifleet/dev/porch/cmnd",
        "pifleet/group/g/cmnd",
        "pifleet/all/cmnd",
        "pifleet/dev/porch/status",
    ];
    for (i, t) in all.iter().enumerate() {
        c.publish_acked(t, b"{\"on\":true}", true, i as u16 + 1);
    }
    c.publish_acked("mark", b"", false, 9);
    let mut want: Vec<String> = all.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(
        topics(&live.publishes_until("mark")),
        want,
        "all delivered live"
    );
    assert_eq!(
        topics(&retained(&broker, "pifleet/#")),
        ["pifleet/dev/porch/status"],
        "only the status is stored"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Packets pipelined behind the CONNECT

#[test]
fn a_publish_and_disconnect_in_the_connects_write_are_handled_without_more_bytes() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut sub = Client::accepted(&broker.mqtt, &Connect::new("sub"));
    assert_eq!(sub.subscribe(1, &[("pipe/#", 1)]), [1]);

    let mut c = Client::open(&broker.mqtt, "pipelined");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut one_write = Connect::new("pipelined").encode();
    one_write.extend(raw::publish_packet("pipe/a", b"x", 1, false, 7));
    one_write.extend(raw::DISCONNECT);
    c.send(&one_write);
    let mut got = Vec::new();
    loop {
        match c.try_read() {
            Ok(Some(p)) => got.push(p),
            Ok(None) => break,
            Err(e) => panic!("after {got:?}: {e} (the broker waits for more bytes)"),
        }
    }
    assert_eq!(
        got,
        [
            Packet::ConnAck {
                session_present: false,
                code: 0
            },
            Packet::PubAck(7)
        ]
    );
    let p = sub.next_publish();
    assert_eq!((p.topic.as_str(), p.text().as_str()), ("pipe/a", "x"));
}

#[test]
fn a_subscribe_in_the_connects_write_is_answered_without_more_bytes() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut c = Client::open(&broker.mqtt, "pipelined");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut one_write = Connect::new("pipelined").encode();
    one_write.extend(raw::subscribe_packet(3, &[("pipe/#", 1)]));
    c.send(&one_write);
    let mut next = || {
        c.try_read()
            .unwrap_or_else(|e| panic!("{e} (the broker waits for more bytes)"))
    };
    assert_eq!(
        next(),
        Some(Packet::ConnAck {
            session_present: false,
            code: 0
        })
    );
    assert_eq!(
        next(),
        Some(Packet::SubAck {
            pkid: 3,
            codes: vec![1]
        })
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Takeover and subscription races

/// Bounds for a race scenario: this many rounds, or this long, whichever ends first.
const ROUNDS: usize = 50;
const ROUNDS_FOR: Duration = Duration::from_secs(10);

/// The old engine let a SUBSCRIBE that the taken-over connection had already read land after
/// the takeover: it added a subscription for the dead session's outbox that nothing removed.
/// That outbox fills up and, past its soft limit (1,024 messages), holds every publisher to
/// its filters for 250 ms.
#[test]
fn subscriptions_racing_a_takeover_do_not_outlive_the_old_connection() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let addr = broker.mqtt.as_str();
    let mut burst = Vec::new();
    for i in 0..1000u16 {
        burst.extend(raw::subscribe_packet(i + 1, &[("race/t", 1)]));
    }
    let started = Instant::now();
    let mut successors = Vec::new();
    for round in 0..ROUNDS {
        if started.elapsed() > ROUNDS_FOR {
            break;
        }
        let id = format!("racer-{round}");
        let mut old = Client::accepted(addr, &Connect::new(&id));
        let new = std::thread::scope(|s| {
            s.spawn(|| {
                let _ = old.stream.write_all(&burst);
            });
            Client::accepted(addr, &Connect::new(&id))
        });
        assert!(raw::closed(&mut old.stream), "the old connection is closed");
        successors.push(new);
    }
    eprintln!("{} takeover rounds", successors.len());

    let mut publisher = Client::accepted(addr, &Connect::new("publisher"));
    let mut slowest = Duration::ZERO;
    for i in 0..1100u16 {
        let t = Instant::now();
        publisher.publish_acked("race/t", b"x", false, i + 1);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(200),
        "a PUBACK took {slowest:?}: a subscription of a taken-over connection held the publisher"
    );
    for mut s in successors {
        assert_eq!(s.ping(), [], "{} subscribed to nothing", s.label);
    }
}

/// The old engine read a new subscription's retained messages under its lock but queued them
/// after releasing it, so a newer live message could be queued first and the retained (older)
/// value arrive after it. 5,000 other retained topics in front of the counter's make the window
/// long; the counter is paced rather than flooded, so that its connection's task is woken, on
/// whichever worker is free, while the new subscriber's task is inside that window.
const FILLERS: usize = 5000;
const PACE: Duration = Duration::from_micros(100);

#[test]
fn a_new_subscriber_never_sees_a_retained_topic_go_backwards() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let addr = broker.mqtt.as_str();
    store_retained(&broker, "o/f", FILLERS, b"filler");
    let mut counter = Client::accepted(addr, &Connect::new("counter"));
    counter.publish_acked("o/c", b"0", true, 1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let counting = s.spawn(|| {
            let mut n: u64 = 1;
            while !stop.load(Ordering::Relaxed) {
                let p = raw::publish_packet("o/c", n.to_string().as_bytes(), 0, true, 0);
                if counter.stream.write_all(&p).is_err() {
                    break;
                }
                n += 1;
                std::thread::sleep(PACE);
            }
            n
        });
        let started = Instant::now();
        let mut rounds = 0;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while rounds < ROUNDS && started.elapsed() < ROUNDS_FOR {
                rounds += 1;
                let mut sub = Client::accepted(addr, &Connect::new("watcher"));
                assert_eq!(sub.subscribe(1, &[("o/#", 0)]), [0]);
                let mut seen: Vec<u64> = Vec::new();
                while seen.len() < 20 {
                    let p = sub.next_publish();
                    if p.topic == "o/c" {
                        seen.push(p.text().parse().unwrap());
                    }
                }
                assert!(
                    seen.windows(2).all(|w| w[0] <= w[1]),
                    "round {rounds}: the counter went backwards: {seen:?}"
                );
                sub.disconnect();
            }
        }));
        stop.store(true, Ordering::Relaxed);
        let published = counting.join().unwrap();
        eprintln!("{rounds} rounds, {published} counter values published");
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 10. MQTT 5

#[test]
fn an_mqtt5_connect_gets_exactly_connack_1_and_then_end_of_stream() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30];
    // Properties: session expiry interval (0x11) = 10 s.
    body.extend([5, 0x11, 0, 0, 0, 10]);
    raw::push_str(&mut body, "v5-client");
    let mut s = raw::open(&broker.mqtt);
    s.write_all(&raw::frame(0x10, &body)).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("after {answer:02x?}: {e} (no clean end of stream)"));
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01]);
}
