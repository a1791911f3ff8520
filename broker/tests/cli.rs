//! The broker binary's command line: default config, refusals, and a busy port.

use std::process::Command;

fn broker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pifleet-broker"))
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
        .args(["--mqtt", &addr, "--no-ws"])
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
