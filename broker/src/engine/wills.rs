//! Last wills across a broker restart. MQTT 3.1.1 §3.1.2.5 publishes a connection's will when
//! the connection ends without DISCONNECT, and §3.1.2.10 counts a client silent for 1.5 × its
//! keep-alive as gone. A crash of the broker ends every connection that way, but the process
//! that should publish the wills is the one that died, so:
//!
//! - every live connection's will is in the [`store`](super::store) (clean and persistent
//!   sessions alike): recorded at CONNECT, and settled (published or discarded) where the
//!   registry ends a connection: DISCONNECT, a lost connection, a takeover, a revoked login;
//! - at start the wills read back are *pending* ([`Tables::pending_wills`]): each is published
//!   through the normal routing once its client id has not connected again within its grace,
//!   1.5 × the keep-alive its CONNECT asked for but at least `[state] will_grace_secs`
//!   ([`grace_ms`]), counted from the first start that found it (while the broker was down no
//!   client could show it was alive), and dropped when the client connects in time (its new
//!   CONNECT brings its own will, or none). The keep-alive sweeper ([`Engine::sweep`]) is the
//!   timer.
//!
//! A pending will stays in the store until it is settled, so a restart during its grace neither
//! loses it nor publishes it twice; its deadline (wall clock) is stored with it, so a crash loop
//! does not postpone it either. At most `max_sessions` wills are restored.
//!
//! Whose a will is, is stored with it ([`OwnedWill`]): a will is published, at runtime or after
//! a restart, only while its owner may still publish to its topic ([`Engine::will_fate`]):
//! the identity still exists with the same role and today's rules allow the topic, an anonymous
//! client's only while the broker requires no login. So an identity removed while the broker
//! was down, or revoked by a reload, cannot have a command it left behind published.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::packet::{Message, QoS, Will};
use super::registry::Owner;
use super::store::record::{Record, WillOwner};
use super::store::RecoveredWill;
use super::tree::valid_topic;
use super::{lock, Engine, Principal, Tables};
use crate::credentials::Role;

/// The keep-alive a grace is counted from for a CONNECT that asked for none (0, "no
/// keep-alive"): such a client gives no hint of how soon it would be back.
pub(super) const DEFAULT_KEEP_ALIVE_SECS: u64 = 60;

/// The longest grace: a client with an hour-long keep-alive would otherwise show online for 90
/// minutes after a restart, while a client that reconnects at all is back within seconds.
pub(super) const MAX_GRACE_MS: u64 = 10 * 60 * 1000;

/// A will read back at start, published at `due_ms` ([`Engine::now_ms`]) unless its client id
/// connects first.
#[derive(Debug)]
pub(super) struct PendingWill {
    pub(super) will: Will,
    pub(super) keep_alive: u16,
    pub(super) due_ms: u64,
    /// `None`: anonymous.
    pub(super) owner: Option<Owner>,
    pub(super) in_process: bool,
    /// `due_ms` on the wall clock (Unix ms), stored so a restart does not extend it.
    pub(super) deadline: u64,
}

/// A will as the store records it: with its client id, its owner and (once pending) its
/// deadline.
#[derive(Debug, Clone)]
pub(super) struct OwnedWill {
    pub(super) client_id: Box<str>,
    pub(super) keep_alive: u16,
    pub(super) will: Will,
    pub(super) owner: Option<Owner>,
    pub(super) in_process: bool,
    /// Unix ms, 0 for a live connection's.
    pub(super) deadline: u64,
}

impl OwnedWill {
    pub(super) fn record(&self) -> Record<'_> {
        let owner = match (&self.owner, self.in_process) {
            (None, _) => WillOwner::Anonymous,
            (Some(o), false) => WillOwner::Login(o.role, &o.name),
            (Some(o), true) => WillOwner::InProcess(o.role, &o.name),
        };
        Record::Will {
            client_id: &self.client_id,
            keep_alive: self.keep_alive,
            owner,
            deadline: self.deadline,
            topic: &self.will.topic,
            qos: self.will.qos,
            retain: self.will.retain,
            payload: &self.will.payload,
        }
    }
}

/// How long after a restart a client with this keep-alive (seconds) has to connect again before
/// its will is published: 1.5 x the keep-alive, at least `floor_secs`, at most [`MAX_GRACE_MS`].
pub(super) fn grace_ms(keep_alive: u16, floor_secs: u64) -> u64 {
    let secs = match keep_alive {
        0 => DEFAULT_KEEP_ALIVE_SECS,
        k => u64::from(k),
    };
    (secs * 1500)
        .max(floor_secs.saturating_mul(1000))
        .min(MAX_GRACE_MS)
}

/// What [`Engine::restore_wills`] did with the wills read back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct WillsRestored {
    pub(super) restored: usize,
    /// The owner is gone, changed role or may no longer publish the topic, or it was anonymous
    /// and the broker now requires logins.
    pub(super) untrusted: usize,
    /// Beyond today's topic bounds.
    pub(super) out_of_bounds: usize,
    /// Beyond `max_sessions` pending wills.
    pub(super) over_limit: usize,
}

