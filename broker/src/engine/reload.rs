//! The credentials and ACL files, re-read while the broker runs: when either changes on disk
//! (polled every second: length, modification time and inode, so the atomic rename of
//! `pifleet-broker device add` is seen at once) and on SIGHUP ([`Engine::reload_access`]).
//!
//! A reload reads both files into a new [`Access`] before touching anything; if either cannot
//! be used (missing, unreadable, invalid, or an empty credentials file, which the admin commands
//! never write) the error is logged and the identities and rules in force stay, so a bad edit
//! never leaves the broker without credentials. A file caught being written (it changed while
//! it was read, or since the poll saw the change) is read again once it holds still, so an
//! editor that truncates and rewrites cannot lock the fleet out for a second. Otherwise, under the
//! state lock, the new `Access` is swapped in and every session is reviewed against the change:
//! - an identity that is gone, changed role or got a new secret loses its sessions: a live
//!   connection is closed and the session, persistent or not, is discarded, so nothing of it
//!   survives for a later login. Nothing of the connection's last will is published (a
//!   revoked login is not trusted, whatever the reason), except that a device's will on its
//!   own presence topic becomes the standard offline presence ([`Engine::will_fate`]);
//! - an identity whose groups changed, or any identity when the ACL file changed, keeps its
//!   sessions, minus the subscriptions it may no longer hold (logged), and its connection acts
//!   with the new groups from its next packet on (a connection checks one counter per packet);
//! - a new identity can log in at once; the verification cache keeps only unchanged secrets.
//!
//! A login in flight during a reload may have been checked against the old files; once its
//! session is attached the connection compares the two and applies the same review to itself
//! ([`Engine::recheck_login`]), so no reload can be slipped past.
//!
//! In-process identities (legacy relay, demo fleet) are not in the file and are left alone.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::registry::Owner;
use super::wills::Fire;
use super::{lock, Access, AccessFiles, BrokerError, Engine, Principal, Tables};
use crate::credentials::Identity;

/// How often the files are checked for a change.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A changed file is read once it has stayed the same for this long.
const SETTLE: Duration = Duration::from_millis(200);

/// What the files looked like when last read, one stamp per file (`None`: missing).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Seen(Vec<Option<Stamp>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// Device and inode: a file replaced by a rename is another file even when its size and
    /// (coarse) modification time are the same.
    file: (u64, u64),
}

impl Seen {
    pub(super) fn of(files: &AccessFiles) -> Seen {
        let stamp = |p: &std::path::Path| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let file = {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            };
            #[cfg(not(unix))]
            let file = (0, 0);
            Some(Stamp {
                len: m.len(),
                modified: m.modified().ok(),
                file,
            })
        };
        let mut v = vec![stamp(&files.credentials)];
        if let Some(acl) = &files.acl_file {
            v.push(stamp(acl));
        }
        Seen(v)
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Identities in the new file.
    pub identities: usize,
    /// Sessions discarded (their connections closed): identity removed, role or secret changed.
    pub sessions_revoked: usize,
    /// Subscriptions dropped because the identity may no longer hold them.
    pub subscriptions_dropped: usize,
    pub acl_changed: bool,
}

/// What a session's owner may keep after a reload.
enum Verdict {
    Keep,
    /// Still the same login, but what it may read changed: check its subscriptions again.
    Recheck(Identity),
    /// Its login no longer holds.
    Revoke,
}

fn verdict(
    old: &Access,
    new: &Access,
    owner: &Owner,
    acl_changed: bool,
    internal: &HashMap<String, (String, Identity)>,
) -> Verdict {
    if internal.contains_key(&*owner.name) {
        return Verdict::Keep;
    }
    let (Some(before), Some(now)) = (&old.credentials, &new.credentials) else {
        return Verdict::Keep;
    };
    let Some(identity) = now.identity(&owner.name) else {
        return Verdict::Revoke;
    };
    if identity.role != owner.role || !before.same_secret(now, &owner.name) {
        return Verdict::Revoke;
    }
    let groups_changed = before
        .identity(&owner.name)
        .is_none_or(|i| i.groups != identity.groups);
    if acl_changed || groups_changed {
        Verdict::Recheck(identity)
    } else {
        Verdict::Keep
    }
}

