//! What the engine keeps per session: the queue of messages waiting to be written, the QoS 1/2
//! messages in flight, and the QoS 2 packet ids received but not yet released. An [`Outbox`]
//! outlives its connection when the client asked for a persistent session.
//!
//! [`Queue`] is the session's QoS state machine, without I/O: the connection feeds it what the
//! client acknowledged ([`Queue::on_puback`], [`Queue::on_pubrec`], …) and asks it what to write
//! next ([`Queue::next_to_send`], [`Queue::inflight`] for a resend), in the manner of rumqttc's
//! `MqttState`. Its tests below exercise it one behaviour at a time.
//!
//! Memory is the point of this module's shape: an idle session is a few hundred bytes (empty
//! queues do not allocate), and a message delivered to ten thousand devices is stored once and
//! shared through `Arc`, so a fleet-wide command costs one pointer per device.
//!
//! Every queue is bounded three ways, because a client that stops reading must not be able to
//! make the broker hold more than it was sent ([`Budget`]): in messages, in bytes per client, and
//! in bytes across all clients (each connected client keeps a small reserve of its own, so a few
//! stalled clients cannot starve the fleet). Retained messages answering a SUBSCRIBE are queued
//! as weak references: the retained store already holds them, so a fleet snapshot costs a
//! pointer per message, and one replaced meanwhile is simply skipped (its successor was
//! delivered live).
//!
//! Only the connection that owns the session ([`Queue::owner`]) may take messages out or
//! acknowledge them: after a takeover, a connection still draining its buffered packets can
//! neither steal the new connection's messages nor strand them in flight.
//!
//! A persistent session's queue, when the broker keeps state, records each change to its QoS
//! 1/2 messages (queued, sent, released, acknowledged) through its [`SessionLog`] while it
//! holds its own lock, so the records are in the order the queue changed. That is an append to
//! an in-memory buffer; the store's writer thread does the I/O.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

use super::packet::{Message, QoS};
use super::store::{MessageId, SessionLog};
use crate::config::{Limits, QUEUE_RESERVE};

/// What one queued retained reference is charged: a slot, plus the allocation header it keeps
/// alive should the message be replaced before it is sent.
pub const RETAINED_REF_COST: usize = 96;

/// One message queued for one client, at the QoS of the subscription that matched.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    /// Set for retained messages sent because of a new subscription (§3.3.1.3).
    pub retain: bool,
    /// The message's body in the state directory, for a QoS 1/2 delivery to a persistent
    /// session (`None` otherwise, and when the broker keeps no state).
    pub stored: Option<MessageId>,
}

/// A queue entry: a live delivery, or a retained message answering a SUBSCRIBE.
#[derive(Debug)]
enum Pending {
    Live(Delivery),
    Retained(Weak<Message>, QoS),
}

impl Pending {
    fn cost(&self) -> usize {
        match self {
            Pending::Live(d) => d.message.cost(),
            Pending::Retained(..) => RETAINED_REF_COST,
        }
    }
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
    /// Bytes charged to the queue for it (released on acknowledgement).
    charged: usize,
}

/// The bounds every queue of one engine shares, and the running total they cap.
#[derive(Debug)]
pub struct Budget {
    max_messages: usize,
    max_bytes: usize,
    max_total: usize,
    max_retained: usize,
    total: AtomicUsize,
    /// Messages dropped by any queue because a bound bit (a metric).
    pub dropped: AtomicU64,
}

