//! The session registry: which client ids have a session, whose they are, which connection is
//! attached to each, and when offline ones expire. Attaching handles takeover (the old
//! connection is kicked and its will fires before the new CONNACK), resumption (only by the
//! identity that created the session, with its subscriptions checked again) and the session
//! bounds (`max_sessions`, `max_sessions_per_identity`, `session_expiry_secs`).
//!
//! Every change to a persistent [`SessionEntry`] happens in [`Engine::attach`],
//! [`Engine::detach`], [`Tables::discard`], [`Tables::drop_filters`] and the routing module's
//! subscribe/unsubscribe, all
//! under the one state lock, and each is recorded there in the [`store`](super::store): created,
//! online, offline, discarded (expired, evicted, replaced). So is each connection's last will:
//! set by `attach`, settled (published or discarded) wherever a connection ends
//! ([`super::wills`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::counters::bump;
use super::outbox::Outbox;
use super::packet::{ConnectCode, Will};
use super::wills::Fire;
use super::{Engine, Principal, Tables};
use crate::credentials::Role;

/// Whose a session is: the identity that created it (`None` when authentication is off). A
/// persistent session is resumed only by the same identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) name: Box<str>,
    pub(super) role: Role,
}

impl Principal {
    pub(super) fn owner(&self) -> Option<Owner> {
        match self {
            Principal::Anonymous => None,
            Principal::Identity(i) => Some(Owner {
                name: i.name.as_str().into(),
                role: i.role,
            }),
        }
    }
}

pub(super) struct SessionEntry {
    pub(super) outbox: Arc<Outbox>,
    pub(super) filters: Vec<Box<str>>,
    /// `clean_session = false`: keep subscriptions and QoS 1/2 messages while offline.
    pub(super) persistent: bool,
    pub(super) attached: Option<Attached>,
    pub(super) owner: Option<Owner>,
    /// When the last connection ended ([`Engine::now_ms`]), for `session_expiry_secs`.
    pub(super) offline_since_ms: u64,
}

pub(super) struct Attached {
    pub(super) conn: u64,
    pub(super) will: Option<Will>,
    pub(super) link: Arc<Link>,
    /// 1.5 × the client's keep-alive in milliseconds (0: no keep-alive).
    pub(super) grace_ms: u64,
    /// The keep-alive in seconds, as its CONNECT asked (stored with the will).
    pub(super) keep_alive: u16,
}

/// What the engine and a connection task share: the way to close it (takeover, keep-alive
/// expiry) and when it was last heard from. One sweeper task checks every connection's
/// keep-alive a few times a second; a timer per connection would cost each of ten thousand
/// idle devices a few hundred bytes and a timer-wheel entry re-armed on every packet.
#[derive(Debug, Default)]
pub(crate) struct Link {
    pub kick: Notify,
    /// Milliseconds since the engine started.
    pub last_heard: AtomicU64,
    /// Set with a kick when the keep-alive expired (rather than a takeover).
    pub expired: std::sync::atomic::AtomicBool,
    /// Set with a kick when another connection took the client id: the connection stops
    /// before handling another packet it has already buffered.
    pub taken_over: std::sync::atomic::AtomicBool,
    /// Set with `taken_over` when a reload revoked the identity's login (see `reload`).
    pub revoked: std::sync::atomic::AtomicBool,
}

/// How often the sweeper checks keep-alives: a silent client is dropped between 1.5 × and
/// 1.5 × keep-alive + this.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Offline sessions are checked for expiry every this many sweeps (about once a second).
const EXPIRE_EVERY_SWEEPS: u32 = 4;

/// What [`Engine::attach`] hands a new connection.
pub(crate) struct Attachment {
    pub outbox: Arc<Outbox>,
    pub session_present: bool,
    pub link: Arc<Link>,
}

impl Engine {
    /// Runs [`Engine::sweep`] a few times a second.
    pub(super) async fn sweep_keep_alives(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweeps = 0u32;
        loop {
            tick.tick().await;
            sweeps = sweeps.wrapping_add(1);
            self.sweep(self.now_ms(), sweeps.is_multiple_of(EXPIRE_EVERY_SWEEPS));
        }
    }

