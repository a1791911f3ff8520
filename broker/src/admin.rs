//! The administration subcommands: `init` (a new broker's certificates and first controller),
//! `device ...`, `controller ...` (the credentials file), `tls self-signed` and `health` (a
//! container's health check). Parsing is the clap types below; [`run`] carries them out and maps
//! every outcome to an exit code scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (`health`: the broker answered) |
//! | 1 | failed: file I/O, the name exists or is unknown, files exist (`init`: already initialized), no broker answered |
//! | 2 | usage or configuration: bad name or secret, no credentials file given |
//!
//! `init`, `device add` and `controller add` print the secret alone on standard output and
//! everything else on standard error, so `SECRET=$(pifleet-broker device add kitchen)` captures
//! just it.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::credentials::{lock_for_edit, Credentials, CredentialsError, Identity, Role};
use crate::tls::TlsError;
use crate::Config;

/// Exit code: the command failed (I/O, name exists or unknown, files exist).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments or configuration.
pub const EXIT_USAGE: u8 = 2;

/// The administration commands, flattened into the broker's own subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum AdminCmd {
    /// Set up a new broker from its configuration: a private CA and a server certificate at
    /// `[tls] cert` and `key`, and the credentials file (`[auth] credentials`) with a first
    /// controller, whose secret is printed once. Refuses to touch a broker set up before.
    Init {
        /// A DNS name or IP address clients use to reach the broker (repeatable, or
        /// comma-separated in PIFLEET_HOSTS); localhost, 127.0.0.1 and ::1 are always included.
        #[arg(
            long = "host",
            value_name = "NAME",
            env = "PIFLEET_HOSTS",
            value_delimiter = ','
        )]
        hosts: Vec<String>,
        /// The first controller's name: the CLI's user name (`pifleet --user NAME`).
        #[arg(long, value_name = "NAME", default_value = "admin")]
        controller: String,
    },
    /// Exit 0 if a broker answers MQTT at ADDR (default: the configuration's `[mqtt] listen`,
    /// on loopback), 1 if not: a container health check that needs no credentials.
    ///
    /// It sends the CONNECT of an old protocol level, which every broker answers with a CONNACK
    /// (1, unacceptable protocol version) and pifleet-broker without a log line, so a check
    /// every few seconds neither logs in nor fills the log with refused logins.
    Health {
        /// The broker's MQTT address (host:port).
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value = "3")]
        timeout: u64,
    },
    /// Manage device identities (Pis running the agent) in the credentials file.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage controller identities (the `pifleet` CLI and other tools) in the credentials file.
    #[command(subcommand)]
    Controller(ControllerCmd),
    /// TLS certificates for mqtts://.
    #[command(subcommand)]
    Tls(TlsCmd),
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum DeviceCmd {
    /// Add a device and print its secret (shown only this once; only its hash is stored).
    ///
    /// The secret goes alone to standard output, the explanation to standard error.
    Add {
        /// The device's name: the agent's `device` and its MQTT user name.
        name: String,
        /// A group the device belongs to (repeatable); it then receives that group's commands.
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// Read the secret from standard input instead of generating one (at least 12
        /// characters; one line).
        #[arg(long, conflicts_with = "secret_file")]
        secret_stdin: bool,
        /// Write the generated secret to this new file (mode 0600, never overwritten) instead
        /// of standard output, e.g. straight into the password file a Pi or a container reads.
        #[arg(long, value_name = "PATH")]
        secret_file: Option<PathBuf>,
    },
    /// Remove a device: it can no longer log in.
    Remove { name: String },
    /// List the devices and their groups (never secrets or hashes).
    List {
        /// JSON: an array of {"name", "role", "groups"}.
        #[arg(long)]
        json: bool,
    },
    /// Show a device's groups, or replace them with the groups given.
    Groups {
        name: String,
        /// The new groups (none: show the current ones).
        #[arg(value_name = "G")]
        groups: Vec<String>,
        /// Remove the device from every group.
        #[arg(long, conflicts_with = "groups")]
        none: bool,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum ControllerCmd {
    /// Add a controller and print its secret (shown only this once; only its hash is stored).
    ///
    /// The secret goes alone to standard output, the explanation to standard error.
    Add {
        /// The controller's name: its MQTT user name.
        name: String,
        /// Read the secret from standard input instead of generating one (at least 12
        /// characters; one line).
        #[arg(long)]
        secret_stdin: bool,
    },
    /// Remove a controller: it can no longer log in.
    Remove { name: String },
    /// List the controllers (never secrets or hashes).
    List {
        /// JSON: an array of {"name", "role", "groups"}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum TlsCmd {
    /// Create a private CA (ca.pem, ca.key) and a server certificate signed by it (server.pem,
    /// server.key) for the broker's host names and addresses.
    SelfSigned {
        /// A DNS name or IP address clients use to reach the broker (repeatable); localhost,
        /// 127.0.0.1 and ::1 are always included.
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
        /// Directory for the four files (created if needed).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Replace existing files (clients trusting the old ca.pem then need the new one).
        #[arg(long)]
        force: bool,
    },
}

/// Why an admin command failed; [`Failure::code`] gives its exit code.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(
        "no credentials file given: pass --credentials PATH, set PIFLEET_CREDENTIALS, or set \
         `credentials = \"PATH\"` under [auth] in the config file (--config FILE)"
    )]
    NoCredentialsPath,
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot read the secret from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("cannot write the secret to {}: {source}", path.display())]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "already initialized: {} exists; nothing was changed (add identities with `device add` \
         and `controller add`)", .0.display()
    )]
    Initialized(PathBuf),
    #[error("no broker answered at {addr}: {why}")]
    Unhealthy { addr: String, why: String },
    #[error("{0}")]
    Usage(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::NoCredentialsPath | Failure::Usage(_) => EXIT_USAGE,
            Failure::Credentials(
                CredentialsError::InvalidName(_)
                | CredentialsError::BadSecret(_)
                | CredentialsError::NotADevice(_),
            ) => EXIT_USAGE,
            Failure::Tls(TlsError::BadHost(_)) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// Carries out an admin command. The credentials file is `credentials_flag` (`--credentials`,
/// `PIFLEET_CREDENTIALS`) or else the config's `[auth] credentials`.
pub fn run(cmd: AdminCmd, config: &Config, credentials_flag: Option<PathBuf>) -> ExitCode {
    let path = credentials_flag.or_else(|| config.auth.credentials.clone());
    match exec(cmd, config, path.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pifleet-broker: {e}");
            ExitCode::from(e.code())
        }
    }
}