impl WillsRestored {
    pub(super) fn dropped(&self) -> usize {
        self.untrusted + self.out_of_bounds + self.over_limit
    }
}

/// Whether a will is to be published when its connection is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fire {
    /// Ended with DISCONNECT: dropped.
    No,
    /// Ended without DISCONNECT (or its grace after a restart is over).
    Yes,
    /// Its login was revoked: nothing of its own is published ([`Engine::will_fate`]).
    Untrusted,
}

/// What [`Engine::will_fate`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WillFate {
    AsSent,
    /// The broker's standard offline presence on the device's presence topic instead.
    Offline,
    Dropped,
}

/// Whether `topic` is device `name`'s presence topic under `prefix`.
fn own_presence(prefix: &str, name: &str, topic: &str) -> bool {
    match (
        pifleet_proto::Topics::new(prefix),
        pifleet_proto::Name::new(name),
    ) {
        (Ok(topics), Ok(name)) => topics.status(&name) == topic,
        _ => false,
    }
}

impl Engine {
    /// What becomes of a will of `owner` (`None`: anonymous) on `topic` now. Published as
    /// sent when its identity still exists with the same role (in process or in the
    /// credentials file), may publish to `topic` under the rules in force and is `trusted` (its
    /// login not revoked: a reload that revokes it passes false); an anonymous client's only
    /// while the broker requires no login. An identity that is gone or no longer trusted
    /// publishes nothing of its own: for a device whose will was on its own presence topic, the
    /// broker publishes the standard offline presence there instead ([`WillFate::Offline`]),
    /// which only says what is true (the device is gone), so the fleet does not show it online
    /// forever, whatever the device had put in its will.
    pub(super) fn will_fate(&self, owner: Option<&Owner>, topic: &str, trusted: bool) -> WillFate {
        let access = self.access();
        let Some(o) = owner else {
            return match access.credentials.is_none() {
                true => WillFate::AsSent,
                false => WillFate::Dropped,
            };
        };
        let untrusted = || {
            let own = o.role == Role::Device
                && access
                    .files
                    .as_ref()
                    .is_some_and(|f| own_presence(&f.prefix, &o.name, topic));
            match own {
                true => WillFate::Offline,
                false => WillFate::Dropped,
            }
        };
        if !trusted {
            return untrusted();
        }
        let in_process = lock(&self.internal).get(&*o.name).map(|(_, i)| i.clone());
        let who = match (in_process, &access.credentials) {
            (Some(i), _) if i.role == o.role => i,
            (Some(_), _) => return WillFate::Dropped,
            // No logins any more: everything is allowed, as for any client.
            (None, None) => return WillFate::AsSent,
            (None, Some(c)) => match c.identity(&o.name) {
                Some(now) if now.role == o.role => now,
                _ => return untrusted(),
            },
        };
        match access.may_publish(&Principal::Identity(who), topic) {
            true => WillFate::AsSent,
            false => WillFate::Dropped,
        }
    }

    /// `will` as the store records it. An in-process owner is marked so: such identities are
    /// registered again only after a restore, so their wills are checked when due.
    pub(super) fn owned_will(
        &self,
        client_id: &str,
        keep_alive: u16,
        will: Will,
        owner: Option<Owner>,
    ) -> OwnedWill {
        let in_process = owner.as_ref().is_some_and(|o| {
            lock(&self.internal)
                .get(&*o.name)
                .is_some_and(|(_, i)| i.role == o.role)
        });
        OwnedWill {
            client_id: client_id.into(),
            keep_alive,
            will,
            owner,
            in_process,
            deadline: 0,
        }
    }

