//! "Works behind NAT", shown with real hosts: three network namespaces made by this test.
//!
//! ```text
//!  [pfn-home-*]  10.231.1.2 ──LAN── 10.231.1.1 [pfn-rtr-*] 10.231.2.2 ──WAN── 10.231.2.1 [pfn-net-*]
//!   the Pi: agent + legacy port     NAT (MASQUERADE out of the WAN)           broker + controller
//! ```
//!
//! The "internet" namespace has no route to the home LAN, exactly like a controller on the
//! internet and a Pi behind a home router. The agent dials out, so commands reach it through the
//! broker; a direct TCP connection from the controller's side to the Pi fails. Every address is
//! inside namespaces this test creates; nothing leaves the machine.
//!
//! Needs root and iproute2/iptables: run by `.ci/run` (`cargo test -- --ignored`).

use std::process::Command;
use std::time::Duration;

use pifleet_proto::report::{Outcome, SwitchReport};
use pifleet_tests::*;

struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run");
    assert!(status.success(), "{args:?} failed");
}

fn can_make_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    root && have("ip") && have("iptables")
}

#[test]
#[ignore = "needs root, ip and iptables; run by .ci/run"]
fn an_agent_behind_nat_gets_commands_but_cannot_be_reached_directly() {
    if !can_make_namespaces() {
        skip("needs root with ip and iptables to build network namespaces");
        return;
    }
    let id = std::process::id() % 100_000;
    let (home, rtr, net) = (
        format!("pfn-home-{id}"),
        format!("pfn-rtr-{id}"),
        format!("pfn-net-{id}"),
    );
    let _guard = Netns {
        names: vec![home.clone(), rtr.clone(), net.clone()],
    };
    let (lan_a, lan_b, wan_a, wan_b) = (
        format!("pfl{id}a"),
        format!("pfl{id}b"),
        format!("pfw{id}a"),
        format!("pfw{id}b"),
    );
    for n in [&home, &rtr, &net] {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "netns", "exec", n, "ip", "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip", "link", "add", &lan_a, "netns", &home, "type", "veth", "peer", "name", &lan_b,
        "netns", &rtr,
    ]);
    sh(&[
        "ip", "link", "add", &wan_a, "netns", &rtr, "type", "veth", "peer", "name", &wan_b,
        "netns", &net,
    ]);
    let ns = |n: &str, args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", n];
        full.extend_from_slice(args);
        sh(&full);
    };
    ns(
        &home,
        &["ip", "addr", "add", "10.231.1.2/24", "dev", &lan_a],
    );
    ns(&home, &["ip", "link", "set", &lan_a, "up"]);
    ns(
        &home,
        &["ip", "route", "add", "default", "via", "10.231.1.1"],
    );
    ns(&rtr, &["ip", "addr", "add", "10.231.1.1/24", "dev", &lan_b]);
    ns(&rtr, &["ip", "addr", "add", "10.231.2.2/24", "dev", &wan_a]);
    ns(&rtr, &["ip", "link", "set", &lan_b, "up"]);
    ns(&rtr, &["ip", "link", "set", &wan_a, "up"]);
    ns(&rtr, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ns(
        &rtr,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            &wan_a,
            "-j",
            "MASQUERADE",
        ],
    );
    // The internet side: its only interface is the WAN; no route to 10.231.1.0/24.
    ns(&net, &["ip", "addr", "add", "10.231.2.1/24", "dev", &wan_b]);
    ns(&net, &["ip", "link", "set", &wan_b, "up"]);

    // The broker on the internet side.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net])
        .arg(bin("pifleet-broker"))
        .args([
            "--mqtt",
            "10.231.2.1:0",
            "--no-ws",
            "--allow-anonymous",
            "--no-state",
            "--no-history",
        ]);
    let broker = Broker::ready(Proc::spawn("broker@internet", cmd), false);
    let url = broker.url();

    // The Pi at home, with its legacy port open as the old setup had it (forwarded, back then).
    let dir = temp_dir("nat");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device = \"natpi\"\nbroker = \"{url}\"\ngpio = \"sim\"\nkeep_alive_secs = 2\n\
             [[output]]\nname = \"led\"\npin = 17\n[legacy]\nlisten = \"0.0.0.0:8000\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &home])
        .arg(bin("pifleet-agent"))
        .arg("--config")
        .arg(&config);
    let agent = Proc::spawn("agent@home", cmd);
    agent
        .stderr
        .wait_for("the agent's connection", Duration::from_secs(15), |l| {
            l.contains("connected to")
        });

    // The controller, on the internet side too.
    let controller = |args: &[&str]| {
        output_logged(
            &format!("pifleet@internet {}", args.join(" ")),
            Command::new("ip")
                .args(["netns", "exec", &net])
                .arg(bin("pifleet"))
                .args(["--broker", &url])
                .args(args),
        )
    };
    wait_until("natpi is online", Duration::from_secs(15), || {
        let out = controller(&["status", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("\"online\":true")
    });

    // Fact 1: commands reach the Pi through the broker and are confirmed.
    let out = controller(&["on", "natpi", "--json"]);
    let report: SwitchReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.results[0].outcome, Outcome::Confirmed);
    // ...and the broker saw the Pi's connection come from the router's public address.
    let ss = Command::new("ip")
        .args(["netns", "exec", &net, "ss", "-Htn", "state", "established"])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        ss.contains("10.231.2.2:"),
        "connections seen by the broker:\n{ss}"
    );
    assert!(
        !ss.contains("10.231.1.2"),
        "the Pi's private address is hidden by NAT:\n{ss}"
    );

    // Fact 2: the controller's side cannot open a connection to the Pi...
    let direct = Command::new("ip")
        .args(["netns", "exec", &net, "python3", "-c"])
        .arg("import socket,sys\ntry:\n socket.create_connection(('10.231.1.2',8000),timeout=3)\n print('connected')\nexcept OSError as e:\n print('failed:',e)")
        .output()
        .unwrap();
    let direct = String::from_utf8_lossy(&direct.stdout).to_string();
    eprintln!("direct connection from the internet side to the Pi: {direct}");
    assert!(direct.starts_with("failed"), "{direct}");
    // ...although the port is open at home (so it is the network that stops it).
    let local = Command::new("ip")
        .args(["netns", "exec", &home, "python3", "-c"])
        .arg("import socket\ns=socket.create_connection(('10.231.1.2',8000),timeout=3)\ns.sendall(b'4_on')\nprint(s.recv(64).decode())")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&local.stdout).trim(), "9_Led ON.");
    drop(agent);
    drop(broker);
}