fn exec(cmd: AdminCmd, config: &Config, path: Option<&Path>) -> Result<(), Failure> {
    let path = || path.ok_or(Failure::NoCredentialsPath);
    match cmd {
        AdminCmd::Init { hosts, controller } => init(config, path()?, &hosts, &controller),
        AdminCmd::Health { addr, timeout } => health(config, addr, timeout),
        AdminCmd::Device(DeviceCmd::Add {
            name,
            groups,
            secret_stdin,
            secret_file,
        }) => {
            let to = match (secret_stdin, secret_file) {
                (true, _) => Secret::Stdin,
                (false, Some(p)) => Secret::ToFile(p),
                (false, None) => Secret::ToStdout,
            };
            add(path()?, &name, Role::Device, groups, to)
        }
        AdminCmd::Controller(ControllerCmd::Add { name, secret_stdin }) => {
            let to = match secret_stdin {
                true => Secret::Stdin,
                false => Secret::ToStdout,
            };
            add(path()?, &name, Role::Controller, vec![], to)
        }
        AdminCmd::Device(DeviceCmd::Remove { name }) => remove(path()?, &name, Role::Device),
        AdminCmd::Controller(ControllerCmd::Remove { name }) => {
            remove(path()?, &name, Role::Controller)
        }
        AdminCmd::Device(DeviceCmd::List { json }) => list(path()?, Role::Device, json),
        AdminCmd::Controller(ControllerCmd::List { json }) => list(path()?, Role::Controller, json),
        AdminCmd::Device(DeviceCmd::Groups { name, groups, none }) => {
            set_groups(path()?, &name, groups, none)
        }
        AdminCmd::Tls(TlsCmd::SelfSigned { hosts, out, force }) => {
            self_signed(config, &hosts, &out, force)
        }
    }
}

/// Where a new identity's secret comes from, or where a generated one goes.
enum Secret {
    /// Read from standard input (`--secret-stdin`).
    Stdin,
    /// Generated and printed alone on standard output.
    ToStdout,
    /// Generated and written to a new file (`--secret-file`).
    ToFile(PathBuf),
}

