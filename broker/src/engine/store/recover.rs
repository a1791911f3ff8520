//! Replaying records into the state they describe, without I/O: [`Recovered::apply`] is fed
//! the snapshot's records and then each log's, in order, and ends up with what the engine is
//! rebuilt from ([`super::restore`]).
//!
//! Replay is tolerant by design. A record that refers to something unknown (a session or a
//! message body lost with a damaged part of a file) is skipped, and the records that race a
//! compaction are idempotent on top of the snapshot: a `Sent` for a message already in flight,
//! or a `Done` for one already gone, changes nothing.
//!
//! Last wills are kept by client id, apart from sessions: a clean session has no session
//! record, yet its connection's will matters as much.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::super::packet::{Message, QoS, Will};
use super::record::{Record, WillOwner};
use crate::credentials::Role;

/// A message queued for a recovered session.
#[derive(Debug, Clone)]
pub struct Queued {
    pub message: Arc<Message>,
    /// The body's id in the files it came from (bodies are shared between sessions).
    pub mid: u64,
    pub qos: QoS,
}

/// A message that was in flight: sent with `pkid`, not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Flight {
    pub queued: Queued,
    pub pkid: u16,
    /// QoS 2: PUBREC arrived, PUBCOMP had not.
    pub released: bool,
}

#[derive(Debug, Clone)]
pub struct RecoveredSession {
    pub client_id: Box<str>,
    pub owner: Option<(Role, Box<str>)>,
    /// Unix milliseconds when its client went away; `None` if one was connected when the
    /// state was last written.
    pub offline_since: Option<u64>,
    pub filters: Vec<(Box<str>, QoS)>,
    /// Oldest first, as they were sent.
    pub inflight: Vec<Flight>,
    pub pending: VecDeque<Queued>,
}

/// The last will of a connection that was live when the state was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredWill {
    pub will: Will,
    /// Seconds, as its CONNECT asked (0: none).
    pub keep_alive: u16,
    /// Who connected with it (`None`: anonymous, or not recorded).
    pub owner: Option<(Role, Box<str>)>,
    /// The owner is an in-process identity ([`WillOwner::InProcess`]).
    pub in_process: bool,
    /// Unix ms when its grace ends, set by the first start that found it pending (0: not yet).
    pub deadline: u64,
}

/// The persistent state the files describe.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Topic → (QoS, payload).
    pub retained: BTreeMap<Box<str>, (QoS, Bytes)>,
    /// Client id → the will of its connection (live at the crash, or still pending after an
    /// earlier restart).
    pub wills: BTreeMap<Box<str>, RecoveredWill>,
    /// By session id, which follows creation order.
    pub sessions: BTreeMap<u64, RecoveredSession>,
    by_client: HashMap<Box<str>, u64>,
    bodies: HashMap<u64, Arc<Message>>,
    /// Records that referred to something unknown.
    pub skipped: u64,
    /// Whether a snapshot's end record was seen.
    pub ended: bool,
    /// The highest session and message ids seen.
    pub max_sid: u64,
    pub max_mid: u64,
}

