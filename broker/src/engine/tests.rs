//! The engine's behaviour without sockets: sessions (ownership, resumption, bounds, expiry),
//! routing (one copy per session, retained bounds, retained commands) and takeover, driven
//! through the same calls a connection makes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::outbox::Outbox;
use super::packet::{ConnectCode, Message, QoS};
use super::{Access, Engine, Principal, SubscribeRefused};
use crate::acl::Acl;
use crate::config::Limits;
use crate::credentials::{Identity, Role};

fn device(name: &str, groups: &[&str]) -> Principal {
    Principal::Identity(Identity {
        name: name.into(),
        role: Role::Device,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
}

fn controller(name: &str) -> Principal {
    Principal::Identity(Identity {
        name: name.into(),
        role: Role::Controller,
        groups: Vec::new(),
    })
}

fn secured(limits: Limits) -> Arc<Engine> {
    let security = Access {
        acl: Some(Acl::new("pifleet", None).unwrap()),
        ..Access::default()
    };
    Engine::new(limits, security)
}

/// A connection as the engine sees it: attached, with its outbox.
struct Client {
    id: String,
    conn: u64,
    outbox: Arc<Outbox>,
    present: bool,
}

fn connect(engine: &Engine, id: &str, clean: bool, who: &Principal) -> Client {
    try_connect(engine, id, clean, who).expect("attached")
}

fn try_connect(
    engine: &Engine,
    id: &str,
    clean: bool,
    who: &Principal,
) -> Result<Client, ConnectCode> {
    let conn = engine.id();
    let a = engine.attach(id, clean, None, Duration::ZERO, conn, who)?;
    Ok(Client {
        id: id.into(),
        conn,
        outbox: a.outbox,
        present: a.session_present,
    })
}

impl Client {
    fn subscribe(&self, engine: &Engine, filter: &str, qos: QoS) {
        engine
            .subscribe(&self.id, self.conn, filter, qos)
            .expect("subscribed")
    }

    fn leave(&self, engine: &Engine) {
        engine.detach(&self.id, self.conn, true);
    }

    /// What a drain would write now: (topic, qos, retain).
    fn received(&self) -> Vec<(String, QoS, bool)> {
        let mut q = self.outbox.lock();
        let mut out = Vec::new();
        while let Some((d, pkid)) = q.next_to_send(1000) {
            if let Some(p) = pkid {
                q.on_puback(p);
            }
            out.push((d.message.topic.to_string(), d.qos, d.retain));
        }
        out
    }
}

fn publish(engine: &Engine, topic: &str, payload: &str, qos: QoS, retain: bool) {
    engine.publish(
        Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            retain,
        },
        0,
        &mut Vec::new(),
    );
}

#[test]
fn a_persistent_session_is_resumed_only_by_the_identity_that_created_it() {
    let engine = Engine::new(Limits::default(), Access::default());
    let ops = connect(&engine, "ops-pi", false, &controller("ops"));
    ops.subscribe(&engine, "pifleet/#", QoS::AtLeastOnce);
    ops.leave(&engine);
    let pi = connect(&engine, "ops-pi", false, &device("ops-pi", &[]));
    assert!(!pi.present, "another identity's session is not resumed");
    publish(
        &engine,
        "pifleet/dev/garage/cmnd",
        "x",
        QoS::AtLeastOnce,
        false,
    );
    assert!(pi.received().is_empty(), "nor are its subscriptions");
    assert_eq!(engine.counters().sessions_not_resumed, 1);
    pi.leave(&engine);
    let again = connect(&engine, "ops-pi", false, &device("ops-pi", &[]));
    assert!(again.present, "its own session is");
}

#[test]
fn a_resumed_session_keeps_only_the_subscriptions_its_identity_may_hold_now() {
    let engine = secured(Limits::default());
    let before = device("kitchen", &["downstairs"]);
    let c = connect(&engine, "kitchen", false, &before);
    c.subscribe(&engine, "pifleet/group/downstairs/cmnd", QoS::AtLeastOnce);
    c.subscribe(&engine, "pifleet/dev/kitchen/cmnd", QoS::AtLeastOnce);
    c.leave(&engine);
    let after = device("kitchen", &[]); // its groups changed meanwhile
    let c = connect(&engine, "kitchen", false, &after);
    assert!(c.present);
    publish(
        &engine,
        "pifleet/group/downstairs/cmnd",
        "x",
        QoS::AtLeastOnce,
        false,
    );
    publish(
        &engine,
        "pifleet/dev/kitchen/cmnd",
        "y",
        QoS::AtLeastOnce,
        false,
    );
    let got: Vec<String> = c.received().into_iter().map(|r| r.0).collect();
    assert_eq!(got, ["pifleet/dev/kitchen/cmnd"]);
}

#[test]
fn an_offline_session_expires_after_session_expiry_secs() {
    let limits = Limits {
        session_expiry_secs: 60,
        ..Limits::default()
    };
    let engine = Engine::new(limits, Access::default());
    let c = connect(&engine, "x", false, &Principal::Anonymous);
    c.subscribe(&engine, "t", QoS::AtLeastOnce);
    c.leave(&engine);
    let left = engine.state().sessions["x"].offline_since_ms;
    engine.sweep(left + 59_000, true);
    assert_eq!(engine.sessions(), 1, "not yet");
    engine.sweep(left + 60_000, false);
    assert_eq!(engine.sessions(), 1, "only sweeps that expire do");
    engine.sweep(left + 60_000, true);
    assert_eq!(engine.sessions(), 0);
    assert_eq!(engine.counters().sessions_expired, 1);
    assert!(engine.state().subscriptions.is_empty());
    assert!(!connect(&engine, "x", false, &Principal::Anonymous).present);
}

#[test]
fn connected_sessions_never_expire() {
    let engine = Engine::new(Limits::default(), Access::default());
    let _c = connect(&engine, "x", false, &Principal::Anonymous);
    engine.sweep(u64::MAX / 2, true);
    assert_eq!(engine.sessions(), 1);
}

#[test]
fn new_sessions_beyond_max_sessions_get_connack_3() {
    let limits = Limits {
        max_sessions: 2,
        ..Limits::default()
    };
    let engine = Engine::new(limits, Access::default());
    let a = connect(&engine, "a", true, &Principal::Anonymous);
    let _b = connect(&engine, "b", false, &Principal::Anonymous);
    assert_eq!(
        try_connect(&engine, "c", true, &Principal::Anonymous).err(),
        Some(ConnectCode::ServerUnavailable)
    );
    // Taking over an existing session needs no new one.
    let _b2 = connect(&engine, "b", false, &Principal::Anonymous);
    a.leave(&engine);
    connect(&engine, "c", true, &Principal::Anonymous);
    assert_eq!(engine.counters().sessions_refused, 1);
}

#[test]
fn an_identity_at_its_session_limit_replaces_its_oldest_offline_session() {
    let limits = Limits {
        max_sessions_per_identity: 2,
        ..Limits::default()
    };
    let engine = Engine::new(limits, Access::default());
    let ops = controller("ops");
    let first = connect(&engine, "ops:1", false, &ops);
    first.leave(&engine);
    let second = connect(&engine, "ops:2", false, &ops);
    second.leave(&engine);
    let _third = connect(&engine, "ops:3", false, &ops);
    assert_eq!(engine.counters().sessions_evicted, 1);
    assert!(!engine.state().sessions.contains_key("ops:1"), "the oldest");
    let _fourth = connect(&engine, "ops:4", false, &ops);
    // Both held sessions are connected now: nothing to replace.
    assert_eq!(
        try_connect(&engine, "ops:5", true, &ops).err(),
        Some(ConnectCode::ServerUnavailable)
    );
    // Other identities are not affected.
    connect(&engine, "alice", true, &controller("alice"));
}

#[test]
fn overlapping_filters_deliver_one_copy_at_the_highest_granted_qos() {
    let engine = Engine::new(Limits::default(), Access::default());
    let c = connect(&engine, "c", true, &Principal::Anonymous);
    let other = connect(&engine, "o", true, &Principal::Anonymous);
    c.subscribe(&engine, "a/#", QoS::AtMostOnce);
    c.subscribe(&engine, "a/+", QoS::AtLeastOnce);
    c.subscribe(&engine, "a/b", QoS::AtMostOnce);
    other.subscribe(&engine, "a/b", QoS::AtMostOnce);
    publish(&engine, "a/b", "x", QoS::ExactlyOnce, false);
    assert_eq!(c.received(), [("a/b".to_string(), QoS::AtLeastOnce, false)]);
    assert_eq!(other.received().len(), 1);
}

#[test]
fn subscriptions_per_client_are_capped_and_resubscribing_is_free() {
    let limits = Limits {
        max_subscriptions_per_client: 2,
        ..Limits::default()
    };
    let engine = Engine::new(limits, Access::default());
    let c = connect(&engine, "c", true, &Principal::Anonymous);
    c.subscribe(&engine, "a", QoS::AtMostOnce);
    c.subscribe(&engine, "b", QoS::AtMostOnce);
    c.subscribe(&engine, "a", QoS::AtLeastOnce);
    assert_eq!(
        engine.subscribe("c", c.conn, "d", QoS::AtMostOnce),
        Err(SubscribeRefused::TooMany)
    );
    engine.unsubscribe("c", c.conn, "b");
    c.subscribe(&engine, "d", QoS::AtMostOnce);
    assert_eq!(engine.counters().subscriptions_refused, 1);
}

#[test]
fn a_taken_over_connection_can_neither_subscribe_nor_drain() {
    let engine = Engine::new(Limits::default(), Access::default());
    let old = connect(&engine, "x", false, &Principal::Anonymous);
    old.subscribe(&engine, "t", QoS::AtLeastOnce);
    publish(&engine, "t", "1", QoS::AtLeastOnce, false);
    let new = connect(&engine, "x", false, &Principal::Anonymous);
    assert!(new.present);
    assert_eq!(
        engine.subscribe("x", old.conn, "leak/#", QoS::AtMostOnce),
        Err(SubscribeRefused::NotOwner)
    );
    engine.unsubscribe("x", old.conn, "t");
    assert_eq!(old.outbox.lock().owner(), new.conn);
    publish(&engine, "leak/y", "z", QoS::AtMostOnce, false);
    publish(&engine, "t", "2", QoS::AtLeastOnce, false);
    let got: Vec<String> = new.received().into_iter().map(|r| r.0).collect();
    assert_eq!(
        got,
        ["t", "t"],
        "the old connection's calls changed nothing"
    );
    // Its detach does not end the new connection's session.
    engine.detach("x", old.conn, false);
    assert!(new.outbox.lock().is_online());
}

#[test]
fn retained_commands_are_delivered_but_never_stored() {
    let engine = Engine::new(Limits::default(), Access::default());
    let live = connect(&engine, "live", true, &Principal::Anonymous);
    live.subscribe(&engine, "pifleet/#", QoS::AtMostOnce);
    for t in [
        "pifleet/dev/porch/cmnd",
        "pifleet/group/g/cmnd",
        "pifleet/all/cmnd",
    ] {
        publish(&engine, t, "{}", QoS::AtLeastOnce, true);
    }
    publish(
        &engine,
        "pifleet/dev/porch/status",
        "{}",
        QoS::AtLeastOnce,
        true,
    );
    assert_eq!(live.received().len(), 4, "all delivered live");
    let late = connect(&engine, "late", true, &Principal::Anonymous);
    late.subscribe(&engine, "pifleet/#", QoS::AtMostOnce);
    assert_eq!(
        late.received(),
        [(
            "pifleet/dev/porch/status".to_string(),
            QoS::AtMostOnce,
            true
        )]
    );
    assert_eq!(engine.counters().retained_commands_refused, 3);
}

#[test]
fn the_retained_store_is_bounded_in_count_and_bytes_and_clearing_makes_room() {
    let limits = Limits {
        max_retained_messages: 3,
        max_retained_bytes: 100_000,
        ..Limits::default()
    };
    let engine = Engine::new(limits, Access::default());
    for t in ["a", "b", "c", "d"] {
        publish(&engine, t, "1", QoS::AtMostOnce, true);
    }
    assert_eq!(engine.retained().0, 3, "the fourth topic is not stored");
    publish(&engine, "a", "2", QoS::AtMostOnce, true);
    assert_eq!(engine.retained().0, 3, "replacing is fine");
    publish(&engine, "b", "", QoS::AtMostOnce, true);
    publish(&engine, "d", "1", QoS::AtMostOnce, true);
    assert_eq!(engine.retained().0, 3, "clearing made room");
    assert_eq!(engine.counters().retained_refused, 1);
    // Bytes: a 40 KB message fits twice into 100 KB, not three times.
    let big = "x".repeat(40_000);
    for t in ["a", "c", "d"] {
        publish(&engine, t, &big, QoS::AtMostOnce, true);
    }
    let (n, bytes) = engine.retained();
    assert!(bytes <= 100_000, "{bytes}");
    assert_eq!(n, 3, "the third stays at its old, small value");
    for t in ["a", "c", "d"] {
        publish(&engine, t, "", QoS::AtMostOnce, true);
    }
    assert_eq!(engine.retained(), (0, 0), "accounting returns to zero");
}

#[test]
fn retained_messages_answer_a_subscribe_before_any_later_live_message() {
    let engine = Engine::new(Limits::default(), Access::default());
    publish(&engine, "t", "old", QoS::AtMostOnce, true);
    let c = connect(&engine, "c", true, &Principal::Anonymous);
    c.subscribe(&engine, "t", QoS::AtMostOnce);
    // Live, not retained: the stored value stays, and must still come first.
    publish(&engine, "t", "new", QoS::AtMostOnce, false);
    let mut q = c.outbox.lock();
    let first = q.next_to_send(10).unwrap().0;
    let second = q.next_to_send(10).unwrap().0;
    assert!(first.retain && &first.message.payload[..] == b"old");
    assert!(!second.retain && &second.message.payload[..] == b"new");
}
