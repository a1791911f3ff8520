//! Deciding whether a CONNECT may proceed: the checks every client passes (client id, last will
//! topic; the protocol level was checked where the CONNECT was decoded), then the login and the
//! identity's client id rule.
//!
//! A login is answered on the connection's own task, in about a microsecond, when it needs no
//! argon2 hash ([`Credentials::verify_quick`]): an in-process identity, an identity with a
//! generated secret (the fast hash), an unknown user, or a chosen secret that verified before in
//! this process (the cache). So a broker restart lets a fleet with generated secrets back in as
//! fast as its TLS handshakes go.
//!
//! The rest, chosen secrets, cost one argon2 hash, deliberately slow (~8 ms) and memory-hungry
//! (m = 8 MiB), so it runs on a fixed set of verifier threads, one per core, each hashing in one
//! block of memory it keeps: the broker's footprint for hashing is cores × m however many logins
//! arrive (on tokio's blocking pool each login allocated afresh, and glibc's per-thread arenas
//! kept 150-230 MB after a burst of failed logins). A flood of wrong passwords cannot starve
//! real clients:
//! - logins that need no hash never wait for a verifier;
//! - the pause before a refusal holds no verifier, and ends a fixed time after the check began,
//!   so a refusal takes as long whether the name is unknown, has a fast hash or an argon2 one;
//! - waiting for a verifier counts against the connect deadline (`limits.connect_timeout_ms`,
//!   which also covers the TLS/WebSocket handshake and the CONNECT): past it the connection is
//!   closed, and a login still queued is dropped unhashed.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::packet::{ConnectCode, ConnectRequest};
use super::tree::{valid_topic, TopicBounds};
use super::{lock, Access, Engine, Principal};
use crate::credentials::{AuthError, Credentials, Identity, Memory, Role};

/// A wrong password or an unknown user is answered this long after its check began (unless the
/// check itself took longer), to slow down guessing and so that how long a refusal takes does
/// not tell which hash, if any, the name has.
const REFUSAL_PAUSE: Duration = Duration::from_millis(300);

/// How a CONNECT is turned down.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Answer with this CONNACK return code, then close.
    Connack(ConnectCode),
    /// Close without a CONNACK: a protocol violation (MQTT 3.1.1 §4.8), or no verdict on the
    /// password before the connect deadline.
    Close,
}

impl Engine {
    /// Decides whether a CONNECT may proceed under `access` (the credentials and rules in force
    /// when it arrived). Returns the client's identity or how to refuse it. `deadline` is the
    /// connection's connect deadline.
    pub(crate) async fn authenticate(
        &self,
        connect: &ConnectRequest,
        peer: SocketAddr,
        deadline: Instant,
        access: &Access,
    ) -> Result<Principal, Refused> {
        if connect.client_id.len() > 256 || connect.client_id.chars().any(char::is_control) {
            return Err(Refused::Connack(ConnectCode::IdentifierRejected));
        }
        if connect.client_id.is_empty() && !connect.clean_session {
            // §3.1.3.1: an empty id is only allowed for a clean session.
            return Err(Refused::Connack(ConnectCode::IdentifierRejected));
        }
        if let Some(will) = &connect.will {
            // §3.1.2.5: the will topic is a topic name, so §4.7 applies (no wildcards, no NUL,
            // not empty); the bounds keep it out of the topic trees like any PUBLISH's.
            if !valid_topic(&will.topic)
                || !TopicBounds::from_limits(&self.limits).allows(&will.topic)
            {
                let topic: String = will.topic.chars().take(64).collect();
                if let Some(held_back) = self.log_refusals.admit(self.now_ms()) {
                    tracing::info!(%peer, client = %connect.client_id, ?topic, len = will.topic.len(), held_back,
                        "closed: the last will's topic is not a valid topic name (MQTT 3.1.1 §3.1.2.5, §4.7)");
                }
                return Err(Refused::Close);
            }
        }
        let Some(credentials) = &access.credentials else {
            return Ok(Principal::Anonymous);
        };
        let Some(login) = &connect.login else {
            if let Some(held_back) = self.log_refusals.admit(self.now_ms()) {
                tracing::warn!(%peer, client = %connect.client_id, held_back, "refused: no user name and password");
            }
            return Err(Refused::Connack(ConnectCode::NotAuthorized));
        };
        let checked = Instant::now();
        let internal = lock(&self.internal)
            .get(&login.username)
            .filter(|(secret, _)| bool::from(secret.as_bytes().ct_eq(login.password.as_bytes())))
            .map(|(_, identity)| Ok(identity.clone()));
        let quick = || credentials.verify_quick(&login.username, login.password.as_bytes());
        let verdict = match internal.or_else(quick) {
            Some(v) => v,
            None => {
                let verdict = self
                    .verifiers
                    .verify(credentials, &login.username, &login.password);
                match tokio::time::timeout_at(deadline, verdict).await {
                    Ok(v) => v,
                    Err(_) => {
                        if let Some(held_back) = self.log_refusals.admit(self.now_ms()) {
                            tracing::info!(%peer, user = %login.username, held_back, "closed: the password was not checked before the connect deadline");
                        }
                        return Err(Refused::Close);
                    }
                }
            }
        };
        let identity = match verdict {
            Ok(i) => i,
            Err(e) => {
                if let Some(held_back) = self.log_refusals.admit(self.now_ms()) {
                    tracing::warn!(%peer, user = %login.username, held_back, "refused: {e:?}");
                }
                tokio::time::sleep_until(checked + REFUSAL_PAUSE).await;
                return Err(Refused::Connack(ConnectCode::BadUserNameOrPassword));
            }
        };
        let id = connect.client_id.as_str();
        if !client_id_allowed(&identity, id) {
            if let Some(held_back) = self.log_refusals.admit(self.now_ms()) {
                tracing::warn!(%peer, user = %identity.name, client = %id, held_back, "refused: client id does not match the identity");
            }
            return Err(Refused::Connack(ConnectCode::IdentifierRejected));
        }
        let who = Principal::Identity(identity);
        if let Some(will) = &connect.will {
            if !access.may_publish(&who, &will.topic) {
                tracing::warn!(%peer, client = %id, topic = %will.topic, "refused: last will on a topic it may not publish to");
                return Err(Refused::Connack(ConnectCode::NotAuthorized));
            }
        }
        Ok(who)
    }
}

