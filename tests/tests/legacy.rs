//! The legacy shim end to end: a client written like the originals (tests/legacy_client.py)
//! against the agent's listener and against the broker's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pifleet_proto::StateSource;
use pifleet_tests::*;

/// Starts an agent with a legacy listener on an ephemeral port; returns it and the address.
fn agent_with_shim(url: &str, device: &str) -> (Agent, String) {
    let agent = Agent::start(url, device, "[legacy]\nlisten = \"127.0.0.1:0\"\n");
    let line = agent
        .proc
        .stderr
        .wait_for("the legacy listener", Duration::from_secs(10), |l| {
            l.contains("legacy shim listening on")
        });
    let addr = line.rsplit(' ').next().unwrap().to_string();
    (agent, addr)
}

fn broker_with_shims(dir: &TempDir, devices: &[&str]) -> (Broker, Vec<String>) {
    let mut config = String::new();
    for d in devices {
        config.push_str(&format!(
            "[[legacy]]\nlisten = \"127.0.0.1:0\"\ndevice = \"{d}\"\nconfirm_timeout_ms = 3000\n"
        ));
    }
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).unwrap();
    let broker = Broker::start_with(&[
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--config",
        path.to_str().unwrap(),
    ]);
    let addrs =
        devices
            .iter()
            .map(|d| {
                let line = broker.proc.stdout.wait_for(
                    "a legacy listener",
                    Duration::from_secs(10),
                    |l| l.starts_with(&format!("pifleet-broker: legacy shim for {d} on ")),
                );
                line.rsplit(' ').next().unwrap().to_string()
            })
            .collect();
    (broker, addrs)
}

#[test]
fn old_clients_drive_the_agent_directly() {
    let broker = Broker::start();
    let url = broker.url();
    let (mut agent, addr) = agent_with_shim(&url, "kilo");
    wait_online(&url, "kilo");

    let Some(out) = legacy_client(&addr, &["length", "on"]) else {
        return;
    };
    assert_eq!(out, ["b'9_Led ON.'"]);
    let d = device_status(&url, "kilo").unwrap();
    assert!(d.outputs["led"].on, "the change is published over MQTT");
    assert_eq!(d.outputs["led"].source, StateSource::Legacy);

    let out = legacy_client(&addr, &["length", "off", "blink", "on"]).unwrap();
    assert_eq!(
        out,
        [
            "b'11_Led OFF.'",
            "b'24_Unrecognized command.'",
            "b'9_Led ON.'"
        ]
    );
    let out = legacy_client(&addr, &["halfclose", "off"]).unwrap();
    assert_eq!(out, ["b'11_Led OFF.'"]);

    let out = legacy_client(&addr, &["nul", "go"]).unwrap();
    assert_eq!(out, ["b'Button released\\x00'"]);
    agent.proc.send_line("press button");
    agent
        .proc
        .stdout
        .wait_for("the press", Duration::from_secs(5), |l| {
            l.contains("button pressed")
        });
    let out = legacy_client(&addr, &["nul", "go", "on"]).unwrap();
    assert_eq!(out, ["b'Button pressed\\x00'", "b'Led ON.\\x00'"]);

    // q ends only that session; another client keeps working meanwhile.
    let out = legacy_client(&addr, &["two-sessions"]).unwrap();
    assert_eq!(
        out,
        [
            "A b'9_Led ON.'",
            "A b'27_Server ended. Stay rock.'",
            "A eof b''",
            "B b'11_Led OFF.'"
        ]
    );
    let out = legacy_client(&addr, &["length", "on"]).unwrap();
    assert_eq!(out, ["b'9_Led ON.'"], "the listener survives q");
}

