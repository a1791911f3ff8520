//! The README quickstart, followed literally: the commands are read from README.md (so the
//! document and this test cannot drift apart) and run with the binaries `cargo run` would run.
//! The quickstart uses the default ports 1883 and 8083; where something else holds them the test
//! says SKIPPED instead of failing (and fails under `CI=true`, see [`skip`]).

use std::process::Command;
use std::time::Duration;

use pifleet_proto::report::{Outcome, SwitchReport};
use pifleet_tests::*;

fn block(readme: &str, marker: &str) -> Vec<String> {
    let start = readme
        .find(&format!("<!-- {marker}:start -->"))
        .unwrap_or_else(|| panic!("README.md lacks the {marker} marker"));
    let end = readme[start..]
        .find(&format!("<!-- {marker}:end -->"))
        .unwrap()
        + start;
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("cargo "))
        .map(str::to_string)
        .collect()
}

/// `cargo run [-q] -p PACKAGE -- ARGS` → (binary, ARGS).
fn as_binary(line: &str) -> (std::path::PathBuf, Vec<String>) {
    let (cargo, args) = line.split_once(" -- ").expect("cargo run ... -- args");
    let package = cargo
        .split_whitespace()
        .skip_while(|w| *w != "-p")
        .nth(1)
        .expect("-p PACKAGE");
    let binary = match package {
        "pifleet-controller" => "pifleet",
        other => other,
    };
    (
        bin(binary),
        args.split_whitespace().map(str::to_string).collect(),
    )
}

#[test]
fn the_readme_quickstart_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = block(&readme, "quickstart");
    assert_eq!(start, ["cargo run -p pifleet-broker -- --demo"]);
    let cli_lines = block(&readme, "quickstart-cli");
    assert_eq!(cli_lines.len(), 2);
    for port in [1883, 8083, 8080] {
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
            skip(&format!(
                "port {port} is in use, and the quickstart needs it"
            ));
            return;
        }
    }

    let (broker_bin, args) = as_binary(&start[0]);
    let mut cmd = Command::new(broker_bin);
    // The quickstart's dashboard on its default address, as the README promises.
    cmd.args(&args).env("PIFLEET_DASHBOARD", "127.0.0.1:8080");
    // As written, the broker keeps its state and records history in the default (XDG) state
    // directory: here one of the test's own, so the user's is never touched.
    let state = temp_dir("quickstart-state");
    cmd.env("XDG_STATE_HOME", state.path())
        .env_remove("STATE_DIRECTORY");
    let broker = Proc::spawn("quickstart broker", cmd);
    broker
        .stdout
        .wait_for("the dashboard", Duration::from_secs(15), |l| {
            l == "pifleet-broker: dashboard on http://127.0.0.1:8080/"
        });
    assert!(readme.contains("<http://127.0.0.1:8080/>"));
    broker
        .stdout
        .wait_for("the demo fleet", Duration::from_secs(15), |l| {
            l.contains("demo fleet of 3")
        });
    assert!(
        state.path().join("pifleet/broker/lock").exists(),
        "the default state directory is $XDG_STATE_HOME/pifleet/broker"
    );
    for device in ["kitchen", "garage", "porch"] {
        wait_online("mqtt://localhost:1883", device);
    }

    let run = |line: &str| {
        let (bin, args) = as_binary(line);
        let out = Command::new(bin)
            .args(&args)
            .env_remove("PIFLEET_BROKER")
            .output()
            .unwrap();
        eprintln!(
            "[{line}] {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let fleet: pifleet_proto::report::FleetStatus =
        pifleet_tests::http::get("127.0.0.1:8080", "/api/fleet", &[]).json();
    assert_eq!(fleet.devices.len(), 3, "{fleet:?}");
    let status = run(&cli_lines[0]);
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    for device in ["kitchen", "garage", "porch"] {
        assert!(text.contains(device), "{text}");
    }
    let on = run(&cli_lines[1]);
    assert!(on.status.success());
    assert_eq!(
        String::from_utf8_lossy(&on.stdout)
            .matches("confirmed")
            .count(),
        3
    );

    // The button hint printed by the broker works too.
    let mut broker = broker;
    broker.send_line("kitchen press");
    broker
        .stdout
        .wait_for("the press", Duration::from_secs(5), |l| {
            l.contains("kitchen: button pressed")
        });
    let (bin, _) = as_binary(&cli_lines[1]);
    let json = Command::new(bin)
        .args(["off", "--all", "--json"])
        .env_remove("PIFLEET_BROKER")
        .output()
        .unwrap();
    let report: SwitchReport = serde_json::from_slice(&json.stdout).unwrap();
    assert!(report
        .results
        .iter()
        .all(|r| r.outcome == Outcome::Confirmed));
}