impl Budget {
    pub fn new(limits: &Limits) -> Arc<Budget> {
        Arc::new(Budget {
            max_messages: limits.max_queued_messages,
            max_bytes: limits.max_queued_bytes,
            max_total: limits.max_queued_bytes_total,
            max_retained: limits.max_retained_per_subscription,
            total: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Bytes queued across all clients now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Charges `cost` to a queue holding `held` bytes, if the bounds allow it.
    fn charge(&self, held: usize, cost: usize, online: bool) -> bool {
        if held + cost > self.max_bytes {
            return false;
        }
        let reserve = if online { QUEUE_RESERVE } else { 0 };
        let prev = self.total.fetch_add(cost, Ordering::Relaxed);
        if held + cost > reserve && prev + cost > self.max_total {
            self.total.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, cost: usize) {
        self.total.fetch_sub(cost, Ordering::Relaxed);
    }
}

/// Why [`Queue`] refused to take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The session is offline and the message is QoS 0 (not kept, as in mosquitto).
    Offline,
    /// A bound bit: counted and logged.
    Full,
}

/// The mutable part of a session, behind the outbox's lock. Its fields are private: every
/// change goes through a method that keeps the byte accounting and the ownership rule.
#[derive(Debug)]
pub struct Queue {
    pending: VecDeque<Pending>,
    inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received from the client and not yet released (PUBREL).
    incoming_qos2: Vec<u16>,
    next_pkid: u16,
    /// Live messages in `pending` (retained references are bounded separately).
    live: usize,
    /// Retained references in `pending`.
    retained: usize,
    /// Bytes charged for `pending` and `inflight`.
    bytes: usize,
    /// Messages dropped because the queue was full, since the session began.
    dropped: u64,
    /// The connection attached to this session (0: offline). Offline sessions only queue
    /// QoS 1/2.
    owner: u64,
    budget: Arc<Budget>,
    /// Where a persistent session's changes are recorded.
    log: Option<SessionLog>,
}

impl Queue {
    fn new(budget: Arc<Budget>, log: Option<SessionLog>) -> Queue {
        Queue {
            pending: VecDeque::new(),
            inflight: VecDeque::new(),
            incoming_qos2: Vec::new(),
            next_pkid: 0,
            live: 0,
            retained: 0,
            bytes: 0,
            dropped: 0,
            owner: 0,
            budget,
            log,
        }
    }

    /// The connection attached to this session, 0 when offline.
    pub fn owner(&self) -> u64 {
        self.owner
    }

    pub fn is_online(&self) -> bool {
        self.owner != 0
    }

    /// Queued messages (live and retained references).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Bytes charged to this queue now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Messages dropped for this session because a bound bit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn refuse(&mut self) -> Refused {
        self.dropped += 1;
        self.budget.dropped.fetch_add(1, Ordering::Relaxed);
        Refused::Full
    }

    fn push_live(&mut self, delivery: Delivery) -> Result<(), Refused> {
        if !self.is_online() && delivery.qos == QoS::AtMostOnce {
            return Err(Refused::Offline);
        }
        let stored = delivery.stored.filter(|_| delivery.qos != QoS::AtMostOnce);
        let qos = delivery.qos;
        self.enqueue(delivery)?;
        if let (Some(log), Some(mid)) = (&self.log, stored) {
            log.queued(mid, qos);
        }
        Ok(())
    }

    fn enqueue(&mut self, delivery: Delivery) -> Result<(), Refused> {
        let cost = delivery.message.cost();
        if self.live >= self.budget.max_messages
            || !self.budget.charge(self.bytes, cost, self.is_online())
        {
            return Err(self.refuse());
        }
        self.bytes += cost;
        self.live += 1;
        self.pending.push_back(Pending::Live(delivery));
        Ok(())
    }

    /// Queues a message read back from the state directory (not recorded again), within the
    /// bounds in force now. False if a bound refused it.
    pub(super) fn restore_pending(&mut self, delivery: Delivery) -> bool {
        self.enqueue(delivery).is_ok()
    }

    /// Puts back a message that was in flight when the broker stopped, under its packet id, so
    /// that it is re-sent with DUP when the session resumes. False if a bound refused it.
    pub(super) fn restore_inflight(&mut self, delivery: Delivery, pkid: u16, stage: Stage) -> bool {
        let charge = match stage {
            Stage::Published => delivery.message.cost(),
            Stage::Released => 0,
        };
        if charge > 0 && !self.budget.charge(self.bytes, charge, false) {
            self.refuse();
            return false;
        }
        self.bytes += charge;
        self.inflight.push_back(Inflight {
            pkid,
            delivery,
            stage,
            charged: charge,
        });
        true
    }

    /// The QoS 1/2 messages the state directory holds for this session: in flight (with
    /// packet id and stage, oldest first) and queued.
    pub(super) fn stored(&self) -> (Vec<(Delivery, u16, Stage)>, Vec<Delivery>) {
        let inflight = self
            .inflight
            .iter()
            .filter(|i| i.delivery.stored.is_some())
            .map(|i| (i.delivery.clone(), i.pkid, i.stage))
            .collect();
        let pending = self
            .pending
            .iter()
            .filter_map(|p| match p {
                Pending::Live(d) if d.stored.is_some() && d.qos != QoS::AtMostOnce => {
                    Some(d.clone())
                }
                _ => None,
            })
            .collect();
        (inflight, pending)
    }

    fn push_retained(&mut self, message: &Arc<Message>, qos: QoS) -> Result<(), Refused> {
        if self.retained >= self.budget.max_retained
            || !self
                .budget
                .charge(self.bytes, RETAINED_REF_COST, self.is_online())
        {
            return Err(self.refuse());
        }
        self.bytes += RETAINED_REF_COST;
        self.retained += 1;
        self.pending
            .push_back(Pending::Retained(Arc::downgrade(message), qos));
        Ok(())
    }

    fn uncharge(&mut self, cost: usize) {
        self.bytes -= cost;
        self.budget.release(cost);
    }

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

    /// The next message to write, and its packet id if it is QoS 1/2 (then it is in flight
    /// until acknowledged). `None` when nothing is queued, or the next message needs an
    /// in-flight slot and all `max_inflight` are taken. Retained references whose message was
    /// replaced meanwhile are skipped.
    pub fn next_to_send(&mut self, max_inflight: usize) -> Option<(Delivery, Option<u16>)> {
        loop {
            let needs_slot = match self.pending.front()? {
                Pending::Live(d) => d.qos != QoS::AtMostOnce,
                Pending::Retained(_, qos) => *qos != QoS::AtMostOnce,
            };
            if needs_slot && self.inflight.len() >= max_inflight {
                return None;
            }
            let entry = self.pending.pop_front().expect("front exists");
            let cost = entry.cost();
            let delivery = match entry {
                Pending::Live(d) => {
                    self.live -= 1;
                    d
                }
                Pending::Retained(weak, qos) => {
                    self.retained -= 1;
                    self.uncharge(cost);
                    let Some(message) = weak.upgrade() else {
                        continue;
                    };
                    let qos = message.qos.min(qos);
                    Delivery {
                        message,
                        qos,
                        retain: true,
                        stored: None,
                    }
                }
            };
            // A live message's charge (its retained reference's was released above).
            let charge = if delivery.retain { 0 } else { cost };
            if delivery.qos == QoS::AtMostOnce {
                self.uncharge(charge);
                return Some((delivery, None));
            }
            let pkid = self.next_pkid();
            // A live message stays charged while in flight; a retained one is held by the
            // store anyway and is bounded by `max_inflight`.
            if let (Some(log), Some(mid)) = (&self.log, delivery.stored) {
                log.sent(mid, pkid);
            }
            self.inflight.push_back(Inflight {
                pkid,
                delivery: delivery.clone(),
                stage: Stage::Published,
                charged: charge,
            });
            return Some((delivery, Some(pkid)));
        }
    }

    fn take_inflight(&mut self, pkid: u16, stage: Stage) -> Option<Inflight> {
        let i = self
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.stage == stage)?;
        self.inflight.remove(i)
    }

    /// Records that the message of `i` left the session.
    fn record_done(&self, i: &Inflight) {
        if let (Some(log), Some(mid)) = (&self.log, i.delivery.stored) {
            log.done(mid);
        }
    }

    /// PUBACK: the QoS 1 message `pkid` arrived. False for an id not in flight.
    pub fn on_puback(&mut self, pkid: u16) -> bool {
        match self.take_inflight(pkid, Stage::Published) {
            Some(i) => {
                self.uncharge(i.charged);
                self.record_done(&i);
                true
            }
            None => false,
        }
    }

    /// PUBREC: the QoS 2 message `pkid` arrived; it now waits for PUBCOMP (and the caller
    /// answers PUBREL whatever this returns, so the client can finish). False for an id not in
    /// flight.
    pub fn on_pubrec(&mut self, pkid: u16) -> bool {
        match self.take_inflight(pkid, Stage::Published) {
            Some(mut i) => {
                // Only the packet id matters from here on (§4.3.3): release the message.
                self.uncharge(i.charged);
                i.charged = 0;
                i.stage = Stage::Released;
                if let (Some(log), Some(mid)) = (&self.log, i.delivery.stored) {
                    log.released(mid);
                }
                self.inflight.push_back(i);
                true
            }
            None => false,
        }
    }

    /// PUBCOMP: the QoS 2 exchange `pkid` is over.
    pub fn on_pubcomp(&mut self, pkid: u16) -> bool {
        match self.take_inflight(pkid, Stage::Released) {
            Some(i) => {
                self.record_done(&i);
                true
            }
            None => false,
        }
    }

    /// An incoming QoS 2 PUBLISH `pkid`: true if it is new and must be delivered, false for a
    /// retransmission of one not yet released (§4.3.3, method B: the id is stored until PUBREL).
    pub fn on_incoming_qos2(&mut self, pkid: u16) -> bool {
        if self.incoming_qos2.contains(&pkid) {
            return false;
        }
        self.incoming_qos2.push(pkid);
        true
    }

    /// PUBREL for the incoming QoS 2 message `pkid`: its id may be reused.
    pub fn on_pubrel(&mut self, pkid: u16) {
        self.incoming_qos2.retain(|id| *id != pkid);
    }

    /// What is in flight, oldest first: re-sent (PUBLISH with DUP, or PUBREL) when a persistent
    /// session resumes.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// Gives back the memory a burst (a fleet snapshot) left in an emptied queue.
    pub fn shrink_if_empty(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            self.pending = VecDeque::new();
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// A session's queue plus the means to wake the connection that drains it.
#[derive(Debug)]
pub struct Outbox {
    /// Unique per session, the key of its subscriptions in the filter tree (and the session's
    /// id in the state directory).
    pub id: u64,
    /// Whether its QoS 1/2 messages are recorded in the state directory.
    logged: bool,
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
    /// A new session's outbox, offline until a connection claims it ([`Outbox::claim`]).
    pub fn new(id: u64, budget: Arc<Budget>) -> Arc<Outbox> {
        Outbox::with_log(id, budget, None)
    }

    /// [`Outbox::new`] for a persistent session whose QoS 1/2 messages go to the state
    /// directory through `log`.
    pub(crate) fn with_log(id: u64, budget: Arc<Budget>, log: Option<SessionLog>) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            logged: log.is_some(),
            queue: Mutex::new(Queue::new(budget, log)),
            notify: Notify::new(),
            congested: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            drained: Notify::new(),
        })
    }

