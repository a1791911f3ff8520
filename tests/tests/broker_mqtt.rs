//! MQTT semantics of pifleet-broker that fleets rely on, checked with a plain MQTT client
//! (rumqttc) and, where a well-behaved client cannot provoke the case, with raw bytes on a TCP
//! socket: retained messages, last wills (also on keep-alive expiry and takeover), QoS 1 to a
//! persistent session, QoS 2 exactly once, refusal codes, and hostile input that must close
//! only its own connection.

use std::time::Duration;

use pifleet_tests::{raw, Broker};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};

fn client(
    broker: &Broker,
    id: &str,
    configure: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, EventLoop) {
    let (host, port) = broker.mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(id, host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    configure(&mut o);
    AsyncClient::new(o, 64)
}

/// Polls until a PUBLISH arrives (or the timeout).
async fn next_publish(ev: &mut EventLoop) -> Publish {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.expect("connection") {
                return p;
            }
        }
    })
    .await
    .expect("a publish within 10 s")
}

/// Subscribes and polls until the broker acknowledged it (so nothing published afterwards can
/// race past the subscription).
async fn subscribe_acked(c: &AsyncClient, ev: &mut EventLoop, filter: &str) {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.expect("connection") {
                return;
            }
        }
    })
    .await
    .expect("SUBACK");
}

/// Polls until the CONNACK; returns `session_present`.
async fn connack(ev: &mut EventLoop) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(c)) = ev.poll().await.expect("connection") {
                return c.session_present;
            }
        }
    })
    .await
    .expect("CONNACK")
}

/// Drives the event loop in the background (publishes need it), returning a stop handle.
fn drive(mut ev: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while ev.poll().await.is_ok() {} })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes with QoS 1 from a fresh client and returns once the broker acknowledged it.
async fn publish_acked(broker: &Broker, topic: &str, payload: &str, retain: bool) {
    let (c, mut ev) = client(broker, "acked-publisher", |_| {});
    c.publish(topic, QoS::AtLeastOnce, retain, payload.to_string())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("PUBACK");
    c.disconnect().await.unwrap();
    while ev.poll().await.is_ok() {}
}

/// Subscribes to `filter` plus a marker topic, publishes the marker and returns every message
/// that arrived before it: what the subscription delivered on its own (the retained state).
async fn snapshot(
    broker: &Broker,
    id: &str,
    filter: &str,
    publisher: &AsyncClient,
) -> Vec<Publish> {
    let (c, mut ev) = client(broker, id, |_| {});
    connack(&mut ev).await;
    let marker = format!("marker/{id}");
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    c.subscribe(marker.as_str(), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Collect publishes while waiting for the SUBACKs: the retained state may arrive first.
    let mut got = Vec::new();
    let mut subacks = 0;
    while subacks < 2 {
        match ev.poll().await.unwrap() {
            Event::Incoming(Packet::SubAck(_)) => subacks += 1,
            Event::Incoming(Packet::Publish(p)) => got.push(p),
            _ => {}
        }
    }
    publisher
        .publish(marker.as_str(), QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    loop {
        let p = next_publish(&mut ev).await;
        if p.topic == marker {
            return got;
        }
        got.push(p);
    }
}

#[test]
fn retained_messages_reach_late_subscribers_and_an_empty_one_clears_them() {
    let broker = Broker::start();
    rt().block_on(async {
        let (publisher, ev) = client(&broker, "pub", |_| {});
        let _p = drive(ev);
        publish_acked(&broker, "r/state", "on", true).await;

        let got = snapshot(&broker, "late", "r/#", &publisher).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].topic.as_str(), &got[0].payload[..], got[0].retain),
            ("r/state", &b"on"[..], true)
        );

        publish_acked(&broker, "r/state", "", true).await;
        let got = snapshot(&broker, "newcomer", "r/#", &publisher).await;
        assert!(got.iter().all(|p| p.payload.is_empty()), "cleared: {got:?}");
    });
}

#[test]
fn a_last_will_is_published_when_a_client_dies_but_not_after_a_clean_disconnect() {
    let broker = Broker::start();
    rt().block_on(async {
        let (watcher, mut wev) = client(&broker, "watcher", |_| {});
        connack(&mut wev).await;
        subscribe_acked(&watcher, &mut wev, "w/#").await;

        // A clean DISCONNECT discards the will.
        let (polite, mut ev) = client(&broker, "polite", |o| {
            o.set_last_will(LastWill::new("w/polite", "gone", QoS::AtLeastOnce, false));
        });
        connack(&mut ev).await;
        polite.disconnect().await.unwrap();
        while ev.poll().await.is_ok() {}

        // A client whose connection just drops (its socket closed without DISCONNECT).
        let (_rude, mut ev) = client(&broker, "rude", |o| {
            o.set_last_will(LastWill::new("w/rude", "gone", QoS::AtLeastOnce, true));
        });
        connack(&mut ev).await;
        drop(ev);

        let p = next_publish(&mut wev).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("w/rude", &b"gone"[..]),
            "only the rude client's will"
        );
        // The will was retained: a later subscriber sees it.
        let (late, mut lev) = client(&broker, "late-watcher", |_| {});
        connack(&mut lev).await;
        late.subscribe("w/rude", QoS::AtLeastOnce).await.unwrap();
        let p = next_publish(&mut lev).await;
        assert!(p.retain && &p.payload[..] == b"gone");
    });
}

