//! The store end to end inside one process: an engine writes its state directory, a second
//! engine is rebuilt from it, and what the files cannot or may not bring back is left out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::files::{self, StateDir};
use super::record::{FileKind, Record};
use super::*;
use crate::config::{Limits, StateConfig};
use crate::engine::packet::{QoS, Will};
use crate::engine::{Access, Principal};
use pifleet_proto::Topics;

fn config(dir: &Path) -> StateConfig {
    StateConfig {
        enabled: true,
        dir: Some(dir.to_path_buf()),
        commit_interval_ms: 10,
        will_grace_secs: 0,
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

fn presence_will(device: &str) -> Will {
    Will {
        topic: format!("pifleet/dev/{device}/status"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
    }
}

/// A device as an agent connects: retained presence `online`, will `offline`, keep-alive 2 s.
fn device_online(engine: &Engine, device: &str, clean: bool, conn: u64) {
    engine
        .attach(
            device,
            clean,
            Some(presence_will(device)),
            Duration::from_secs(2),
            conn,
            &Principal::Anonymous,
        )
        .unwrap();
    publish(
        engine,
        &format!("pifleet/dev/{device}/status"),
        "online",
        QoS::AtLeastOnce,
        true,
    );
}

fn presence(engine: &Engine) -> Vec<(String, String)> {
    retained(engine, "pifleet/dev/+/status")
}

fn pending(engine: &Engine) -> Vec<(String, u64)> {
    let st = engine.state();
    let mut v: Vec<_> = st
        .pending_wills
        .iter()
        .map(|(id, p)| (id.to_string(), p.due_ms))
        .collect();
    v.sort();
    v
}

fn pair(device: &str, state: &str) -> (String, String) {
    (format!("pifleet/dev/{device}/status"), state.to_string())
}

#[test]
fn the_wills_of_connections_a_crash_ended_are_published_after_their_grace() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        // Clean and persistent sessions alike.
        device_online(&engine, "kitchen", true, 1);
        device_online(&engine, "attic", false, 2);
        // No detach: the broker dies with both connected.
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(
        presence(&engine),
        [pair("attic", "online"), pair("kitchen", "online")],
        "restored presence"
    );
    let due = pending(&engine);
    assert_eq!(due.len(), 2, "{due:?}");
    let at = due[0].1;
    assert!(
        due.iter().all(|(_, d)| *d == at) && at >= engine.now_ms() + 2_900,
        "1.5 x the 2 s keep-alive from the restart: {due:?}"
    );
    engine.sweep(at - 1, false);
    assert_eq!(
        presence(&engine),
        [pair("attic", "online"), pair("kitchen", "online")],
        "within the grace"
    );
    engine.sweep(at, false);
    assert_eq!(
        presence(&engine),
        [pair("attic", "offline"), pair("kitchen", "offline")],
        "published through the normal routing (retained)"
    );
    assert!(pending(&engine).is_empty());
    engine.close_store();
    drop(engine);
    let engine = engine_in(dir.path(), Limits::default());
    assert!(pending(&engine).is_empty(), "published once, not again");
    assert_eq!(
        presence(&engine),
        [pair("attic", "offline"), pair("kitchen", "offline")]
    );
}

#[test]
fn a_client_that_connects_within_the_grace_drops_its_pending_will() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        device_online(&engine, "kitchen", true, 1);
        device_online(&engine, "attic", true, 2);
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    let at = pending(&engine)[0].1;
    // kitchen comes back with its will; attic comes back without one, and leaves gracefully.
    device_online(&engine, "kitchen", true, 10);
    engine
        .attach(
            "attic",
            true,
            None,
            Duration::from_secs(2),
            11,
            &Principal::Anonymous,
        )
        .unwrap();
    assert!(pending(&engine).is_empty());
    engine.sweep(at + 60_000, false);
    assert_eq!(
        presence(&engine),
        [pair("attic", "online"), pair("kitchen", "online")],
        "no offline blip"
    );
    engine.detach("attic", 11, true);
    engine.close_store();
    drop(engine);
    // The next restart knows only what the new connections brought: kitchen's will.
    let engine = engine_in(dir.path(), Limits::default());
    let ids: Vec<_> = pending(&engine).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["kitchen"]);
}

#[test]
fn wills_settled_while_the_broker_runs_are_not_pending_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        // DISCONNECT: discarded.
        device_online(&engine, "a", true, 1);
        engine.detach("a", 1, true);
        // A lost connection: published.
        device_online(&engine, "b", false, 2);
        engine.detach("b", 2, false);
        // A takeover by a connection without a will: the old one published.
        device_online(&engine, "c", true, 3);
        engine
            .attach("c", true, None, Duration::ZERO, 4, &Principal::Anonymous)
            .unwrap();
        assert_eq!(
            presence(&engine),
            [
                pair("a", "online"),
                pair("b", "offline"),
                pair("c", "offline")
            ]
        );
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    assert!(pending(&engine).is_empty());
}

