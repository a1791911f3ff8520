//! Identities (devices and controllers) and the credentials file that holds the hashes of their
//! secrets.
//!
//! The file is TOML, managed by `pifleet-broker device|controller add|remove|list`, and never
//! holds a secret, only its hash, so a leaked copy does not let anyone log in:
//!
//! ```toml
//! [[device]]
//! name = "kitchen"
//! groups = ["downstairs"]
//! hash = "$pifleet-blake2b$v=1$...$..."       # a secret `add` generated
//!
//! [[controller]]
//! name = "laptop"
//! hash = "$argon2id$v=19$m=8192,t=2,p=1$...$..."   # a secret given with --secret-stdin
//! ```
//!
//! Two hash schemes, chosen by where the secret came from, because what a hash must resist is
//! guessing, and that depends on the secret:
//! - a secret `add` generated carries 192 random bits: nobody can guess it, however fast each
//!   guess, so it needs no password-hardening KDF. It is stored as [`FAST_SCHEME`], a keyed
//!   BLAKE2b with a per-entry salt, checked in about a microsecond on the connection's own task:
//!   a broker restart lets ten thousand devices back in without queueing for argon2;
//! - a secret a person chose (`--secret-stdin`) may be guessable, so it gets argon2id (8 ms per
//!   check, on a verifier thread), which slows guessing from a leaked copy of the file.
//!
//! Files written before the fast scheme hold argon2id for every identity, generated secrets
//! included, with no mark telling which is which. Since secrets given with `--secret-stdin` are
//! marked `chosen`, an unmarked argon2id entry is old; once a login proves a secret of exactly
//! the generated shape for it, the broker moves it to the fast scheme in the file
//! ([`Credentials::write_migrations`]: only a file that is the broker's to write, under the
//! admin commands' edit lock, after keeping a copy; `[auth] keep_old_hashes` turns it off).
//!
//! A name is unique across both roles: the MQTT user name alone decides the identity, and with
//! it what the [ACL](crate::acl) allows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Ident, ParamsString, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::digest::consts::U32;
use blake2::digest::{CtOutput, KeyInit, Mac};
use blake2::{Blake2bMac, Blake2bMac512};
use pifleet_proto::Name;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Argon2id memory cost in KiB (8 MiB).
///
/// Why these light parameters (m = 8 MiB, t = 2, p = 1) rather than the OWASP-style 19-64 MiB:
/// after a broker restart every device of the fleet reconnects within seconds, and each first
/// login costs one hash. Measured (the ignored test `hash_cost`): one verification takes 8 ms
/// on one core of a 2-core x86 server VM in a release build (140 ms in a debug build), so that
/// box admits about 250 logins a second and 5,000 devices in 20 s; a Raspberry Pi 4 core is
/// several times slower (not measured). Later reconnects of the same device hit the in-memory
/// cache and cost about a microsecond. Only secrets a person chose get argon2id: it slows
/// guessing of weak ones if the file leaks. The secrets `add` generates carry 192 random bits,
/// for which the hash cost does not matter, and get [`FAST_SCHEME`] instead.
pub const ARGON2_M_KIB: u32 = 8 * 1024;
/// Argon2id passes (see [`ARGON2_M_KIB`]).
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes: one, so a verification occupies one core and parallelism comes from
/// verifying several clients at once.
pub const ARGON2_P: u32 = 1;

/// Length of a generated secret: 32 characters of a 64-character alphabet = 192 bits.
const SECRET_LEN: usize = 32;
/// URL-safe, shell-safe and TOML-string-safe, so a secret can be pasted anywhere unquoted.
const SECRET_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Hand-chosen secrets shorter than this are refused: with light hash parameters a short
/// secret is what an attacker holding a copy of the file would guess first.
pub const MIN_SECRET_LEN: usize = 12;
/// Longer secrets are refused to bound the work per login attempt and keep files readable.
pub const MAX_SECRET_LEN: usize = 1024;

/// The PHC identifier of the hash of a generated secret:
/// `$pifleet-blake2b$v=1$<salt>$<digest>`, where digest = BLAKE2b-256 of the secret, keyed with
/// the entry's 16 random salt bytes, personalization [`FAST_PERSONA`]. Salt and digest are
/// unpadded base64 as in every PHC string. A keyed hash with a per-entry salt, so two files, or
/// two identities with the same secret, never share a digest and no table can be precomputed.
pub const FAST_SCHEME: &str = "pifleet-blake2b";
/// The `v=` of [`FAST_SCHEME`]; another value is refused rather than guessed at.
const FAST_VERSION: u32 = 1;
const FAST_SALT_LEN: usize = 16;
const FAST_DIGEST_LEN: usize = 32;
/// BLAKE2b's personalization for [`FAST_SCHEME`], separating it from any other use of the hash.
const FAST_PERSONA: &[u8] = b"pifleet-secret";

/// What an identity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Pi running the agent: may use only its own topics and its groups' command topics.
    Device,
    /// A `pifleet` CLI or another tool that controls the fleet: may use every fleet topic.
    Controller,
}

impl Role {
    /// The word used on the command line and in the file (`device`, `controller`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Controller => "controller",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a client authenticated as. `name` and every group are valid [`Name`]s, so they are safe
/// to splice into topics as single levels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// The device's groups (always empty for controllers).
    pub groups: Vec<String>,
}

/// Why a login was refused. Deliberately coarse: the engine answers both with "bad user name
/// or password" so a client cannot tell which names exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown user")]
    UnknownUser,
    #[error("wrong password")]
    BadPassword,
}

/// Why the credentials file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "credentials file {} does not exist; create it by adding an identity \
         (`pifleet-broker device add NAME --credentials {}`), or for a new broker with \
         `pifleet-broker init` (TLS certificates and a first controller)",
        .0.display(), .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read credentials file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot write credentials file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidName(#[from] pifleet_proto::NameError),
    #[error(
        "{role} {name:?} already exists; remove it first with \
         `pifleet-broker {role} remove {name}` (identities are unique across devices and \
         controllers)"
    )]
    Exists { name: String, role: Role },
    #[error("no device or controller named {0:?}")]
    NotFound(String),
    #[error("{0:?} is a controller; only devices have groups")]
    NotADevice(String),
    #[error("{0}")]
    BadSecret(String),
    #[error("cannot hash the secret: {0}")]
    Hash(String),
}

/// One identity as stored: what [`Identity`] says plus the hash.
#[derive(Clone, Debug)]
struct Entry {
    role: Role,
    groups: Vec<String>,
    /// As in the file: a PHC string of either scheme.
    hash: String,
    /// `hash` parsed once, when the file is read.
    scheme: Scheme,
    /// Added with a secret a person chose (`chosen = true` in the file): never moved to the
    /// fast scheme, whatever the secret looks like. Entries from before the fast scheme have
    /// no mark; see [`Credentials::write_migrations`].
    chosen: bool,
}

/// How an entry's secret is checked.
#[derive(Clone, Debug)]
enum Scheme {
    /// argon2id, for a secret a person chose: one hash on a verifier thread (or the cache).
    Argon2,
    /// [`FAST_SCHEME`], for a generated secret: microseconds, on the caller's thread.
    Fast(FastHash),
}

/// A parsed [`FAST_SCHEME`] hash.
#[derive(Clone, Debug)]
struct FastHash {
    salt: [u8; FAST_SALT_LEN],
    digest: [u8; FAST_DIGEST_LEN],
}

