//! What the engine keeps per client: the queue of messages waiting to be written, the QoS 1/2
//! messages in flight, and the QoS 2 packet ids received but not yet released. An [`Outbox`]
//! outlives its connection when the client asked for a persistent session.
//!
//! Memory is the point of this module's shape: an idle session is a few hundred bytes (empty
//! queues do not allocate), and a message delivered to ten thousand devices is stored once and
//! shared through `Arc`, so a fleet-wide command costs one pointer per device.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::QoS;
use tokio::sync::Notify;

/// A published message as the engine stores it: once, shared by every queue and the retained
/// tree.
#[derive(Debug)]
pub struct Message {
    pub topic: Box<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// One message queued for one client, at the QoS of the subscription that matched.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    /// Set for retained messages sent because of a new subscription (§3.3.1.3).
    pub retain: bool,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    Released,
}

#[derive(Debug)]
pub struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// The mutable part of a session, behind the outbox's lock.
#[derive(Debug, Default)]
pub struct Queue {
    pub pending: VecDeque<Delivery>,
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received from the client and not yet released (PUBREL).
    pub incoming_qos2: Vec<u16>,
    next_pkid: u16,
    /// Messages dropped because the queue was full, since the session began.
    pub dropped: u64,
    /// Whether a connection is attached; offline sessions only queue QoS 1/2 (as mosquitto).
    pub online: bool,
}

impl Queue {
    /// A packet id not in flight. At most `max_inflight` (≤ 65535) are in flight, so one is
    /// always free.
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                self.next_pkid = 1;
            }
            let id = self.next_pkid;
            if !self.inflight.iter().any(|i| i.pkid == id) {
                return id;
            }
        }
    }

    /// Removes the in-flight message `pkid` if it is at `stage`.
    pub fn ack(&mut self, pkid: u16, stage: Stage) -> Option<Inflight> {
        let i = self
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.stage == stage)?;
        self.inflight.remove(i)
    }
}

/// A session's queue plus the means to wake the connection that drains it.
#[derive(Debug)]
pub struct Outbox {
    /// Unique per session, the key of its subscriptions in the filter tree.
    pub id: u64,
    queue: Mutex<Queue>,
    notify: Notify,
    /// Backpressure (see [`Pushed::Congested`]): set when the queue passes [`SOFT_LIMIT`],
    /// cleared (and `drained` notified) when its connection has written it down to half.
    congested: AtomicBool,
    /// The client did not catch up within a publisher's patience: no more backpressure for it
    /// (its queue bound applies instead) until it drains.
    slow: AtomicBool,
    drained: Notify,
}

/// Queue length at which publishers to this client pause (briefly) instead of racing ahead of
/// it: with a live subscriber that is merely slower than its publishers (a controller reading a
/// telemetry burst), nothing is lost.
pub const SOFT_LIMIT: usize = 1024;

/// How long a publisher waits for a congested subscriber before treating it as slow.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the queue is past [`SOFT_LIMIT`]: the publisher should wait for it.
    Congested,
    Dropped,
}

impl Outbox {
    /// A new session's outbox, offline until a connection attaches ([`Outbox::set_online`]).
    pub fn new(id: u64) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            congested: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            drained: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the broker would, so poisoning is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a connection is attached (which decides what [`Outbox::push`] keeps). Closing
    /// a connection that loses its session is the engine's [`Link`](super::Link)'s job.
    pub fn set_online(&self, online: bool) {
        self.lock().online = online;
    }

    /// Queues `delivery` unless the queue is full or the session is offline and the delivery is
    /// QoS 0.
    pub fn push(&self, delivery: Delivery, max_queued: usize) -> Pushed {
        let congested;
        {
            let mut q = self.lock();
            if (!q.online && delivery.qos == QoS::AtMostOnce) || q.pending.len() >= max_queued {
                q.dropped += 1;
                if q.dropped.is_power_of_two() {
                    tracing::warn!(
                        session = self.id,
                        dropped = q.dropped,
                        "a client's queue is full: dropping messages for it"
                    );
                }
                return Pushed::Dropped;
            }
            q.pending.push_back(delivery);
            congested =
                q.online && q.pending.len() >= SOFT_LIMIT && !self.slow.load(Ordering::Relaxed);
        }
        self.notify.notify_one();
        if congested {
            self.congested.store(true, Ordering::Release);
            Pushed::Congested
        } else {
            Pushed::Queued
        }
    }

    /// Called by the draining connection with the queue length left: below half the soft limit
    /// the client has caught up, and waiting publishers may go on.
    pub fn drained_to(&self, pending: usize) {
        if pending <= SOFT_LIMIT / 2
            && (self.congested.load(Ordering::Acquire) || self.slow.load(Ordering::Relaxed))
        {
            self.congested.store(false, Ordering::Release);
            self.slow.store(false, Ordering::Relaxed);
            self.drained.notify_waiters();
        }
    }

