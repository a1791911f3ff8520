//! The administration subcommands: `device ...`, `controller ...` (the credentials file) and
//! `tls self-signed`. Parsing is the clap types below; [`run`] carries them out and maps every
//! outcome to an exit code scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed: file I/O, the name exists or is unknown, files exist |
//! | 2 | usage or configuration: bad name or secret, no credentials file given |
//!
//! `device add` and `controller add` print the secret alone on standard output and everything
//! else on standard error, so `SECRET=$(pifleet-broker device add kitchen)` captures just it.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::credentials::{Credentials, CredentialsError, Identity, Role};
use crate::tls::TlsError;
use crate::Config;

/// Exit code: the command failed (I/O, name exists or unknown, files exist).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments or configuration.
pub const EXIT_USAGE: u8 = 2;

/// The administration commands, flattened into the broker's own subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum AdminCmd {
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
        #[arg(long)]
        secret_stdin: bool,
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
        AdminCmd::Device(DeviceCmd::Add {
            name,
            groups,
            secret_stdin,
        }) => add(path()?, &name, Role::Device, groups, secret_stdin),
        AdminCmd::Controller(ControllerCmd::Add { name, secret_stdin }) => {
            add(path()?, &name, Role::Controller, vec![], secret_stdin)
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

fn add(
    path: &Path,
    name: &str,
    role: Role,
    groups: Vec<String>,
    secret_stdin: bool,
) -> Result<(), Failure> {
    let mut creds = Credentials::load_or_new(path)?;
    // Check before reading standard input, so a taken name fails before anyone types a secret.
    if let Some(existing) = creds.identity(name) {
        return Err(CredentialsError::Exists {
            name: existing.name,
            role: existing.role,
        }
        .into());
    }
    let given = if secret_stdin {
        Some(read_secret()?)
    } else {
        None
    };
    let secret = creds.add(name, role, groups, given.clone())?;
    creds.save()?;

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
    if given.is_none() {
        println!("{secret}");
        let _ = std::io::stdout().flush();
        let how = match role {
            Role::Device => {
                "in the agent's config, next to `broker = ...`: password = \"<secret>\" \
                 (or env PIFLEET_PASSWORD); the user name is the device name"
            }
            Role::Controller => {
                "as the password of this user name in the CLI (env PIFLEET_PASSWORD)"
            }
        };
        eprintln!("Its secret (on standard output) is shown only this once; use it {how}.");
    }
    Ok(())
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
                secret_stdin: false
            })
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
