//! The broker binary's command line: default config, refusals, and a busy port.

use std::process::Command;

/// The broker binary, its dashboard off: these tests run in parallel and the dashboard's
/// default address is one fixed port (tests/tests/dashboard*.rs test it).
fn broker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pifleet-broker"));
    cmd.env("PIFLEET_DASHBOARD", "off");
    cmd
}

/// Reads the child's stdout until `needle` has appeared; returns what was read.
fn read_until(stdout: &mut impl std::io::Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        stdout.read_exact(&mut byte).expect("the broker's output");
        seen.push(byte[0]);
    }
    String::from_utf8(seen).unwrap()
}

/// Waits for the child to exit; panics (after killing it) if it has not within `limit`.
fn wait_exit(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn print_config_prints_the_commented_defaults() {
    let out = broker().arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = pifleet_broker::Config::from_toml_str(&text, "printed").unwrap();
    assert_eq!(parsed, pifleet_broker::Config::default());
}

#[test]
fn a_busy_port_is_a_clear_error_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = broker()
        .args(["--mqtt", &addr, "--no-ws", "--no-state"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&addr),
        "{err}"
    );
}

#[test]
fn a_bad_config_file_exits_2() {
    let p = std::env::temp_dir().join(format!("pifleet-broker-bad-{}.toml", std::process::id()));
    std::fs::write(&p, "[limits]\nmax_conections = 5\n").unwrap();
    let out = broker().arg("--config").arg(&p).output().unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
}

#[test]
fn sigterm_stops_the_broker_cleanly() {
    use std::process::Stdio;
    use std::time::Duration;

    // State and history on, as by default, but in directories of their own: never the user's.
    let state = tempfile::tempdir().unwrap();
    let history = tempfile::tempdir().unwrap();
    let mut child = broker()
        .args([
            "--mqtt",
            "127.0.0.1:0",
            "--no-ws",
            "--demo",
            "2",
            "--state-dir",
        ])
        .arg(state.path())
        .arg("--history-dir")
        .arg(history.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    read_until(&mut stdout, "demo fleet");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_exit(
        &mut child,
        Duration::from_secs(8),
        "the broker did not stop after SIGTERM",
    );
    assert_eq!(exit.code(), Some(0));
}

/// Starts a broker on ephemeral ports with `args` and `env`, and waits for its readiness line.
fn running(args: &[&str], env: &[(&str, &std::path::Path)]) -> std::process::Child {
    let mut cmd = broker();
    cmd.args(["--mqtt", "127.0.0.1:0", "--no-ws"])
        .args(args)
        .env_remove("STATE_DIRECTORY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    read_until(child.stdout.as_mut().unwrap(), "MQTT on");
    child
}

#[test]
fn a_state_directory_in_use_is_refused_when_given_and_left_alone_when_default() {
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("given");
    let given_s = given.to_str().unwrap();
    let mut first = running(&["--state-dir", given_s], &[]);
    let out = broker()
        .args(["--mqtt", "127.0.0.1:0", "--no-ws", "--state-dir", given_s])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a given directory in use: exit 2"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "state directory {given_s}: it is in use by another running pifleet-broker, pid {}",
            first.id()
        )),
        "{err}"
    );
    let _ = first.kill();
    let _ = first.wait();

    // The default directory ($XDG_STATE_HOME/pifleet/broker) is left to the first broker; a
    // second one serves from memory after a warning.
    let xdg = dir.path().join("xdg");
    let env = [("XDG_STATE_HOME", xdg.as_path())];
    let mut a = running(&[], &env);
    assert!(xdg.join("pifleet/broker/lock").exists());
    let mut b = running(&[], &env);
    let mut stderr = b.stderr.take().unwrap();
    let warning = read_until(&mut stderr, "running in memory");
    assert!(
        warning.contains("in use by another running pifleet-broker"),
        "{warning}"
    );
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let both = broker()
        .args(["--state-dir", given_s, "--no-state"])
        .output()
        .unwrap();
    assert_eq!(
        both.status.code(),
        Some(2),
        "--state-dir and --no-state conflict"
    );
}
