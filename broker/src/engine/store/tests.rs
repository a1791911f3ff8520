//! The store end to end inside one process: an engine writes its state directory, a second
//! engine is rebuilt from it, and what the files cannot or may not bring back is left out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::files::{self, StateDir};
use super::record::{FileKind, Record};
use super::*;
use crate::config::{Limits, StateConfig};
use crate::engine::packet::QoS;
use crate::engine::{Access, Principal};
use pifleet_proto::Topics;

fn config(dir: &Path) -> StateConfig {
    StateConfig {
        enabled: true,
        dir: Some(dir.to_path_buf()),
        commit_interval_ms: 10,
    }
}

/// An engine rebuilt from `dir`, as `listener::start` builds one.
fn engine_in(dir: &Path, limits: Limits) -> Arc<Engine> {
    let opened = open(&config(dir)).expect("the state directory opens");
    let engine = Engine::with_store(limits, Access::default(), Topics::default(), opened.store());
    opened.attach(&engine);
    engine
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

fn retained(engine: &Engine, filter: &str) -> Vec<(String, String)> {
    let st = engine.state();
    let mut found = Vec::new();
    st.retained.matching(filter, 1000, &mut found);
    let mut v: Vec<_> = found
        .iter()
        .map(|m| {
            let payload = String::from_utf8_lossy(&m.payload).into_owned();
            (m.topic.to_string(), payload)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn retained_messages_and_a_persistent_session_come_back_in_a_new_engine() {
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::Anonymous;
    {
        let engine = engine_in(dir.path(), Limits::default());
        publish(
            &engine,
            "pifleet/dev/a/status",
            "offline",
            QoS::AtLeastOnce,
            true,
        );
        publish(
            &engine,
            "pifleet/dev/a/out/led",
            "on",
            QoS::AtLeastOnce,
            true,
        );
        publish(
            &engine,
            "pifleet/dev/b/status",
            "gone",
            QoS::AtMostOnce,
            true,
        );
        publish(&engine, "pifleet/dev/b/status", "", QoS::AtMostOnce, true);
        let a = engine
            .attach("ops", false, None, Duration::ZERO, 1000, &who)
            .unwrap();
        engine
            .subscribe("ops", 1000, "jobs/#", QoS::AtLeastOnce)
            .unwrap();
        engine
            .subscribe("ops", 1000, "news", QoS::AtMostOnce)
            .unwrap();
        for i in 1..=4 {
            publish(
                &engine,
                "jobs/x",
                &format!("job {i}"),
                QoS::AtLeastOnce,
                false,
            );
        }
        publish(&engine, "news", "qos 0: not kept", QoS::AtLeastOnce, false);
        {
            let mut q = a.outbox.lock();
            // job 1 acknowledged, job 2 in flight when the broker stops.
            let (_, p1) = q.next_to_send(10).unwrap();
            assert!(q.on_puback(p1.unwrap()));
            let (d2, p2) = q.next_to_send(10).unwrap();
            assert_eq!(&d2.message.payload[..], b"job 2");
            assert_eq!(p2, Some(2));
        }
        engine.detach("ops", 1000, true);
        // A clean session is not kept.
        engine
            .attach("tmp", true, None, Duration::ZERO, 1001, &who)
            .unwrap();
        engine
            .subscribe("tmp", 1001, "jobs/#", QoS::AtLeastOnce)
            .unwrap();
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(
        retained(&engine, "#"),
        [
            ("pifleet/dev/a/out/led".to_string(), "on".to_string()),
            ("pifleet/dev/a/status".to_string(), "offline".to_string()),
        ]
    );
    assert_eq!(engine.sessions(), 1, "only the persistent session");
    let a = engine
        .attach("ops", false, None, Duration::ZERO, 2000, &who)
        .unwrap();
    assert!(a.session_present);
    let mut q = a.outbox.lock();
    let inflight: Vec<_> = q
        .inflight()
        .map(|i| {
            (
                i.pkid,
                String::from_utf8_lossy(&i.delivery.message.payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        inflight,
        [(2, "job 2".to_string())],
        "re-sent under its packet id"
    );
    let mut rest = Vec::new();
    while let Some((d, pkid)) = q.next_to_send(10) {
        assert!(pkid.is_some_and(|p| p != 2));
        rest.push(String::from_utf8_lossy(&d.message.payload).into_owned());
    }
    assert_eq!(rest, ["job 3", "job 4"]);
    drop(q);
    // Its subscriptions came back with their QoS.
    publish(&engine, "jobs/y", "job 5", QoS::AtLeastOnce, false);
    let (d, pkid) = a.outbox.lock().next_to_send(10).unwrap();
    assert_eq!(
        (&d.message.payload[..], d.qos),
        (&b"job 5"[..], QoS::AtLeastOnce)
    );
    assert!(pkid.is_some());
}

#[test]
fn what_happens_after_a_restore_is_recorded_for_the_next_one() {
    // Restored sessions are renumbered: the next start must still find them.
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::Anonymous;
    for round in 0..3 {
        let engine = engine_in(dir.path(), Limits::default());
        let a = engine
            .attach("c", false, None, Duration::ZERO, 100 + round, &who)
            .unwrap();
        assert_eq!(a.session_present, round > 0, "round {round}");
        engine
            .subscribe("c", 100 + round, "t", QoS::AtLeastOnce)
            .unwrap();
        engine.detach("c", 100 + round, true);
        publish(&engine, "t", &format!("m{round}"), QoS::AtLeastOnce, false);
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    let a = engine
        .attach("c", false, None, Duration::ZERO, 9, &who)
        .unwrap();
    let mut got = Vec::new();
    while let Some((d, _)) = a.outbox.lock().next_to_send(10) {
        got.push(String::from_utf8_lossy(&d.message.payload).into_owned());
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
}

#[test]
fn today_s_limits_bound_what_is_restored_and_expired_sessions_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::Anonymous;
    {
        let engine = engine_in(dir.path(), Limits::default());
        for i in 0..10 {
            publish(&engine, &format!("r/{i}"), "x", QoS::AtMostOnce, true);
        }
        for (i, id) in ["s1", "s2", "s3"].into_iter().enumerate() {
            engine
                .attach(id, false, None, Duration::ZERO, i as u64 + 10, &who)
                .unwrap();
            engine.detach(id, i as u64 + 10, true);
        }
        engine.close_store();
    }
    let limits = Limits {
        max_retained_messages: 4,
        max_sessions: 2,
        ..Limits::default()
    };
    let engine = engine_in(dir.path(), limits);
    assert_eq!(engine.retained().0, 4);
    assert_eq!(engine.sessions(), 2);
    assert_eq!(engine.counters().state_dropped, 7);
    engine.close_store();
    // An engine whose sessions expire at once forgets them, and so does the next start.
    let quick = Limits {
        session_expiry_secs: 0,
        ..Limits::default()
    };
    let engine = engine_in(dir.path(), quick);
    assert_eq!(engine.sessions(), 0);
    assert_eq!(engine.counters().sessions_expired, 2);
    engine.close_store();
    drop(engine);
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(engine.sessions(), 0);
    assert_eq!(engine.retained().0, 4, "what was dropped is gone for good");
}

#[test]
fn an_expired_session_is_deleted_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::Anonymous;
    let limits = Limits {
        session_expiry_secs: 60,
        ..Limits::default()
    };
    {
        let engine = engine_in(dir.path(), limits.clone());
        engine
            .attach("old", false, None, Duration::ZERO, 1, &who)
            .unwrap();
        engine.detach("old", 1, true);
        let left = engine.state().sessions["old"].offline_since_ms;
        engine.sweep(left + 60_000, true);
        assert_eq!(engine.sessions(), 0);
        engine.close_store();
    }
    assert_eq!(engine_in(dir.path(), limits).sessions(), 0);
}

#[test]
fn a_state_directory_held_by_another_broker_is_refused_when_it_was_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&config(dir.path())).unwrap();
    let err = open(&config(dir.path())).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("in use by another running pifleet-broker")
            && text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    drop(first);
    assert!(open(&config(dir.path())).is_ok(), "free once released");
}

#[test]
fn a_corrupt_log_keeps_its_intact_prefix_and_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sd = StateDir::lock(dir.path()).unwrap();
        let mut log = sd.create_log(1).unwrap();
        let mut buf = Vec::new();
        for (topic, payload) in [("a", "1"), ("b", "2"), ("c", "3")] {
            Record::Retain {
                topic,
                qos: QoS::AtMostOnce,
                payload: payload.as_bytes(),
            }
            .encode(&mut buf);
        }
        log.commit(&buf).unwrap();
    }
    let path = dir.path().join("log.1");
    let mut bytes = std::fs::read(&path).unwrap();
    let b = bytes.windows(1).rposition(|w| w == b"2").unwrap();
    bytes[b] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let sd = StateDir::lock(dir.path()).unwrap();
    let loaded = files::load(&sd).unwrap();
    assert_eq!(loaded.damaged, 1);
    let topics: Vec<_> = loaded
        .recovered
        .retained
        .keys()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(topics, ["a"]);
    assert_eq!(loaded.generation, 1);
    assert_eq!(
        std::fs::read(dir.path().join("log.1.damaged")).unwrap(),
        bytes,
        "a copy for inspection"
    );
    drop(sd);
    // The next snapshot replaces the damaged segment: the next start reports nothing.
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(retained(&engine, "#"), [("a".to_string(), "1".to_string())]);
    engine.close_store();
    drop(engine);
    let sd = StateDir::lock(dir.path()).unwrap();
    let loaded = files::load(&sd).unwrap();
    assert_eq!((loaded.damaged, loaded.generation), (0, 2));
    assert!(!dir.path().join("log.1").exists());
}

#[test]
fn a_snapshot_cut_short_at_a_record_boundary_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        for i in 0..5 {
            publish(&engine, &format!("r/{i}"), "x", QoS::AtMostOnce, true);
        }
        engine.close_store();
    }
    {
        // Compact what the log holds into a snapshot.
        let engine = engine_in(dir.path(), Limits::default());
        engine.close_store();
    }
    let snap = dir.path().join(files::SNAPSHOT);
    let bytes = std::fs::read(&snap).unwrap();
    let mut end = Vec::new();
    Record::End { records: 6 }.encode(&mut end);
    assert!(bytes.ends_with(&end), "header, 5 retained, end");
    std::fs::write(&snap, &bytes[..bytes.len() - end.len()]).unwrap();
    let sd = StateDir::lock(dir.path()).unwrap();
    let loaded = files::load(&sd).unwrap();
    assert_eq!(loaded.damaged, 1);
    assert_eq!(
        loaded.recovered.retained.len(),
        5,
        "every record before it is kept"
    );
    let _ = FileKind::Snapshot;
}

#[test]
fn a_log_that_outgrows_the_snapshot_is_compacted_while_the_broker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::Anonymous;
    let engine = engine_in(dir.path(), Limits::default());
    let a = engine
        .attach("c", false, None, Duration::ZERO, 1, &who)
        .unwrap();
    engine.subscribe("c", 1, "q", QoS::AtLeastOnce).unwrap();
    engine.detach("c", 1, true);
    let big = "x".repeat(60_000);
    let mut round = 0;
    // Rewrites ten topics until the first segment was compacted away.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dir.path().join("log.1").exists() {
        assert!(std::time::Instant::now() < deadline, "no compaction");
        for i in 0..10 {
            publish(
                &engine,
                &format!("r/{i}"),
                &format!("{round} {big}"),
                QoS::AtMostOnce,
                true,
            );
        }
        publish(&engine, "q", &format!("m{round}"), QoS::AtLeastOnce, false);
        round += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    // Changes after the cut are in the new segment.
    publish(&engine, "r/0", "last", QoS::AtMostOnce, true);
    engine.close_store();
    drop(a);
    drop(engine);
    let engine = engine_in(dir.path(), Limits::default());
    let got = retained(&engine, "r/#");
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], ("r/0".to_string(), "last".to_string()));
    assert!(got[1].1.starts_with(&format!("{} ", round - 1)));
    let a = engine
        .attach("c", false, None, Duration::ZERO, 2, &who)
        .unwrap();
    let mut n = 0;
    while let Some((d, _)) = a.outbox.lock().next_to_send(100_000) {
        assert_eq!(d.message.payload, format!("m{n}").as_bytes());
        n += 1;
    }
    assert_eq!(n, round, "every queued message, in order");
}