fn add(
    path: &Path,
    name: &str,
    role: Role,
    groups: Vec<String>,
    secret: Secret,
) -> Result<(), Failure> {
    let creds = Credentials::load_or_new(path)?;
    // Check before reading standard input, so a taken name fails before anyone types a secret.
    if let Some(existing) = creds.identity(name) {
        return Err(CredentialsError::Exists {
            name: existing.name,
            role: existing.role,
        }
        .into());
    }
    let given = match secret {
        Secret::Stdin => Some(read_secret()?),
        _ => None,
    };
    // Read again under the edit lock (not held while someone types): a broker moving entries
    // to the fast hash, or another admin command, may have written the file meanwhile.
    let _lock = lock_for_edit(path, true)?;
    let mut creds = Credentials::load_or_new(path)?;
    // The file first: an identity whose secret could not be written anywhere would be useless.
    let secret_file = match &secret {
        Secret::ToFile(p) => Some(SecretFile::create(p)?),
        _ => None,
    };
    let generated = creds.add(name, role, groups, given)?;
    if let Some(f) = secret_file {
        f.write(&generated)?;
    }
    if let Err(e) = creds.save() {
        if let Secret::ToFile(p) = &secret {
            let _ = std::fs::remove_file(p);
        }
        return Err(e.into());
    }

    let who = creds.identity(name).expect("just added");
    let groups = if who.groups.is_empty() {
        String::new()
    } else {
        format!(" (groups: {})", who.groups.join(", "))
    };
    eprintln!(
        "pifleet-broker: added {role} {name}{groups} to {}",
        path.display()
    );
    let how = match role {
        Role::Device => {
            "in the agent's config, next to `broker = ...`: password_file = \"<file>\" or \
             password = \"<secret>\" (or env PIFLEET_PASSWORD); the user name is the device name"
        }
        Role::Controller => "as the password of this user name in the CLI (env PIFLEET_PASSWORD)",
    };
    match secret {
        Secret::Stdin => {}
        Secret::ToStdout => {
            println!("{generated}");
            let _ = std::io::stdout().flush();
            eprintln!("Its secret (on standard output) is shown only this once; use it {how}.");
        }
        Secret::ToFile(p) => {
            eprintln!(
                "Its secret is in {} (nowhere else); use it {how}.",
                p.display()
            );
        }
    }
    Ok(())
}

/// A secret's file, created empty with mode 0600 before the identity is added (so a name that
/// cannot get its secret written is never added) and never replacing an existing file.
struct SecretFile {
    path: PathBuf,
    file: std::fs::File,
}

