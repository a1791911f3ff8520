//! The Docker Compose deployment, started for real: the broker and three simulated Pis in
//! containers on a private network, the `pifleet` CLI on the host. Kills, a broker restart and a
//! network partition, each followed by a command that every live device must confirm.
//!
//! Needs a Docker engine, docker-compose and the image built by `docker/build-local-image.sh`:
//! run by `.ci/run` (`cargo test -- --ignored`); skips with a message where Docker is missing.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pifleet_proto::report::{Outcome, SwitchReport};
use pifleet_tests::*;

/// The demo agents' MQTT keep-alive (docker/demo-agent.toml).
const KEEP_ALIVE: Duration = Duration::from_secs(4);

struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn cmd(&self, args: &[&str]) -> Output {
        output_logged(
            &format!("docker-compose {}", args.join(" ")),
            Command::new("docker-compose")
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .args(["-p", &self.project, "--profile", "demo"])
                .args(args)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        )
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        self.cmd(&["down", "-v", "--remove-orphans", "-t", "2"]);
    }
}

fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker").args(args).output().expect("docker");
    eprintln!(
        "[docker {}] {:?} {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn switch(url: &str, args: &[&str]) -> SwitchReport {
    let mut full = args.to_vec();
    full.push("--json");
    let out = cli(url, &full);
    serde_json::from_slice(&out.stdout).expect("a SwitchReport")
}

fn outcomes(r: &SwitchReport) -> Vec<(String, Outcome)> {
    r.results
        .iter()
        .map(|x| (x.device.clone(), x.outcome))
        .collect()
}

fn online(url: &str, device: &str) -> bool {
    device_status(url, device).is_some_and(|d| d.online)
}

#[test]
#[ignore = "needs Docker; run by .ci/run"]
fn a_compose_fleet_survives_kills_broker_restarts_and_partitions() {
    if !have("docker") || !have("docker-compose") || !docker(&["info"]).status.success() {
        skip("no Docker engine or docker-compose here");
        return;
    }
    let image = docker(&["image", "inspect", "-f", "{{.Size}}", "pifleet:latest"]);
    assert!(
        image.status.success(),
        "build the image first: docker/build-local-image.sh"
    );
    let size: f64 = String::from_utf8_lossy(&image.stdout)
        .trim()
        .parse()
        .unwrap();
    println!(
        "image pifleet:latest (broker, agent and CLI): {:.1} MB",
        size / 1e6
    );

    let (mqtt, ws, legacy) = (free_port(), free_port(), free_port());
    let compose = Compose {
        project: format!("pifleettest{}", std::process::id()),
        env: vec![
            ("PIFLEET_MQTT_PORT".into(), format!("127.0.0.1:{mqtt}")),
            ("PIFLEET_WS_PORT".into(), format!("127.0.0.1:{ws}")),
            ("PIFLEET_LEGACY_PORT".into(), format!("127.0.0.1:{legacy}")),
        ],
    };
    assert!(compose.cmd(&["up", "-d", "--no-build"]).status.success());
    let url = format!("mqtt://127.0.0.1:{mqtt}");
    let devices = ["demo-1", "demo-2", "demo-3"];
    for d in devices {
        wait_until(&format!("{d} is online"), Duration::from_secs(60), || {
            online(&url, d)
        });
    }

    // 1. The CLI on the host switches every container and sees every acknowledgement.
    let r = switch(&url, &["on", "--all"]);
    assert_eq!(
        outcomes(&r),
        devices
            .iter()
            .map(|d| (d.to_string(), Outcome::Confirmed))
            .collect::<Vec<_>>()
    );

    // 2. docker kill: offline within 1.5 x keep-alive; the others are unaffected.
    let killed = Instant::now();
    assert!(docker(&["kill", &compose.container("agent-2")])
        .status
        .success());
    wait_until("demo-2 is offline", KEEP_ALIVE * 3 / 2, || {
        !online(&url, "demo-2")
    });
    println!(
        "docker kill -> offline in {:.2} s (limit {:.1} s)",
        killed.elapsed().as_secs_f64(),
        (KEEP_ALIVE * 3 / 2).as_secs_f64()
    );
    let r = switch(&url, &["off", "--all"]);
    assert_eq!(
        outcomes(&r),
        vec![
            ("demo-1".into(), Outcome::Confirmed),
            ("demo-2".into(), Outcome::Offline),
            ("demo-3".into(), Outcome::Confirmed)
        ]
    );
    assert!(docker(&["start", &compose.container("agent-2")])
        .status
        .success());
    wait_until("demo-2 is back", Duration::from_secs(30), || {
        online(&url, "demo-2")
    });

    // 3. Broker restart: every agent reconnects, re-subscribes and republishes.
    assert!(
        docker(&["restart", "-t", "1", &compose.container("broker")])
            .status
            .success()
    );
    for d in devices {
        wait_until(
            &format!("{d} is back after the broker restart"),
            Duration::from_secs(60),
            || online(&url, d),
        );
    }
    let r = switch(&url, &["toggle", "--all"]);
    assert!(
        r.results.len() == 3 && r.results.iter().all(|x| x.outcome == Outcome::Confirmed),
        "{r:?}"
    );
    let r = switch(&url, &["on", "--group", "kitchen"]);
    assert_eq!(
        outcomes(&r),
        vec![
            ("demo-1".into(), Outcome::Confirmed),
            ("demo-2".into(), Outcome::Confirmed)
        ]
    );

    // 4. Partition: cut demo-3 off the network, then let it back; no manual action.
    let network = format!("{}_fleet", compose.project);
    let agent3 = compose.container("agent-3");
    assert!(docker(&["network", "disconnect", &network, &agent3])
        .status
        .success());
    wait_until(
        "the broker notices the partition",
        Duration::from_secs(30),
        || !online(&url, "demo-3"),
    );
    assert!(
        docker(&["network", "connect", "--alias", "agent-3", &network, &agent3])
            .status
            .success()
    );
    let rejoined = Instant::now();
    wait_until("demo-3 rejoins", Duration::from_secs(60), || {
        online(&url, "demo-3")
    });
    println!(
        "partition healed -> demo-3 online again in {:.2} s",
        rejoined.elapsed().as_secs_f64()
    );
    let r = switch(&url, &["off", "demo-3"]);
    assert_eq!(outcomes(&r), vec![("demo-3".into(), Outcome::Confirmed)]);
    let d = device_status(&url, "demo-3").unwrap();
    assert!(
        !d.outputs["led"].on,
        "the command sent after rejoining was applied"
    );

    // The broker's legacy port works from the host too.
    if let Some(out) = legacy_client(&format!("127.0.0.1:{legacy}"), &["length", "on"]) {
        assert_eq!(out, ["b'9_Led ON.'"]);
    }
}