#[test]
fn a_restart_during_the_grace_keeps_each_pending_will_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        device_online(&engine, "kitchen", true, 1);
        engine.close_store();
    }
    for restart in 0..2 {
        // Down again before the grace ended: the snapshot of this start carries the will.
        let engine = engine_in(dir.path(), Limits::default());
        assert_eq!(pending(&engine).len(), 1, "restart {restart}");
        assert!(
            !dir.path().join("log.1").exists(),
            "the files read are replaced by a snapshot"
        );
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    let at = pending(&engine)[0].1;
    engine.sweep(at, false);
    assert_eq!(presence(&engine), [pair("kitchen", "offline")]);
    engine.close_store();
    drop(engine);
    assert!(pending(&engine_in(dir.path(), Limits::default())).is_empty());
}

#[test]
fn a_snapshot_carries_live_and_pending_wills() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        device_online(&engine, "kitchen", true, 1);
        engine.close_store();
    }
    {
        let engine = engine_in(dir.path(), Limits::default());
        // kitchen is pending; attic connects now, with a keep-alive of 0 (the default applies).
        engine
            .attach(
                "attic",
                false,
                Some(presence_will("attic")),
                Duration::ZERO,
                5,
                &Principal::Anonymous,
            )
            .unwrap();
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    let due: HashMap<_, _> = pending(&engine).into_iter().collect();
    let now = engine.now_ms();
    assert!(
        (now + 89_000..=now + 90_000).contains(&due["attic"]),
        "keep-alive 0 counts as 60 s: {due:?}"
    );
    assert!(
        due["kitchen"] <= now + 3_000,
        "kitchen's grace runs from the start that first found it pending: {due:?}"
    );
    // What a compaction writes now: the pending wills and garage's live one.
    device_online(&engine, "garage", true, 6);
    let (_, snapshot) = engine.capture();
    let mut records = Vec::new();
    snapshot
        .write(&mut |r| {
            r.encode(&mut records);
            Ok(())
        })
        .unwrap();
    let mut rec = Recovered::default();
    record::read_frames(&mut &records[..], |r| rec.apply(r)).unwrap();
    let wills: Vec<_> = rec
        .wills
        .iter()
        .map(|(id, w)| (id.to_string(), w.keep_alive, w.will.clone()))
        .collect();
    assert_eq!(
        wills,
        [
            ("attic".to_string(), 0, presence_will("attic")),
            ("garage".to_string(), 2, presence_will("garage")),
            ("kitchen".to_string(), 2, presence_will("kitchen")),
        ]
    );
}

#[test]
fn a_torn_will_at_the_end_of_the_log_keeps_the_wills_before_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sd = StateDir::lock(dir.path()).unwrap();
        let mut log = sd.create_log(1).unwrap();
        let mut buf = Vec::new();
        for device in ["attic", "garage", "kitchen"] {
            let w = presence_will(device);
            Record::Will {
                client_id: device,
                keep_alive: 2,
                owner: record::WillOwner::Anonymous,
                deadline: 0,
                topic: &w.topic,
                qos: w.qos,
                retain: w.retain,
                payload: &w.payload,
            }
            .encode(&mut buf);
        }
        log.commit(&buf[..buf.len() - 3]).unwrap();
    }
    let engine = engine_in(dir.path(), Limits::default());
    let ids: Vec<_> = pending(&engine).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["attic", "garage"]);
    assert!(dir.path().join("log.1.damaged").exists());
}