/// Whether `identity` may connect with client id `id`. A device's is its name, so one device
/// cannot take over another's session. A controller's is its name or `name:<anything>`, so
/// several CLIs can run at once: names allow only letters, digits, `-`, `_` and `.`, so `ops:…`
/// can only be controller ops's and never a device's name (a `name-<anything>` rule let
/// controller ops take device `ops-pi`'s session).
pub(crate) fn client_id_allowed(identity: &Identity, id: &str) -> bool {
    match identity.role {
        Role::Device => id == identity.name,
        Role::Controller => {
            id == identity.name
                || id
                    .strip_prefix(identity.name.as_str())
                    .is_some_and(|rest| rest.starts_with(':'))
        }
    }
}

/// The verifier threads, started on the first login that needs a hash.
pub(crate) struct Verifiers {
    threads: usize,
    /// One per thread: a login waits here (a parked task, cancelled by its connect deadline)
    /// until a thread is free, so at most `threads` jobs are ever queued or hashing.
    slots: Arc<Semaphore>,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

struct Job {
    credentials: Arc<Credentials>,
    user: String,
    password: String,
    reply: oneshot::Sender<Result<Identity, AuthError>>,
    /// Given back when the thread is done with the job.
    _slot: OwnedSemaphorePermit,
}

impl Verifiers {
    pub(crate) fn new(threads: usize) -> Verifiers {
        Verifiers {
            threads,
            slots: Arc::new(Semaphore::new(threads)),
            jobs: OnceLock::new(),
        }
    }

    /// Hashes `password` for `user` on a verifier thread.
    async fn verify(
        &self,
        credentials: &Arc<Credentials>,
        user: &str,
        password: &str,
    ) -> Result<Identity, AuthError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (reply, verdict) = oneshot::channel();
        let job = Job {
            credentials: credentials.clone(),
            user: user.to_string(),
            password: password.to_string(),
            reply,
            _slot: slot,
        };
        if self.jobs().send(job).is_err() {
            return Err(AuthError::BadPassword);
        }
        // A verifier that panicked dropped the reply: refuse rather than hang.
        verdict.await.unwrap_or(Err(AuthError::BadPassword))
    }

    fn jobs(&self) -> &mpsc::Sender<Job> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let rx = Arc::new(Mutex::new(rx));
            for n in 0..self.threads {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("pifleet-verify-{n}"))
                    .spawn(move || verifier(&rx))
                    .expect("cannot start a password verifier thread");
            }
            tx
        })
    }
}

/// One verifier thread: takes jobs until the engine (the sender) is gone, hashing each in the
/// same memory.
fn verifier(jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory = Memory::default();
    loop {
        let Ok(job) = lock(jobs).recv() else {
            return;
        };
        // Its connection gave up (the connect deadline) while it waited: no hash.
        if job.reply.is_closed() {
            continue;
        }
        let verdict = std::panic::catch_unwind(AssertUnwindSafe(|| {
            job.credentials
                .verify_with(&job.user, job.password.as_bytes(), &mut memory)
        }));
        if let Ok(verdict) = verdict {
            let _ = job.reply.send(verdict);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn identity(name: &str, role: Role) -> Identity {
        Identity {
            name: name.into(),
            role,
            groups: Vec::new(),
        }
    }

    #[test]
    fn a_device_connects_only_as_itself() {
        let pi = identity("ops-pi", Role::Device);
        assert!(client_id_allowed(&pi, "ops-pi"));
        for id in ["ops", "ops-pi:x", "ops-pi-2", "", "OPS-PI"] {
            assert!(!client_id_allowed(&pi, id), "{id:?}");
        }
    }

    #[test]
    fn a_controller_connects_as_its_name_or_name_colon_anything_never_as_a_device_name() {
        let ops = identity("ops", Role::Controller);
        for id in ["ops", "ops:", "ops:1f3a", "ops:a:b"] {
            assert!(client_id_allowed(&ops, id), "{id:?}");
        }
        // `ops-pi` and `ops.pi` are valid device names.
        for id in [
            "ops-pi",
            "ops.pi",
            "ops_pi",
            "opsx",
            "op",
            ":ops",
            "other:ops",
        ] {
            assert!(!client_id_allowed(&ops, id), "{id:?}");
        }
    }
}
