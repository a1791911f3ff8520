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
//!   1.5 × the keep-alive its CONNECT asked for ([`grace_ms`]), counted from the restart (while
//!   the broker was down no client could show it was alive), and dropped when the client
//!   connects in time (its new CONNECT brings its own will, or none). The keep-alive sweeper
//!   ([`Engine::sweep`]) is the timer.
//!
//! A pending will stays in the store until it is settled, so a restart during its grace neither
//! loses it nor publishes it twice: the next start gives it a new grace. The will's topic was
//! checked against its publisher's rules at CONNECT ([`auth`](super::auth)), as for a will fired
//! while the broker runs; it is checked again only against today's topic bounds.

use std::collections::BTreeMap;

use super::packet::Will;
use super::store::RecoveredWill;
use super::tree::valid_topic;
use super::{Engine, Tables};

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
}

/// How long after a restart a client with this keep-alive (seconds) has to connect again before
/// its will is published.
pub(super) fn grace_ms(keep_alive: u16) -> u64 {
    let secs = match keep_alive {
        0 => DEFAULT_KEEP_ALIVE_SECS,
        k => u64::from(k),
    };
    (secs * 1500).min(MAX_GRACE_MS)
}

impl Engine {
    /// The will of `client_id`'s connection is over: published when `fire` (the connection
    /// ended without DISCONNECT), and in either case dropped from the store, after the publish
    /// so that a crash in between can repeat it but never lose it.
    pub(super) fn settle_will(
        &self,
        st: &mut Tables,
        client_id: &str,
        will: Option<Will>,
        fire: bool,
    ) {
        let Some(w) = will else { return };
        if fire {
            self.route(st, w.into_message(), 0, &mut Vec::new());
        }
        st.store.will_gone(client_id);
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
        for id in &due {
            let p = st.pending_wills.remove(id).expect("just listed");
            self.settle_will(st, id, Some(p.will), true);
        }
        tracing::info!(
            published = due.len(),
            left = st.pending_wills.len(),
            "last wills published: their clients did not connect again within 1.5 x keep-alive \
             of the restart"
        );
    }

    /// Makes the wills read at start pending, each due one grace from now. Returns how many
    /// were restored and how many were dropped (a topic beyond today's bounds).
    pub(super) fn restore_wills(
        &self,
        st: &mut Tables,
        wills: BTreeMap<Box<str>, RecoveredWill>,
    ) -> (usize, usize) {
        let now = self.now_ms();
        let (mut restored, mut dropped) = (0, 0);
        for (client_id, w) in wills {
            if !valid_topic(&w.will.topic) || !self.bounds.allows(&w.will.topic) {
                dropped += 1;
                continue;
            }
            st.pending_wills.insert(
                client_id,
                PendingWill {
                    due_ms: now + grace_ms(w.keep_alive),
                    will: w.will,
                    keep_alive: w.keep_alive,
                },
            );
            restored += 1;
        }
        (restored, dropped)
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
        assert_eq!(grace_ms(2), 3_000);
        assert_eq!(grace_ms(60), 90_000);
        assert_eq!(grace_ms(0), 90_000, "no keep-alive counts as 60 s");
        assert_eq!(grace_ms(400), MAX_GRACE_MS);
        assert_eq!(grace_ms(u16::MAX), MAX_GRACE_MS);
    }
}