/// The keep-alive sweeper is the will timer: with tokio's clock paused, a restored will is
/// published once 1.5 x its keep-alive has passed, and not before.
#[tokio::test(start_paused = true)]
async fn the_keep_alive_sweeper_publishes_a_restored_will_on_time() {
    let engine = Engine::new(Limits::default(), Access::default());
    let mut rec = Recovered::default();
    let w = presence_will("kitchen");
    rec.apply(Record::Retain {
        topic: &w.topic,
        qos: QoS::AtLeastOnce,
        payload: b"online",
    });
    rec.apply(Record::Will {
        client_id: "kitchen",
        keep_alive: 2,
        owner: record::WillOwner::Anonymous,
        deadline: 0,
        topic: &w.topic,
        qos: w.qos,
        retain: w.retain,
        payload: &w.payload,
    });
    engine.restore(rec, Path::new("(test)"), 0);
    let watcher = engine
        .attach(
            "watcher",
            true,
            None,
            Duration::ZERO,
            100,
            &Principal::Anonymous,
        )
        .unwrap();
    engine
        .subscribe("watcher", 100, "pifleet/dev/+/status", QoS::AtLeastOnce)
        .unwrap();
    let seen = || {
        let mut q = watcher.outbox.lock();
        let mut v = Vec::new();
        while let Some((d, _)) = q.next_to_send(100) {
            v.push(String::from_utf8_lossy(&d.message.payload).into_owned());
        }
        v
    };
    assert_eq!(seen(), ["online"], "the restored presence, retained");
    tokio::spawn(engine.clone().sweep_keep_alives());
    tokio::time::sleep(Duration::from_millis(2_900)).await;
    assert!(seen().is_empty(), "within the grace");
    assert_eq!(presence(&engine), [pair("kitchen", "online")]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(seen(), ["offline"], "published once the grace is over");
    assert_eq!(presence(&engine), [pair("kitchen", "offline")]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(seen().is_empty(), "once");
}

fn deadlines(engine: &Engine) -> Vec<(String, u64)> {
    let st = engine.state();
    let mut v: Vec<_> = st
        .pending_wills
        .iter()
        .map(|(id, p)| (id.to_string(), p.deadline))
        .collect();
    v.sort();
    v
}

/// A crash loop does not postpone a will: the first start that finds it pending sets its
/// deadline (wall clock) and stores it in its snapshot, and later starts keep it.
#[test]
fn a_restart_during_the_grace_does_not_extend_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        device_online(&engine, "kitchen", true, 1);
        engine.close_store();
    }
    let first = {
        let engine = engine_in(dir.path(), Limits::default());
        let d = deadlines(&engine);
        engine.close_store();
        d
    };
    assert_eq!(first.len(), 1);
    std::thread::sleep(Duration::from_millis(300));
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(
        deadlines(&engine),
        first,
        "the deadline of the first restore"
    );
    let due = pending(&engine)[0].1;
    assert!(
        due <= engine.now_ms() + 3_000 - 250,
        "due within what is left of the first grace, not a new one: {due} at {}",
        engine.now_ms()
    );
}

/// The number of pending wills is bounded like the sessions: beyond `max_sessions` they are
/// dropped (and counted).
#[test]
fn pending_wills_beyond_max_sessions_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        for (n, device) in ["a", "b", "c"].into_iter().enumerate() {
            device_online(&engine, device, true, n as u64 + 1);
        }
        engine.close_store();
    }
    let limits = Limits {
        max_sessions: 2,
        ..Limits::default()
    };
    let engine = engine_in(dir.path(), limits);
    assert_eq!(pending(&engine).len(), 2);
    assert_eq!(engine.counters().state_dropped, 1);
}

/// An empty client id becomes `auto-<connection id>`; connection ids start over with each
/// run, so the next run's ids must start above those of the pending wills, or a new client
/// would silently cancel another's will by connecting.
#[test]
fn a_made_up_client_id_of_a_pending_will_is_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let made_up = {
        let engine = engine_in(dir.path(), Limits::default());
        for _ in 0..5 {
            engine.id();
        }
        let conn = engine.id();
        let id = format!("auto-{conn}");
        engine
            .attach(
                &id,
                true,
                Some(presence_will("anon")),
                Duration::from_secs(2),
                conn,
                &Principal::Anonymous,
            )
            .unwrap();
        engine.close_store();
        conn
    };
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(pending(&engine)[0].0, format!("auto-{made_up}"));
    assert!(
        engine.id() > made_up,
        "this run's connection ids start above"
    );
}

/// A client may name itself `auto-<huge>`: that must not push the id counter to its end,
/// where it would wrap into the ids of restored sessions.
#[test]
fn a_chosen_auto_id_near_the_counters_end_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path(), Limits::default());
        let conn = engine.id();
        engine
            .attach(
                "auto-18446744073709551614",
                true,
                Some(presence_will("anon")),
                Duration::from_secs(2),
                conn,
                &Principal::Anonymous,
            )
            .unwrap();
        engine.close_store();
    }
    let engine = engine_in(dir.path(), Limits::default());
    assert_eq!(pending(&engine).len(), 1);
    assert!(engine.id() < 1 << 48, "the counter stays far from its end");
}

/// `[state] will_grace_secs` is the shortest grace: an agent's 10 s keep-alive gives 15 s,
/// less than its reconnect back-off, so the floor (60 s by default) applies.
#[test]
fn the_grace_after_a_restart_is_at_least_the_configured_floor() {
    let engine = Engine::new(Limits::default(), Access::default());
    let mut rec = Recovered::default();
    let w = presence_will("kitchen");
    rec.apply(Record::Will {
        client_id: "kitchen",
        keep_alive: 10,
        owner: record::WillOwner::Anonymous,
        deadline: 0,
        topic: &w.topic,
        qos: w.qos,
        retain: w.retain,
        payload: &w.payload,
    });
    let floor = StateConfig::default().will_grace_secs;
    assert_eq!(floor, 60);
    let now = engine.now_ms();
    engine.restore(rec, Path::new("(test)"), floor);
    let due = pending(&engine)[0].1;
    assert!(
        (now + 60_000..now + 61_000).contains(&due),
        "{due} from {now}"
    );
}