    /// The will of `client_id`'s connection is over: published when `fire` (the connection
    /// ended without DISCONNECT) and its owner may still publish it ([`Engine::will_fate`]),
    /// and in either case dropped from the store, after the publish so that a crash in between
    /// can repeat it but never lose it. Returns whether it was published.
    pub(super) fn settle_will(
        &self,
        st: &mut Tables,
        client_id: &str,
        will: Option<Will>,
        owner: Option<&Owner>,
        fire: Fire,
    ) -> bool {
        let Some(w) = will else { return false };
        let fate = match fire {
            Fire::No => WillFate::Dropped,
            Fire::Yes => self.will_fate(owner, &w.topic, true),
            Fire::Untrusted => self.will_fate(owner, &w.topic, false),
        };
        let published = !matches!(fate, WillFate::Dropped);
        match fate {
            WillFate::AsSent => {
                self.route(st, w.into_message(), 0, &mut Vec::new());
            }
            WillFate::Offline => {
                let offline = Message {
                    topic: w.topic.into(),
                    payload: serde_json::to_vec(&pifleet_proto::Presence::will())
                        .expect("serializable")
                        .into(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                };
                self.route(st, offline, 0, &mut Vec::new());
            }
            WillFate::Dropped if !matches!(fire, Fire::No) => {
                tracing::info!(
                    client = client_id,
                    user = owner.map_or("", |o| &*o.name),
                    topic = %w.topic,
                    "last will not published: its identity is gone, changed role, was revoked or may no longer \
                     publish to the topic"
                );
            }
            WillFate::Dropped => {}
        }
        st.store.will_gone(client_id);
        published
    }

    /// Publishes the pending wills whose grace ended by `now` ([`Engine::now_ms`]).
    pub(super) fn fire_due_wills(&self, st: &mut Tables, now: u64) {
        if st.pending_wills.is_empty() {
            return;
        }
        let mut due: Vec<Box<str>> = st
            .pending_wills
            .iter()
            .filter(|(_, p)| p.due_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_unstable();
        let mut published = 0;
        for id in &due {
            let p = st.pending_wills.remove(id).expect("just listed");
            if self.settle_will(st, id, Some(p.will), p.owner.as_ref(), Fire::Yes) {
                published += 1;
            }
        }
        tracing::info!(
            published,
            not_allowed = due.len() - published,
            left = st.pending_wills.len(),
            "last wills due: their clients did not connect again within the grace of the restart"
        );
    }

    /// Makes the wills read at start pending, each due at its stored deadline, or one grace
    /// from now if it has none (never later than one grace from now, should the wall clock
    /// have gone back). Drops, and logs in one line, those beyond today's bounds, those whose
    /// owner may no longer publish them, and those beyond `max_sessions`.
    pub(super) fn restore_wills(
        &self,
        st: &mut Tables,
        wills: BTreeMap<Box<str>, RecoveredWill>,
        floor_secs: u64,
    ) -> WillsRestored {
        let (now, unix) = (self.now_ms(), super::store::unix_ms());
        let mut done = WillsRestored::default();
        let mut wills: Vec<_> = wills.into_iter().collect();
        // Those nearest their deadline first (0: found pending for the first time, last).
        wills.sort_by_key(|(_, w)| w.deadline.wrapping_sub(1));
        for (client_id, w) in wills {
            // `auto-<connection id>` ids are made up for an empty client id: this run's
            // connection ids start above theirs, so a new client never takes one over.
            if let Some(n) = client_id
                .strip_prefix("auto-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                // Only ids this broker could have made (a client may pick `auto-<huge>` itself):
                // far below the counter's end, so it never wraps into the session ids.
                if n < 1 << 48 {
                    self.next_id.fetch_max(n + 1, Ordering::Relaxed);
                }
            }
            if !valid_topic(&w.will.topic) || !self.bounds.allows(&w.will.topic) {
                done.out_of_bounds += 1;
                continue;
            }
            let owner = w.owner.map(|(role, name)| Owner { name, role });
            if !w.in_process
                && matches!(
                    self.will_fate(owner.as_ref(), &w.will.topic, true),
                    WillFate::Dropped
                )
            {
                done.untrusted += 1;
                continue;
            }
            if st.pending_wills.len() >= self.limits.max_sessions {
                done.over_limit += 1;
                continue;
            }
            let grace = grace_ms(w.keep_alive, floor_secs);
            // Never later than one grace from now: a clock that was far ahead when the
            // deadline was set must not give every later start a fresh grace.
            let deadline = match w.deadline {
                0 => unix + grace,
                d => d.min(unix + grace),
            };
            st.pending_wills.insert(
                client_id,
                PendingWill {
                    due_ms: now + deadline.saturating_sub(unix).min(grace),
                    will: w.will,
                    keep_alive: w.keep_alive,
                    owner,
                    in_process: w.in_process,
                    deadline,
                },
            );
            done.restored += 1;
        }
        if done.dropped() > 0 {
            tracing::warn!(
                untrusted = done.untrusted,
                out_of_bounds = done.out_of_bounds,
                over_limit = done.over_limit,
                "state: last wills dropped: their identity is gone, changed role or may no \
                 longer publish to the topic (or they are anonymous and logins are now \
                 required), the topic is beyond today's bounds, or more than max_sessions were \
                 pending"
            );
        }
        done
    }
}

impl Tables {
    /// `client_id` connected again: the will pending from before the restart is not due (the
    /// new connection brings its own).
    pub(super) fn drop_pending_will(&mut self, client_id: &str) {
        if self.pending_wills.remove(client_id).is_some() {
            self.store.will_gone(client_id);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_grace_is_one_and_a_half_keep_alives_with_a_default_and_a_cap() {
        assert_eq!(grace_ms(2, 0), 3_000);
        assert_eq!(grace_ms(60, 0), 90_000);
        assert_eq!(grace_ms(0, 0), 90_000, "no keep-alive counts as 60 s");
        assert_eq!(grace_ms(400, 0), MAX_GRACE_MS);
        assert_eq!(grace_ms(u16::MAX, 0), MAX_GRACE_MS);
    }

    #[test]
    fn the_grace_is_at_least_the_floor_and_still_at_most_the_cap() {
        assert_eq!(grace_ms(10, 60), 60_000, "an agent's 10 s keep-alive");
        assert_eq!(grace_ms(60, 60), 90_000, "1.5 x keep-alive when longer");
        assert_eq!(grace_ms(10, 600), MAX_GRACE_MS);
        assert_eq!(grace_ms(10, u64::MAX), MAX_GRACE_MS);
    }
}
