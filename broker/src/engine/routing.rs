//! Routing: a PUBLISH to every matching subscription (one copy per session), the retained store
//! with its bounds, and SUBSCRIBE/UNSUBSCRIBE (answered with the matching retained messages,
//! queued under the same lock so a live message can never overtake them). Commands are never
//! retained: a stored command would switch a device again on every reconnect. Each change to
//! the retained store or to a persistent session's subscriptions is recorded in the
//! [`store`](super::store), and a QoS 1/2 message for persistent sessions has its body stored
//! once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::counters::bump;
use super::outbox::{Delivery, Outbox, Pushed};
use super::packet::{Message, QoS};
use super::{Engine, Tables};

pub(super) struct Subscription {
    pub(super) outbox: Arc<Outbox>,
    pub(super) qos: QoS,
}

/// What a retained message is charged per topic level: its trie node.
const RETAINED_NODE_COST: usize = 64;

/// Bytes the retained store is charged for `m`.
pub(super) fn retained_cost(m: &Message) -> usize {
    m.cost() + RETAINED_NODE_COST * (1 + m.topic.bytes().filter(|&b| b == b'/').count())
}

/// Why [`Engine::subscribe`] refused a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeRefused {
    /// The connection no longer owns the session (taken over).
    NotOwner,
    /// `max_subscriptions_per_client`.
    TooMany,
}

impl Engine {
    /// Routes a message to every matching subscription and updates the retained store.
    /// Subscribers (other than `from`) whose queues are congested are added to `congested`, so
    /// the publishing connection can wait for them before reading more. Returns whether the
    /// message was queued for a session other than `from`.
    pub(crate) fn publish(
        &self,
        message: Message,
        from: u64,
        congested: &mut Vec<Arc<Outbox>>,
    ) -> bool {
        let mut st = self.state();
        self.route(&mut st, message, from, congested)
    }

    pub(super) fn route(
        &self,
        st: &mut Tables,
        mut message: Message,
        from: u64,
        congested: &mut Vec<Arc<Outbox>>,
    ) -> bool {
        if message.retain && self.topics.is_command_space(&message.topic) {
            // A stored command would switch the device again on every reconnect.
            message.retain = false;
            if bump(&self.counters.retained_commands_refused) {
                tracing::warn!(topic = %message.topic, "retained command: delivered, not stored (commands are never retained)");
            }
        }
        let message = Arc::new(message);
        if message.retain {
            self.retain(st, &message);
        }
        // One copy per session however many of its filters match, at the highest QoS granted
        // (what MQTT 5 requires and 3.1.1 allows): overlapping filters cannot multiply a
        // publish.
        let Tables {
            subscriptions,
            store,
            ..
        } = st;
        let mut hits: Vec<(u64, QoS, &Arc<Outbox>)> = Vec::new();
        subscriptions.for_each_match(&message.topic, |id, sub| {
            hits.push((id, sub.qos, &sub.outbox));
        });
        if hits.len() > 1 {
            hits.sort_unstable_by_key(|h| h.0);
            hits.dedup_by(|later, first| {
                if later.0 == first.0 {
                    first.1 = first.1.max(later.1);
                    true
                } else {
                    false
                }
            });
        }
        // A QoS 1/2 message for persistent sessions is stored once, however many it reaches.
        let mut stored = None;
        let mut forwarded = false;
        for (id, qos, outbox) in hits {
            let qos = message.qos.min(qos);
            let stored = match qos != QoS::AtMostOnce && outbox.is_logged() {
                true => *stored.get_or_insert_with(|| store.message(&message)),
                false => None,
            };
            let pushed = outbox.push(Delivery {
                message: message.clone(),
                qos,
                retain: false,
                stored,
            });
            forwarded |= pushed != Pushed::Dropped && id != from;
            // A client's own subscription never holds it back: it drains its own queue.
            if pushed == Pushed::Congested && id != from && !congested.iter().any(|o| o.id == id) {
                congested.push(outbox.clone());
            }
        }
        forwarded
    }

