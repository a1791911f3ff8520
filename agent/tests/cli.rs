//! The agent binary's command line: configuration printing, checking and refusal.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pifleet-agent"))
}

/// Runs to completion, or panics (killing it) if it is still running after 10 s: an agent that
/// accepted its configuration would otherwise serve until stopped.
fn output_within_10s(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after 10 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `pifleet_tests::skip`, which this crate cannot depend on: outside CI say `SKIPPED`, under
/// `CI=true` fail, since in CI a test must not pass by skipping.
fn skip(reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot run under CI=true: {reason}"
    );
    eprintln!("SKIPPED: {reason}");
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
fn a_broker_url_with_a_password_is_a_config_error_that_does_not_repeat_it() {
    let url = "mqtt://bob:secret@127.0.0.1:1";
    let config = temp_file(
        "userinfo.toml",
        &format!("device = \"kitchen\"\ngpio = \"sim\"\nbroker = {url:?}\n"),
    );
    let plain = temp_file("plain.toml", "device = \"kitchen\"\ngpio = \"sim\"\n");
    let config_arg = config.to_str().unwrap();
    let plain_arg = plain.to_str().unwrap();
    for sub in [None, Some("check-config")] {
        let runs = [
            (
                "--broker",
                vec!["--config", plain_arg, "--broker", url],
                None,
            ),
            ("PIFLEET_BROKER", vec!["--config", plain_arg], Some(url)),
            ("the config file", vec!["--config", config_arg], None),
        ];
        for (how, args, env) in runs {
            let mut cmd = agent();
            cmd.args(sub).args(&args).env_remove("PIFLEET_BROKER");
            if let Some(url) = env {
                cmd.env("PIFLEET_BROKER", url);
            }
            let out = output_within_10s(&mut cmd);
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            let what = format!("{sub:?} with {how}");
            assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
            assert!(
                stderr.contains("must not contain a user name or password"),
                "{what}: {stderr}"
            );
            assert!(
                !stdout.contains("secret") && !stderr.contains("secret"),
                "{what} shows the password: {stdout}{stderr}"
            );
        }
    }
    std::fs::remove_file(&config).unwrap();
    std::fs::remove_file(&plain).unwrap();
}

#[test]
fn asking_for_rppal_without_a_pi_fails_clearly() {
    if std::path::Path::new("/dev/gpiomem").exists() {
        skip("this machine has GPIO");
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
