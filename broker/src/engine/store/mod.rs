//! Persistence: retained messages, persistent sessions (client id, owner, subscriptions,
//! queued and in-flight QoS 1/2 messages) and the last wills of live connections survive a
//! restart and a `kill -9`. The design, the files and the durability window are in
//! docs/broker.md; in short:
//!
//! - The seam is [`Store`], which the registry, routing and outbox call where the state
//!   changes, always under the lock that guards that change (the engine's state lock, or a
//!   session's outbox lock for what its connection acknowledges). A call encodes one record
//!   into an in-memory buffer ([`Journal`]) and returns: nothing on the hot path touches a
//!   file. A disabled store (an in-memory broker) is `Store::default()`, every call a no-op.
//! - A writer thread ([`writer`]) commits that buffer every `commit_interval_ms`: one write and
//!   one fdatasync per batch (group commit), none while nothing changed.
//! - Files: [`files`] (state directory, lock, snapshot and log segments), [`record`] (the
//!   checksummed record format), [`recover`] (replay without I/O). When the log outgrows the
//!   snapshot it is compacted into a new one, written beside the running broker.
//! - At start, [`open`] locks the directory and reads it, and [`Opened::attach`] rebuilds the
//!   engine ([`Engine::restore`], within today's limits), writes a fresh snapshot and starts
//!   the writer, all before a listener accepts.
//! - Wills: a connection's will is recorded at its CONNECT (clean sessions too), with its
//!   owner, and settled when the registry ends the connection. Those read back at start are
//!   pending: published unless their client id connects within its grace, and only while
//!   their owner may still publish them ([`super::wills`]). Pending wills are in every
//!   snapshot until settled, with the deadline their first restore set, so a restart during
//!   the grace keeps them and does not extend it.
//!
//! Not persisted: QoS 0 messages (never queued for an offline session anyway), clean sessions
//! (their wills are), QoS 2 packet ids a client sent us and has not released, and the
//! counters.

mod files;
pub(super) mod record;
mod recover;
mod writer;

use std::collections::{HashMap, HashSet};
use std::io;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::outbox::{Delivery, Outbox, Stage};
use super::packet::{Message, QoS};
use super::registry::{Owner, SessionEntry};
use super::routing::Subscription;
use super::tree::valid_filter;
use super::{lock, BrokerError, Engine, CLOCK_BASE_MS};
use crate::config::StateConfig;
use files::{Loaded, StateDir, Unusable};
use record::Record;
use recover::Recovered;

use super::wills::OwnedWill;
pub(super) use recover::RecoveredWill;
pub(crate) use writer::Handle as Writer;

/// The id of a message body stored for persistent sessions (shared by all their queues).
pub type MessageId = NonZeroU64;

/// Records not yet committed, and the message id counter.
pub(crate) struct Journal {
    buf: Mutex<Vec<u8>>,
    next_mid: AtomicU64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    fn new() -> Arc<Journal> {
        Arc::new(Journal {
            buf: Mutex::new(Vec::new()),
            next_mid: AtomicU64::new(1),
        })
    }

    fn append(&self, r: &Record<'_>) {
        r.encode(&mut lock(&self.buf));
    }

    /// Moves what is buffered into `into` (emptied first), leaving `into`'s old allocation
    /// for the next records.
    fn take(&self, into: &mut Vec<u8>) {
        into.clear();
        std::mem::swap(&mut *lock(&self.buf), into);
    }
}

/// The engine's handle on persistence. Cheap to clone; a no-op when disabled.
#[derive(Clone, Default)]
pub(crate) struct Store(Option<Arc<Journal>>);

impl Store {
    fn put(&self, r: Record<'_>) {
        if let Some(j) = &self.0 {
            j.append(&r);
        }
    }

    /// `m` is now its topic's retained message.
    pub fn retained(&self, m: &Message) {
        self.put(Record::Retain {
            topic: &m.topic,
            qos: m.qos,
            payload: &m.payload,
        });
    }

    pub fn unretained(&self, topic: &str) {
        self.put(Record::Unretain { topic });
    }

    pub fn session_created(&self, sid: u64, client_id: &str, owner: Option<&Owner>) {
        self.put(Record::Session {
            sid,
            client_id,
            owner: owner.map(|o| (o.role, &*o.name)),
            offline_since: 0,
        });
    }

    pub fn session_gone(&self, sid: u64) {
        self.put(Record::Gone { sid });
    }

