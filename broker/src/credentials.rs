//! Identities (devices and controllers) and the credentials file that holds their argon2id
//! hashes.
//!
//! The file is TOML, managed by `pifleet-broker device|controller add|remove|list`, and never
//! holds a secret, only its hash, so a leaked copy does not let anyone log in:
//!
//! ```toml
//! [[device]]
//! name = "kitchen"
//! groups = ["downstairs"]
//! hash = "$argon2id$v=19$m=8192,t=2,p=1$...$..."
//!
//! [[controller]]
//! name = "laptop"
//! hash = "$argon2id$v=19$m=8192,t=2,p=1$...$..."
//! ```
//!
//! A name is unique across both roles: the MQTT user name alone decides the identity, and with
//! it what the [ACL](crate::acl) allows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::digest::{CtOutput, KeyInit, Mac};
use blake2::Blake2bMac512;
use pifleet_proto::Name;
use serde::{Deserialize, Serialize};

/// Argon2id memory cost in KiB (8 MiB).
///
/// Why these light parameters (m = 8 MiB, t = 2, p = 1) rather than the OWASP-style 19-64 MiB:
/// after a broker restart every device of the fleet reconnects within seconds, and each first
/// login costs one hash. Measured (the ignored test `hash_cost`): one verification takes 8 ms
/// on one core of a 2-core x86 server VM in a release build (140 ms in a debug build), so that
/// box admits about 250 logins a second and 5,000 devices in 20 s; a Raspberry Pi 4 core is
/// several times slower (not measured). Later reconnects of the same device hit the in-memory
/// cache and cost about a microsecond. The secrets `device add` generates carry 192 random
/// bits, for which the hash cost does not matter; it only slows guessing of weak, hand-chosen
/// secrets if the file leaks.
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
        "credentials file {} does not exist; create it by adding an identity: \
         `pifleet-broker device add NAME --credentials {}`",
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
    hash: String,
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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerRecord {
    name: String,
    hash: String,
}

const FILE_HEADER: &str = "\
# pifleet-broker credentials. Managed with `pifleet-broker device|controller add|remove|list`.
# Holds argon2id hashes only: each secret was shown once, when it was added.

";

/// The identities the broker accepts, loaded from one credentials file.
///
/// `Send + Sync`: the engine shares one `Arc<Credentials>`, asks [`cached`](Self::cached) on its
/// async tasks and calls [`verify_with`](Self::verify_with) from its verifier threads. Changes (`add`, `remove`, ...) need `&mut` and are meant for the
/// admin commands, which then [`save`](Self::save).
pub struct Credentials {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// Per-process key of the cache digests, so the cache never holds anything that could be
    /// tested offline against guessed passwords (a core dump of it is useless without the key).
    cache_key: [u8; 32],
    /// User name -> keyed digest of the password that last verified for it. At most one entry
    /// per known identity, so it cannot grow beyond the file.
    cache: Mutex<HashMap<String, CtOutput<Blake2bMac512>>>,
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
            .map(|d| (d.name, Role::Device, d.groups, d.hash))
            .chain(
                file.controllers
                    .into_iter()
                    .map(|c| (c.name, Role::Controller, Vec::new(), c.hash)),
            );
        for (name, role, groups, hash) in records {
            let name = Name::new(name).map_err(|e| parse_err(format!("{role}: {e}")))?;
            let groups =
                valid_groups(groups).map_err(|e| parse_err(format!("{role} {name}: {e}")))?;
            check_hash(&hash).map_err(|m| parse_err(format!("{role} {name}: {m}")))?;
            if let Some(prev) = creds.entries.get(name.as_str()) {
                return Err(parse_err(format!(
                    "{name:?} appears twice (as {} and as {role}); names are unique",
                    prev.role
                )));
            }
            creds
                .entries
                .insert(name.to_string(), Entry { role, groups, hash });
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
                }),
                Role::Controller => file.controllers.push(ControllerRecord {
                    name: name.clone(),
                    hash: e.hash.clone(),
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
    /// [`MIN_SECRET_LEN`] characters), otherwise a fresh random one of 192 bits.
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
        let secret = match secret {
            Some(s) => {
                check_secret(&s)?;
                s
            }
            None => generate_secret(),
        };
        let hash = hash_secret(secret.as_bytes())?;
        self.entries
            .insert(name.to_string(), Entry { role, groups, hash });
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

    /// Checks a CONNECT's user name and password. Blocking (one argon2 hash, or microseconds
    /// when this password verified for this user before in this process). The broker calls
    /// [`verify_with`](Self::verify_with) on its verifier threads instead; this allocates the
    /// hash's memory afresh and suits tools and tests.
    ///
    /// An unknown user costs one hash too, so response times do not reveal which names exist.
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
        let Some(entry) = self.entries.get(username) else {
            let _ = password_matches(password, dummy_hash(), memory);
            return Err(AuthError::UnknownUser);
        };
        if let Some(identity) = self.cached(username, password) {
            return Ok(identity);
        }
        if !password_matches(password, &entry.hash, memory) {
            return Err(AuthError::BadPassword);
        }
        self.cache
            .lock()
            .expect("cache lock")
            .insert(username.to_string(), self.digest(password));
        Ok(identity(username, entry))
    }

    /// The identity, if this password verified for this user before in this process: a keyed
    /// digest and a map lookup (about a microsecond), no hashing, so the engine asks this
    /// before queueing a login for a verifier thread. `None` says nothing about the password.
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

fn check_hash(hash: &str) -> Result<(), String> {
    let parsed =
        PasswordHash::new(hash).map_err(|e| format!("`hash` is not a PHC hash string ({e})"))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(format!(
            "`hash` uses {}, expected argon2id",
            parsed.algorithm
        ));
    }
    Params::try_from(&parsed).map_err(|e| format!("`hash` has invalid argon2 parameters ({e})"))?;
    Ok(())
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

/// A hash of a random secret nobody knows, verified against for unknown users so that they
/// cost as much as known ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_secret(generate_secret().as_bytes()).expect("hashing a generated secret")
    })
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
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&s), "{text}");
        assert!(text.contains("$argon2id$v=19$m=8192,t=2,p=1$"), "{text}");
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
        let s = c.add("kitchen", Role::Device, vec![], None).unwrap();
        assert_eq!(c.cached("kitchen", s.as_bytes()), None, "not verified yet");
        let mut memory = Memory::default();
        let kitchen = c.verify_with("kitchen", s.as_bytes(), &mut memory).unwrap();
        assert_eq!(c.cached("kitchen", s.as_bytes()), Some(kitchen));
        assert_eq!(c.cached("kitchen", b"not the secret"), None);
        assert_eq!(c.cached("garage", s.as_bytes()), None);
    }

    /// `cargo test -p pifleet-broker --release --lib -- --ignored --nocapture hash_cost`
    /// prints what one verification costs here (the figure in [`ARGON2_M_KIB`]).
    #[test]
    #[ignore]
    fn hash_cost() {
        let mut c = Credentials::empty(Path::new("unused.toml"));
        let s = c.add("kitchen", Role::Device, vec![], None).unwrap();
        let n = 20;
        let t = std::time::Instant::now();
        for _ in 0..n {
            c.forget("kitchen");
            c.verify("kitchen", s.as_bytes()).unwrap();
        }
        let cold = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            c.verify("kitchen", s.as_bytes()).unwrap();
        }
        let warm = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let _ = c.verify("nobody", s.as_bytes());
        }
        let unknown = t.elapsed() / n;
        println!("argon2id verify: {cold:?}; cached: {warm:?}; unknown user: {unknown:?}");
    }
}
