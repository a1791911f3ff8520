//! The agent binary's command line: configuration printing, checking and refusal.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pifleet-agent"))
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("pifleet-agent-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_printed_example_config_passes_check_config() {
    let out = agent().arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[[output]]") && text.contains("# "),
        "commented example"
    );
    let path = temp_file("example.toml", &text);
    let check = agent()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("kitchen"));
}

#[test]
fn a_bad_config_is_one_sentence_naming_the_field_and_exit_2() {
    let path = temp_file(
        "bad.toml",
        "[[output]]\nname = \"led\"\npin = 17\ninital = \"on\"\n",
    );
    let out = agent().arg("--config").arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inital"), "{err}");

    let out = agent()
        .args(["check-config", "--device", "a/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'/'"));

    let out = agent()
        .args(["check-config", "--broker", "http://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn asking_for_rppal_without_a_pi_fails_clearly() {
    if std::path::Path::new("/dev/gpiomem").exists() {
        eprintln!("SKIPPED: this machine has GPIO");
        return;
    }
    let out = agent()
        .args(["--gpio", "rppal", "--broker", "mqtt://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GPIO") && err.contains("--gpio sim"), "{err}");
}
