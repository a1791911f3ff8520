//! MQTT semantics of pifleet-broker that fleets rely on, checked with a plain MQTT client
//! (rumqttc): retained messages, last wills, QoS 1 delivery to a persistent session.

use std::time::Duration;

use pifleet_tests::Broker;
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
