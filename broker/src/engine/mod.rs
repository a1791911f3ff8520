//! The MQTT 3.1.1 engine: listeners, sessions, subscriptions, retained messages and wills, sized
//! for a fleet of small devices rather than for a message-streaming server.
//!
//! Why our own engine and not rumqttd's router: measured on a 2-core box, rumqttd 0.20 joined a
//! fleet in quadratic time (each SUBSCRIBE scans every retained message, each new topic every
//! filter: 10,000 devices did not finish joining in 10 minutes), held ~120 KB per connection,
//! never set TCP_NODELAY (40 ms delayed-ACK stalls on every confirmation), had no topic ACLs or
//! CONNACK refusal codes, and wedged for good when a client id whose link setup failed connected
//! again (a remote denial of service). Its `link` module is private, so a front end cannot fix
//! those from outside. `bench/run.sh` keeps measuring it beside this engine.
//!
//! Shape: one task per connection, one lock over the routing state ([`Tables`]), and per-session
//! outboxes that publishers fill and connections drain. Publishing takes the lock once, walks the
//! subscription trie and appends an `Arc` to each matching outbox, so confirmation latency is one
//! hop through this process and a fleet-wide command costs a pointer per device.
//!
//! Modules, in the order a connection meets them:
//! - [`listener`]: the accept loops (MQTT, WebSocket, TLS) and [`start`].
//! - [`admission`]: connection limits, before a byte is read.
//! - [`conn`]: one connection's task: read the CONNECT, authenticate, attach, then one loop that
//!   reads packets, writes what the outbox holds and watches the keep-alive.
//! - [`v4`]: the MQTT 3.1.1 adapter, the only place that knows the codec (rumqttc's
//!   `mqttbytes::v4`); [`packet`]: the protocol-neutral types it produces. An MQTT 5 adapter would
//!   be a sibling of `v4`, chosen by the CONNECT's protocol level in `conn`.
//! - [`auth`]: whether a CONNECT may proceed (client id, will topic, login, identity rules).
//! - [`reload`]: the credentials and ACL files re-read while the broker runs (on a change on
//!   disk or SIGHUP), and what that does to live connections and sessions.
//! - [`registry`]: sessions: attach/takeover/resume/detach, bounds and expiry.
//! - [`routing`]: PUBLISH to subscribers, the retained store, SUBSCRIBE/UNSUBSCRIBE.
//! - [`outbox`]: a session's queue and its sans-IO QoS 1/2 state machine, bounded in messages
//!   and bytes.
//! - [`store`]: persistence: what registry, routing and outbox change is recorded there, committed
//!   to the state directory by a writer thread, and read back at start (docs/broker.md).
//! - [`wills`]: last wills across a restart: recorded in the store, pending after it.
//! - [`tree`]: the topic tries; [`counters`]: how often each bound bit.

mod admission;
mod auth;
mod conn;
pub mod counters;
mod listener;
pub mod outbox;
pub mod packet;
mod registry;
mod reload;
mod routing;
mod store;
#[cfg(test)]
mod tests;
pub mod tree;
pub mod v4;
mod wills;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::acl::Acl;
use crate::config::{Config, Limits};
use crate::credentials::{Credentials, Identity};
use counters::{CounterSnapshot, Counters, LogGate};
use outbox::Budget;
use packet::Message;
use pifleet_proto::Topics;
use registry::SessionEntry;
use routing::Subscription;
use store::Store;
use tree::{FilterTree, RetainTree, TopicBounds};

pub use listener::{start, start_with};
pub use packet::QoS;
pub(crate) use registry::Link;
pub use reload::Reloaded;
pub(crate) use routing::SubscribeRefused;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Credentials, ACL or TLS files that cannot be used.
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Relay(String),
}

/// A started broker: where it listens, and the engine (for in-process clients' identities).
#[derive(Clone)]
pub struct Running {
    pub mqtt: SocketAddr,
    pub websocket: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub engine: Arc<Engine>,
}

/// Who is on the other end of a connection, once its CONNECT was accepted.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Authentication is off: everything is allowed.
    Anonymous,
    Identity(Identity),
}

/// What decides who may connect and what they may do: credentials, topic rules and TLS.
/// Loaded at start; the engine swaps in a new one when the credentials or ACL file changes
/// ([`reload`]), and TLS stays as loaded.
#[derive(Default)]
pub struct Access {
    pub credentials: Option<Arc<Credentials>>,
    pub acl: Option<Acl>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where `credentials` and `acl` came from, so they can be read again; `None` for an
    /// `Access` built in code, which is never reloaded.
    pub files: Option<AccessFiles>,
}