impl Recovered {
    /// Applies one record (headers are the file reader's business and are ignored here).
    pub fn apply(&mut self, record: Record<'_>) {
        match record {
            Record::Header { .. } => {}
            Record::End { .. } => self.ended = true,
            Record::Retain {
                topic,
                qos,
                payload,
            } => {
                self.retained
                    .insert(topic.into(), (qos, Bytes::copy_from_slice(payload)));
            }
            Record::Unretain { topic } => {
                self.retained.remove(topic);
            }
            Record::Session {
                sid,
                client_id,
                owner,
                offline_since,
            } => {
                self.max_sid = self.max_sid.max(sid);
                if let Some(old) = self.by_client.insert(client_id.into(), sid) {
                    // A newer session of the same client id replaced one whose `Gone` was
                    // lost.
                    self.sessions.remove(&old);
                }
                self.sessions.insert(
                    sid,
                    RecoveredSession {
                        client_id: client_id.into(),
                        owner: owner.map(|(r, n)| (r, n.into())),
                        offline_since: (offline_since != 0).then_some(offline_since),
                        filters: Vec::new(),
                        inflight: Vec::new(),
                        pending: VecDeque::new(),
                    },
                );
            }
            Record::Gone { sid } => match self.sessions.remove(&sid) {
                Some(s) => {
                    self.by_client.remove(&s.client_id);
                }
                None => self.skipped += 1,
            },
            Record::Online { sid } => {
                if let Some(s) = self.session(sid) {
                    s.offline_since = None;
                }
            }
            Record::Offline { sid, at } => {
                if let Some(s) = self.session(sid) {
                    s.offline_since = Some(at);
                }
            }
            Record::Subscribe { sid, filter, qos } => {
                if let Some(s) = self.session(sid) {
                    match s.filters.iter_mut().find(|(f, _)| &**f == filter) {
                        Some(slot) => slot.1 = qos,
                        None => s.filters.push((filter.into(), qos)),
                    }
                }
            }
            Record::Unsubscribe { sid, filter } => {
                if let Some(s) = self.session(sid) {
                    s.filters.retain(|(f, _)| &**f != filter);
                }
            }
            Record::Message {
                mid,
                topic,
                qos,
                payload,
            } => {
                self.max_mid = self.max_mid.max(mid);
                self.bodies.insert(
                    mid,
                    Arc::new(Message {
                        topic: topic.into(),
                        payload: Bytes::copy_from_slice(payload),
                        qos,
                        retain: false,
                    }),
                );
            }
            Record::Queued { sid, mid, qos } => {
                let body = self.bodies.get(&mid).cloned();
                match (body, self.sessions.get_mut(&sid)) {
                    (Some(message), Some(s)) => s.pending.push_back(Queued { message, mid, qos }),
                    _ => self.skipped += 1,
                }
            }
            Record::Sent { sid, mid, pkid } => {
                let Some(s) = self.session(sid) else { return };
                if let Some(f) = s.inflight.iter_mut().find(|f| f.queued.mid == mid) {
                    f.pkid = pkid;
                } else if let Some(i) = s.pending.iter().position(|q| q.mid == mid) {
                    let queued = s.pending.remove(i).expect("found");
                    s.inflight.push(Flight {
                        queued,
                        pkid,
                        released: false,
                    });
                }
            }
            Record::Released { sid, mid } => {
                let Some(s) = self.session(sid) else { return };
                if let Some(f) = s.inflight.iter_mut().find(|f| f.queued.mid == mid) {
                    f.released = true;
                }
            }
            Record::Done { sid, mid } => {
                let Some(s) = self.session(sid) else { return };
                if let Some(i) = s.inflight.iter().position(|f| f.queued.mid == mid) {
                    s.inflight.remove(i);
                } else if let Some(i) = s.pending.iter().position(|q| q.mid == mid) {
                    s.pending.remove(i);
                }
            }
            Record::Will {
                client_id,
                keep_alive,
                owner,
                deadline,
                topic,
                qos,
                retain,
                payload,
            } => {
                let (owner, in_process) = match owner {
                    WillOwner::Anonymous => (None, false),
                    WillOwner::Login(role, name) => (Some((role, name.into())), false),
                    WillOwner::InProcess(role, name) => (Some((role, name.into())), true),
                };
                // One connection per client id: a newer will replaces one whose `WillGone`
                // was lost.
                self.wills.insert(
                    client_id.into(),
                    RecoveredWill {
                        will: Will {
                            topic: topic.into(),
                            payload: Bytes::copy_from_slice(payload),
                            qos,
                            retain,
                        },
                        keep_alive,
                        owner,
                        in_process,
                        deadline,
                    },
                );
            }
            Record::WillGone { client_id } => {
                if self.wills.remove(client_id).is_none() {
                    self.skipped += 1;
                }
            }
        }
    }

    fn session(&mut self, sid: u64) -> Option<&mut RecoveredSession> {
        let s = self.sessions.get_mut(&sid);
        if s.is_none() {
            self.skipped += 1;
        }
        s
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn replay(records: &[Record<'_>]) -> Recovered {
        let mut r = Recovered::default();
        for rec in records {
            r.apply(rec.clone());
        }
        r
    }

    fn session(sid: u64, client_id: &str) -> Record<'_> {
        Record::Session {
            sid,
            client_id,
            owner: Some((Role::Device, client_id)),
            offline_since: 0,
        }
    }

    fn body(mid: u64, payload: &[u8]) -> Record<'_> {
        Record::Message {
            mid,
            topic: "t",
            qos: QoS::AtLeastOnce,
            payload,
        }
    }