impl Engine {
    /// Re-reads the credentials and ACL files and applies them (see the module doc). `why`
    /// names the trigger in the log. On an error the files in force stay in force and the
    /// error is returned (and logged). Without a credentials file there is nothing to read.
    pub fn reload_access(&self, why: &str) -> Result<Reloaded, BrokerError> {
        let mut seen = lock(&self.reloading);
        let old = self.access();
        let Some(files) = &old.files else {
            tracing::info!("{why}: no credentials file configured, nothing to re-read");
            return Ok(Reloaded::default());
        };
        let mut files = files.clone();
        let read = files.read();
        if Seen::of(&files) != files.seen {
            // Being written as we read: not noted as seen, so the next poll reads it again.
            tracing::info!("{why}: the credentials or ACL file changed while being read; reading it again in a moment");
            return Err(BrokerError::Setup("changed while being read".into()));
        }
        // Noted even when the read failed: a bad file is reported once, not every second.
        *seen = files.seen.clone();
        let empty = files
            .seen
            .0
            .first()
            .is_some_and(|s| s.as_ref().is_some_and(|s| s.len == 0));
        let read = match read {
            // Most likely truncated by an editor about to write it; never what the admin
            // commands leave, even without identities.
            Ok(_) if empty => Err(BrokerError::Setup(format!(
                "credentials file {} is empty (0 bytes)",
                files.credentials.display()
            ))),
            other => other,
        };
        let (mut credentials, acl) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    "{why}: cannot use it, the identities and rules read before stay in force: {e}"
                );
                return Err(e);
            }
        };
        if let Some(c) = &old.credentials {
            credentials.keep_cache_of(c);
        }
        let new = Arc::new(Access {
            credentials: Some(Arc::new(credentials)),
            acl: Some(acl),
            tls: old.tls.clone(),
            files: Some(files),
        });
        let done = self.apply(&old, new);
        tracing::info!(
            identities = done.identities,
            sessions_revoked = done.sessions_revoked,
            subscriptions_dropped = done.subscriptions_dropped,
            acl_changed = done.acl_changed,
            "{why}: credentials re-read"
        );
        Ok(done)
    }

    /// Swaps `new` in and reviews every session, all under the state lock, so no session
    /// attaches between the two.
    fn apply(&self, old: &Access, new: Arc<Access>) -> Reloaded {
        let mut st = self.state();
        *self.security.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.access_generation.fetch_add(1, Ordering::AcqRel);
        let acl_changed = old.acl != new.acl;
        let mut done = Reloaded {
            identities: new.credentials.as_ref().map_or(0, |c| c.len()),
            acl_changed,
            ..Reloaded::default()
        };
        let internal = lock(&self.internal);
        let mut revoke = Vec::new();
        let mut recheck = Vec::new();
        for (client_id, entry) in &st.sessions {
            let Some(owner) = &entry.owner else {
                continue;
            };
            match verdict(old, &new, owner, acl_changed, &internal) {
                Verdict::Keep => {}
                Verdict::Revoke => revoke.push(client_id.clone()),
                Verdict::Recheck(identity) => recheck.push((client_id.clone(), identity)),
            }
        }
        for (client_id, identity) in recheck {
            let who = Principal::Identity(identity);
            for f in st.drop_filters(&client_id, |f| new.may_subscribe(&who, f)) {
                done.subscriptions_dropped += 1;
                tracing::warn!(client = %client_id, filter = %f, "credentials or ACL changed: subscription no longer allowed, dropped");
            }
        }
        drop(internal);
        for client_id in revoke {
            self.revoke(&mut st, &client_id);
            done.sessions_revoked += 1;
        }
        done
    }

    /// Ends `client_id`'s session because its identity's login no longer holds: closes its
    /// connection (whose will is published only if the identity may still publish it) and
    /// discards the session.
    fn revoke(&self, st: &mut Tables, client_id: &str) {
        let Some(entry) = st.sessions.get_mut(client_id) else {
            return;
        };
        let attached = entry.attached.take();
        if let Some(a) = &attached {
            entry.outbox.release(a.conn);
            a.link.revoked.store(true, Ordering::Release);
            a.link.taken_over.store(true, Ordering::Release);
            a.link.kick.notify_one();
        }
        tracing::info!(
            client = client_id,
            user = entry.owner.as_ref().map_or("", |o| &*o.name),
            connected = attached.is_some(),
            "identity removed or its secret changed in the credentials file: session discarded"
        );
        // A revoked login is no longer trusted, whatever the reason (gone, new role, new
        // secret: the old one may have leaked): nothing of its own is published, only the
        // standard offline presence of a device whose will was its presence.
        let owner = entry.owner.clone();
        self.settle_will(
            st,
            client_id,
            attached.and_then(|a| a.will),
            owner.as_ref(),
            Fire::Untrusted,
        );
        st.discard(client_id);
    }

    /// After a session attached: if a reload happened since the login was checked against
    /// `used`, reviews this session as the reload reviewed the others. Returns whether the
    /// connection may go on (if not, its session is gone).
    pub(crate) fn recheck_login(&self, used: &Access, client_id: &str, conn: u64) -> bool {
        let mut st = self.state();
        let now = self.access();
        let Some(entry) = st
            .sessions
            .get(client_id)
            .filter(|e| e.attached.as_ref().is_some_and(|a| a.conn == conn))
        else {
            // Taken over already: the connection ends anyway.
            return true;
        };
        let Some(owner) = entry.owner.clone() else {
            return true;
        };
        let internal = lock(&self.internal);
        let verdict = verdict(used, &now, &owner, used.acl != now.acl, &internal);
        drop(internal);
        match verdict {
            Verdict::Keep => true,
            Verdict::Recheck(identity) => {
                let who = Principal::Identity(identity);
                for f in st.drop_filters(client_id, |f| now.may_subscribe(&who, f)) {
                    tracing::warn!(client = %client_id, filter = %f, "credentials or ACL changed: subscription no longer allowed, dropped");
                }
                true
            }
            Verdict::Revoke => {
                self.revoke(&mut st, client_id);
                false
            }
        }
    }

    /// A connection found its identity gone on its own (it checks on every packet after a
    /// reload): makes sure its session is discarded too.
    pub(crate) fn end_revoked(&self, client_id: &str, conn: u64) {
        let mut st = self.state();
        if st
            .sessions
            .get(client_id)
            .is_some_and(|e| e.attached.as_ref().is_some_and(|a| a.conn == conn))
        {
            self.revoke(&mut st, client_id);
        }
    }

    /// The identity `who` acts as now: the credentials' current version of it (new groups),
    /// or `None` if it is gone or changed role. In-process and anonymous clients stay as they
    /// are.
    pub(crate) fn current_principal(&self, who: &Principal) -> Option<Principal> {
        let Principal::Identity(i) = who else {
            return Some(who.clone());
        };
        if lock(&self.internal).contains_key(&i.name) {
            return Some(who.clone());
        }
        let access = self.access();
        let Some(credentials) = &access.credentials else {
            return Some(who.clone());
        };
        match credentials.identity(&i.name) {
            Some(now) if now.role == i.role => Some(Principal::Identity(now)),
            _ => None,
        }
    }

    /// Writes the entries that logins proved ready to move from argon2id to the fast hash
    /// ([`Credentials::write_migrations`]); the next poll then reloads the file as for any
    /// edit, keeping every session. A failure is logged once per read of the file.
    async fn write_hash_migrations(&self) {
        let access = self.access();
        if !access.files.as_ref().is_some_and(|f| f.migrate_hashes) {
            return;
        }
        let Some(credentials) = access.credentials.clone() else {
            return;
        };
        drop(access);
        if credentials.pending_migrations() == 0 {
            return;
        }
        let result = tokio::task::spawn_blocking(move || credentials.write_migrations()).await;
        match result {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(moved)) => tracing::info!(
                moved,
                "credentials file: entries of generated secrets moved from argon2id to the fast hash"
            ),
            Ok(Err(e)) => tracing::warn!(
                "cannot move entries of generated secrets to the fast hash, they keep argon2id: {e}"
            ),
        }
    }

    /// Checks the files every [`POLL_EVERY`] and reloads when one changed.
    pub(super) async fn watch_access_files(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(files) = self.access().files.clone() else {
                return;
            };
            self.write_hash_migrations().await;
            let mut now = Seen::of(&files);
            if now == *lock(&self.reloading) {
                continue;
            }
            // Let a writer finish (a few rounds at most; a file that never holds still is read
            // anyway, and a read that overlaps a write is retried by the next poll).
            for _ in 0..5 {
                tokio::time::sleep(SETTLE).await;
                let later = Seen::of(&files);
                if later == now {
                    break;
                }
                now = later;
            }
            // Reading and parsing ten thousand identities takes a while: not on a worker.
            let engine = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                engine.reload_access("the credentials or ACL file changed")
            })
            .await;
        }
    }
}