    /// Updates the retained store for `message`, within `max_retained_messages` and
    /// `max_retained_bytes` (a message that does not fit is delivered but not stored).
    pub(super) fn retain(&self, st: &mut Tables, message: &Arc<Message>) {
        if message.payload.is_empty() {
            if let Some(old) = st.retained.set(&message.topic, None) {
                st.retained_bytes -= retained_cost(&old);
                st.store.unretained(&message.topic);
            }
            return;
        }
        let old = st.retained.get(&message.topic).map(|m| retained_cost(m));
        let bytes = st.retained_bytes - old.unwrap_or(0) + retained_cost(message);
        let full = old.is_none() && st.retained.len() >= self.limits.max_retained_messages;
        if full || bytes > self.limits.max_retained_bytes {
            if bump(&self.counters.retained_refused) {
                tracing::warn!(
                    topic = %message.topic,
                    stored = st.retained.len(),
                    bytes = st.retained_bytes,
                    refused = self.counters.retained_refused.load(Ordering::Relaxed),
                    "retained store full (limits.max_retained_messages/max_retained_bytes): delivered, not stored"
                );
            }
            return;
        }
        st.retained.set(&message.topic, Some(message.clone()));
        st.retained_bytes = bytes;
        st.store.retained(message);
    }

    /// Adds (or replaces) connection `conn`'s subscription to `filter` and queues the retained
    /// messages it matches, under the same lock: a live publish that follows can only be queued
    /// after them, so a subscriber never sees a stale retained value after a newer one.
    pub(crate) fn subscribe(
        &self,
        client_id: &str,
        conn: u64,
        filter: &str,
        qos: QoS,
    ) -> Result<(), SubscribeRefused> {
        let mut st = self.state();
        let Tables {
            sessions,
            subscriptions,
            retained,
            store,
            ..
        } = &mut *st;
        let Some(entry) = sessions
            .get_mut(client_id)
            .filter(|e| e.attached.as_ref().is_some_and(|a| a.conn == conn))
        else {
            return Err(SubscribeRefused::NotOwner);
        };
        let known = entry.filters.iter().any(|f| &**f == filter);
        if !known {
            if entry.filters.len() >= self.limits.max_subscriptions_per_client {
                if bump(&self.counters.subscriptions_refused) {
                    tracing::warn!(client = client_id, %filter, "subscription refused: limits.max_subscriptions_per_client reached");
                }
                return Err(SubscribeRefused::TooMany);
            }
            entry.filters.push(filter.into());
        }
        let outbox = entry.outbox.clone();
        subscriptions.insert(
            filter,
            outbox.id,
            Subscription {
                outbox: outbox.clone(),
                qos,
            },
        );
        if entry.persistent {
            store.subscribed(outbox.id, filter, qos);
        }
        let mut found = Vec::new();
        retained.matching(
            filter,
            self.limits.max_retained_per_subscription,
            &mut found,
        );
        if found.len() >= self.limits.max_retained_per_subscription
            && bump(&self.counters.retained_truncated)
        {
            tracing::warn!(client = client_id, %filter, sent = found.len(), "retained messages for a subscription beyond limits.max_retained_per_subscription: the rest are dropped, not sent");
        }
        if !found.is_empty() {
            outbox.push_retained(&found, qos);
        }
        Ok(())
    }

    /// Removes connection `conn`'s subscription to `filter` (if it still owns the session).
    pub(crate) fn unsubscribe(&self, client_id: &str, conn: u64, filter: &str) {
        let mut st = self.state();
        let Tables {
            sessions,
            subscriptions,
            store,
            ..
        } = &mut *st;
        let Some(entry) = sessions
            .get_mut(client_id)
            .filter(|e| e.attached.as_ref().is_some_and(|a| a.conn == conn))
        else {
            return;
        };
        if subscriptions.remove(filter, entry.outbox.id).is_some() {
            entry.filters.retain(|f| &**f != filter);
            if entry.persistent {
                store.unsubscribed(entry.outbox.id, filter);
            }
        }
    }
}