#[test]
fn old_clients_reach_a_device_through_the_broker_and_hear_when_it_is_offline() {
    let dir = temp_dir("legacy-broker");
    let (broker, addrs) = broker_with_shims(&dir, &["lima", "ghost"]);
    let url = broker.url();
    let mut agent = Agent::start(&url, "lima", "");
    wait_online(&url, "lima");

    let Some(out) = legacy_client(&addrs[0], &["length", "on"]) else {
        return;
    };
    assert_eq!(out, ["b'9_Led ON.'"]);
    assert!(device_status(&url, "lima").unwrap().outputs["led"].on);
    let out = legacy_client(&addrs[0], &["nul", "go", "off"]).unwrap();
    assert_eq!(out, ["b'Button released\\x00'", "b'Led OFF.\\x00'"]);
    agent.proc.send_line("press");
    wait_until(
        "the press reaches the broker",
        Duration::from_secs(5),
        || legacy_client(&addrs[0], &["nul", "go"]).unwrap() == ["b'Button pressed\\x00'"],
    );
    // The extension: a client names the target.
    let out = legacy_client(&addrs[1], &["length", "lima on", "all off"]).unwrap();
    assert_eq!(out, ["b'9_Led ON.'", "b'11_Led OFF.'"]);

    // A device that never connected, and one that died: never a false "Led ON.".
    let out = legacy_client(&addrs[1], &["length", "on"]).unwrap();
    assert_eq!(out, ["b'24_Device ghost offline.'"]);
    agent.proc.signal("KILL");
    wait_until("lima is offline", Duration::from_secs(10), || {
        device_status(&url, "lima").is_some_and(|d| !d.online)
    });
    let out = legacy_client(&addrs[0], &["length", "on"]).unwrap();
    assert_eq!(out, ["b'23_Device lima offline.'"]);
    let out = legacy_client(&addrs[0], &["nul", "go"]).unwrap();
    assert_eq!(out, ["b'Device lima offline.\\x00'"]);
}

fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn the_shim_survives_byte_dribbles_pipelining_floods_and_oversized_frames() {
    let broker = Broker::start();
    let url = broker.url();
    let (_agent, addr) = agent_with_shim(&url, "mike");
    wait_online(&url, "mike");

    // Nothing is written on connect (tcpcom would report SERVER_OCCUPIED).
    let mut quiet = TcpStream::connect(&addr).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let err = quiet.read(&mut b).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));

    // One byte at a time.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_nodelay(true).unwrap();
    for byte in b"4_on" {
        s.write_all(&[*byte]).unwrap();
    }
    assert_eq!(read_reply(&mut s), b"9_Led ON.");

    // Several frames, both framings, in one write: every one answered, in order.
    s.write_all(b"5_offgo\x004_on").unwrap();
    let mut got = Vec::new();
    let want: &[u8] = b"11_Led OFF.Button released\x009_Led ON.";
    while got.len() < want.len() {
        got.extend(read_reply(&mut s));
    }
    assert_eq!(got, want);

    // A length prefix beyond the bound: an error reply, then the connection is closed.
    let mut big = TcpStream::connect(&addr).unwrap();
    big.write_all(b"99999999_").unwrap();
    let reply = String::from_utf8(read_reply(&mut big)).unwrap();
    assert!(reply.contains("Frame too long"), "{reply}");
    assert_eq!(read_reply(&mut big), b"", "closed after the error");
    // An endless NUL-less stream: bounded, error, close.
    let mut flood = TcpStream::connect(&addr).unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let mut closed = false;
    for _ in 0..64 {
        if flood.write_all(&chunk).is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        let reply = read_reply(&mut flood);
        assert!(String::from_utf8_lossy(&reply).contains("Frame too long"));
    }

    // The shim still serves everyone else.
    assert_eq!(read_reply_after(&addr, b"4_on"), b"9_Led ON.");
    drop(quiet);
}

fn read_reply_after(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    read_reply(&mut s)
}

#[test]
fn two_hundred_concurrent_legacy_clients_through_the_broker() {
    const CLIENTS: usize = 200;
    const ROUNDS: usize = 5;
    let dir = temp_dir("legacy-load");
    let (broker, addrs) = broker_with_shims(&dir, &["november"]);
    let url = broker.url();
    let _agent = Agent::start(&url, "november", "");
    wait_online(&url, "november");
    let addr = addrs[0].clone();

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, barrier) = (addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                barrier.wait();
                let mut wrong = 0;
                for _ in 0..ROUNDS {
                    for (req, want) in [
                        (&b"4_on"[..], &b"9_Led ON."[..]),
                        (b"5_off", b"11_Led OFF."),
                    ] {
                        s.write_all(req).unwrap();
                        let mut got = Vec::new();
                        while got.len() < want.len() {
                            let mut buf = [0u8; 64];
                            let n = s.read(&mut buf).unwrap();
                            assert!(n > 0, "closed early");
                            got.extend_from_slice(&buf[..n]);
                        }
                        if got != want {
                            eprintln!("wrong reply: {:?}", String::from_utf8_lossy(&got));
                            wrong += 1;
                        }
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let total = CLIENTS * ROUNDS * 2;
    println!(
        "legacy load: {CLIENTS} concurrent clients, {total} confirmed round trips in {:.2} s = {:.0} round trips/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(wrong, 0, "every reply must be the right one");
}
