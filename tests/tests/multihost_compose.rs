//! The Docker Compose deployment, started for real: the broker and three simulated Pis in
//! containers on a private network, the `pifleet` CLI on the host. Secure by default (nothing
//! before the first-run step, then logins and TLS only, state in a named volume), then kills, a
//! broker restart and a network partition, each followed by a command that every live device
//! must confirm, and a `down`/`up` cycle that keeps identities and the fleet's retained state.
//!
//! Needs a Docker engine, docker-compose and the image built by `docker/build-local-image.sh`:
//! run by `.ci/run` (`cargo test -- --ignored`); skips with a message where Docker is missing.
//! Traffic goes only to the containers of this test's own Compose project, through ports
//! published on 127.0.0.1.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pifleet_proto::report::{DeviceStatus, FleetStatus, Outcome, SwitchReport};
use pifleet_tests::*;

/// The demo agents' MQTT keep-alive (docker/demo-agent.toml).
const KEEP_ALIVE: Duration = Duration::from_secs(4);

/// The demo devices of docker-compose.yml and their groups.
const DEVICES: [(&str, &str); 3] = [
    ("demo-1", "kitchen"),
    ("demo-2", "kitchen"),
    ("demo-3", "garden"),
];

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

    /// A `pifleet-broker` command in a one-off broker container (the volume, the config and
    /// its environment, no published ports), as the README has the administrator run it.
    fn broker_command(&self, args: &[&str]) -> Output {
        let mut full = vec!["run", "--rm", "-T", "broker", "pifleet-broker"];
        full.extend_from_slice(args);
        let out = self.cmd(&full);
        assert!(out.status.success(), "pifleet-broker {args:?} failed");
        out
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn logs(&self, service: &str) -> String {
        let out = Command::new("docker-compose")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["-p", &self.project, "logs", "--no-color", service])
            .output()
            .expect("docker-compose logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        // -v: the named volume goes too; nothing of the test stays behind.
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

/// The `pifleet` CLI on the host: over TLS, trusting the CA `init` made, logged in with a
/// secret from the environment (never a flag).
struct Cli {
    url: String,
    ca: String,
    login: Option<(String, String)>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = vec!["--ca-file", &self.ca];
        let mut env = Vec::new();
        if let Some((user, secret)) = &self.login {
            full.extend(["--user", user]);
            env.push(("PIFLEET_PASSWORD", secret.as_str()));
        }
        full.extend_from_slice(args);
        cli_env(&self.url, &full, &env)
    }

    fn status(&self) -> Option<FleetStatus> {
        let out = self.run(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    fn device(&self, name: &str) -> Option<DeviceStatus> {
        self.status()?
            .devices
            .into_iter()
            .find(|d| d.device == name)
    }

    fn online(&self, name: &str) -> bool {
        self.device(name).is_some_and(|d| d.online)
    }

    fn switch(&self, args: &[&str]) -> SwitchReport {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.run(&full);
        serde_json::from_slice(&out.stdout).expect("a SwitchReport")
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn outcomes(r: &SwitchReport) -> Vec<(String, Outcome)> {
    r.results
        .iter()
        .map(|x| (x.device.clone(), x.outcome))
        .collect()
}

#[test]
#[ignore = "needs Docker; run by .ci/run"]
fn a_compose_fleet_is_secure_by_default_keeps_its_state_and_survives_kills_restarts_and_partitions()
{
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

    let mqtts = free_port();
    let compose = Compose {
        project: format!("pifleettest{}", std::process::id()),
        env: vec![("PIFLEET_MQTTS_PORT".into(), format!("127.0.0.1:{mqtts}"))],
    };

    // 0. Before the first-run step the broker does not serve anyone: it refuses to start and
    //    says what to run.
    assert!(compose
        .cmd(&["up", "-d", "--no-build", "broker"])
        .status
        .success());
    wait_until(
        "the broker asks for `pifleet-broker init`",
        Duration::from_secs(60),
        || compose.logs("broker").contains("pifleet-broker init"),
    );
    assert!(compose.cmd(&["stop", "-t", "1", "broker"]).status.success());

    // 1. The first-run step prints the controller's secret once; the demo devices get theirs
    //    into the volume, where their containers read them.
    let out = compose.broker_command(&["init"]);
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        !secret.is_empty() && !secret.contains(char::is_whitespace),
        "init prints the secret alone on standard output: {secret:?}"
    );
    let again = compose.cmd(&["run", "--rm", "-T", "broker", "pifleet-broker", "init"]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "a second init changes nothing"
    );
    for (device, group) in DEVICES {
        let file = format!("/var/lib/pifleet/demo/{device}.secret");
        compose.broker_command(&[
            "device",
            "add",
            device,
            "--group",
            group,
            "--secret-file",
            &file,
        ]);
    }

    // 2. The fleet comes up; the CLI on the host gets in over TLS with the printed secret.
    assert!(compose.cmd(&["up", "-d", "--no-build"]).status.success());
    let dir = temp_dir("compose");
    let ca = dir.path().join("ca.pem");
    let from = format!(
        "{}:/var/lib/pifleet/tls/ca.pem",
        compose.container("broker")
    );
    assert!(docker(&["cp", &from, ca.to_str().unwrap()])
        .status
        .success());
    let url = format!("mqtts://127.0.0.1:{mqtts}");
    let admin = Cli {
        url: url.clone(),
        ca: ca.to_str().unwrap().to_string(),
        login: Some(("admin".into(), secret.clone())),
    };
    for (d, _) in DEVICES {
        wait_until(&format!("{d} is online"), Duration::from_secs(60), || {
            admin.online(d)
        });
    }

    // 3. Anonymous clients and wrong secrets are refused (exit 4: bad login), and TLS 8883 is
    //    the only port published.
    let anonymous = Cli {
        url: url.clone(),
        ca: admin.ca.clone(),
        login: None,
    };
    let out = anonymous.run(&["status"]);
    assert_eq!(out.status.code(), Some(4), "anonymous over TLS is refused");
    let wrong = Cli {
        url: url.clone(),
        ca: admin.ca.clone(),
        login: Some(("admin".into(), "not-the-secret-123".into())),
    };
    assert_eq!(wrong.run(&["status"]).status.code(), Some(4));
    let ports = docker(&["port", &compose.container("broker")]);
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert_eq!(
        ports.lines().collect::<Vec<_>>(),
        [format!("8883/tcp -> 127.0.0.1:{mqtts}")],
        "only TLS is published"
    );
    wait_until("the broker is healthy", Duration::from_secs(60), || {
        let out = docker(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &compose.container("broker"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "healthy"
    });

    // 4. The CLI on the host switches every container and sees every acknowledgement.
    let all = |outcome: Outcome| {
        DEVICES
            .iter()
            .map(|(d, _)| (d.to_string(), outcome))
            .collect::<Vec<_>>()
    };
    let r = admin.switch(&["on", "--all"]);
    assert_eq!(outcomes(&r), all(Outcome::Confirmed));

    // 5. docker kill: offline within 1.5 x keep-alive; the others are unaffected.
    let killed = Instant::now();
    assert!(docker(&["kill", &compose.container("agent-2")])
        .status
        .success());
    wait_until("demo-2 is offline", KEEP_ALIVE * 3 / 2, || {
        !admin.online("demo-2")
    });
    println!(
        "docker kill -> offline in {:.2} s (limit {:.1} s)",
        killed.elapsed().as_secs_f64(),
        (KEEP_ALIVE * 3 / 2).as_secs_f64()
    );
    let r = admin.switch(&["off", "--all"]);
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
        admin.online("demo-2")
    });

    // 6. Broker restart: every agent reconnects (logs in again over TLS), re-subscribes and
    //    republishes. The retained "online" of before the restart comes back from the state
    //    directory at once, so "back" means: reported something after the restart.
    let restarted = unix_ms();
    assert!(
        docker(&["restart", "-t", "1", &compose.container("broker")])
            .status
            .success()
    );
    for (d, _) in DEVICES {
        wait_until(
            &format!("{d} is back after the broker restart"),
            Duration::from_secs(60),
            || {
                admin
                    .device(d)
                    .is_some_and(|s| s.online && s.last_seen.is_some_and(|t| t > restarted))
            },
        );
    }
    let r = admin.switch(&["toggle", "--all"]);
    assert!(
        r.results.len() == 3 && r.results.iter().all(|x| x.outcome == Outcome::Confirmed),
        "{r:?}"
    );
    let r = admin.switch(&["on", "--group", "kitchen"]);
    assert_eq!(
        outcomes(&r),
        vec![
            ("demo-1".into(), Outcome::Confirmed),
            ("demo-2".into(), Outcome::Confirmed)
        ]
    );

    // 7. Partition: cut demo-3 off the network, then let it back; no manual action.
    let network = format!("{}_fleet", compose.project);
    let agent3 = compose.container("agent-3");
    assert!(docker(&["network", "disconnect", &network, &agent3])
        .status
        .success());
    wait_until(
        "the broker notices the partition",
        Duration::from_secs(30),
        || !admin.online("demo-3"),
    );
    assert!(
        docker(&["network", "connect", "--alias", "agent-3", &network, &agent3])
            .status
            .success()
    );
    let rejoined = Instant::now();
    wait_until("demo-3 rejoins", Duration::from_secs(60), || {
        admin.online("demo-3")
    });
    println!(
        "partition healed -> demo-3 online again in {:.2} s",
        rejoined.elapsed().as_secs_f64()
    );
    let r = admin.switch(&["off", "demo-3"]);
    assert_eq!(outcomes(&r), vec![("demo-3".into(), Outcome::Confirmed)]);
    let d = admin.device("demo-3").unwrap();
    assert!(
        !d.outputs["led"].on,
        "the command sent after rejoining was applied"
    );

    // 8. down/up: containers and network go, the volume stays. With only the broker back, the
    //    same secret logs in (credentials kept, same CA) and every device is still known,
    //    offline, with its last output states (retained messages from the state directory).
    let led = |d: &DeviceStatus| d.outputs["led"].on;
    let before: Vec<(String, bool)> = DEVICES
        .iter()
        .map(|(d, _)| (d.to_string(), led(&admin.device(d).unwrap())))
        .collect();
    assert_eq!(
        before,
        [
            ("demo-1".to_string(), true),
            ("demo-2".to_string(), true),
            ("demo-3".to_string(), false)
        ]
    );
    assert!(compose.cmd(&["down", "-t", "5"]).status.success());
    assert!(compose
        .cmd(&["up", "-d", "--no-build", "broker"])
        .status
        .success());
    let mut after = None;
    wait_until(
        "the broker is back with the fleet's state",
        Duration::from_secs(60),
        || {
            after = admin.status();
            after.as_ref().is_some_and(|s| s.devices.len() == 3)
        },
    );
    let after = after.unwrap();
    let kept: Vec<(String, bool, bool)> = after
        .devices
        .iter()
        .map(|d| (d.device.clone(), d.online, led(d)))
        .collect();
    assert_eq!(
        kept,
        before
            .iter()
            .map(|(d, on)| (d.clone(), false, *on))
            .collect::<Vec<_>>(),
        "after down/up: every device known, offline, with its last LED state"
    );
    assert!(compose.logs("broker").contains("state: read"));
}
