//! The administration subcommands, through the real `pifleet-broker` binary against a
//! temporary directory: what scripts and people see.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn broker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pifleet-broker"));
    // The tests choose the credentials file themselves.
    c.env_remove("PIFLEET_CREDENTIALS")
        .env_remove("PIFLEET_BROKER_CONFIG");
    c
}

/// A fresh directory under the system temp dir, removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pifleet-admin-{tag}-"))
        .tempdir()
        .unwrap()
}

fn admin(creds: &Path, args: &[&str]) -> Output {
    broker()
        .arg("--credentials")
        .arg(creds)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn devices_are_added_listed_and_removed() {
    let dir = temp_dir("devices");
    let creds = dir.path().join("credentials.toml");

    let out = admin(&creds, &["device", "add", "kitchen", "--group", "down"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Standard output is the secret alone; the explanation is on standard error.
    let secret = text(&out.stdout).trim().to_string();
    assert!(secret.len() >= 22, "{secret:?}");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{secret:?}"
    );
    let err = text(&out.stderr);
    assert!(err.contains("added device kitchen"), "{err}");
    assert!(
        err.contains("password = ") && err.contains("PIFLEET_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains(&secret), "the secret is printed once: {err}");

    let out = admin(&creds, &["device", "add", "garage"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let garage_secret = text(&out.stdout).trim().to_string();
    assert_ne!(secret, garage_secret);

    let file = std::fs::read_to_string(&creds).unwrap();
    assert!(!file.contains(&secret) && !file.contains(&garage_secret));

    // The list shows names and groups, never secrets or hashes.
    let out = admin(&creds, &["device", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    assert!(list.contains("kitchen") && list.contains("down") && list.contains("garage"));
    for leak in [&secret, &garage_secret, "argon2", "hash"] {
        assert!(!list.contains(leak), "{list}");
    }
    let out = admin(&creds, &["device", "list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"name": "garage", "role": "device", "groups": []},
            {"name": "kitchen", "role": "device", "groups": ["down"]},
        ])
    );

    // A second add of the same name fails clearly and changes nothing.
    let out = admin(&creds, &["device", "add", "kitchen"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("device remove kitchen"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&creds).unwrap(), file);

    // Groups can be shown and replaced.
    let out = admin(&creds, &["device", "groups", "kitchen", "up", "lights"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = admin(&creds, &["device", "groups", "kitchen"]);
    assert_eq!(text(&out.stdout).trim(), "up lights");

    let out = admin(&creds, &["device", "remove", "kitchen"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = admin(&creds, &["device", "list"]);
    let list = text(&out.stdout);
    assert!(
        !list.contains("kitchen") && list.contains("garage"),
        "{list}"
    );
    let out = admin(&creds, &["device", "remove", "kitchen"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn controllers_and_given_secrets() {
    let dir = temp_dir("controllers");
    let creds = dir.path().join("credentials.toml");
    let mut child = broker()
        .arg("--credentials")
        .arg(&creds)
        .args(["controller", "add", "laptop", "--secret-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a secret of my own\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "a given secret is not echoed");
    let out = admin(&creds, &["controller", "list"]);
    assert!(text(&out.stdout).contains("laptop"));
    // Devices and controllers share one name space.
    let out = admin(&creds, &["device", "add", "laptop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("controller remove laptop"));
    // A bad name is a usage error.
    let out = admin(&creds, &["device", "add", "a/b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("'/'"));
}

#[test]
fn the_credentials_file_comes_from_the_config_or_is_asked_for() {
    let dir = temp_dir("config");
    let out = broker().args(["device", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--credentials"));

    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "[auth]\ncredentials = \"creds.toml\"\n").unwrap();
    let out = broker()
        .arg("--config")
        .arg(&config)
        .args(["device", "add", "kitchen"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Relative to the config file.
    assert!(dir.path().join("creds.toml").exists());

    // A missing file is a clear error for the commands that need one.
    let out = admin(&dir.path().join("nope.toml"), &["device", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not exist"));
}

#[test]
fn tls_self_signed_creates_the_four_files() {
    let dir = temp_dir("tls");
    let out_dir = dir.path().join("tls");
    let run = |extra: &[&str]| {
        broker()
            .args([
                "tls",
                "self-signed",
                "--host",
                "pi.example",
                "--host",
                "10.1.2.3",
            ])
            .arg("--out")
            .arg(&out_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let said = text(&out.stdout);
    assert!(
        said.contains("[tls]") && said.contains("server.pem"),
        "{said}"
    );
    assert!(
        said.contains("--ca-file") && said.contains("ca_file"),
        "{said}"
    );
    pifleet_broker::tls::server_config(&out_dir.join("server.pem"), &out_dir.join("server.key"))
        .unwrap();

    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--force"));
    let out = run(&["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A config naming where `init` puts things, as docker/broker.toml does.
fn init_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        "[tls]\nenabled = true\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\n\
         [auth]\ncredentials = \"credentials.toml\"\n",
    )
    .unwrap();
    config
}

#[test]
fn init_creates_the_certificates_and_a_controller_once_and_never_again() {
    let dir = temp_dir("init");
    let config = init_config(dir.path());
    let init = |extra: &[&str]| {
        broker()
            .arg("--config")
            .arg(&config)
            .arg("init")
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = init(&["--host", "broker", "--controller", "ops"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Standard output is the secret alone, and it logs in as controller ops.
    let secret = text(&out.stdout).trim().to_string();
    assert!(secret.len() >= 22 && !secret.contains(char::is_whitespace));
    let creds =
        pifleet_broker::credentials::Credentials::load(&dir.path().join("credentials.toml"))
            .unwrap();
    let ops = creds.verify("ops", secret.as_bytes()).unwrap();
    assert_eq!(ops.role, pifleet_broker::credentials::Role::Controller);
    assert_eq!(creds.len(), 1);
    let err = text(&out.stderr);
    assert!(
        err.contains("ca.pem") && err.contains("broker, localhost"),
        "{err}"
    );
    assert!(!err.contains(&secret), "the secret is printed once: {err}");
    let tls = dir.path().join("tls");
    pifleet_broker::tls::server_config(&tls.join("server.pem"), &tls.join("server.key")).unwrap();
    assert!(tls.join("ca.pem").exists() && tls.join("ca.key").exists());

    // A second run changes nothing: the CA every Pi trusts and the identities stay.
    let ca = std::fs::read(tls.join("ca.pem")).unwrap();
    let file = std::fs::read(dir.path().join("credentials.toml")).unwrap();
    let out = init(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already initialized"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca);
    assert_eq!(
        std::fs::read(dir.path().join("credentials.toml")).unwrap(),
        file
    );
}

#[test]
fn init_without_a_tls_section_or_with_a_bad_name_is_a_usage_error_and_writes_nothing() {
    let dir = temp_dir("init-usage");
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "[auth]\ncredentials = \"credentials.toml\"\n").unwrap();
    let out = broker()
        .arg("--config")
        .arg(&config)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("[tls]"), "{}", text(&out.stderr));

    let config = init_config(dir.path());
    let out = broker()
        .arg("--config")
        .arg(&config)
        .args(["init", "--controller", "not a name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!dir.path().join("tls").exists() && !dir.path().join("credentials.toml").exists());
}

#[test]
fn a_secret_file_gets_the_generated_secret_and_is_never_overwritten() {
    let dir = temp_dir("secret-file");
    let creds = dir.path().join("credentials.toml");
    let file = dir.path().join("secrets").join("kitchen");
    let out = admin(
        &creds,
        &[
            "device",
            "add",
            "kitchen",
            "--secret-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "the secret goes to the file only");
    let secret = std::fs::read_to_string(&file).unwrap();
    let secret = secret.trim_end();
    let loaded = pifleet_broker::credentials::Credentials::load(&creds).unwrap();
    assert!(loaded.verify("kitchen", secret.as_bytes()).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // An existing file is refused, and the device is not added without its secret.
    let out = admin(
        &creds,
        &[
            "device",
            "add",
            "garage",
            "--secret-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), secret);
    let loaded = pifleet_broker::credentials::Credentials::load(&creds).unwrap();
    assert!(!loaded.exists("garage"));
}