#[test]
fn qos1_messages_wait_for_a_persistent_session_to_come_back() {
    let broker = Broker::start();
    rt().block_on(async {
        let persistent = |o: &mut MqttOptions| {
            o.set_clean_session(false);
        };
        let (sub, mut ev) = client(&broker, "sleepy-pi", persistent);
        assert!(!connack(&mut ev).await, "first connection: no session yet");
        sub.subscribe("q/cmd", QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
                break;
            }
        }
        sub.disconnect().await.unwrap();
        while ev.poll().await.is_ok() {}

        let (publisher, pev) = client(&broker, "controller", |_| {});
        let _p = drive(pev);
        for i in 0..5 {
            publisher
                .publish("q/cmd", QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .unwrap();
        }
        publisher
            .publish("q/other", QoS::AtLeastOnce, false, "flush")
            .await
            .unwrap();
        // Make sure the broker has routed them before the subscriber returns.
        let (probe, mut probe_ev) = client(&broker, "probe", |_| {});
        connack(&mut probe_ev).await;
        subscribe_acked(&probe, &mut probe_ev, "q/done").await;
        publisher
            .publish("q/done", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        next_publish(&mut probe_ev).await;

        let (_sub, mut ev) = client(&broker, "sleepy-pi", persistent);
        assert!(connack(&mut ev).await, "the session is still there");
        let mut got = Vec::new();
        while got.len() < 5 {
            let p = next_publish(&mut ev).await;
            assert_eq!(p.topic, "q/cmd");
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    });
}

#[test]
fn qos2_is_delivered_exactly_once() {
    let broker = Broker::start();
    rt().block_on(async {
        let (sub, mut sev) = client(&broker, "q2-sub", |_| {});
        connack(&mut sev).await;
        sub.subscribe("x/#", QoS::ExactlyOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sev.poll().await.unwrap() {
                break;
            }
        }
        let (publisher, pev) = client(&broker, "q2-pub", |_| {});
        let _p = drive(pev);
        for i in 0..20 {
            publisher
                .publish("x/y", QoS::ExactlyOnce, false, format!("{i}"))
                .await
                .unwrap();
        }
        publisher
            .publish("x/end", QoS::ExactlyOnce, false, "end")
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let p = next_publish(&mut sev).await;
            assert_eq!(p.qos, QoS::ExactlyOnce);
            if p.topic == "x/end" {
                break;
            }
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    });
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives_and_its_will_fires() {
    let broker = Broker::start();
    rt().block_on(async {
        let (watcher, mut wev) = client(&broker, "ka-watcher", |_| {});
        connack(&mut wev).await;
        subscribe_acked(&watcher, &mut wev, "ka/#").await;
        let mut s = raw::open(&broker.mqtt);
        let code = raw::connack_code(
            &mut s,
            &raw::connect_packet("silent", 1, Some(("ka/silent", "lost"))),
        );
        assert_eq!(code, 0);
        let started = std::time::Instant::now();
        let p = next_publish(&mut wev).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("ka/silent", &b"lost"[..])
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "will after {took:?}, expected about 1.5 s"
        );
        assert!(raw::closed(&mut s));
    });
}

#[test]
fn a_takeover_closes_the_old_connection_and_fires_its_will_before_the_new_connack() {
    let broker = Broker::start();
    rt().block_on(async {
        let (watcher, mut wev) = client(&broker, "to-watcher", |_| {});
        connack(&mut wev).await;
        subscribe_acked(&watcher, &mut wev, "to/#").await;
        let mut old = raw::open(&broker.mqtt);
        assert_eq!(
            raw::connack_code(
                &mut old,
                &raw::connect_packet("pi-1", 30, Some(("to/pi-1", "offline")))
            ),
            0
        );
        let mut new = raw::open(&broker.mqtt);
        assert_eq!(
            raw::connack_code(&mut new, &raw::connect_packet("pi-1", 30, None)),
            0
        );
        assert!(raw::closed(&mut old), "the old connection is closed");
        let p = next_publish(&mut wev).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("to/pi-1", &b"offline"[..])
        );
        // The same client id may come back again and again (rumqttd 0.20 wedged here).
        for _ in 0..3 {
            let mut again = raw::open(&broker.mqtt);
            assert_eq!(
                raw::connack_code(&mut again, &raw::connect_packet("x/y", 30, None)),
                0
            );
        }
    });
}

#[test]
fn bad_protocol_versions_and_client_ids_get_refusal_codes() {
    let broker = Broker::start();
    // MQTT 5 CONNECT (level 5): "unacceptable protocol version".
    let mut s = raw::open(&broker.mqtt);
    let mut v5 = raw::connect_packet("v5", 30, None);
    v5[8] = 5;
    assert_eq!(raw::connack_code(&mut s, &v5), 1);
    // An empty client id with a persistent session: "identifier rejected".
    let mut s = raw::open(&broker.mqtt);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 30];
    raw::push_str(&mut body, "");
    assert_eq!(raw::connack_code(&mut s, &raw::frame(0x10, &body)), 2);
    // An empty client id with a clean session is fine (the broker names it).
    let mut s = raw::open(&broker.mqtt);
    assert_eq!(
        raw::connack_code(&mut s, &raw::connect_packet("", 30, None)),
        0
    );
}