impl SecretFile {
    fn create(path: &Path) -> Result<SecretFile, Failure> {
        let failed = |source| Failure::SecretFile {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(failed)?;
        Ok(SecretFile {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(mut self, secret: &str) -> Result<(), Failure> {
        let written = writeln!(self.file, "{secret}").and_then(|()| self.file.sync_all());
        written.map_err(|source| {
            let _ = std::fs::remove_file(&self.path);
            Failure::SecretFile {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// `init`: certificates where `[tls]` expects them and a credentials file with one controller.
/// Refuses if any of those files exists: a second run must never replace the CA every Pi
/// trusts, nor the identities.
fn init(config: &Config, path: &Path, hosts: &[String], controller: &str) -> Result<(), Failure> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Err(Failure::Usage(
            "init needs `cert` and `key` under [tls] in the config file (--config FILE, \
             PIFLEET_BROKER_CONFIG): it creates them there"
                .into(),
        ));
    };
    // The CA sits next to the server certificate.
    let dir = cert
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let planned = [
        path.to_path_buf(),
        cert.clone(),
        key.clone(),
        dir.join("ca.pem"),
        dir.join("ca.key"),
    ];
    if let Some(existing) = planned.iter().find(|p| p.exists()) {
        return Err(Failure::Initialized(existing.clone()));
    }
    // Checked before any file is written, so a bad name leaves nothing behind.
    let name = pifleet_proto::Name::new(controller).map_err(CredentialsError::from)?;
    let made = crate::tls::self_signed(hosts, dir, false)?;
    for (from, to) in [(&made.server_cert, cert), (&made.server_key, key)] {
        if from != to {
            std::fs::rename(from, to).map_err(|source| {
                Failure::Tls(TlsError::Write {
                    path: to.clone(),
                    source,
                })
            })?;
        }
    }
    let _lock = lock_for_edit(path, true)?;
    let mut creds = Credentials::load_or_new(path)?;
    let secret = creds.add(name.as_str(), Role::Controller, vec![], None)?;
    creds.save()?;

    let port = config.tls.listen.port();
    eprintln!(
        "pifleet-broker: initialized
  {}  CA certificate: give a copy to every Pi and controller (ca_file, --ca-file)
  {}  CA key: keep it private; only needed to issue new server certificates
  {}  server certificate, valid for {}
  {}  server key
  {}  credentials, with controller {name}
Controller {name}'s secret follows on standard output, shown only this once:",
        made.ca_cert.display(),
        made.ca_key.display(),
        cert.display(),
        made.names.join(", "),
        key.display(),
        path.display(),
    );
    println!("{secret}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "Log in with it: pifleet --broker mqtts://HOST:{port} --ca-file ca.pem --user {name} \
         (password in PIFLEET_PASSWORD or PIFLEET_PASSWORD_FILE). Add Pis with \
         `pifleet-broker device add NAME`; a running broker picks them up by itself."
    );
    Ok(())
}

/// `health`: one MQTT exchange with the broker (see [`AdminCmd::Health`]).
fn health(config: &Config, addr: Option<String>, timeout: u64) -> Result<(), Failure> {
    let addr = addr.unwrap_or_else(|| {
        let mut a = config.mqtt.listen;
        if a.ip().is_unspecified() {
            a.set_ip(match a {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        a.to_string()
    });
    match crate::health::probe(&addr, std::time::Duration::from_secs(timeout)) {
        Ok(code) => {
            eprintln!("pifleet-broker: {addr} answers MQTT (CONNACK {code} to the probe)");
            Ok(())
        }
        Err(e) => Err(Failure::Unhealthy {
            addr,
            why: e.to_string(),
        }),
    }
}

/// One line from standard input, without its line break.
fn read_secret() -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Secret (one line, then Enter): ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        stdin.read_line(&mut line).map_err(Failure::Stdin)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let mut all = String::new();
    stdin
        .lock()
        .take(crate::credentials::MAX_SECRET_LEN as u64 + 3)
        .read_to_string(&mut all)
        .map_err(Failure::Stdin)?;
    let secret = all
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&all);
    Ok(secret.to_string())
}

fn remove(path: &Path, name: &str, role: Role) -> Result<(), Failure> {
    let _lock = lock_for_edit(path, false)?;
    let mut creds = Credentials::load(path)?;
    match creds.identity(name) {
        Some(who) if who.role != role => {
            return Err(Failure::Usage(format!(
                "{name:?} is a {}, not a {role}; use `pifleet-broker {} remove {name}`",
                who.role, who.role
            )))
        }
        Some(_) => {}
        None => return Err(CredentialsError::NotFound(name.to_string()).into()),
    }
    creds.remove(name)?;
    creds.save()?;
    eprintln!(
        "pifleet-broker: removed {role} {name} from {}",
        path.display()
    );
    Ok(())
}

fn list(path: &Path, role: Role, json: bool) -> Result<(), Failure> {
    let creds = Credentials::load(path)?;
    let who: Vec<Identity> = creds
        .list()
        .into_iter()
        .filter(|i| i.role == role)
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&who).expect("identities serialize");
        let _ = writeln!(out, "{text}");
        return Ok(());
    }
    if who.is_empty() {
        eprintln!("no {role}s in {}", path.display());
        return Ok(());
    }
    match role {
        Role::Device => {
            let width = who.iter().map(|i| i.name.len()).max().unwrap_or(0).max(6);
            let _ = writeln!(out, "{:width$}  GROUPS", "DEVICE");
            for i in &who {
                let groups = if i.groups.is_empty() {
                    "-".to_string()
                } else {
                    i.groups.join(",")
                };
                let _ = writeln!(out, "{:width$}  {groups}", i.name);
            }
        }
        Role::Controller => {
            let _ = writeln!(out, "CONTROLLER");
            for i in &who {
                let _ = writeln!(out, "{}", i.name);
            }
        }
    }
    Ok(())
}

fn set_groups(path: &Path, name: &str, groups: Vec<String>, none: bool) -> Result<(), Failure> {
    let _lock = lock_for_edit(path, false)?;
    let mut creds = Credentials::load(path)?;
    let who = creds
        .identity(name)
        .ok_or_else(|| CredentialsError::NotFound(name.to_string()))?;
    if who.role != Role::Device {
        return Err(CredentialsError::NotADevice(name.to_string()).into());
    }
    if groups.is_empty() && !none {
        println!("{}", who.groups.join(" "));
        return Ok(());
    }
    creds.set_groups(name, groups)?;
    creds.save()?;
    let now = creds.identity(name).expect("exists").groups;
    if now.is_empty() {
        eprintln!("pifleet-broker: device {name} is in no group now");
    } else {
        eprintln!("pifleet-broker: device {name} is in {} now", now.join(", "));
    }
    Ok(())
}

fn self_signed(config: &Config, hosts: &[String], out: &Path, force: bool) -> Result<(), Failure> {
    let made = crate::tls::self_signed(hosts, out, force)?;
    let abs = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    // TOML strings, quoted and escaped the way the config parser reads them back.
    let toml_str = |p: &Path| toml::Value::String(abs(p)).to_string();
    let port = config.tls.listen.port();
    let host = hosts.first().map(String::as_str).unwrap_or("localhost");
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let files = [
        (
            &made.ca_cert,
            "CA certificate: give a copy to every agent and controller",
        ),
        (
            &made.ca_key,
            "CA key: keep it private; only needed to issue new server certificates",
        ),
        (&made.server_cert, "server certificate"),
        (&made.server_key, "server key"),
    ];
    let width = files.iter().map(|(p, _)| abs(p).len()).max().unwrap_or(0);
    println!("Created:");
    for (p, what) in files {
        println!("  {:width$}  {what}", abs(p));
    }
    println!(
        "The server certificate is valid for {}.

Add to the broker's config file:

[tls]
enabled = true
listen = \"0.0.0.0:{port}\"
cert = {}
key = {}

Agents (agent config): broker = \"mqtts://{host}:{port}\" and ca_file = \"/path/to/ca.pem\"
CLI: pifleet --broker mqtts://{host}:{port} --ca-file /path/to/ca.pem status",
        made.names.join(", "),
        toml_str(&made.server_cert),
        toml_str(&made.server_key),
    );
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: AdminCmd,
    }

    fn parse(args: &[&str]) -> Result<AdminCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("pifleet-broker").chain(args.iter().copied()))
            .map(|c| c.cmd)
    }

    #[test]
    fn the_command_line_parses() {
        assert_eq!(
            parse(&["device", "add", "kitchen", "--group", "a", "--group", "b"]).unwrap(),
            AdminCmd::Device(DeviceCmd::Add {
                name: "kitchen".into(),
                groups: vec!["a".into(), "b".into()],
                secret_stdin: false,
                secret_file: None
            })
        );
        assert!(parse(&["device", "add", "k", "--secret-stdin", "--secret-file", "f"]).is_err());
        assert_eq!(
            parse(&["init", "--host", "broker", "--host", "pi.example.org"]).unwrap(),
            AdminCmd::Init {
                hosts: vec!["broker".into(), "pi.example.org".into()],
                controller: "admin".into()
            }
        );
        assert_eq!(
            parse(&["device", "groups", "kitchen", "a", "b"]).unwrap(),
            AdminCmd::Device(DeviceCmd::Groups {
                name: "kitchen".into(),
                groups: vec!["a".into(), "b".into()],
                none: false
            })
        );
        assert!(parse(&["device", "groups", "kitchen", "a", "--none"]).is_err());
        assert_eq!(
            parse(&["tls", "self-signed", "--host", "pi", "--host", "10.0.0.2"]).unwrap(),
            AdminCmd::Tls(TlsCmd::SelfSigned {
                hosts: vec!["pi".into(), "10.0.0.2".into()],
                out: ".".into(),
                force: false
            })
        );
        assert!(parse(&["tls", "self-signed"]).is_err());
        assert!(parse(&["controller", "add", "laptop", "--group", "x"]).is_err());
    }

    #[test]
    fn a_missing_credentials_path_is_a_usage_error() {
        let e = exec(
            AdminCmd::Device(DeviceCmd::List { json: false }),
            &Config::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code(), EXIT_USAGE);
        assert!(e.to_string().contains("--credentials"), "{e}");
        assert!(e.to_string().contains("[auth]"), "{e}");
    }

    #[test]
    fn removing_with_the_wrong_role_is_refused() {
        let dir = crate::credentials::test::temp_dir("admin-role");
        let path = dir.path().join("c.toml");
        let mut c = Credentials::load_or_new(&path).unwrap();
        c.add("laptop", Role::Controller, vec![], None).unwrap();
        c.save().unwrap();
        let e = remove(&path, "laptop", Role::Device).unwrap_err();
        assert_eq!(e.code(), EXIT_USAGE);
        assert!(e.to_string().contains("controller remove laptop"), "{e}");
        assert!(Credentials::load(&path).unwrap().exists("laptop"));
        let e = remove(&path, "nobody", Role::Device).unwrap_err();
        assert_eq!(e.code(), EXIT_FAILED);
    }
}