    fn queued(sid: u64, mid: u64) -> Record<'static> {
        Record::Queued {
            sid,
            mid,
            qos: QoS::AtLeastOnce,
        }
    }

    #[test]
    fn retained_messages_replay_to_their_last_value() {
        let r = replay(&[
            Record::Retain {
                topic: "a",
                qos: QoS::AtMostOnce,
                payload: b"1",
            },
            Record::Retain {
                topic: "b",
                qos: QoS::AtLeastOnce,
                payload: b"x",
            },
            Record::Retain {
                topic: "a",
                qos: QoS::AtLeastOnce,
                payload: b"2",
            },
            Record::Unretain { topic: "b" },
        ]);
        let got: Vec<_> = r
            .retained
            .iter()
            .map(|(t, (q, p))| (&**t, *q, &p[..]))
            .collect();
        assert_eq!(got, [("a", QoS::AtLeastOnce, &b"2"[..])]);
    }

    #[test]
    fn a_session_keeps_its_subscriptions_and_what_was_not_acknowledged() {
        let r = replay(&[
            session(1, "kitchen"),
            Record::Subscribe {
                sid: 1,
                filter: "a/#",
                qos: QoS::AtMostOnce,
            },
            Record::Subscribe {
                sid: 1,
                filter: "b",
                qos: QoS::AtLeastOnce,
            },
            Record::Subscribe {
                sid: 1,
                filter: "a/#",
                qos: QoS::ExactlyOnce,
            },
            Record::Unsubscribe {
                sid: 1,
                filter: "b",
            },
            body(10, b"one"),
            queued(1, 10),
            body(11, b"two"),
            queued(1, 11),
            body(12, b"three"),
            queued(1, 12),
            Record::Sent {
                sid: 1,
                mid: 10,
                pkid: 5,
            },
            Record::Sent {
                sid: 1,
                mid: 11,
                pkid: 6,
            },
            Record::Done { sid: 1, mid: 10 },
            Record::Released { sid: 1, mid: 11 },
            Record::Offline { sid: 1, at: 1234 },
        ]);
        let s = &r.sessions[&1];
        assert_eq!(s.filters, [("a/#".into(), QoS::ExactlyOnce)]);
        assert_eq!(s.offline_since, Some(1234));
        assert_eq!(s.inflight.len(), 1);
        assert_eq!(
            (
                &s.inflight[0].queued.message.payload[..],
                s.inflight[0].pkid
            ),
            (&b"two"[..], 6)
        );
        assert!(s.inflight[0].released);
        let pending: Vec<_> = s.pending.iter().map(|q| &q.message.payload[..]).collect();
        assert_eq!(pending, [&b"three"[..]]);
    }

    #[test]
    fn records_racing_a_compaction_are_idempotent_on_the_snapshot() {
        // The snapshot already shows 10 in flight as pkid 5 and 11 acknowledged; the log after
        // the cut repeats both changes.
        let mut r = replay(&[
            session(1, "c"),
            body(10, b"x"),
            queued(1, 10),
            Record::Sent {
                sid: 1,
                mid: 10,
                pkid: 5,
            },
        ]);
        for rec in [
            Record::Sent {
                sid: 1,
                mid: 10,
                pkid: 5,
            },
            Record::Sent {
                sid: 1,
                mid: 11,
                pkid: 6,
            },
            Record::Done { sid: 1, mid: 11 },
        ] {
            r.apply(rec);
        }
        let s = &r.sessions[&1];
        assert_eq!((s.inflight.len(), s.pending.len()), (1, 0));
    }

    fn will<'a>(client_id: &'a str, payload: &'a [u8]) -> Record<'a> {
        Record::Will {
            client_id,
            keep_alive: 30,
            owner: WillOwner::Anonymous,
            deadline: 0,
            topic: "pifleet/dev/x/status",
            qos: QoS::AtLeastOnce,
            retain: true,
            payload,
        }
    }

    #[test]
    fn wills_replay_by_client_id_until_settled_whatever_the_session() {
        let r = replay(&[
            // A clean session's connection (no session record) and a persistent one's.
            will("kitchen", b"k1"),
            session(1, "attic"),
            will("attic", b"a1"),
            // Settled: a DISCONNECT, a fired will, a takeover.
            will("garage", b"g1"),
            Record::WillGone {
                client_id: "garage",
            },
            // A takeover: the old will settled, the new connection's recorded.
            Record::WillGone {
                client_id: "kitchen",
            },
            will("kitchen", b"k2"),
            // A newer will whose predecessor's WillGone was lost replaces it.
            will("attic", b"a2"),
            Record::Gone { sid: 1 },
        ]);
        let got: Vec<_> = r
            .wills
            .iter()
            .map(|(id, w)| (&**id, &w.will.payload[..], w.keep_alive, w.will.retain))
            .collect();
        assert_eq!(
            got,
            [
                ("attic", &b"a2"[..], 30, true),
                ("kitchen", &b"k2"[..], 30, true)
            ],
            "a session's end does not settle its connection's will"
        );
        assert_eq!(r.skipped, 0);
        let mut r = r;
        r.apply(Record::WillGone {
            client_id: "nobody",
        });
        assert_eq!(r.skipped, 1, "a will never recorded");
    }

    #[test]
    fn gone_sessions_and_unknown_references_are_dropped() {
        let r = replay(&[
            session(1, "a"),
            session(2, "b"),
            Record::Gone { sid: 1 },
            // A newer session of "b" whose predecessor's Gone was lost replaces it.
            session(3, "b"),
            queued(3, 99),
            Record::Subscribe {
                sid: 7,
                filter: "x",
                qos: QoS::AtMostOnce,
            },
        ]);
        let ids: Vec<_> = r.sessions.keys().copied().collect();
        assert_eq!(ids, [3]);
        assert_eq!(r.skipped, 2, "a body never stored, a session never created");
    }
}