/// The files behind an [`Access`].
#[derive(Debug, Clone)]
pub struct AccessFiles {
    pub credentials: PathBuf,
    pub acl_file: Option<PathBuf>,
    /// The fleet's topic prefix, which the ACL's own rules follow.
    pub prefix: String,
    /// Prefixes outside the fleet's that controllers may use too (Home Assistant's discovery
    /// prefix when `[homeassistant]` is on), kept across reloads.
    pub controller_prefixes: Vec<String>,
    /// Whether logins may move old argon2id entries to the fast hash (`[auth] keep_old_hashes`
    /// unset): see [`Credentials::write_migrations`].
    pub migrate_hashes: bool,
    /// What the files looked like just before they were read.
    seen: reload::Seen,
}

impl Access {
    /// Loads what `config` names. Errors name the file.
    pub fn load(config: &Config) -> Result<Access, BrokerError> {
        let setup = |e: &dyn std::fmt::Display| BrokerError::Setup(e.to_string());
        let mut files = config
            .auth
            .credentials
            .as_ref()
            .map(|credentials| AccessFiles {
                credentials: credentials.clone(),
                acl_file: config.auth.acl_file.clone(),
                prefix: config.prefix.clone(),
                controller_prefixes: config
                    .homeassistant
                    .enabled
                    .then(|| config.homeassistant.discovery_prefix.clone())
                    .into_iter()
                    .collect(),
                migrate_hashes: !config.auth.keep_old_hashes,
                seen: reload::Seen::default(),
            });
        let (credentials, acl) = match &mut files {
            Some(f) => {
                let (c, a) = f.read()?;
                (Some(Arc::new(c)), Some(a))
            }
            None => (None, None),
        };
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) if config.tls.enabled => {
                Some(crate::tls::server_config(cert, key).map_err(|e| setup(&e))?)
            }
            _ => None,
        };
        Ok(Access {
            credentials,
            acl,
            tls,
            files,
        })
    }

    fn may_publish(&self, who: &Principal, topic: &str) -> bool {
        match (who, &self.acl) {
            (Principal::Identity(i), Some(acl)) => acl.may_publish(i, topic),
            _ => true,
        }
    }

    fn may_subscribe(&self, who: &Principal, filter: &str) -> bool {
        match (who, &self.acl) {
            (Principal::Identity(i), Some(acl)) => acl.may_subscribe(i, filter),
            _ => true,
        }
    }
}

impl AccessFiles {
    /// Reads the credentials file and the ACL file, noting first what they look like (so a
    /// change during the read is noticed by the next poll). Errors name the file.
    fn read(&mut self) -> Result<(Credentials, Acl), BrokerError> {
        let setup = |e: &dyn std::fmt::Display| BrokerError::Setup(e.to_string());
        self.seen = reload::Seen::of(self);
        let credentials = Credentials::load(&self.credentials).map_err(|e| setup(&e))?;
        let mut acl = Acl::new(&self.prefix, self.acl_file.as_deref()).map_err(|e| setup(&e))?;
        for p in &self.controller_prefixes {
            acl.allow_controllers_under(p);
        }
        Ok((credentials, acl))
    }
}

/// The broker: routing state plus what every connection needs to consult.
pub struct Engine {
    limits: Limits,
    /// Topic length and depth bounds, checked where packets are decoded.
    pub(crate) bounds: TopicBounds,
    /// The fleet's topic layout (which topics are commands, never to be retained).
    topics: Topics,
    state: Mutex<Tables>,
    next_id: AtomicU64,
    /// Swapped whole by [`reload`]; read briefly (never across an await) on every login,
    /// PUBLISH and SUBSCRIBE.
    security: RwLock<Arc<Access>>,
    /// Bumped with every swap of `security`, so a connection notices a reload with one atomic
    /// load per packet and refreshes the identity it acts for.
    access_generation: AtomicU64,
    /// Held while a reload reads the files and applies them: one at a time.
    reloading: Mutex<reload::Seen>,
    /// Identities of clients inside this process (legacy relay, demo fleet): name → (secret,
    /// identity). They never touch the credentials file.
    internal: Mutex<HashMap<String, (String, Identity)>>,
    /// Password hashing is deliberately slow and memory-hungry: it runs on one thread per core
    /// (see [`auth`]), so a reconnect storm or a password-guessing flood cannot exhaust the box.
    verifiers: auth::Verifiers,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Tokio's clock, so that tests with paused time drive keep-alives and wills (it is
    /// `std::time::Instant` outside such tests).
    started: tokio::time::Instant,
    /// The queue bounds all sessions share.
    budget: Arc<Budget>,
    counters: Counters,
    /// Budgets for the log lines clients can trigger: refused logins, and connections that
    /// ended with an error, and client-id takeovers (two clients fighting over one id).
    log_refusals: LogGate,
    log_ends: LogGate,
    log_takeovers: LogGate,
    /// The state directory's writer, when state is kept ([`store`]).
    persistence: Mutex<Option<store::Writer>>,
}

