//! The CLI's failure paths that need no broker: they must be fast, one sentence, and exit with
//! the documented codes.

use std::process::Command;
use std::time::{Duration, Instant};

fn pifleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pifleet"));
    c.env_remove("PIFLEET_BROKER");
    c
}

#[test]
fn an_unreachable_broker_is_one_sentence_and_exit_3_within_seconds() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mqtt://127.0.0.1:{port}");
    for args in [vec!["status"], vec!["on", "kitchen"], vec!["watch"]] {
        let started = Instant::now();
        let out = pifleet()
            .args(&args)
            .args(["--broker", &url])
            .output()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one sentence: {err}");
        assert!(
            err.contains("connection refused") && err.contains(&port.to_string()),
            "{err}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = pifleet().args(["on"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = pifleet().args(["on", "a/b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = pifleet().args(["on", "--all", "kitchen"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = pifleet()
        .args(["status", "--prefix", "a/+"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for bad in ["nan", "-1", "inf", "soon"] {
        let out = pifleet()
            .args(["on", "k", "--timeout", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--timeout {bad}");
        let out = pifleet()
            .args(["status", "--connect-timeout", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--connect-timeout {bad}");
    }
}

#[test]
fn a_broker_url_with_a_password_is_a_usage_error_that_does_not_repeat_it() {
    let url = "mqtt://bob:secret@127.0.0.1:1";
    for args in [vec!["status"], vec!["on", "kitchen"], vec!["watch"]] {
        let by_flag = pifleet()
            .args(&args)
            .args(["--broker", url])
            .output()
            .unwrap();
        let by_env = pifleet()
            .args(&args)
            .env("PIFLEET_BROKER", url)
            .output()
            .unwrap();
        for (how, out) in [("--broker", by_flag), ("PIFLEET_BROKER", by_env)] {
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert_eq!(out.status.code(), Some(2), "{args:?} with {how}: {stderr}");
            assert!(
                stderr.contains("must not contain a user name or password"),
                "{args:?} with {how}: {stderr}"
            );
            assert!(
                !stdout.contains("secret") && !stderr.contains("secret"),
                "{args:?} with {how} shows the password: {stdout}{stderr}"
            );
        }
    }
}