    /// Waits (up to [`PATIENCE`]) until this client has caught up. Returns false, and stops
    /// applying backpressure for this client, if it did not.
    pub async fn wait_uncongested(&self) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.congested.load(Ordering::Acquire) || !self.lock().online {
                return true;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                self.slow.store(true, Ordering::Relaxed);
                self.congested.store(false, Ordering::Release);
                tracing::warn!(
                    session = self.id,
                    "a subscriber is not keeping up; its queue bound applies from now on"
                );
                return false;
            }
        }
    }

    /// Resolves when something was queued; the connection keeps it pinned and re-arms it.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

fn remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Writes a PUBLISH for `message` straight from the shared copy (no per-delivery `Publish`
/// struct, no topic clone).
pub fn encode_publish(
    buf: &mut BytesMut,
    message: &Message,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
) {
    let topic = message.topic.as_bytes();
    let mut len = 2 + topic.len() + message.payload.len();
    if qos != QoS::AtMostOnce {
        len += 2;
    }
    buf.reserve(len + 5);
    buf.put_u8(0x30 | (dup as u8) << 3 | (qos as u8) << 1 | retain as u8);
    remaining_length(buf, len);
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic);
    if qos != QoS::AtMostOnce {
        buf.put_u16(pkid);
    }
    buf.put_slice(&message.payload);
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK share one shape: type byte, length 2, packet id.
pub fn encode_ack(buf: &mut BytesMut, first_byte: u8, pkid: u16) {
    buf.put_u8(first_byte);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;
pub const UNSUBACK: u8 = 0xB0;

#[cfg(test)]
mod test {
    use super::*;
    use rumqttc::mqttbytes::v4::Packet;

    #[test]
    fn encoded_publish_reads_back() {
        let m = Message {
            topic: "pifleet/dev/kitchen/cmnd".into(),
            payload: Bytes::from(vec![7u8; 300]),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, &m, QoS::ExactlyOnce, true, true, 513);
        encode_ack(&mut buf, PUBREL, 9);
        match Packet::read(&mut buf, 1 << 20).unwrap() {
            Packet::Publish(p) => {
                assert_eq!(p.topic, "pifleet/dev/kitchen/cmnd");
                assert_eq!(
                    (p.qos, p.retain, p.dup, p.pkid),
                    (QoS::ExactlyOnce, true, true, 513)
                );
                assert_eq!(p.payload.len(), 300);
            }
            other => panic!("{other:?}"),
        }
        match Packet::read(&mut buf, 1 << 20).unwrap() {
            Packet::PubRel(p) => assert_eq!(p.pkid, 9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_zero() {
        let mut q = Queue::default();
        let m = Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        q.next_pkid = 65534;
        let a = q.next_pkid();
        q.inflight.push_back(Inflight {
            pkid: 1,
            delivery: Delivery {
                message: m,
                qos: QoS::AtLeastOnce,
                retain: false,
            },
            stage: Stage::Published,
        });
        assert_eq!(a, 65535);
        assert_eq!(q.next_pkid(), 2);
        assert!(q.ack(1, Stage::Released).is_none());
        assert!(q.ack(1, Stage::Published).is_some());
    }

    #[test]
    fn offline_sessions_keep_only_qos1_and_full_queues_drop() {
        let o = Outbox::new(1);
        let m = Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let d = |qos| Delivery {
            message: m.clone(),
            qos,
            retain: false,
        };
        assert_eq!(o.push(d(QoS::AtMostOnce), 10), Pushed::Dropped);
        assert_eq!(o.push(d(QoS::AtLeastOnce), 10), Pushed::Queued);
        o.set_online(true);
        assert_eq!(o.push(d(QoS::AtMostOnce), 2), Pushed::Queued);
        assert_eq!(o.push(d(QoS::AtMostOnce), 2), Pushed::Dropped);
        assert_eq!(o.lock().dropped, 2);
    }

    #[tokio::test]
    async fn a_congested_queue_holds_publishers_until_it_drains_or_patience_runs_out() {
        let o = Outbox::new(1);
        o.set_online(true);
        let m = Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        let d = || Delivery {
            message: m.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
        };
        for _ in 0..SOFT_LIMIT - 1 {
            assert_eq!(o.push(d(), usize::MAX), Pushed::Queued);
        }
        assert_eq!(o.push(d(), usize::MAX), Pushed::Congested);
        // Drained by "its connection" shortly: the waiter goes on, not slow.
        let o2 = o.clone();
        let drainer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            o2.lock().pending.clear();
            o2.drained_to(0);
        });
        assert!(o.wait_uncongested().await);
        drainer.await.unwrap();
        // Nobody drains: after PATIENCE the client counts as slow and pushes stop congesting.
        for _ in 0..SOFT_LIMIT {
            o.push(d(), usize::MAX);
        }
        assert!(!o.wait_uncongested().await);
        assert_eq!(o.push(d(), usize::MAX), Pushed::Queued);
    }
}