/// Where [`Engine::now_ms`] starts: far enough from zero that a session restored from the
/// state directory can be dated before this engine started.
const CLOCK_BASE_MS: u64 = 1 << 40;

/// The tables behind the engine's one lock: sessions, subscriptions and retained messages.
#[derive(Default)]
struct Tables {
    sessions: HashMap<Box<str>, SessionEntry>,
    subscriptions: FilterTree<Subscription>,
    retained: RetainTree<Arc<Message>>,
    /// Bytes charged for the retained store ([`retained_cost`]).
    retained_bytes: usize,
    /// Client ids of each identity's sessions, for `max_sessions_per_identity`.
    by_identity: HashMap<Box<str>, Vec<Box<str>>>,
    /// Where changes to persistent state are recorded (a no-op for an in-memory engine).
    store: Store,
    /// Last wills read back at start, by client id, until published or their client connects
    /// again ([`wills`]).
    pending_wills: HashMap<Box<str>, wills::PendingWill>,
}

impl Engine {
    pub fn new(limits: Limits, security: Access) -> Arc<Engine> {
        Engine::with_topics(limits, security, Topics::default())
    }

    /// An engine for a fleet under a topic prefix other than the default.
    pub fn with_topics(limits: Limits, security: Access, topics: Topics) -> Arc<Engine> {
        Engine::with_store(limits, security, topics, Store::default())
    }

    fn with_store(limits: Limits, security: Access, topics: Topics, store: Store) -> Arc<Engine> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Engine {
            bounds: TopicBounds::from_limits(&limits),
            budget: Budget::new(&limits),
            limits,
            topics,
            state: Mutex::new(Tables {
                store,
                ..Tables::default()
            }),
            next_id: AtomicU64::new(1),
            reloading: Mutex::new(
                security
                    .files
                    .as_ref()
                    .map(|f| f.seen.clone())
                    .unwrap_or_default(),
            ),
            security: RwLock::new(Arc::new(security)),
            access_generation: AtomicU64::new(0),
            internal: Mutex::new(HashMap::new()),
            verifiers: auth::Verifiers::new(cpus),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            started: tokio::time::Instant::now(),
            counters: Counters::default(),
            log_refusals: LogGate::default(),
            log_ends: LogGate::default(),
            log_takeovers: LogGate::default(),
            persistence: Mutex::new(None),
        })
    }

    /// Commits what is not yet in the state directory and stops writing to it (a graceful
    /// stop). Later changes are kept in memory only.
    pub fn close_store(&self) {
        let writer = lock(&self.persistence).take();
        if let Some(w) = writer {
            w.close();
        }
    }

    /// How often each bound bit, since the engine started.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters
            .snapshot(self.budget.dropped.load(Ordering::Relaxed))
    }

    /// Bytes queued for all clients now (bounded by `max_queued_bytes_total`).
    pub fn queued_bytes(&self) -> usize {
        self.budget.total()
    }

    /// Retained messages stored, and the bytes they are charged.
    pub fn retained(&self) -> (usize, usize) {
        let st = self.state();
        (st.retained.len(), st.retained_bytes)
    }

    /// Sessions held, connected or offline.
    pub fn sessions(&self) -> usize {
        self.state().sessions.len()
    }

    /// Whether clients must log in.
    pub fn auth_enabled(&self) -> bool {
        self.access().credentials.is_some()
    }

    /// The credentials, rules and TLS in force now.
    pub fn access(&self) -> Arc<Access> {
        self.security
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many times [`reload`] swapped the access (see `access_generation`).
    pub(crate) fn access_generation(&self) -> u64 {
        self.access_generation.load(Ordering::Acquire)
    }

    /// Registers an in-process client (legacy relay, demo device) and returns its secret.
    pub fn internal_identity(&self, identity: Identity) -> String {
        let secret = crate::credentials::generate_secret();
        lock(&self.internal).insert(identity.name.clone(), (secret.clone(), identity));
        secret
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the engine started, plus [`CLOCK_BASE_MS`] (the clock of
    /// [`Link::last_heard`] and of session expiry).
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + CLOCK_BASE_MS
    }

    fn state(&self) -> MutexGuard<'_, Tables> {
        lock(&self.state)
    }

    pub(crate) fn may_publish(&self, who: &Principal, topic: &str) -> bool {
        let access = self.security.read().unwrap_or_else(|p| p.into_inner());
        access.may_publish(who, topic)
    }

    pub(crate) fn may_subscribe(&self, who: &Principal, filter: &str) -> bool {
        let access = self.security.read().unwrap_or_else(|p| p.into_inner());
        access.may_subscribe(who, filter)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