    /// Closes connections silent for longer than 1.5 × their keep-alive (§3.1.2.10); their
    /// tasks then fire the last will as for any lost connection. Publishes the wills pending
    /// from before a restart whose grace is over. With `expire`, also forgets offline sessions
    /// older than `session_expiry_secs`. `now` is [`Engine::now_ms`].
    pub(super) fn sweep(&self, now: u64, expire: bool) {
        let expiry_ms = self.limits.session_expiry_secs.saturating_mul(1000);
        let mut st = self.state();
        let mut expired = Vec::new();
        for (id, entry) in &st.sessions {
            match &entry.attached {
                Some(a) => {
                    let heard = a.link.last_heard.load(Ordering::Relaxed);
                    if a.grace_ms > 0
                        && now.saturating_sub(heard) >= a.grace_ms
                        && !a.link.expired.swap(true, Ordering::Relaxed)
                    {
                        a.link.kick.notify_one();
                    }
                }
                None if expire && now.saturating_sub(entry.offline_since_ms) >= expiry_ms => {
                    expired.push(id.clone());
                }
                None => {}
            }
        }
        self.fire_due_wills(&mut st, now);
        for id in expired {
            st.discard(&id);
            if bump(&self.counters.sessions_expired) {
                tracing::info!(
                    client = %id,
                    expired = self.counters.sessions_expired.load(Ordering::Relaxed),
                    "offline session expired (limits.session_expiry_secs)"
                );
            }
        }
    }

    /// Attaches connection `conn` of `who` to `client_id`'s session, taking over from a
    /// connection that holds it (whose last will fires first, before this connection's
    /// CONNACK). A persistent session is resumed only by the identity that created it, and its
    /// subscriptions are checked again against what that identity may read now. Refused with
    /// CONNACK 3 when a new session would pass `max_sessions` or `max_sessions_per_identity`
    /// (the identity's oldest offline session makes room first).
    pub(crate) fn attach(
        &self,
        client_id: &str,
        clean_session: bool,
        will: Option<Will>,
        keep_alive: Duration,
        conn: u64,
        who: &Principal,
    ) -> Result<Attachment, ConnectCode> {
        let mut st = self.state();
        let owner = who.owner();
        let (mut old_will, mut old_owner) = (None, None);
        if let Some(entry) = st.sessions.get_mut(client_id) {
            if let Some(old) = entry.attached.take() {
                if let Some(held_back) = self.log_takeovers.admit(self.now_ms()) {
                    tracing::info!(
                        client = client_id,
                        held_back,
                        "client id taken over by a new connection"
                    );
                }
                old_will = old.will;
                old_owner = entry.owner.clone();
                entry.outbox.release(old.conn);
                old.link.taken_over.store(true, Ordering::Release);
                old.link.kick.notify_one();
            }
        }
        self.settle_will(&mut st, client_id, old_will, old_owner.as_ref(), Fire::Yes);
        let existing = st.sessions.get(client_id);
        let resume = !clean_session && existing.is_some_and(|e| e.persistent && e.owner == owner);
        if !clean_session && !resume && existing.is_some_and(|e| e.persistent) {
            bump(&self.counters.sessions_not_resumed);
            tracing::warn!(
                client = client_id,
                "persistent session belongs to another identity: starting a new one"
            );
        }
        if !resume {
            st.discard(client_id);
            self.admit_session(&mut st, owner.as_ref(), client_id)?;
            let id = self.id();
            let outbox = match clean_session {
                true => Outbox::new(id, self.budget.clone()),
                false => {
                    st.store.session_created(id, client_id, owner.as_ref());
                    Outbox::with_log(id, self.budget.clone(), st.store.session_log(id))
                }
            };
            if let Some(o) = &owner {
                st.by_identity
                    .entry(o.name.clone())
                    .or_default()
                    .push(client_id.into());
            }
            st.sessions.insert(
                client_id.into(),
                SessionEntry {
                    outbox,
                    filters: Vec::new(),
                    persistent: !clean_session,
                    attached: None,
                    owner,
                    offline_since_ms: 0,
                },
            );
        }
        if resume {
            // Rules may have changed since (a device's groups, an ACL file).
            let dropped = st.drop_filters(client_id, |f| self.may_subscribe(who, f));
            for f in &dropped {
                tracing::warn!(client = client_id, filter = %f, "resumed session: subscription no longer allowed, dropped");
            }
            if !dropped.is_empty() {
                bump(&self.counters.subscriptions_refused);
            }
        }
        // Back in time after a restart: the will from before it is not due. Dropped before the
        // new one is recorded, as both are the client id's.
        st.drop_pending_will(client_id);
        let keep_alive_secs = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
        if let Some(w) = &will {
            let owned = self.owned_will(client_id, keep_alive_secs, w.clone(), who.owner());
            st.store.will(&owned);
        }
        let Tables {
            sessions, store, ..
        } = &mut *st;
        let entry = sessions.get_mut(client_id).expect("just ensured");
        let link = Arc::new(Link::default());
        link.last_heard.store(self.now_ms(), Ordering::Relaxed);
        entry.attached = Some(Attached {
            conn,
            will,
            link: link.clone(),
            grace_ms: keep_alive.as_millis() as u64 * 3 / 2,
            keep_alive: keep_alive_secs,
        });
        entry.offline_since_ms = 0;
        if entry.persistent {
            store.online(entry.outbox.id);
        }
        entry.outbox.claim(conn);
        Ok(Attachment {
            outbox: entry.outbox.clone(),
            session_present: resume,
            link,
        })
    }