    pub fn online(&self, sid: u64) {
        self.put(Record::Online { sid });
    }

    pub fn offline(&self, sid: u64) {
        self.put(Record::Offline { sid, at: unix_ms() });
    }

    pub fn subscribed(&self, sid: u64, filter: &str, qos: QoS) {
        self.put(Record::Subscribe { sid, filter, qos });
    }

    pub fn unsubscribed(&self, sid: u64, filter: &str) {
        self.put(Record::Unsubscribe { sid, filter });
    }

    /// `client_id`'s connection (just attached) has this will.
    pub(super) fn will(&self, w: &OwnedWill) {
        self.put(w.record());
    }

    /// `client_id`'s will was published or discarded.
    pub fn will_gone(&self, client_id: &str) {
        self.put(Record::WillGone { client_id });
    }

    /// Stores `m`'s body once, before it is queued for persistent sessions.
    pub fn message(&self, m: &Message) -> Option<MessageId> {
        let j = self.0.as_ref()?;
        let mid = j.next_mid.fetch_add(1, Ordering::Relaxed);
        j.append(&Record::Message {
            mid,
            topic: &m.topic,
            qos: m.qos,
            payload: &m.payload,
        });
        NonZeroU64::new(mid)
    }

    /// The handle a persistent session's queue records through.
    pub fn session_log(&self, sid: u64) -> Option<SessionLog> {
        self.0.as_ref().map(|j| SessionLog {
            journal: j.clone(),
            sid,
        })
    }

    /// Takes what is buffered: the cut between the log segment ending and the snapshot.
    fn cut(&self) -> Vec<u8> {
        let mut before = Vec::new();
        if let Some(j) = &self.0 {
            j.take(&mut before);
        }
        before
    }
}

/// What a persistent session's queue records (under the outbox lock, so that its records are
/// in the order its state changed).
#[derive(Debug, Clone)]
pub(crate) struct SessionLog {
    journal: Arc<Journal>,
    sid: u64,
}

impl SessionLog {
    pub fn queued(&self, mid: MessageId, qos: QoS) {
        self.journal.append(&Record::Queued {
            sid: self.sid,
            mid: mid.get(),
            qos,
        });
    }

    pub fn sent(&self, mid: MessageId, pkid: u16) {
        self.journal.append(&Record::Sent {
            sid: self.sid,
            mid: mid.get(),
            pkid,
        });
    }

    pub fn released(&self, mid: MessageId) {
        self.journal.append(&Record::Released {
            sid: self.sid,
            mid: mid.get(),
        });
    }

    pub fn done(&self, mid: MessageId) {
        self.journal.append(&Record::Done {
            sid: self.sid,
            mid: mid.get(),
        });
    }
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The state directory when none is configured: `$STATE_DIRECTORY` (systemd's
/// `StateDirectory=`, the first if it lists several), else `$XDG_STATE_HOME/pifleet/broker`,
/// else `~/.local/state/pifleet/broker`.
pub fn default_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("STATE_DIRECTORY") {
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return Some(PathBuf::from(first));
        }
    }
    // The XDG spec ignores a relative $XDG_STATE_HOME.
    if let Some(x) = var("XDG_STATE_HOME").map(PathBuf::from) {
        if x.is_absolute() {
            return Some(x.join("pifleet").join("broker"));
        }
    }
    var("HOME").map(|h| PathBuf::from(h).join(".local/state/pifleet/broker"))
}

/// A state directory opened and read, to be attached to the engine it describes.
pub(crate) struct Opened {
    store: Store,
    found: Option<(StateDir, Loaded, Duration)>,
    /// `[state] will_grace_secs`.
    will_grace_secs: u64,
}