impl FastHash {
    fn new(secret: &[u8]) -> FastHash {
        let mut salt = [0u8; FAST_SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        let digest = fast_digest(&salt, secret);
        FastHash { salt, digest }
    }

    /// Constant-time: the comparison does not tell how much of a guess was right.
    fn matches(&self, secret: &[u8]) -> bool {
        bool::from(fast_digest(&self.salt, secret).ct_eq(&self.digest))
    }

    fn to_phc(&self) -> String {
        let salt = SaltString::encode_b64(&self.salt).expect("16 bytes fit a PHC salt");
        PasswordHash {
            algorithm: Ident::new(FAST_SCHEME).expect("a valid PHC identifier"),
            version: Some(FAST_VERSION),
            params: ParamsString::new(),
            salt: Some(salt.as_salt()),
            hash: Some(
                argon2::password_hash::Output::new(&self.digest).expect("32 bytes fit a PHC hash"),
            ),
        }
        .to_string()
    }
}

/// BLAKE2b-256 of `secret`, keyed with `salt` (see [`FAST_SCHEME`]).
fn fast_digest(salt: &[u8; FAST_SALT_LEN], secret: &[u8]) -> [u8; FAST_DIGEST_LEN] {
    let mut mac = Blake2bMac::<U32>::new_with_salt_and_personal(salt, &[], FAST_PERSONA)
        .expect("a 16-byte key and a 14-byte persona are within BLAKE2b's bounds");
    mac.update(secret);
    mac.finalize().into_bytes().into()
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default, rename = "device")]
    devices: Vec<DeviceRecord>,
    #[serde(default, rename = "controller")]
    controllers: Vec<ControllerRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRecord {
    name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    hash: String,
    #[serde(default, skip_serializing_if = "is_false")]
    chosen: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerRecord {
    name: String,
    hash: String,
    #[serde(default, skip_serializing_if = "is_false")]
    chosen: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

const FILE_HEADER: &str = "\
# pifleet-broker credentials. Managed with `pifleet-broker device|controller add|remove|list`.
# Holds hashes only (pifleet-blake2b for generated secrets, argon2id for chosen ones, which
# are marked `chosen`): each secret was shown once, when it was added. A running broker re-reads this
# file when it changes, and moves unmarked argon2id entries of generated secrets (files from
# older versions) to pifleet-blake2b on their first login.

";

/// The identities the broker accepts, loaded from one credentials file.
///
/// `Send + Sync`: the engine shares one `Arc<Credentials>`, asks
/// [`verify_quick`](Self::verify_quick) on its async tasks and calls
/// [`verify_with`](Self::verify_with) from its verifier threads. Changes (`add`, `remove`, ...)
/// need `&mut` and are meant for the admin commands, which then [`save`](Self::save). A broker
/// that re-reads the file builds a new `Credentials` and hands it the old one's cache
/// ([`keep_cache_of`](Self::keep_cache_of)).
pub struct Credentials {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// Per-process key of the cache digests, so the cache never holds anything that could be
    /// tested offline against guessed passwords (a core dump of it is useless without the key).
    cache_key: [u8; 32],
    /// User name -> keyed digest of the password that last verified for it. At most one entry
    /// per known identity, so it cannot grow beyond the file.
    cache: Mutex<HashMap<String, CtOutput<Blake2bMac512>>>,
    /// The moves of old argon2id entries to [`FAST_SCHEME`] that logins proved possible,
    /// shared by every copy read while this process runs ([`keep_cache_of`](Self::keep_cache_of)
    /// hands it on), so that whichever copy verified, all agree on one new hash per entry.
    migrations: Arc<Mutex<HashMap<String, Migration>>>,
    /// A write of the migrations failed or the file is not the broker's to write: not tried
    /// again with this copy (the next read of the file tries once more).
    migrations_blocked: std::sync::atomic::AtomicBool,
}

/// One entry's move: an unmarked argon2id hash (from before the fast scheme) and the
/// [`FAST_SCHEME`] hash of the same secret, noted when a login with a secret of the generated
/// shape verified against `from`. Either hash stands for the same secret
/// ([`Credentials::same_secret`]), for as long as the process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Migration {
    from: String,
    to: String,
}

impl Migration {
    fn pairs(&self, a: &str, b: &str) -> bool {
        (a == self.from && b == self.to) || (a == self.to && b == self.from)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("identities", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads an existing credentials file: the broker refuses to start without one when it is
    /// configured, rather than silently accepting nobody.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CredentialsError::Missing(path.to_path_buf()))
            }
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::from_toml_str(&text, path)
    }

    /// Reads the file, or starts an empty set when it does not exist yet: the first
    /// `device add` creates the file.
    pub fn load_or_new(path: &Path) -> Result<Credentials, CredentialsError> {
        match Self::load(path) {
            Err(CredentialsError::Missing(_)) => Ok(Self::empty(path)),
            other => other,
        }
    }

    fn empty(path: &Path) -> Credentials {
        let mut cache_key = [0u8; 32];
        OsRng.fill_bytes(&mut cache_key);
        Credentials {
            path: path.to_path_buf(),
            entries: BTreeMap::new(),
            cache_key,
            cache: Mutex::new(HashMap::new()),
            migrations: Arc::new(Mutex::new(HashMap::new())),
            migrations_blocked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Parses the file's text; `path` is where it came from and where [`save`](Self::save)
    /// writes.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Credentials, CredentialsError> {
        let parse_err = |message: String| CredentialsError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let file: FileFormat =
            toml::from_str(text).map_err(|e| parse_err(e.to_string().trim_end().to_string()))?;
        let mut creds = Self::empty(path);
        let records = file
            .devices
            .into_iter()
            .map(|d| (d.name, Role::Device, d.groups, d.hash, d.chosen))
            .chain(
                file.controllers
                    .into_iter()
                    .map(|c| (c.name, Role::Controller, Vec::new(), c.hash, c.chosen)),
            );
        for (name, role, groups, hash, chosen) in records {
            let name = Name::new(name).map_err(|e| parse_err(format!("{role}: {e}")))?;
            let groups =
                valid_groups(groups).map_err(|e| parse_err(format!("{role} {name}: {e}")))?;
            let scheme = parse_hash(&hash).map_err(|m| parse_err(format!("{role} {name}: {m}")))?;
            if let Some(prev) = creds.entries.get(name.as_str()) {
                return Err(parse_err(format!(
                    "{name:?} appears twice (as {} and as {role}); names are unique",
                    prev.role
                )));
            }
            creds.entries.insert(
                name.to_string(),
                Entry {
                    role,
                    groups,
                    hash,
                    scheme,
                    chosen,
                },
            );
        }
        Ok(creds)
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the file atomically (a temporary file in the same directory, then a rename), so a
    /// broker reading it concurrently or a crash midway never sees half a file. Mode 0600:
    /// the hashes are not secrets, but they allow offline guessing of weak ones.
    pub fn save(&self) -> Result<(), CredentialsError> {
        let mut file = FileFormat::default();
        for (name, e) in &self.entries {
            match e.role {
                Role::Device => file.devices.push(DeviceRecord {
                    name: name.clone(),
                    groups: e.groups.clone(),
                    hash: e.hash.clone(),
                    chosen: e.chosen,
                }),
                Role::Controller => file.controllers.push(ControllerRecord {
                    name: name.clone(),
                    hash: e.hash.clone(),
                    chosen: e.chosen,
                }),
            }
        }
        let body = toml::to_string(&file).map_err(|e| CredentialsError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        pifleet_client::files::write_atomic(
            &self.path,
            format!("{FILE_HEADER}{body}").as_bytes(),
            0o600,
        )
        .map_err(|source| CredentialsError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Adds an identity and returns its secret: `secret` if given (at least
    /// [`MIN_SECRET_LEN`] characters), hashed with argon2id, otherwise a fresh random one of 192
    /// bits, hashed with [`FAST_SCHEME`]. A given secret always gets argon2id, whatever it looks
    /// like, and is marked `chosen` in the file: only a secret generated here is known to be
    /// unguessable.
    ///
    /// Refuses a name that exists in either role instead of replacing it: replacing would
    /// silently lock out the Pi that holds the old secret.
    pub fn add(
        &mut self,
        name: &str,
        role: Role,
        groups: Vec<String>,
        secret: Option<String>,
    ) -> Result<String, CredentialsError> {
        let name = Name::new(name)?;
        if let Some(e) = self.entries.get(name.as_str()) {
            return Err(CredentialsError::Exists {
                name: name.to_string(),
                role: e.role,
            });
        }
        if role == Role::Controller && !groups.is_empty() {
            return Err(CredentialsError::NotADevice(name.to_string()));
        }
        let groups = valid_groups(groups)?;
        let chosen = secret.is_some();
        let (secret, hash, scheme) = match secret {
            Some(s) => {
                check_secret(&s)?;
                let hash = hash_secret(s.as_bytes())?;
                (s, hash, Scheme::Argon2)
            }
            None => {
                let s = generate_secret();
                let fast = FastHash::new(s.as_bytes());
                (s, fast.to_phc(), Scheme::Fast(fast))
            }
        };
        self.entries.insert(
            name.to_string(),
            Entry {
                role,
                groups,
                hash,
                scheme,
                chosen,
            },
        );
        self.forget(name.as_str());
        Ok(secret)
    }

    /// Removes an identity; returns what it was.
    pub fn remove(&mut self, name: &str) -> Result<Identity, CredentialsError> {
        let entry = self
            .entries
            .remove(name)
            .ok_or_else(|| CredentialsError::NotFound(name.to_string()))?;
        self.forget(name);
        Ok(Identity {
            name: name.to_string(),
            role: entry.role,
            groups: entry.groups,
        })
    }

    /// Replaces a device's groups (the ACL lets a device receive its groups' commands).
    pub fn set_groups(&mut self, name: &str, groups: Vec<String>) -> Result<(), CredentialsError> {
        let groups = valid_groups(groups)?;
        let entry = self
            .entries
            .get_mut(name)
            .ok_or_else(|| CredentialsError::NotFound(name.to_string()))?;
        if entry.role != Role::Device {
            return Err(CredentialsError::NotADevice(name.to_string()));
        }
        entry.groups = groups;
        Ok(())
    }

    /// Every identity, sorted by name. Never the hashes.
    pub fn list(&self) -> Vec<Identity> {
        self.entries
            .iter()
            .map(|(name, e)| identity(name, e))
            .collect()
    }

    /// The identity called `name`, if any.
    pub fn identity(&self, name: &str) -> Option<Identity> {
        self.entries.get(name).map(|e| identity(name, e))
    }

    /// Whether `name` is known, in either role (no hashing).
    pub fn exists(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a CONNECT's user name and password. Blocking (one argon2 hash for a chosen secret
    /// not verified before in this process; microseconds otherwise). The broker calls
    /// [`verify_quick`](Self::verify_quick) on its tasks and [`verify_with`](Self::verify_with)
    /// on its verifier threads instead; this allocates the hash's memory afresh and suits tools
    /// and tests.
    pub fn verify(&self, username: &str, password: &[u8]) -> Result<Identity, AuthError> {
        self.verify_with(username, password, &mut Memory::default())
    }

    /// [`verify`](Self::verify) hashing in `memory`, which the caller keeps from one check to
    /// the next: each hash needs [`ARGON2_M_KIB`] of it, and allocating that per login let
    /// glibc's per-thread arenas keep hundreds of MB after a burst of failed logins.
    pub fn verify_with(
        &self,
        username: &str,
        password: &[u8],
        memory: &mut Memory,
    ) -> Result<Identity, AuthError> {
        if let Some(verdict) = self.verify_quick(username, password) {
            return verdict;
        }
        let entry = self
            .entries
            .get(username)
            .expect("verify_quick answers for unknown users");
        if !password_matches(password, &entry.hash, memory) {
            return Err(AuthError::BadPassword);
        }
        if !entry.chosen && has_generated_shape(password) {
            let mut migrations = lock_ignoring_poison(&self.migrations);
            if migrations
                .get(username)
                .is_none_or(|m| m.from != entry.hash)
            {
                migrations.insert(
                    username.to_string(),
                    Migration {
                        from: entry.hash.clone(),
                        to: hash_generated(password),
                    },
                );
            }
        }
        self.cache
            .lock()
            .expect("cache lock")
            .insert(username.to_string(), self.digest(password));
        Ok(identity(username, entry))
    }

    /// The verdict on a login when it needs no argon2 hash, in about a microsecond, so the
    /// engine asks this on the connection's task before queueing a login for a verifier thread:
    /// - an identity with a generated secret ([`FAST_SCHEME`]): its verdict, either way;
    /// - an unknown user: refused, after the same fast check against a dummy hash, so it takes
    ///   as long as a known identity with a generated secret;
    /// - an identity with a chosen secret (argon2id): `Some(Ok(..))` if this password verified
    ///   before in this process ([`cached`](Self::cached)), else `None`: only argon2 can tell.
    pub fn verify_quick(
        &self,
        username: &str,
        password: &[u8],
    ) -> Option<Result<Identity, AuthError>> {
        let Some(entry) = self.entries.get(username) else {
            let _ = dummy_fast_hash().matches(password);
            return Some(Err(AuthError::UnknownUser));
        };
        match &entry.scheme {
            Scheme::Fast(fast) => Some(match fast.matches(password) {
                true => Ok(identity(username, entry)),
                false => Err(AuthError::BadPassword),
            }),
            Scheme::Argon2 => self.cached(username, password).map(Ok),
        }
    }

    /// Whether `name` has the same role and the same hash here and in `newer` (a later read of
    /// the file): if not, a login made with this file's secret no longer proves anything.
    pub fn same_secret(&self, newer: &Credentials, name: &str) -> bool {
        match (self.entries.get(name), newer.entries.get(name)) {
            (Some(a), Some(b)) => {
                a.role == b.role
                    && (a.hash == b.hash
                        || lock_ignoring_poison(&self.migrations)
                            .get(name)
                            .is_some_and(|m| m.pairs(&a.hash, &b.hash)))
            }
            _ => false,
        }
    }

    /// Takes over `older`'s verification cache (and its key) for the identities whose secret
    /// is unchanged, so re-reading the file does not make every device with a chosen secret
    /// pay for an argon2 hash again; removed identities and changed secrets are forgotten.
    pub fn keep_cache_of(&mut self, older: &Credentials) {
        let kept: HashMap<String, CtOutput<Blake2bMac512>> = older
            .cache
            .lock()
            .expect("cache lock")
            .iter()
            .filter(|(name, _)| older.same_secret(self, name))
            .map(|(name, digest)| (name.clone(), digest.clone()))
            .collect();
        self.cache_key = older.cache_key;
        *self.cache.get_mut().expect("cache lock") = kept;
        // One map for the whole process: a move noted by any copy holds for all of them.
        self.migrations = older.migrations.clone();
    }

    /// How many entries wait to be moved to the fast scheme (see
    /// [`write_migrations`](Self::write_migrations)); 0 once a write was given up.
    pub fn pending_migrations(&self) -> usize {
        if self
            .migrations_blocked
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return 0;
        }
        self.unwritten_migrations().len()
    }

    /// The noted moves whose entry this copy still has as it was when the login verified.
    fn unwritten_migrations(&self) -> Vec<(String, Migration)> {
        lock_ignoring_poison(&self.migrations)
            .iter()
            .filter(|(name, m)| self.entries.get(*name).is_some_and(|e| e.hash == m.from))
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect()
    }

    /// Moves argon2id entries to [`FAST_SCHEME`] in the file, transparently, for files written
    /// before that scheme existed, when `device add` hashed its generated secrets with argon2id
    /// too: such an entry has no `chosen` mark, and once a login proves a secret of exactly the
    /// generated shape ([`has_generated_shape`]: 192 random bits, nothing a person types), its
    /// hash is replaced by the fast one of that secret. Entries marked `chosen` (added with a
    /// secret a person chose, since this mark exists) always keep argon2id.
    ///
    /// Only a file that is the broker's to write is changed: a regular file (not a symlink)
    /// owned by the broker's user with its owner-write bit set; anything else (a file that
    /// configuration management owns, one made read-only) is left alone, reported once per read
    /// of the file. Before the first change, the file is copied once to
    /// `<file>.before-fast-hash` (the way back to an older pifleet-broker, which cannot read
    /// the fast hash). The file is read afresh under the edit lock ([`lock_for_edit`], not
    /// waited for: a busy lock means "next time") and only entries whose hash is still the
    /// argon2id one that verified are replaced, so an edit made meanwhile is neither lost nor
    /// overwritten. Returns how many entries it moved. The broker's own reload of the result
    /// keeps every session: [`same_secret`](Self::same_secret) knows both hashes.
    pub fn write_migrations(&self) -> Result<usize, CredentialsError> {
        let pending = self.unwritten_migrations();
        if pending.is_empty() {
            return Ok(0);
        }
        let result = (|| {
            self.writable_by_us()?;
            let Some(_lock) = try_lock_for_edit(&self.path)? else {
                return Ok(0);
            };
            let mut fresh = Credentials::load(&self.path)?;
            let mut moved = 0;
            for (name, m) in pending {
                let Some(now) = fresh.entries.get_mut(&name) else {
                    continue;
                };
                if now.hash != m.from || now.chosen || !matches!(now.scheme, Scheme::Argon2) {
                    continue;
                }
                let Ok(scheme) = parse_hash(&m.to) else {
                    continue;
                };
                now.hash = m.to;
                now.scheme = scheme;
                moved += 1;
            }
            if moved > 0 {
                self.keep_a_copy_before_the_first_move()?;
                fresh.save()?;
            }
            Ok(moved)
        })();
        if result.is_err() {
            self.migrations_blocked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Whether the file is the broker's to rewrite (see [`write_migrations`]): why not, if not.
    fn writable_by_us(&self) -> Result<(), CredentialsError> {
        let refuse = |why: &str| CredentialsError::Write {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{why}; set [auth] keep_old_hashes = true to silence this"),
            ),
        };
        let meta =
            std::fs::symlink_metadata(&self.path).map_err(|source| CredentialsError::Read {
                path: self.path.clone(),
                source,
            })?;
        if !meta.file_type().is_file() {
            return Err(refuse("not a regular file (a symlink?), left alone"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(refuse(&format!(
                    "owned by uid {}, not by this broker's uid {me}, left alone",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o200 == 0 {
                return Err(refuse("not writable by its owner (read-only), left alone"));
            }
        }
        Ok(())
    }

    /// Copies the file to `<file>.before-fast-hash` unless that copy exists (mode 0600, like
    /// the file).
    fn keep_a_copy_before_the_first_move(&self) -> Result<(), CredentialsError> {
        let copy = sibling(&self.path, ".before-fast-hash");
        if copy.exists() {
            return Ok(());
        }
        let err = |source| CredentialsError::Write {
            path: copy.clone(),
            source,
        };
        let text = std::fs::read(&self.path).map_err(err)?;
        pifleet_client::files::write_atomic(&copy, &text, 0o600).map_err(err)
    }

    /// Whether `name`'s secret is checked with argon2id (a chosen secret, or an entry from
    /// before the fast scheme); `None` for an unknown name.
    pub fn uses_argon2(&self, name: &str) -> Option<bool> {
        self.entries
            .get(name)
            .map(|e| matches!(e.scheme, Scheme::Argon2))
    }

    /// The identity, if this password verified for this user before in this process: a keyed
    /// digest and a map lookup (about a microsecond), no hashing. `None` says nothing about the
    /// password. Only argon2id entries are ever cached: the others are as fast to check.
    pub fn cached(&self, username: &str, password: &[u8]) -> Option<Identity> {
        let entry = self.entries.get(username)?;
        let digest = self.digest(password);
        let hit = self.cache.lock().expect("cache lock").get(username) == Some(&digest);
        hit.then(|| identity(username, entry))
    }

    fn digest(&self, password: &[u8]) -> CtOutput<Blake2bMac512> {
        let mut mac = <Blake2bMac512 as KeyInit>::new_from_slice(&self.cache_key)
            .expect("32 bytes is a valid BLAKE2b key length");
        mac.update(password);
        mac.finalize()
    }

    fn forget(&mut self, name: &str) {
        self.cache.get_mut().expect("cache lock").remove(name);
    }
}

/// Whether `secret` looks exactly like one [`generate_secret`] makes: [`SECRET_LEN`]
/// characters of [`SECRET_ALPHABET`], at least 14 of them distinct, with an upper-case letter,
/// a lower-case letter and a digit. A generated secret has about 25 distinct characters and
/// all three classes; it misses this shape about once in 250 (no digit, mostly), and then just
/// stays argon2id. The extra conditions keep out the likes of 32 times the same letter or a
/// lower-case passphrase. Only used to move unmarked entries from before the fast scheme
/// ([`Credentials::write_migrations`]).
fn has_generated_shape(secret: &[u8]) -> bool {
    if secret.len() != SECRET_LEN || !secret.iter().all(|b| SECRET_ALPHABET.contains(b)) {
        return false;
    }
    let mut seen = [false; 256];
    secret.iter().for_each(|&b| seen[b as usize] = true);
    seen.iter().filter(|s| **s).count() >= 14
        && secret.iter().any(u8::is_ascii_uppercase)
        && secret.iter().any(u8::is_ascii_lowercase)
        && secret.iter().any(u8::is_ascii_digit)
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Held while the credentials file at `path` is read, changed and written, by the admin
/// commands and by the broker's [`Credentials::write_migrations`], so that two editors never
/// interleave and one's change is not lost to the other's older copy. An advisory lock on
/// `<file>.lock` beside it (the file itself is replaced by a rename on every save, so it cannot
/// carry the lock); released when the guard drops. `create`: the file may not exist yet
/// (`add`, `init`); otherwise a missing file is [`CredentialsError::Missing`] before any lock
/// file is made.
pub fn lock_for_edit(path: &Path, create: bool) -> Result<std::fs::File, CredentialsError> {
    if !create && !path.exists() {
        return Err(CredentialsError::Missing(path.to_path_buf()));
    }
    let file = open_lock(path, create)?;
    file.lock().map_err(|source| CredentialsError::Write {
        path: sibling(path, ".lock"),
        source,
    })?;
    Ok(file)
}

/// [`lock_for_edit`] of an existing file without waiting: `None` while someone else holds it.
fn try_lock_for_edit(path: &Path) -> Result<Option<std::fs::File>, CredentialsError> {
    let file = open_lock(path, false)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(source)) => Err(CredentialsError::Write {
            path: sibling(path, ".lock"),
            source,
        }),
    }
}

/// The lock file: opened read-only if it exists (a lock needs no write access, so a lock
/// file another user made works too), else created beside the credentials file.
fn open_lock(path: &Path, create_dir: bool) -> Result<std::fs::File, CredentialsError> {
    let lock_path = sibling(path, ".lock");
    let err = |source| CredentialsError::Write {
        path: lock_path.clone(),
        source,
    };
    if let Ok(f) = std::fs::File::open(&lock_path) {
        return Ok(f);
    }
    if create_dir {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(err)
}

fn identity(name: &str, e: &Entry) -> Identity {
    Identity {
        name: name.to_string(),
        role: e.role,
        groups: e.groups.clone(),
    }
}

/// Validates and de-duplicates group names, keeping their order.
fn valid_groups(groups: Vec<String>) -> Result<Vec<String>, pifleet_proto::NameError> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        let g = Name::new(g)?.to_string();
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

fn check_secret(s: &str) -> Result<(), CredentialsError> {
    let bad = |m: String| Err(CredentialsError::BadSecret(m));
    if s.chars().count() < MIN_SECRET_LEN {
        return bad(format!(
            "the secret is shorter than {MIN_SECRET_LEN} characters; use a longer one or \
             leave it out to have a random one generated"
        ));
    }
    if s.len() > MAX_SECRET_LEN {
        return bad(format!("the secret is longer than {MAX_SECRET_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return bad("the secret contains control characters (a line break?)".into());
    }
    Ok(())
}

/// Parses a stored hash: argon2id (valid parameters) or [`FAST_SCHEME`] (version 1, 16 salt
/// bytes, 32 digest bytes). Anything else is refused, so a typo cannot produce an identity
/// nobody can log in as, or one any password opens.
fn parse_hash(hash: &str) -> Result<Scheme, String> {
    let parsed =
        PasswordHash::new(hash).map_err(|e| format!("`hash` is not a PHC hash string ({e})"))?;
    if parsed.algorithm == argon2::ARGON2ID_IDENT {
        Params::try_from(&parsed)
            .map_err(|e| format!("`hash` has invalid argon2 parameters ({e})"))?;
        return Ok(Scheme::Argon2);
    }
    if parsed.algorithm.as_str() != FAST_SCHEME {
        return Err(format!(
            "`hash` uses {}, expected argon2id or {FAST_SCHEME}",
            parsed.algorithm
        ));
    }
    let bad = |what: &str| format!("`hash` is not a valid {FAST_SCHEME} hash ({what})");
    if parsed.version != Some(FAST_VERSION) || !parsed.params.is_empty() {
        return Err(bad("expected `v=1` and no parameters"));
    }
    let mut salt = [0u8; FAST_SALT_LEN];
    let mut buf = [0u8; 64];
    match parsed.salt.map(|s| s.decode_b64(&mut buf)) {
        Some(Ok(s)) if s.len() == FAST_SALT_LEN => salt.copy_from_slice(s),
        _ => return Err(bad("expected a salt of 16 bytes")),
    }
    let mut digest = [0u8; FAST_DIGEST_LEN];
    match parsed.hash {
        Some(h) if h.len() == FAST_DIGEST_LEN => digest.copy_from_slice(h.as_bytes()),
        _ => return Err(bad("expected a digest of 32 bytes")),
    }
    Ok(Scheme::Fast(FastHash { salt, digest }))
}

/// A random secret from [`SECRET_ALPHABET`]. 256 is a multiple of 64, so masking a random
/// byte picks each character with equal probability.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_LEN];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| SECRET_ALPHABET[(b & 63) as usize] as char)
        .collect()
}

fn argon2() -> Argon2<'static> {
    let params =
        Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a secret with a fresh salt into a PHC string (which records the parameters, so
/// verifying keeps working if the defaults change later).
pub fn hash_secret(secret: &[u8]) -> Result<String, CredentialsError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|e| CredentialsError::Hash(e.to_string()))
}

/// Working memory for argon2, reused from one verification to the next (see
/// [`Credentials::verify_with`]). Allocated on first use and grown to the largest `m` met, so
/// it holds [`ARGON2_M_KIB`] for the hashes `add` writes.
#[derive(Default)]
pub struct Memory(Vec<argon2::Block>);

impl Memory {
    fn blocks(&mut self, count: usize) -> &mut [argon2::Block] {
        if self.0.len() < count {
            self.0.resize(count, argon2::Block::default());
        }
        &mut self.0[..count]
    }
}

/// Whether `password` hashes to the PHC string `phc` (algorithm, version, parameters and salt
/// taken from it), computed in `memory` rather than in a fresh allocation. The comparison is
/// constant-time (`password_hash::Output`'s `PartialEq`).
fn password_matches(password: &[u8], phc: &str, memory: &mut Memory) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = [0u8; argon2::password_hash::Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let blocks = memory.blocks(params.block_count());
    Argon2::new(algorithm, version.unwrap_or_default(), params)
        .hash_password_into_with_memory(password, salt, out, blocks)
        .is_ok()
        && argon2::password_hash::Output::new(out).is_ok_and(|o| o == expected)
}

/// A hash of a random secret nobody knows, checked for unknown users so that they cost as much
/// as known identities with generated secrets.
fn dummy_fast_hash() -> &'static FastHash {
    static DUMMY: OnceLock<FastHash> = OnceLock::new();
    DUMMY.get_or_init(|| FastHash::new(generate_secret().as_bytes()))
}

/// The [`FAST_SCHEME`] hash of `secret` with a fresh salt, as `add` stores it for a generated
/// secret. Meant only for secrets with as much entropy as [`generate_secret`]'s.
pub fn hash_generated(secret: &[u8]) -> String {
    FastHash::new(secret).to_phc()
}

#[cfg(test)]
pub(crate) mod test {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("pifleet-{tag}-"))
            .tempdir()
            .unwrap()
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn round_trip_through_a_real_file() {
        let dir = temp_dir("roundtrip");
        let path = dir.path().join("sub/credentials.toml");
        let mut c = Credentials::load_or_new(&path).unwrap();
        assert!(c.is_empty());
        let s1 = c
            .add(
                "kitchen",
                Role::Device,
                groups(&["down", "lights", "down"]),
                None,
            )
            .unwrap();
        let s2 = c
            .add(
                "laptop",
                Role::Controller,
                vec![],
                Some("correct horse battery".into()),
            )
            .unwrap();
        assert_eq!(s2, "correct horse battery");
        c.save().unwrap();

        let c = Credentials::load(&path).unwrap();
        assert_eq!(c.len(), 2);
        let kitchen = Identity {
            name: "kitchen".into(),
            role: Role::Device,
            groups: groups(&["down", "lights"]),
        };
        assert_eq!(c.verify("kitchen", s1.as_bytes()), Ok(kitchen.clone()));
        // The second time comes from the cache and says the same.
        assert_eq!(c.verify("kitchen", s1.as_bytes()), Ok(kitchen.clone()));
        assert_eq!(
            c.verify("laptop", s2.as_bytes()).unwrap().role,
            Role::Controller
        );
        assert_eq!(
            c.list().iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["kitchen", "laptop"]
        );
        assert_eq!(c.identity("kitchen"), Some(kitchen));
        assert!(c.exists("laptop") && !c.exists("garage"));
    }

    #[test]
    fn wrong_password_and_unknown_user_are_refused() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        let s = c.add("kitchen", Role::Device, vec![], None).unwrap();
        assert_eq!(
            c.verify("kitchen", b"not the secret"),
            Err(AuthError::BadPassword)
        );
        assert_eq!(c.verify("kitchen", b""), Err(AuthError::BadPassword));
        assert_eq!(
            c.verify("garage", s.as_bytes()),
            Err(AuthError::UnknownUser)
        );
        // A verified password in the cache does not let a different one in.
        assert!(c.verify("kitchen", s.as_bytes()).is_ok());
        assert_eq!(
            c.verify("kitchen", b"not the secret"),
            Err(AuthError::BadPassword)
        );
        // Removing forgets the cached verification too.
        c.remove("kitchen").unwrap();
        assert_eq!(
            c.verify("kitchen", s.as_bytes()),
            Err(AuthError::UnknownUser)
        );
    }

    #[test]
    fn the_file_holds_no_secret_and_is_private() {
        let dir = temp_dir("nosecret");
        let path = dir.path().join("credentials.toml");
        let mut c = Credentials::load_or_new(&path).unwrap();
        let s = c.add("kitchen", Role::Device, vec![], None).unwrap();
        c.save().unwrap();
        let chosen = c
            .add(
                "laptop",
                Role::Controller,
                vec![],
                Some("correct horse battery".into()),
            )
            .unwrap();
        c.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&s) && !text.contains(&chosen), "{text}");
        assert!(text.contains("hash = \"$pifleet-blake2b$v=1$"), "{text}");
        assert!(
            text.contains("hash = \"$argon2id$v=19$m=8192,t=2,p=1$"),
            "{text}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn generated_secrets_are_long_url_safe_and_distinct() {
        let a = generate_secret();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.bytes().all(|b| SECRET_ALPHABET.contains(&b)), "{a}");
        assert_ne!(a, generate_secret());
    }

    #[test]
    fn duplicates_are_refused_across_roles_with_a_hint() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        c.add("kitchen", Role::Device, vec![], None).unwrap();
        let e = c
            .add("kitchen", Role::Controller, vec![], None)
            .unwrap_err();
        assert!(matches!(
            e,
            CredentialsError::Exists {
                role: Role::Device,
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("pifleet-broker device remove kitchen"),
            "{e}"
        );
    }

    #[test]
    fn remove_and_set_groups() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        c.add("kitchen", Role::Device, vec![], None).unwrap();
        c.add("laptop", Role::Controller, vec![], None).unwrap();
        c.set_groups("kitchen", groups(&["down"])).unwrap();
        assert_eq!(c.identity("kitchen").unwrap().groups, ["down"]);
        assert!(matches!(
            c.set_groups("laptop", groups(&["down"])),
            Err(CredentialsError::NotADevice(_))
        ));
        assert!(matches!(
            c.set_groups("kitchen", groups(&["a/b"])),
            Err(CredentialsError::InvalidName(_))
        ));
        assert_eq!(c.remove("kitchen").unwrap().groups, ["down"]);
        assert!(matches!(
            c.remove("kitchen"),
            Err(CredentialsError::NotFound(_))
        ));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bad_names_and_secrets_are_refused() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        for bad in ["", "a/b", "+", "#", "all", "$SYS"] {
            assert!(
                matches!(
                    c.add(bad, Role::Device, vec![], None),
                    Err(CredentialsError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            c.add("kitchen", Role::Device, vec![], Some("short".into())),
            Err(CredentialsError::BadSecret(_))
        ));
        assert!(matches!(
            c.add(
                "kitchen",
                Role::Device,
                vec![],
                Some("long enough\nbut two lines".into())
            ),
            Err(CredentialsError::BadSecret(_))
        ));
        assert!(c.is_empty());
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = temp_dir("loaderr");
        let path = dir.path().join("missing.toml");
        let e = Credentials::load(&path).unwrap_err();
        assert!(matches!(e, CredentialsError::Missing(_)));
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(e.to_string().contains("missing.toml"), "{e}");

        let hash = hash_secret(b"some secret here").unwrap();
        let cases = [
            (format!("[[device]]\nname = \"a/b\"\nhash = '{hash}'\n"), "contains '/'"),
            ("[[device]]\nname = \"a\"\nhash = \"plain\"\n".to_string(), "PHC"),
            (
                format!("[[device]]\nname = \"a\"\nhash = '{hash}'\n[[controller]]\nname = \"a\"\nhash = '{hash}'\n"),
                "appears twice",
            ),
            (format!("[[device]]\nname = \"a\"\npassword = \"x\"\nhash = '{hash}'\n"), "password"),
        ];
        for (text, needle) in cases {
            let e = Credentials::from_toml_str(&text, &path).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn credentials_are_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Credentials>();
        let mut c = Credentials::empty(Path::new("unused.toml"));
        let s = c.add("kitchen", Role::Device, vec![], None).unwrap();
        let c = std::sync::Arc::new(c);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (c, s) = (c.clone(), s.clone());
                std::thread::spawn(move || c.verify("kitchen", s.as_bytes()).is_ok())
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn hashing_in_reused_memory_agrees_with_argon2s_own_verification() {
        use argon2::password_hash::PasswordVerifier;
        let hash = hash_secret(b"correct horse battery").unwrap();
        let parsed = PasswordHash::new(&hash).unwrap();
        let mut memory = Memory::default();
        for (password, right) in [
            (&b"correct horse battery"[..], true),
            (b"correct horse batterz", false),
            (b"", false),
        ] {
            assert_eq!(
                Argon2::default().verify_password(password, &parsed).is_ok(),
                right
            );
            assert_eq!(password_matches(password, &hash, &mut memory), right);
        }
        // One block per KiB of m, allocated once and kept.
        assert_eq!(memory.0.len(), ARGON2_M_KIB as usize);
        assert!(!password_matches(b"x", "not a PHC string", &mut memory));
    }

    #[test]
    fn the_cache_answers_only_for_a_password_that_verified() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        let s = c
            .add(
                "kitchen",
                Role::Device,
                vec![],
                Some("a chosen secret".into()),
            )
            .unwrap();
        assert_eq!(c.cached("kitchen", s.as_bytes()), None, "not verified yet");
        let mut memory = Memory::default();
        let kitchen = c.verify_with("kitchen", s.as_bytes(), &mut memory).unwrap();
        assert_eq!(c.cached("kitchen", s.as_bytes()), Some(kitchen));
        assert_eq!(c.cached("kitchen", b"not the secret"), None);
        assert_eq!(c.cached("garage", s.as_bytes()), None);
    }

    #[test]
    fn a_generated_secret_gets_the_fast_hash_and_a_chosen_one_argon2id() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        let generated = c.add("kitchen", Role::Device, vec![], None).unwrap();
        // Even a chosen secret shaped exactly like a generated one: only `add` knows it is
        // random.
        let chosen = generate_secret();
        c.add("laptop", Role::Controller, vec![], Some(chosen.clone()))
            .unwrap();
        assert_eq!(c.uses_argon2("kitchen"), Some(false));
        assert_eq!(c.uses_argon2("laptop"), Some(true));
        assert_eq!(c.uses_argon2("garage"), None);
        // The fast one is answered without a verifier, the argon2 one only once it is cached.
        assert_eq!(
            c.verify_quick("kitchen", generated.as_bytes())
                .map(|v| v.map(|i| i.name)),
            Some(Ok("kitchen".to_string()))
        );
        assert_eq!(
            c.verify_quick("kitchen", b"not the secret"),
            Some(Err(AuthError::BadPassword))
        );
        assert_eq!(c.verify_quick("laptop", chosen.as_bytes()), None);
        assert!(c.verify("laptop", chosen.as_bytes()).is_ok());
        assert!(matches!(
            c.verify_quick("laptop", chosen.as_bytes()),
            Some(Ok(_))
        ));
        assert_eq!(c.verify_quick("laptop", b"not the secret"), None);
        assert_eq!(
            c.verify_quick("garage", generated.as_bytes()),
            Some(Err(AuthError::UnknownUser))
        );
        // Fast checks are not cached: they need no cache.
        assert!(c.cache.lock().unwrap().get("kitchen").is_none());
    }

    /// The stored format is a promise to every file written: a fixed salt and secret must keep
    /// giving this exact string.
    #[test]
    fn the_fast_hash_format_is_stable() {
        let fast = FastHash {
            salt: *b"0123456789abcdef",
            digest: fast_digest(b"0123456789abcdef", b"ZH7t2r-Ubq1KmvN0yXa_sE4Lp9dWcF3g"),
        };
        let phc = fast.to_phc();
        assert_eq!(phc, FAST_FIXTURE);
        let Scheme::Fast(parsed) = parse_hash(FAST_FIXTURE).unwrap() else {
            panic!("not parsed as the fast scheme");
        };
        assert!(parsed.matches(b"ZH7t2r-Ubq1KmvN0yXa_sE4Lp9dWcF3g"));
        assert!(!parsed.matches(b"ZH7t2r-Ubq1KmvN0yXa_sE4Lp9dWcF3h"));
        assert!(!parsed.matches(b""));
    }

    /// Also what Python's `hashlib.blake2b(secret, digest_size=32, key=salt,
    /// person=b"pifleet-secret")` gives, base64 without padding: the scheme is plain BLAKE2b.
    const FAST_FIXTURE: &str =
        "$pifleet-blake2b$v=1$MDEyMzQ1Njc4OWFiY2RlZg$UxUKJQcfh8o2/PbygsfB+ejr+cCthzd8WVeDRQMsmtA";

    #[test]
    fn malformed_fast_hashes_are_refused_when_the_file_is_read() {
        let good = hash_generated(generate_secret().as_bytes());
        assert!(parse_hash(&good).is_ok());
        let (head, digest) = good.rsplit_once('$').unwrap();
        for bad in [
            good.replace("$v=1$", "$v=2$"),
            good.replace("$v=1$", "$v=1$x=1$"),
            // A salt of 12 bytes, a digest of 24.
            format!("$pifleet-blake2b$v=1$MDEyMzQ1Njc4OWFi${digest}"),
            format!("{head}${}", &digest[..32]),
            format!("{head}$"),
            "$pifleet-blake2$v=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAA".to_string(),
        ] {
            let e = parse_hash(&bad).err();
            assert!(e.is_some(), "{bad:?} was accepted");
        }
        let text = format!(
            "[[device]]\nname = \"a\"\nhash = '{}'\n",
            good.replace("$v=1$", "$v=2$")
        );
        let e = Credentials::from_toml_str(&text, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("device a"), "{e}");
        assert!(e.to_string().contains("pifleet-blake2b"), "{e}");
    }

    /// A file as written before the fast scheme: argon2id of a generated secret, no mark.
    pub(crate) fn old_file(path: &Path, secret: &str) -> String {
        let old = hash_secret(secret.as_bytes()).unwrap();
        std::fs::write(
            path,
            format!("[[device]]\nname = \"kitchen\"\nhash = '{old}'\n"),
        )
        .unwrap();
        old
    }

    /// Migration: an unmarked argon2id entry (from before the fast scheme) keeps working, and
    /// once a login proved a secret of the generated shape it is moved to the fast scheme in
    /// the file; the copy that verified counts the moved entry as the same secret.
    #[test]
    fn an_old_argon2_entry_of_a_generated_secret_moves_to_the_fast_scheme() {
        let dir = temp_dir("migrate");
        let path = dir.path().join("credentials.toml");
        let secret = generate_secret();
        let old = old_file(&path, &secret);
        let c = Credentials::load(&path).unwrap();
        assert_eq!(c.uses_argon2("kitchen"), Some(true));
        assert_eq!(c.verify_quick("kitchen", secret.as_bytes()), None);
        assert_eq!(c.pending_migrations(), 0);
        assert!(c.verify("kitchen", b"a wrong secret here").is_err());
        assert_eq!(c.pending_migrations(), 0, "a failed login proves nothing");
        assert!(c.verify("kitchen", secret.as_bytes()).is_ok());
        assert_eq!(c.pending_migrations(), 1);
        assert_eq!(c.write_migrations().unwrap(), 1);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&old) && text.contains("$pifleet-blake2b$"),
            "{text}"
        );
        let mut new = Credentials::load(&path).unwrap();
        assert_eq!(new.uses_argon2("kitchen"), Some(false));
        assert!(new
            .verify_quick("kitchen", secret.as_bytes())
            .unwrap()
            .is_ok());
        assert!(c.same_secret(&new, "kitchen"), "the move is no new secret");
        new.keep_cache_of(&c);
        assert_eq!(new.pending_migrations(), 0);
        // Written once: the copy that verified finds nothing more to move.
        assert_eq!(c.write_migrations().unwrap(), 0);
    }

    /// What stays argon2id: an entry marked chosen (whatever its secret looks like), and an
    /// unmarked one whose secret does not have the generated shape.
    #[test]
    fn chosen_secrets_and_other_shapes_stay_argon2() {
        let dir = temp_dir("migrate-not");
        let path = dir.path().join("credentials.toml");
        let generated_shape = generate_secret();
        let mut c = Credentials::load_or_new(&path).unwrap();
        c.add(
            "garage",
            Role::Device,
            vec![],
            Some(generated_shape.clone()),
        )
        .unwrap();
        c.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("chosen = true"), "{text}");
        let c = Credentials::load(&path).unwrap();
        assert!(c.verify("garage", generated_shape.as_bytes()).is_ok());
        assert_eq!(c.pending_migrations(), 0);

        let typed = "correct horse battery staple";
        old_file(&path, typed);
        let c = Credentials::load(&path).unwrap();
        assert!(c.verify("kitchen", typed.as_bytes()).is_ok());
        assert_eq!(c.pending_migrations(), 0);
    }

    /// An edit made between the login and the write (the device removed and added again
    /// with a new secret) is kept: only an entry whose hash is still the one that verified
    /// is moved.
    #[test]
    fn a_migration_never_overwrites_an_edit_made_meanwhile() {
        let dir = temp_dir("migrate-edit");
        let path = dir.path().join("credentials.toml");
        let secret = generate_secret();
        old_file(&path, &secret);
        let c = Credentials::load(&path).unwrap();
        assert!(c.verify("kitchen", secret.as_bytes()).is_ok());
        let mut edit = Credentials::load(&path).unwrap();
        edit.remove("kitchen").unwrap();
        let again = edit.add("kitchen", Role::Device, vec![], None).unwrap();
        edit.add("garage", Role::Device, vec![], None).unwrap();
        edit.save().unwrap();
        assert_eq!(c.write_migrations().unwrap(), 0);
        let now = Credentials::load(&path).unwrap();
        assert!(now.verify("kitchen", again.as_bytes()).is_ok());
        assert!(now.exists("garage"));
        assert!(!c.same_secret(&now, "kitchen"));
    }

    /// A file the broker cannot write: the entry keeps argon2id and logins keep working.
    #[test]
    fn a_migration_that_cannot_be_written_is_given_up_and_logins_go_on() {
        let dir = temp_dir("migrate-ro");
        let path = dir.path().join("credentials.toml");
        let secret = generate_secret();
        old_file(&path, &secret);
        let c = Credentials::load(&path).unwrap();
        assert!(c.verify("kitchen", secret.as_bytes()).is_ok());
        // The lock file cannot be created where the file's directory is gone.
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), b"not a directory").unwrap();
        assert!(c.write_migrations().is_err());
        assert_eq!(c.pending_migrations(), 0, "tried once, not every second");
        assert!(c.verify("kitchen", secret.as_bytes()).is_ok());
        std::fs::remove_file(dir.path()).unwrap();
    }

    /// Copies read one after the other share one note per entry, so whichever verified, all
    /// agree on the new hash; after the move, the file put back as it was (an editor, a
    /// config-management run) is still the same secret, not a revocation.
    #[test]
    fn copies_share_the_move_and_either_hash_is_the_same_secret() {
        let dir = temp_dir("migrate-share");
        let path = dir.path().join("credentials.toml");
        let secret = generate_secret();
        old_file(&path, &secret);
        let before = std::fs::read_to_string(&path).unwrap();
        let c0 = Credentials::load(&path).unwrap();
        let mut c1 = Credentials::load(&path).unwrap();
        c1.keep_cache_of(&c0);
        assert!(c0.verify("kitchen", secret.as_bytes()).is_ok());
        assert!(c1.verify("kitchen", secret.as_bytes()).is_ok());
        assert_eq!(c1.write_migrations().unwrap(), 1);
        let mut moved = Credentials::load(&path).unwrap();
        moved.keep_cache_of(&c1);
        assert!(
            c0.same_secret(&moved, "kitchen"),
            "a login checked by the older copy"
        );
        assert!(c1.same_secret(&moved, "kitchen"));
        assert_eq!(
            c0.write_migrations().unwrap(),
            0,
            "one move, not one per copy"
        );
        // The file put back.
        std::fs::write(&path, &before).unwrap();
        let mut back = Credentials::load(&path).unwrap();
        back.keep_cache_of(&moved);
        assert!(moved.same_secret(&back, "kitchen"));
        // The first move kept the file as it was.
        let copy = dir.path().join("credentials.toml.before-fast-hash");
        assert_eq!(std::fs::read_to_string(copy).unwrap(), before);
    }

    /// A file that is not the broker's to write is left alone, byte for byte; a busy edit lock
    /// means "later", not "never".
    #[test]
    fn a_read_only_file_is_left_alone_and_a_busy_lock_is_not_waited_for() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("migrate-ro2");
        let path = dir.path().join("credentials.toml");
        let secret = generate_secret();
        old_file(&path, &secret);
        let c = Credentials::load(&path).unwrap();
        assert!(c.verify("kitchen", secret.as_bytes()).is_ok());

        let held = lock_for_edit(&path, false).unwrap();
        assert_eq!(c.write_migrations().unwrap(), 0);
        assert_eq!(c.pending_migrations(), 1, "still to do");
        drop(held);

        let before = std::fs::read(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let e = c.write_migrations().unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(c.pending_migrations(), 0, "reported once, not every second");
        assert!(c.verify("kitchen", secret.as_bytes()).is_ok());
    }

    #[test]
    fn editing_a_missing_file_makes_no_lock_file() {
        let dir = temp_dir("lock-missing");
        let path = dir.path().join("typo").join("credentials.toml");
        let e = lock_for_edit(&path, false).unwrap_err();
        assert!(matches!(e, CredentialsError::Missing(_)), "{e}");
        assert!(!dir.path().join("typo").exists());
    }

    #[test]
    fn the_generated_shape() {
        let fits = (0..10_000)
            .filter(|_| has_generated_shape(generate_secret().as_bytes()))
            .count();
        assert!(
            fits > 9_900,
            "{fits} of 10,000 generated secrets have the shape"
        );
        let mut s = generate_secret().into_bytes();
        assert!(!has_generated_shape(&s[..31]));
        s[0] = b'+';
        assert!(!has_generated_shape(&s));
        assert!(!has_generated_shape(&[b'a'; 32]));
        assert!(!has_generated_shape(b"abcdefghijklmnopABCDEFGHIJKLMNO!"));
        assert!(!has_generated_shape(b"my_garage_door_password_2024_abc"));
        assert!(has_generated_shape(b"q7Xk-2mZ_Rb9sLw4TnV0cYhJ8dPa3GfE"));
    }

    #[test]
    fn a_reread_file_keeps_the_cache_only_for_unchanged_secrets() {
        let dir = temp_dir("reread");
        let path = dir.path().join("credentials.toml");
        let mut c = Credentials::load_or_new(&path).unwrap();
        let secret = |n: &str| format!("chosen secret of {n}");
        for n in ["a", "b", "c"] {
            c.add(n, Role::Device, vec![], Some(secret(n))).unwrap();
        }
        c.save().unwrap();
        let old = Credentials::load(&path).unwrap();
        for n in ["a", "b", "c"] {
            assert!(old.verify(n, secret(n).as_bytes()).is_ok());
        }
        // b's secret changes, c goes, d arrives.
        let mut edit = Credentials::load(&path).unwrap();
        edit.remove("b").unwrap();
        edit.add(
            "b",
            Role::Device,
            vec![],
            Some("another secret for b".into()),
        )
        .unwrap();
        edit.remove("c").unwrap();
        edit.add("d", Role::Device, vec![], None).unwrap();
        edit.set_groups("a", vec!["down".into()]).unwrap();
        edit.save().unwrap();

        let mut new = Credentials::load(&path).unwrap();
        new.keep_cache_of(&old);
        assert!(old.same_secret(&new, "a"));
        assert!(!old.same_secret(&new, "b") && !old.same_secret(&new, "c"));
        assert!(!old.same_secret(&new, "d"));
        // a is still cached (with its new groups), b's old secret is not, nor anything of c.
        let a = new.cached("a", secret("a").as_bytes()).unwrap();
        assert_eq!(a.groups, ["down"]);
        assert_eq!(new.cached("b", secret("b").as_bytes()), None);
        assert_eq!(new.cache.lock().unwrap().len(), 1);
        assert_eq!(
            new.verify("b", secret("b").as_bytes()),
            Err(AuthError::BadPassword)
        );
    }

    /// `cargo test -p pifleet-broker --release --lib -- --ignored --nocapture hash_cost`
    /// prints what one verification costs here (the figures in [`ARGON2_M_KIB`] and
    /// docs/security.md).
    #[test]
    #[ignore]
    fn hash_cost() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        let chosen = "a secret somebody chose".to_string();
        c.add("kitchen", Role::Device, vec![], Some(chosen.clone()))
            .unwrap();
        let generated = c.add("garage", Role::Device, vec![], None).unwrap();
        let time = |n: u32, f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n
        };
        let cold = time(20, &mut || {
            c.cache.lock().unwrap().clear();
            c.verify("kitchen", chosen.as_bytes()).unwrap();
        });
        let warm = time(10_000, &mut || {
            c.verify("kitchen", chosen.as_bytes()).unwrap();
        });
        let fast = time(10_000, &mut || {
            c.verify("garage", generated.as_bytes()).unwrap();
        });
        let unknown = time(10_000, &mut || {
            let _ = c.verify("nobody", generated.as_bytes());
        });
        println!(
            "argon2id verify: {cold:?}; cached: {warm:?}; {FAST_SCHEME} verify: {fast:?}; \
             unknown user: {unknown:?}"
        );
    }
}