    /// Whether QoS 1/2 messages queued here need a stored body ([`Delivery::stored`]).
    pub fn is_logged(&self) -> bool {
        self.logged
    }

    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the broker would, so poisoning is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `conn` owns the session from now on (a takeover moves ownership, and the old
    /// connection's later calls are refused).
    pub fn claim(&self, conn: u64) {
        self.lock().owner = conn;
        // Publishers waiting for the previous connection need not wait for this one.
        self.drained_to(0);
    }

    /// Connection `conn` ended; the session is offline unless another connection owns it.
    pub fn release(&self, conn: u64) {
        let mut q = self.lock();
        if q.owner == conn {
            q.owner = 0;
        }
    }

    /// Queues `delivery` unless a bound says no or the session is offline and the delivery is
    /// QoS 0.
    pub fn push(&self, delivery: Delivery) -> Pushed {
        let congested;
        {
            let mut q = self.lock();
            match q.push_live(delivery) {
                Ok(()) => {}
                Err(Refused::Offline) => return Pushed::Dropped,
                Err(Refused::Full) => {
                    if q.dropped.is_power_of_two() {
                        tracing::warn!(
                            session = self.id,
                            dropped = q.dropped,
                            queued = q.pending.len(),
                            bytes = q.bytes,
                            "a client's queue is full: dropping messages for it"
                        );
                    }
                    return Pushed::Dropped;
                }
            }
            congested = q.is_online() && q.live >= SOFT_LIMIT && !self.slow.load(Ordering::Relaxed);
        }
        self.notify.notify_one();
        if congested {
            self.congested.store(true, Ordering::Release);
            Pushed::Congested
        } else {
            Pushed::Queued
        }
    }

    /// Queues retained messages answering a SUBSCRIBE at the subscription's `qos`. Returns how
    /// many a bound refused.
    pub fn push_retained<'m>(
        &self,
        messages: impl IntoIterator<Item = &'m Arc<Message>>,
        qos: QoS,
    ) -> usize {
        let mut refused = 0;
        {
            let mut q = self.lock();
            for m in messages {
                if q.push_retained(m, qos).is_err() {
                    refused += 1;
                }
            }
            if refused > 0 {
                tracing::warn!(
                    session = self.id,
                    refused,
                    "retained messages for a new subscription exceed the client's queue bounds: not sent"
                );
            }
        }
        self.notify.notify_one();
        refused
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
            if !self.congested.load(Ordering::Acquire) || !self.lock().is_online() {
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

#[cfg(test)]
mod test {
    use super::*;
    use bytes::Bytes;

    fn limits(max_messages: usize, max_bytes: usize, max_total: usize) -> Limits {
        Limits {
            max_queued_messages: max_messages,
            max_queued_bytes: max_bytes,
            max_queued_bytes_total: max_total,
            max_retained_per_subscription: 100,
            ..Limits::default()
        }
    }

    fn message(topic: &str, payload_len: usize, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(vec![b'x'; payload_len]),
            qos,
            retain: false,
        })
    }

    fn live(m: &Arc<Message>, qos: QoS) -> Delivery {
        Delivery {
            message: m.clone(),
            qos,
            retain: false,
            stored: None,
        }
    }

    fn online_outbox(budget: &Arc<Budget>) -> Arc<Outbox> {
        let o = Outbox::new(1, budget.clone());
        o.claim(7);
        o
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_zero() {
        let budget = Budget::new(&Limits::default());
        let o = online_outbox(&budget);
        let m = message("t", 0, QoS::AtLeastOnce);
        let mut q = o.lock();
        q.next_pkid = 65533;
        q.push_live(live(&m, QoS::AtLeastOnce)).unwrap();
        assert_eq!(q.next_to_send(10).unwrap().1, Some(65534));
        q.next_pkid = 65533;
        assert_eq!(q.next_pkid(), 65535, "65534 is in flight");
        assert_eq!(q.next_pkid(), 1, "0 is never used");
    }

    #[test]
    fn offline_sessions_keep_only_qos1_and_full_queues_drop() {
        let budget = Budget::new(&limits(2, 1 << 20, 1 << 20));
        let o = Outbox::new(1, budget.clone());
        let m = message("t", 0, QoS::AtLeastOnce);
        assert_eq!(o.push(live(&m, QoS::AtMostOnce)), Pushed::Dropped);
        assert_eq!(o.push(live(&m, QoS::AtLeastOnce)), Pushed::Queued);
        o.claim(3);
        assert_eq!(o.push(live(&m, QoS::AtMostOnce)), Pushed::Queued);
        assert_eq!(o.push(live(&m, QoS::AtMostOnce)), Pushed::Dropped);
        assert_eq!(
            o.lock().dropped(),
            1,
            "offline QoS 0 is not counted as a drop"
        );
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_queue_refuses_messages_beyond_its_byte_bound() {
        let budget = Budget::new(&limits(1000, 10_000, 1 << 30));
        let o = online_outbox(&budget);
        let big = message("t", 3000, QoS::AtMostOnce);
        for _ in 0..3 {
            assert_eq!(o.push(live(&big, QoS::AtMostOnce)), Pushed::Queued);
        }
        assert_eq!(o.push(live(&big, QoS::AtMostOnce)), Pushed::Dropped);
        assert_eq!(o.lock().bytes(), 3 * big.cost());
        assert_eq!(budget.total(), 3 * big.cost());
        // Sending one makes room for one.
        o.lock().next_to_send(10).unwrap();
        assert_eq!(o.push(live(&big, QoS::AtMostOnce)), Pushed::Queued);
    }

    #[test]
    fn the_total_bound_spares_each_online_clients_reserve() {
        let budget = Budget::new(&limits(100_000, 1 << 30, QUEUE_RESERVE + 1000));
        let hog = online_outbox(&budget);
        let m = message("t", 936, QoS::AtMostOnce); // 1000 bytes charged
        while hog.push(live(&m, QoS::AtMostOnce)) == Pushed::Queued {}
        let hogged = hog.lock().bytes();
        assert!(hogged <= QUEUE_RESERVE + 1000, "{hogged}");
        // Another client still gets its reserve although the total is spent...
        let other = online_outbox(&budget);
        for _ in 0..QUEUE_RESERVE / 1000 {
            assert_eq!(other.push(live(&m, QoS::AtMostOnce)), Pushed::Queued);
        }
        // ...but no more than that.
        assert_eq!(other.push(live(&m, QoS::AtMostOnce)), Pushed::Dropped);
        // An offline session has no reserve.
        let offline = Outbox::new(9, budget.clone());
        assert_eq!(offline.push(live(&m, QoS::AtLeastOnce)), Pushed::Dropped);
        // Dropping a session gives its bytes back.
        drop(hog);
        assert_eq!(offline.push(live(&m, QoS::AtLeastOnce)), Pushed::Queued);
    }

    #[test]
    fn a_retained_reference_whose_message_was_replaced_is_skipped() {
        let budget = Budget::new(&Limits::default());
        let o = online_outbox(&budget);
        let old = message("a", 10, QoS::AtLeastOnce);
        let kept = message("b", 10, QoS::AtLeastOnce);
        assert_eq!(o.push_retained([&old, &kept], QoS::AtMostOnce), 0);
        assert_eq!(o.lock().bytes(), 2 * RETAINED_REF_COST);
        drop(old); // the store replaced it; its successor went out live
        let mut q = o.lock();
        let (d, pkid) = q.next_to_send(10).unwrap();
        assert_eq!(&*d.message.topic, "b");
        assert!(d.retain && d.qos == QoS::AtMostOnce && pkid.is_none());
        assert!(q.next_to_send(10).is_none());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn retained_references_are_bounded_per_client() {
        let budget = Budget::new(&limits(10, 1 << 20, 1 << 30)); // 100 retained refs
        let o = online_outbox(&budget);
        let msgs: Vec<_> = (0..150)
            .map(|i| message(&format!("t/{i}"), 1, QoS::AtMostOnce))
            .collect();
        assert_eq!(o.push_retained(&msgs, QoS::AtMostOnce), 50);
        assert_eq!(o.lock().pending_len(), 100);
        // Live traffic has its own count.
        assert_eq!(o.push(live(&msgs[0], QoS::AtMostOnce)), Pushed::Queued);
    }

    #[test]
    fn puback_releases_the_message_and_its_bytes() {
        let budget = Budget::new(&Limits::default());
        let o = online_outbox(&budget);
        let m = message("t", 100, QoS::AtLeastOnce);
        let mut q = o.lock();
        q.push_live(live(&m, QoS::AtLeastOnce)).unwrap();
        let (_, pkid) = q.next_to_send(10).unwrap();
        let pkid = pkid.unwrap();
        assert_eq!(q.inflight_len(), 1);
        assert_eq!(q.bytes(), m.cost(), "in flight stays charged");
        assert!(!q.on_puback(pkid.wrapping_add(1)), "unknown id");
        assert!(q.on_puback(pkid));
        assert!(!q.on_puback(pkid), "acknowledged once");
        assert_eq!((q.inflight_len(), q.bytes(), budget.total()), (0, 0, 0));
    }

    #[test]
    fn pubrec_moves_a_qos2_message_to_released_and_pubcomp_ends_it() {
        let budget = Budget::new(&Limits::default());
        let o = online_outbox(&budget);
        let m = message("t", 100, QoS::ExactlyOnce);
        let mut q = o.lock();
        q.push_live(live(&m, QoS::ExactlyOnce)).unwrap();
        let pkid = q.next_to_send(10).unwrap().1.unwrap();
        assert!(!q.on_pubcomp(pkid), "PUBCOMP before PUBREC is ignored");
        assert!(q.on_pubrec(pkid));
        assert_eq!(q.bytes(), 0, "only the id is kept once received");
        assert_eq!(q.inflight().next().unwrap().stage, Stage::Released);
        assert!(
            !q.on_pubrec(pkid),
            "a second PUBREC finds nothing published"
        );
        assert!(q.on_pubcomp(pkid));
        assert_eq!(q.inflight_len(), 0);
    }

    #[test]
    fn a_duplicate_incoming_qos2_publish_is_delivered_once_until_released() {
        let budget = Budget::new(&Limits::default());
        let o = online_outbox(&budget);
        let mut q = o.lock();
        assert!(q.on_incoming_qos2(5));
        assert!(!q.on_incoming_qos2(5), "retransmission");
        assert!(q.on_incoming_qos2(6));
        q.on_pubrel(5);
        assert!(q.on_incoming_qos2(5), "a released id starts a new message");
    }

    #[test]
    fn a_full_inflight_window_holds_the_queue_in_order() {
        let budget = Budget::new(&Limits::default());
        let o = online_outbox(&budget);
        let m1 = message("one", 0, QoS::AtLeastOnce);
        let m0 = message("zero", 0, QoS::AtMostOnce);
        let mut q = o.lock();
        q.push_live(live(&m1, QoS::AtLeastOnce)).unwrap();
        q.push_live(live(&m1, QoS::AtLeastOnce)).unwrap();
        q.push_live(live(&m0, QoS::AtMostOnce)).unwrap();
        let first = q.next_to_send(1).unwrap().1.unwrap();
        assert!(q.next_to_send(1).is_none(), "window of one is full");
        q.on_puback(first);
        assert!(q.next_to_send(1).unwrap().1.is_some());
        q.on_puback(first.wrapping_add(1));
        assert_eq!(&*q.next_to_send(1).unwrap().0.message.topic, "zero");
    }

    #[test]
    fn only_the_owner_holds_the_session_online() {
        let budget = Budget::new(&Limits::default());
        let o = Outbox::new(1, budget);
        o.claim(1);
        o.claim(2); // takeover
        o.release(1); // the old connection ending does not take the new one offline
        assert_eq!(o.lock().owner(), 2);
        o.release(2);
        assert!(!o.lock().is_online());
    }

    #[tokio::test]
    async fn a_congested_queue_holds_publishers_until_it_drains_or_patience_runs_out() {
        let budget = Budget::new(&limits(usize::MAX, usize::MAX / 4, usize::MAX / 4));
        let o = online_outbox(&budget);
        let m = message("t", 0, QoS::AtMostOnce);
        for _ in 0..SOFT_LIMIT - 1 {
            assert_eq!(o.push(live(&m, QoS::AtMostOnce)), Pushed::Queued);
        }
        assert_eq!(o.push(live(&m, QoS::AtMostOnce)), Pushed::Congested);
        // Drained by "its connection" shortly: the waiter goes on, not slow.
        let o2 = o.clone();
        let drainer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            while o2.lock().next_to_send(10).is_some() {}
            o2.drained_to(0);
        });
        assert!(o.wait_uncongested().await);
        drainer.await.unwrap();
        // Nobody drains: after PATIENCE the client counts as slow and pushes stop congesting.
        for _ in 0..SOFT_LIMIT {
            o.push(live(&m, QoS::AtMostOnce));
        }
        assert!(!o.wait_uncongested().await);
        assert_eq!(o.push(live(&m, QoS::AtMostOnce)), Pushed::Queued);
    }
}