/// Garbage, an oversized packet and a wildcard topic each close their own connection; a client
/// connected all along keeps working.
#[test]
fn hostile_input_closes_only_its_own_connection() {
    use std::io::Write;
    let broker = Broker::start();
    rt().block_on(async {
        let (c, mut ev) = client(&broker, "bystander", |_| {});
        connack(&mut ev).await;
        subscribe_acked(&c, &mut ev, "b/#").await;

        // Random bytes instead of CONNECT (xorshift: the same stream every run).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..20 {
            let mut s = raw::open(&broker.mqtt);
            let garbage: Vec<u8> = (0..512)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Every other round the garbage follows a valid CONNECT.
            if round % 2 == 1 {
                assert_eq!(
                    raw::connack_code(&mut s, &raw::connect_packet(&format!("g{round}"), 30, None)),
                    0
                );
            }
            let _ = s.write_all(&garbage);
            // Either closed at once or, for a prefix that promises a long packet, left waiting;
            // both must leave the bystander alone.
            drop(s);
        }
        // A PUBLISH announcing 1 MiB (the limit is 64 KiB): closed before the body is read.
        let mut s = raw::open(&broker.mqtt);
        assert_eq!(
            raw::connack_code(&mut s, &raw::connect_packet("big", 30, None)),
            0
        );
        s.write_all(&[0x30, 0x80, 0x80, 0x40]).unwrap();
        assert!(
            raw::closed(&mut s),
            "oversized packet closes the connection"
        );
        // A publish to a wildcard topic is a protocol violation.
        let mut s = raw::open(&broker.mqtt);
        assert_eq!(
            raw::connack_code(&mut s, &raw::connect_packet("wild", 30, None)),
            0
        );
        let mut body = Vec::new();
        raw::push_str(&mut body, "b/+");
        body.extend_from_slice(b"x");
        s.write_all(&raw::frame(0x30, &body)).unwrap();
        assert!(raw::closed(&mut s), "wildcard topic closes the connection");

        let (p, pev) = client(&broker, "still-here", |_| {});
        let _d = drive(pev);
        p.publish("b/ok", QoS::AtLeastOnce, false, "fine")
            .await
            .unwrap();
        let got = next_publish(&mut ev).await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("b/ok", &b"fine"[..])
        );
    });
}

/// rumqttc never retransmits, so the test above passes even without duplicate detection. This
/// one sends the retransmission itself: the same QoS 2 PUBLISH twice (the second with DUP), as a
/// client does after a lost PUBREC. It is delivered once; after PUBREL the packet id starts a new
/// message (MQTT 3.1.1 §4.3.3).
#[test]
fn a_retransmitted_qos2_publish_is_delivered_once_until_it_is_released() {
    use raw::{frame, publish_packet, Client, Connect};
    let broker = Broker::start();
    let mut sub = Client::accepted(&broker.mqtt, &Connect::new("q2-dup-sub"));
    assert_eq!(sub.subscribe(1, &[("q2/#", 0)]), [0]);
    let mut publisher = Client::accepted(&broker.mqtt, &Connect::new("q2-dup-pub"));
    let first = publish_packet("q2/x", b"once", 2, false, 7);
    let mut dup = first.clone();
    dup[0] |= 0x08; // DUP
    publisher.send(&first);
    publisher.send(&dup);
    for _ in 0..2 {
        publisher.read_until("PUBREC 7", |p| {
            matches!(p, raw::Packet::Other { first: 0x50, body } if body[..] == [0, 7])
                .then_some(())
        });
    }
    publisher.send(&frame(0x62, &7u16.to_be_bytes())); // PUBREL
    publisher.read_until("PUBCOMP 7", |p| {
        matches!(p, raw::Packet::Other { first: 0x70, body } if body[..] == [0, 7]).then_some(())
    });
    // Released: the same id is a new message now.
    publisher.send(&publish_packet("q2/x", b"again", 2, false, 7));
    publisher.read_until("PUBREC 7", |p| {
        matches!(p, raw::Packet::Other { first: 0x50, body } if body[..] == [0, 7]).then_some(())
    });
    publisher.send(&publish_packet("q2/end", b"", 0, false, 0));
    let got: Vec<String> = sub
        .publishes_until("q2/end")
        .iter()
        .map(|p| p.text())
        .collect();
    assert_eq!(got, ["once", "again"]);
}