    /// Makes room for a new session of `owner`, or says CONNACK 3.
    fn admit_session(
        &self,
        st: &mut Tables,
        owner: Option<&Owner>,
        client_id: &str,
    ) -> Result<(), ConnectCode> {
        if let Some(o) = owner {
            let ids = st.by_identity.get(&o.name).map_or(&[][..], |v| &v[..]);
            if ids.len() >= self.limits.max_sessions_per_identity {
                let oldest = ids
                    .iter()
                    .filter_map(|id| st.sessions.get(id).map(|e| (id, e)))
                    .filter(|(_, e)| e.attached.is_none())
                    .min_by_key(|(_, e)| e.offline_since_ms)
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(id) => {
                        st.discard(&id);
                        if bump(&self.counters.sessions_evicted) {
                            tracing::info!(user = %o.name, client = %id, "offline session replaced by a new one (limits.max_sessions_per_identity)");
                        }
                    }
                    None => {
                        if bump(&self.counters.sessions_refused) {
                            tracing::warn!(user = %o.name, client = client_id, "refused: the identity holds limits.max_sessions_per_identity connected sessions");
                        }
                        return Err(ConnectCode::ServerUnavailable);
                    }
                }
            }
        }
        if st.sessions.len() >= self.limits.max_sessions {
            if bump(&self.counters.sessions_refused) {
                tracing::warn!(
                    client = client_id,
                    sessions = st.sessions.len(),
                    "refused: limits.max_sessions reached"
                );
            }
            return Err(ConnectCode::ServerUnavailable);
        }
        Ok(())
    }

    /// The connection `conn` of `client_id` ended. Fires the last will unless the client said
    /// DISCONNECT, and ends a clean session. Does nothing if the session was taken over.
    pub(crate) fn detach(&self, client_id: &str, conn: u64, graceful: bool) {
        let mut st = self.state();
        let now = self.now_ms();
        let Some(entry) = st.sessions.get_mut(client_id) else {
            return;
        };
        if entry.attached.as_ref().map(|a| a.conn) != Some(conn) {
            return;
        }
        let attached = entry.attached.take().expect("checked");
        let owner = entry.owner.clone();
        entry.outbox.release(conn);
        entry.offline_since_ms = now;
        if entry.persistent {
            let id = entry.outbox.id;
            st.store.offline(id);
        } else {
            st.discard(client_id);
        }
        let fire = match graceful {
            true => Fire::No,
            false => Fire::Yes,
        };
        self.settle_will(&mut st, client_id, attached.will, owner.as_ref(), fire);
    }
}

impl Tables {
    /// Drops the subscriptions of `client_id`'s session that `allowed` no longer allows (its
    /// identity's rules changed: new groups, a reloaded ACL), from the session, the filter tree
    /// and, for a persistent session, the store, so a restart cannot bring them back. Returns
    /// the filters dropped.
    pub(super) fn drop_filters(
        &mut self,
        client_id: &str,
        allowed: impl Fn(&str) -> bool,
    ) -> Vec<Box<str>> {
        let Some(entry) = self.sessions.get_mut(client_id) else {
            return Vec::new();
        };
        let (id, persistent) = (entry.outbox.id, entry.persistent);
        let (keep, dropped) = std::mem::take(&mut entry.filters)
            .into_iter()
            .partition(|f| allowed(f));
        entry.filters = keep;
        for f in &dropped {
            self.subscriptions.remove(f, id);
            if persistent {
                self.store.unsubscribed(id, f);
            }
        }
        dropped
    }

    /// Forgets a session: its subscriptions and anything queued for it.
    pub(super) fn discard(&mut self, client_id: &str) {
        if let Some(old) = self.sessions.remove(client_id) {
            if old.persistent {
                self.store.session_gone(old.outbox.id);
            }
            for f in &old.filters {
                self.subscriptions.remove(f, old.outbox.id);
            }
            if let Some(o) = &old.owner {
                if let Some(ids) = self.by_identity.get_mut(&o.name) {
                    ids.retain(|id| &**id != client_id);
                    if ids.is_empty() {
                        self.by_identity.remove(&o.name);
                    }
                }
            }
        }
    }
}
