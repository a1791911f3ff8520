//! The agent's backlog: the messages it holds because the broker cannot take them yet, while
//! disconnected or while rumqttc's request channel is full. (Not to be confused with the
//! broker engine's `Outbox`, which queues per client session on the broker's side.)
//!
//! The policy, in full:
//! - Events (not retained) are kept across disconnections, in order.
//! - Retained state (presence, outputs, inputs, sensors) is not kept while disconnected: the
//!   republish after the next CONNACK carries the latest of each, so an older copy would only
//!   overwrite it with stale news. What was queued before is dropped at that CONNACK for the same
//!   reason ([`Backlog::reconnect`]): retained state coalesces to the newest.
//! - At most [`BACKLOG_LIMIT`] messages are held; beyond that the oldest goes first.

use std::collections::VecDeque;

use crate::message::Message;

/// How many unsent messages are kept while the broker is away or slow; the oldest go first.
/// Retained state is not counted on: it is republished in full after every reconnect.
pub const BACKLOG_LIMIT: usize = 1024;

#[derive(Debug)]
pub struct Backlog {
    queue: VecDeque<Message>,
    limit: usize,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog::with_limit(BACKLOG_LIMIT)
    }
}

impl Backlog {
    /// A backlog that holds at most `limit` messages (at least one).
    pub fn with_limit(limit: usize) -> Backlog {
        Backlog {
            queue: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Queues `m` behind everything already waiting. While disconnected, retained state is
    /// dropped instead; at the limit, the oldest message makes room.
    pub fn push(&mut self, m: Message, connected: bool) {
        if !connected && m.retain {
            return;
        }
        if self.queue.len() >= self.limit {
            let dropped = self.queue.pop_front();
            tracing::warn!(
                "outbox full: dropped a message for {}",
                dropped.map(|d| d.topic).unwrap_or_default()
            );
        }
        self.queue.push_back(m);
    }

    /// After a CONNACK: `republish` (the full current state, in announcement order) goes first,
    /// then the events still waiting; retained messages queued before are superseded by it.
    pub fn reconnect(&mut self, republish: Vec<Message>) {
        self.queue.retain(|m| !m.retain);
        let mut fresh = VecDeque::from(republish);
        fresh.append(&mut self.queue);
        self.queue = fresh;
    }

    /// The next message to hand to the client.
    pub fn pop(&mut self) -> Option<Message> {
        self.queue.pop_front()
    }

    /// Gives back a message the client could not take, to go first next time.
    pub fn put_back(&mut self, m: Message) {
        self.queue.push_front(m);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// What is waiting, in sending order.
    pub fn iter(&self) -> impl Iterator<Item = &Message> {
        self.queue.iter()
    }
}

#[cfg(test)]
mod test {
    use rumqttc::QoS;

    use super::*;

    fn event(n: usize) -> Message {
        Message {
            topic: "pifleet/dev/k/event".into(),
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    fn state(topic: &str, on: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: format!("{{\"on\":{on}}}").into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: true,
        }
    }

    fn drain(b: &mut Backlog) -> Vec<Message> {
        std::iter::from_fn(|| b.pop()).collect()
    }

    #[test]
    fn offline_events_are_kept_in_order_and_retained_state_is_dropped() {
        let mut b = Backlog::default();
        b.push(event(1), false);
        b.push(state("pifleet/dev/k/out/led", true), false);
        b.push(event(2), false);
        assert_eq!(drain(&mut b), vec![event(1), event(2)]);
    }

    #[test]
    fn online_retained_state_waits_like_anything_else() {
        let mut b = Backlog::default();
        b.push(state("pifleet/dev/k/out/led", true), true);
        b.push(event(1), true);
        assert_eq!(
            drain(&mut b),
            vec![state("pifleet/dev/k/out/led", true), event(1)]
        );
    }

    #[test]
    fn the_backlog_is_bounded_and_drops_the_oldest_first() {
        let mut b = Backlog::default();
        for n in 0..BACKLOG_LIMIT + 3 {
            b.push(event(n), false);
        }
        assert_eq!(b.len(), BACKLOG_LIMIT);
        let kept = drain(&mut b);
        assert_eq!(kept.first(), Some(&event(3)));
        assert_eq!(kept.last(), Some(&event(BACKLOG_LIMIT + 2)));
    }

    #[test]
    fn a_reconnect_puts_the_republish_first_and_drops_stale_retained_state() {
        let mut b = Backlog::default();
        // Queued while connected but never taken (the client's channel was full)...
        b.push(state("pifleet/dev/k/out/led", false), true);
        b.push(event(1), true);
        // ...then offline.
        b.push(event(2), false);
        let republish = vec![
            state("pifleet/dev/k/status", true),
            state("pifleet/dev/k/out/led", true),
        ];
        b.reconnect(republish.clone());
        assert_eq!(
            drain(&mut b),
            [republish, vec![event(1), event(2)]].concat(),
            "the stale led state is coalesced into the republished one"
        );
    }

    #[test]
    fn a_message_given_back_goes_first() {
        let mut b = Backlog::default();
        b.push(event(1), true);
        b.push(event(2), true);
        let first = b.pop().unwrap();
        b.put_back(first);
        assert_eq!(drain(&mut b), vec![event(1), event(2)]);
    }
}