/// Locks and reads the state directory `config` names (see [`default_dir`]). A configured
/// directory that cannot be used is an error; the default one is not (another broker may hold
/// it, or there is no home): that broker runs in memory after a warning.
pub(crate) fn open(config: &StateConfig) -> Result<Opened, BrokerError> {
    let memory = Opened {
        store: Store::default(),
        found: None,
        will_grace_secs: config.will_grace_secs,
    };
    if !config.enabled {
        tracing::info!("state: in memory (--no-state): retained messages and persistent sessions end with this broker");
        return Ok(memory);
    }
    let (path, explicit) = match (&config.dir, default_dir()) {
        (Some(d), _) => (d.clone(), true),
        (None, Some(d)) => (d, false),
        (None, None) => {
            tracing::warn!("state: no state directory (neither $STATE_DIRECTORY, $XDG_STATE_HOME nor $HOME is set): running in memory; set [state] dir or --state-dir");
            return Ok(memory);
        }
    };
    let dir = match StateDir::lock(&path) {
        Ok(d) => d,
        Err(why) => {
            let why = match why {
                Unusable::Locked(pid) => format!(
                    "it is in use by another running pifleet-broker{}, which holds {}",
                    pid.map(|p| format!(", pid {p}")).unwrap_or_default(),
                    path.join("lock").display()
                ),
                Unusable::Io(e) => format!("it cannot be used: {e}"),
            };
            if explicit {
                return Err(BrokerError::Setup(format!(
                    "state directory {}: {why}; stop that broker, or give this one another \
                     --state-dir (or --no-state to keep its state in memory)",
                    path.display()
                )));
            }
            tracing::warn!(
                "state: the default state directory {}: {why}; running in memory (retained \
                 messages and persistent sessions end with this broker); pass --state-dir for \
                 a directory of its own",
                path.display()
            );
            return Ok(memory);
        }
    };
    let started = Instant::now();
    let loaded = files::load(&dir).map_err(|e| {
        BrokerError::Setup(format!(
            "state directory {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    if loaded.files > 0 {
        tracing::info!(
            dir = %path.display(),
            "state: read {} files ({} bytes) in {} ms",
            loaded.files,
            loaded.bytes,
            started.elapsed().as_millis()
        );
    }
    let interval = Duration::from_millis(config.commit_interval_ms);
    Ok(Opened {
        store: Store(Some(Journal::new())),
        found: Some((dir, loaded, interval)),
        will_grace_secs: config.will_grace_secs,
    })
}

impl Opened {
    /// The handle the engine is built with.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Rebuilds `engine` from what was read, writes the snapshot the rest of this run's log
    /// follows, and starts committing. `engine` must have been built with [`Opened::store`].
    pub fn attach(self, engine: &Arc<Engine>) {
        let Some((dir, loaded, interval)) = self.found else {
            return;
        };
        let path = dir.path.clone();
        let generation = loaded.generation;
        if loaded.files > 0 {
            engine.restore(loaded.recovered, &path, self.will_grace_secs);
        }
        let weak = Arc::downgrade(engine);
        let capture = Box::new(move || weak.upgrade().map(|e| e.capture()));
        let journal = self.store.0.clone().expect("a store with files is on");
        let handle = writer::start(dir, journal, generation, interval, capture);
        *lock(&engine.persistence) = Some(handle);
        tracing::info!(
            "state: in {} (changes committed every {} ms)",
            path.display(),
            interval.as_millis()
        );
    }
}

/// Everything persistent at one moment, taken under the engine's lock and written to a
/// snapshot outside it.
pub(crate) struct Snapshot {
    retained: Vec<Arc<Message>>,
    sessions: Vec<SessionImage>,
    /// The will of every live connection that has one, and every will still pending from the
    /// last start (with its deadline).
    wills: Vec<OwnedWill>,
}

struct SessionImage {
    sid: u64,
    client_id: Box<str>,
    owner: Option<Owner>,
    /// Unix milliseconds; 0 while connected.
    offline_since: u64,
    filters: Vec<(Box<str>, QoS)>,
    inflight: Vec<(Delivery, u16, Stage)>,
    pending: Vec<Delivery>,
}

impl Snapshot {
    /// The records that rebuild this state, in the order replay needs them.
    fn write(&self, put: &mut dyn FnMut(&Record<'_>) -> io::Result<()>) -> io::Result<()> {
        for m in &self.retained {
            put(&Record::Retain {
                topic: &m.topic,
                qos: m.qos,
                payload: &m.payload,
            })?;
        }
        let mut bodies = HashSet::new();
        for s in &self.sessions {
            let sid = s.sid;
            put(&Record::Session {
                sid,
                client_id: &s.client_id,
                owner: s.owner.as_ref().map(|o| (o.role, &*o.name)),
                offline_since: s.offline_since,
            })?;
            for (filter, qos) in &s.filters {
                put(&Record::Subscribe {
                    sid,
                    filter,
                    qos: *qos,
                })?;
            }
            let mut queue = |d: &Delivery, put: &mut dyn FnMut(&Record<'_>) -> io::Result<()>| {
                let mid = d.stored.expect("only stored deliveries are captured").get();
                if bodies.insert(mid) {
                    put(&Record::Message {
                        mid,
                        topic: &d.message.topic,
                        qos: d.message.qos,
                        payload: &d.message.payload,
                    })?;
                }
                put(&Record::Queued {
                    sid,
                    mid,
                    qos: d.qos,
                })?;
                Ok::<u64, io::Error>(mid)
            };
            for (d, pkid, stage) in &s.inflight {
                let mid = queue(d, put)?;
                put(&Record::Sent {
                    sid,
                    mid,
                    pkid: *pkid,
                })?;
                if *stage == Stage::Released {
                    put(&Record::Released { sid, mid })?;
                }
            }
            for d in &s.pending {
                queue(d, put)?;
            }
        }
        for w in &self.wills {
            put(&w.record())?;
        }
        Ok(())
    }
}

impl Engine {
    /// Cuts the journal and takes everything persistent, under the state lock (so no routing
    /// change falls between the two). What connections acknowledge meanwhile lands after the
    /// cut, and replays idempotently on the snapshot ([`recover`]).
    pub(super) fn capture(&self) -> (Vec<u8>, Snapshot) {
        let st = self.state();
        let before = st.store.cut();
        let mut retained = Vec::with_capacity(st.retained.len());
        st.retained.all(&mut retained);
        let (now, unix) = (self.now_ms(), unix_ms());
        let sessions = st
            .sessions
            .iter()
            .filter(|(_, e)| e.persistent)
            .map(|(client_id, e)| {
                let sid = e.outbox.id;
                let (inflight, pending) = e.outbox.lock().stored();
                let filters = e
                    .filters
                    .iter()
                    .filter_map(|f| Some((f.clone(), st.subscriptions.get(f, sid)?.qos)))
                    .collect();
                let offline_since = match e.attached {
                    Some(_) => 0,
                    None => unix
                        .saturating_sub(now.saturating_sub(e.offline_since_ms))
                        .max(1),
                };
                SessionImage {
                    sid,
                    client_id: client_id.clone(),
                    owner: e.owner.clone(),
                    offline_since,
                    filters,
                    inflight,
                    pending,
                }
            })
            .collect();
        let live = st.sessions.iter().filter_map(|(client_id, e)| {
            let a = e.attached.as_ref()?;
            Some(self.owned_will(client_id, a.keep_alive, a.will.clone()?, e.owner.clone()))
        });
        let pending = st.pending_wills.iter().map(|(client_id, p)| OwnedWill {
            client_id: client_id.clone(),
            keep_alive: p.keep_alive,
            will: p.will.clone(),
            owner: p.owner.clone(),
            in_process: p.in_process,
            deadline: p.deadline,
        });
        let wills = live.chain(pending).collect();
        (
            before,
            Snapshot {
                retained,
                sessions,
                wills,
            },
        )
    }

    /// Rebuilds the retained store and the persistent sessions from `rec`, within the limits
    /// in force now: what is beyond them (a lowered `max_retained_*`, `max_sessions`, …), has
    /// expired meanwhile, or breaks a rule (a retained command, a topic beyond the bounds) is
    /// dropped and counted in one line. Sessions come back offline, newest first, so lowered
    /// bounds keep the most recent.
    /// `will_grace_secs` is the shortest grace of a pending will (`[state] will_grace_secs`).
    pub(super) fn restore(&self, rec: Recovered, from: &Path, will_grace_secs: u64) {
        let mut st = self.state();
        // This run's ids never repeat those in the files, in case its first snapshot fails and
        // the files it read stay in use.
        self.next_id.fetch_max(rec.max_sid + 1, Ordering::Relaxed);
        if let Some(j) = &st.store.0 {
            j.next_mid.fetch_max(rec.max_mid + 1, Ordering::Relaxed);
        }
        let mut dropped = 0usize;
        for (topic, (qos, payload)) in rec.retained {
            if payload.is_empty()
                || !self.bounds.allows(&topic)
                || self.topics.is_command_space(&topic)
            {
                dropped += 1;
                continue;
            }
            let before = st.retained.len();
            let m = Arc::new(Message {
                topic,
                payload,
                qos,
                retain: true,
            });
            self.retain(&mut st, &m);
            if st.retained.len() == before {
                dropped += 1;
            }
        }
        let (now, unix) = (self.now_ms(), unix_ms());
        let expiry_ms = self.limits.session_expiry_secs.saturating_mul(1000);
        let mut sessions: Vec<_> = rec.sessions.into_values().collect();
        // Connected at the crash counts as most recent.
        sessions.sort_by_key(|s| std::cmp::Reverse(s.offline_since.unwrap_or(u64::MAX)));
        let (mut restored, mut queued, mut expired) = (0usize, 0usize, 0usize);
        // Bodies shared between sessions stay shared, under this run's ids.
        let mut mids: HashMap<u64, MessageId> = HashMap::new();
        for s in sessions {
            let age = s.offline_since.map_or(0, |t| unix.saturating_sub(t));
            if age >= expiry_ms {
                expired += 1;
                continue;
            }
            let owner = s.owner.map(|(role, name)| Owner { name, role });
            let per_identity = owner.as_ref().map_or(0, |o| {
                st.by_identity.get(&o.name).map_or(0, |ids| ids.len())
            });
            if st.sessions.len() >= self.limits.max_sessions
                || per_identity >= self.limits.max_sessions_per_identity
                || st.sessions.contains_key(&s.client_id)
            {
                dropped += 1;
                continue;
            }
            let sid = self.id();
            let outbox = Outbox::with_log(sid, self.budget.clone(), st.store.session_log(sid));
            let mut filters = Vec::new();
            for (f, qos) in s.filters {
                if filters.len() >= self.limits.max_subscriptions_per_client
                    || !valid_filter(&f)
                    || !self.bounds.allows(&f)
                {
                    dropped += 1;
                    continue;
                }
                st.subscriptions.insert(
                    &f,
                    sid,
                    Subscription {
                        outbox: outbox.clone(),
                        qos,
                    },
                );
                filters.push(f);
            }
            {
                let mut q = outbox.lock();
                let mut stored = |mid: u64| {
                    *mids
                        .entry(mid)
                        .or_insert_with(|| st.store.next_mid().expect("the store is on"))
                };
                for f in s.inflight {
                    let d = Delivery {
                        message: f.queued.message,
                        qos: f.queued.qos,
                        retain: false,
                        stored: Some(stored(f.queued.mid)),
                    };
                    let stage = if f.released {
                        Stage::Released
                    } else {
                        Stage::Published
                    };
                    match q.restore_inflight(d, f.pkid, stage) {
                        true => queued += 1,
                        false => dropped += 1,
                    }
                }
                for p in s.pending {
                    let d = Delivery {
                        message: p.message,
                        qos: p.qos,
                        retain: false,
                        stored: Some(stored(p.mid)),
                    };
                    match q.restore_pending(d) {
                        true => queued += 1,
                        false => dropped += 1,
                    }
                }
            }
            if let Some(o) = &owner {
                st.by_identity
                    .entry(o.name.clone())
                    .or_default()
                    .push(s.client_id.clone());
            }
            st.sessions.insert(
                s.client_id,
                SessionEntry {
                    outbox,
                    filters,
                    persistent: true,
                    attached: None,
                    owner,
                    offline_since_ms: now.saturating_sub(age.min(CLOCK_BASE_MS)),
                },
            );
            restored += 1;
        }
        let wills = self.restore_wills(&mut st, rec.wills, will_grace_secs);
        dropped += wills.dropped();
        if expired > 0 {
            self.counters
                .sessions_expired
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        self.counters
            .state_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        tracing::info!(
            "state: restored {} retained messages and {restored} persistent sessions ({queued} \
             queued messages) from {}{}{}{}{}",
            st.retained.len(),
            from.display(),
            match wills.restored {
                0 => String::new(),
                n => format!(
                    "; last wills pending (each published unless its client connects again \
                     within its grace): {n}"
                ),
            },
            match expired {
                0 => String::new(),
                n => format!("; {n} sessions had expired meanwhile"),
            },
            match dropped {
                0 => String::new(),
                n => format!("; dropped {n} beyond today's limits or rules"),
            },
            match rec.skipped {
                0 => String::new(),
                n => format!("; skipped {n} records that referred to lost ones"),
            }
        );
    }
}

impl Store {
    /// A fresh message id (restoring bodies under this run's numbering).
    fn next_mid(&self) -> Option<MessageId> {
        let j = self.0.as_ref()?;
        NonZeroU64::new(j.next_mid.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