#[cfg(test)]
mod test {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Limits, StateConfig};
    use crate::credentials::{Credentials, Role};
    use crate::engine::packet::{QoS, Will};
    use crate::engine::store;

    /// A credentials file with `kitchen` (groups down) and `garage`, and an engine reading it.
    fn fleet(dir: &Path) -> (Arc<Engine>, Config) {
        let path = dir.join("credentials.toml");
        let mut c = Credentials::load_or_new(&path).unwrap();
        c.add("kitchen", Role::Device, vec!["down".into()], None)
            .unwrap();
        c.add("garage", Role::Device, vec![], None).unwrap();
        c.save().unwrap();
        let mut config = Config::default();
        config.auth.credentials = Some(path);
        let engine = Engine::new(Limits::default(), Access::load(&config).unwrap());
        (engine, config)
    }

    /// `[auth] keep_old_hashes`: the broker never writes the file; without it, a login's
    /// proven move is written by the watcher's step.
    #[tokio::test]
    async fn keep_old_hashes_keeps_the_broker_from_writing_the_file() {
        for keep in [true, false] {
            let dir = crate::credentials::test::temp_dir("keep-old");
            let path = dir.path().join("credentials.toml");
            let secret = crate::credentials::generate_secret();
            let old = crate::credentials::test::old_file(&path, &secret);
            let mut config = Config::default();
            config.auth.credentials = Some(path.clone());
            config.auth.keep_old_hashes = keep;
            let engine = Engine::new(Limits::default(), Access::load(&config).unwrap());
            let creds = engine.access().credentials.clone().unwrap();
            assert!(creds.verify("kitchen", secret.as_bytes()).is_ok());
            engine.write_hash_migrations().await;
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                text.contains(&old),
                keep,
                "keep_old_hashes = {keep}: {text}"
            );
        }
    }

    fn edit(config: &Config, change: impl FnOnce(&mut Credentials)) {
        let path = config.auth.credentials.as_ref().unwrap();
        let mut c = Credentials::load(path).unwrap();
        change(&mut c);
        c.save().unwrap();
    }

    fn identity(engine: &Engine, name: &str) -> Principal {
        Principal::Identity(
            engine
                .access()
                .credentials
                .as_ref()
                .unwrap()
                .identity(name)
                .unwrap(),
        )
    }

    /// `config` with a state directory (no grace floor, so 1.5 x keep-alive applies).
    fn with_state(config: &Config, state: &Path) -> Config {
        let mut c = config.clone();
        c.state = StateConfig {
            enabled: true,
            dir: Some(state.to_path_buf()),
            commit_interval_ms: 10,
            will_grace_secs: 0,
        };
        c
    }

    /// An engine rebuilt from `config`'s state directory, as `listener::start` builds one.
    fn with_store(config: &Config) -> Arc<Engine> {
        let opened = store::open(&config.state).unwrap();
        let engine = Engine::with_store(
            Limits::default(),
            Access::load(config).unwrap(),
            pifleet_proto::Topics::default(),
            opened.store(),
        );
        opened.attach(&engine);
        engine
    }

    fn will(topic: &str, payload: &str) -> Will {
        Will {
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    const ALL: &str = "pifleet/all/cmnd";
    const KITCHEN: &str = "pifleet/dev/kitchen/status";
    /// The broker's own offline presence (`Presence::will()`).
    const OFFLINE: &str = r#"{"state":"offline"}"#;

    /// A fleet with a state directory whose broker crashed with kitchen and mallory connected
    /// ([`kitchen_and_mallory_connect`]): their wills are pending at the next start.
    fn crashed_with_wills(dir: &Path) -> Config {
        let (_, config) = fleet(dir);
        let config = with_state(&config, &dir.join("state"));
        let engine = with_store(&config);
        kitchen_and_mallory_connect(&engine, &config);
        engine.close_store();
        config
    }

    /// kitchen connects with its presence will, controller mallory with a command for every
    /// device as its will (`fleet` plus mallory).
    fn kitchen_and_mallory_connect(engine: &Engine, config: &Config) {
        if identity_exists(engine, "mallory").is_none() {
            edit(config, |c| {
                c.add("mallory", Role::Controller, vec![], None).unwrap();
            });
            engine.reload_access("test").unwrap();
        }
        let kitchen = identity(engine, "kitchen");
        let mallory = identity(engine, "mallory");
        let ten = Duration::from_secs(10);
        engine
            .attach(
                "kitchen",
                true,
                Some(will(KITCHEN, "offline")),
                ten,
                1,
                &kitchen,
            )
            .unwrap();
        engine
            .attach(
                "mallory",
                true,
                Some(will(ALL, r#"{"led":"on"}"#)),
                ten,
                2,
                &mallory,
            )
            .unwrap();
    }

    fn identity_exists(engine: &Engine, name: &str) -> Option<()> {
        engine
            .access()
            .credentials
            .as_ref()?
            .identity(name)
            .map(|_| ())
    }

    /// A subscriber to everything (attached directly: no ACL in the way).
    fn watcher(engine: &Engine) -> impl Fn() -> Vec<(String, String)> + '_ {
        let w = engine
            .attach(
                "watcher",
                true,
                None,
                Duration::ZERO,
                99,
                &Principal::Anonymous,
            )
            .unwrap();
        engine
            .subscribe("watcher", 99, "pifleet/#", QoS::AtLeastOnce)
            .unwrap();
        move || {
            let mut q = w.outbox.lock();
            let mut v = Vec::new();
            while let Some((d, _)) = q.next_to_send(100) {
                let payload = String::from_utf8_lossy(&d.message.payload).into_owned();
                v.push((d.message.topic.to_string(), payload));
            }
            v
        }
    }

    fn pending(engine: &Engine) -> Vec<String> {
        let mut v: Vec<_> = engine
            .state()
            .pending_wills
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// The demo of the review: mallory connects with a will commanding every device, the
    /// broker is killed, mallory is removed while it is down; after the restart only kitchen's
    /// will is pending, and no device ever receives mallory's command.
    #[test]
    fn a_will_of_an_identity_removed_while_the_broker_was_down_is_dropped_at_restore() {
        let dir = crate::credentials::test::temp_dir("reload-will-removed");
        let config = crashed_with_wills(dir.path());
        edit(&config, |c| {
            c.remove("mallory").unwrap();
        });
        let engine = with_store(&config);
        assert_eq!(pending(&engine), ["kitchen"]);
        let seen = watcher(&engine);
        engine.sweep(engine.now_ms() + 3_600_000, false);
        assert_eq!(seen(), [(KITCHEN.to_string(), "offline".to_string())]);
    }

    /// The same removal while the will is pending: checked again when it falls due.
    #[test]
    fn a_pending_will_whose_identity_a_reload_removed_is_not_published_when_due() {
        let dir = crate::credentials::test::temp_dir("reload-will-pending");
        let config = crashed_with_wills(dir.path());
        let engine = with_store(&config);
        assert_eq!(pending(&engine), ["kitchen", "mallory"]);
        edit(&config, |c| {
            c.remove("mallory").unwrap();
        });
        engine.reload_access("test").unwrap();
        let seen = watcher(&engine);
        engine.sweep(engine.now_ms() + 3_600_000, false);
        assert_eq!(seen(), [(KITCHEN.to_string(), "offline".to_string())]);
        assert!(pending(&engine).is_empty(), "settled, published or not");
    }

    /// A client of a broker without credentials left a will; the broker restarts requiring
    /// logins: nobody may publish anonymously any more, so the will is dropped.
    #[test]
    fn an_anonymous_will_is_dropped_when_the_broker_now_requires_logins() {
        let dir = crate::credentials::test::temp_dir("reload-will-anon");
        let (_, config) = fleet(dir.path());
        let config = with_state(&config, &dir.path().join("state"));
        let mut open_config = config.clone();
        open_config.auth.credentials = None;
        {
            let engine = with_store(&open_config);
            engine
                .attach(
                    "x",
                    true,
                    Some(will(ALL, "on")),
                    Duration::ZERO,
                    1,
                    &Principal::Anonymous,
                )
                .unwrap();
            engine.close_store();
        }
        {
            // Without credentials still: pending as before.
            let engine = with_store(&open_config);
            assert_eq!(pending(&engine), ["x"]);
            engine.close_store();
        }
        let engine = with_store(&config);
        assert!(pending(&engine).is_empty());
    }

    /// A reload that revokes a login closes its connection, and nothing the revoked login left
    /// is published, not even for a new secret (the old one may have leaked): mallory, given a
    /// new secret, does not get its command to the fleet, and for kitchen's presence will the broker publishes the standard offline
    /// presence, not the stored payload (here the bare word `offline`).
    #[test]
    fn a_revoked_login_s_will_is_never_published_as_sent_not_even_for_a_new_secret() {
        let dir = crate::credentials::test::temp_dir("reload-will-revoke");
        let (engine, config) = fleet(dir.path());
        kitchen_and_mallory_connect(&engine, &config);
        let seen = watcher(&engine);
        edit(&config, |c| {
            c.remove("mallory").unwrap();
            c.add("mallory", Role::Controller, vec![], None).unwrap();
            c.remove("kitchen").unwrap();
            c.add("kitchen", Role::Device, vec!["down".into()], None)
                .unwrap();
        });
        assert_eq!(engine.reload_access("test").unwrap().sessions_revoked, 2);
        assert_eq!(seen(), [(KITCHEN.to_string(), OFFLINE.to_string())]);
    }

    /// A removed device whose will was on its own presence topic gets the standard offline
    /// presence published there (so status does not show it online forever, whatever its will
    /// said), at runtime and after a restart; its will on any other of its topics is dropped.
    #[test]
    fn a_removed_devices_presence_will_is_published_and_nothing_else_of_it() {
        let dir = crate::credentials::test::temp_dir("reload-will-device-removed");
        let (engine, config) = fleet(dir.path());
        kitchen_and_mallory_connect(&engine, &config);
        let garage = identity(&engine, "garage");
        engine
            .attach(
                "garage",
                true,
                Some(will("pifleet/dev/garage/cmnd", "on")),
                Duration::from_secs(10),
                3,
                &garage,
            )
            .unwrap();
        let seen = watcher(&engine);
        edit(&config, |c| {
            c.remove("mallory").unwrap();
            c.remove("kitchen").unwrap();
            c.remove("garage").unwrap();
        });
        assert_eq!(engine.reload_access("test").unwrap().sessions_revoked, 3);
        assert_eq!(seen(), [(KITCHEN.to_string(), OFFLINE.to_string())]);

        // The same while the broker was down.
        let dir = crate::credentials::test::temp_dir("reload-will-device-removed-2");
        let config = crashed_with_wills(dir.path());
        edit(&config, |c| {
            c.remove("kitchen").unwrap();
            c.remove("mallory").unwrap();
        });
        let engine = with_store(&config);
        let seen = watcher(&engine);
        engine.sweep(engine.now_ms() + 3_600_000, false);
        assert_eq!(seen(), [(KITCHEN.to_string(), OFFLINE.to_string())]);
    }

    #[test]
    fn a_removed_identity_loses_its_connection_and_every_session() {
        let dir = crate::credentials::test::temp_dir("reload-remove");
        let (engine, config) = fleet(dir.path());
        let kitchen = identity(&engine, "kitchen");
        let garage = identity(&engine, "garage");
        // kitchen: one live session; garage: one live one.
        let a = engine
            .attach("kitchen", false, None, Duration::ZERO, 1, &kitchen)
            .unwrap();
        engine
            .subscribe("kitchen", 1, "pifleet/dev/kitchen/cmnd", QoS::AtLeastOnce)
            .unwrap();
        let g = engine
            .attach("garage", true, None, Duration::ZERO, 2, &garage)
            .unwrap();
        edit(&config, |c| {
            c.remove("kitchen").unwrap();
        });
        let done = engine.reload_access("test").unwrap();
        assert_eq!(done.sessions_revoked, 1);
        assert!(a.link.revoked.load(Ordering::Acquire));
        assert!(a.link.taken_over.load(Ordering::Acquire));
        assert!(!g.link.taken_over.load(Ordering::Acquire));
        assert_eq!(engine.sessions(), 1, "kitchen's persistent session is gone");
        assert_eq!(engine.current_principal(&kitchen).map(|_| ()), None);
        assert!(engine.current_principal(&garage).is_some());
    }

    #[test]
    fn a_changed_secret_counts_as_a_removal_and_an_offline_session_goes_too() {
        let dir = crate::credentials::test::temp_dir("reload-secret");
        let (engine, config) = fleet(dir.path());
        let kitchen = identity(&engine, "kitchen");
        engine
            .attach("kitchen", false, None, Duration::ZERO, 1, &kitchen)
            .unwrap();
        engine.detach("kitchen", 1, true);
        assert_eq!(engine.sessions(), 1, "offline, persistent");
        edit(&config, |c| {
            c.remove("kitchen").unwrap();
            c.add("kitchen", Role::Device, vec!["down".into()], None)
                .unwrap();
        });
        assert_eq!(engine.reload_access("test").unwrap().sessions_revoked, 1);
        assert_eq!(engine.sessions(), 0);
    }

    #[test]
    fn new_groups_keep_the_session_minus_what_it_may_no_longer_hold() {
        let dir = crate::credentials::test::temp_dir("reload-groups");
        let (engine, config) = fleet(dir.path());
        let kitchen = identity(&engine, "kitchen");
        let a = engine
            .attach("kitchen", true, None, Duration::ZERO, 1, &kitchen)
            .unwrap();
        for f in ["pifleet/dev/kitchen/cmnd", "pifleet/group/down/cmnd"] {
            engine.subscribe("kitchen", 1, f, QoS::AtMostOnce).unwrap();
        }
        edit(&config, |c| {
            c.set_groups("kitchen", vec!["up".into()]).unwrap()
        });
        let generation = engine.access_generation();
        let done = engine.reload_access("test").unwrap();
        assert_eq!((done.sessions_revoked, done.subscriptions_dropped), (0, 1));
        assert!(!a.link.taken_over.load(Ordering::Acquire));
        assert_ne!(engine.access_generation(), generation);
        let st = engine.state();
        assert_eq!(
            st.sessions["kitchen"].filters,
            ["pifleet/dev/kitchen/cmnd".into()]
        );
        drop(st);
        let Some(Principal::Identity(now)) = engine.current_principal(&kitchen) else {
            panic!("kitchen is still known");
        };
        assert_eq!(now.groups, ["up"]);
    }

    /// A subscription a reload dropped stays dropped across a restart: the store forgets it
    /// too, or the restored offline session would queue the group's commands again.
    #[test]
    fn a_dropped_subscription_of_a_persistent_session_stays_dropped_after_a_restart() {
        let dir = crate::credentials::test::temp_dir("reload-store");
        let state = dir.path().join("state");
        let (_, config) = fleet(dir.path());
        let config = with_state(&config, &state);
        let group = "pifleet/group/down/cmnd";
        {
            let engine = with_store(&config);
            let kitchen = identity(&engine, "kitchen");
            engine
                .attach("kitchen", false, None, Duration::ZERO, 1, &kitchen)
                .unwrap();
            for f in ["pifleet/dev/kitchen/cmnd", group] {
                engine.subscribe("kitchen", 1, f, QoS::AtLeastOnce).unwrap();
            }
            engine.detach("kitchen", 1, true);
            edit(&config, |c| c.set_groups("kitchen", vec![]).unwrap());
            let done = engine.reload_access("test").unwrap();
            assert_eq!(done.subscriptions_dropped, 1);
            engine.close_store();
        }
        let engine = with_store(&config);
        let st = engine.state();
        assert_eq!(
            st.sessions["kitchen"].filters,
            ["pifleet/dev/kitchen/cmnd".into()],
            "the restored session holds only what the reload left it"
        );
    }

    #[test]
    fn a_bad_file_keeps_what_is_in_force_and_is_reported_once() {
        let dir = crate::credentials::test::temp_dir("reload-bad");
        let (engine, config) = fleet(dir.path());
        let before = engine.access();
        let path = config.auth.credentials.as_ref().unwrap();
        std::fs::write(path, "[[device]]\nname = \"kitchen\"\nhash = \"plain\"\n").unwrap();
        assert!(engine.reload_access("test").is_err());
        assert!(Arc::ptr_eq(&before, &engine.access()));
        assert_eq!(
            *lock(&engine.reloading),
            Seen::of(before.files.as_ref().unwrap())
        );
        std::fs::write(path, "").unwrap();
        let e = engine.reload_access("test").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert!(Arc::ptr_eq(&before, &engine.access()));
        std::fs::remove_file(path).unwrap();
        assert!(engine.reload_access("test").is_err());
        assert_eq!(engine.access().credentials.as_ref().unwrap().len(), 2);
    }

    /// The race a reload could lose: a login checked against the old file attaches after the
    /// reload reviewed every session. The connection's own check catches it.
    #[test]
    fn a_login_checked_before_a_reload_is_reviewed_once_it_attached() {
        let dir = crate::credentials::test::temp_dir("reload-race");
        let (engine, config) = fleet(dir.path());
        let used = engine.access();
        let kitchen = identity(&engine, "kitchen");
        let garage = identity(&engine, "garage");
        edit(&config, |c| {
            c.remove("kitchen").unwrap();
        });
        engine.reload_access("test").unwrap();
        let a = engine
            .attach("kitchen", true, None, Duration::ZERO, 7, &kitchen)
            .unwrap();
        assert!(!engine.recheck_login(&used, "kitchen", 7));
        assert!(a.link.revoked.load(Ordering::Acquire));
        assert_eq!(engine.sessions(), 0);
        engine
            .attach("garage", true, None, Duration::ZERO, 8, &garage)
            .unwrap();
        assert!(engine.recheck_login(&used, "garage", 8));
        assert_eq!(engine.sessions(), 1);
    }
}
