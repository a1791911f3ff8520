//! `pifleet-storm`: the authenticated reconnect storm. After a broker restart every device of
//! the fleet reconnects at once, each over TLS and each with a login; this measures how long
//! until all of them have CONNACK 0, against any broker speaking MQTT 3.1.1 over TLS.
//! `bench/storm.sh` runs it against pifleet-broker and mosquitto side by side.
//!
//! - `pifleet-storm fleet --devices N --out DIR` writes a fleet of N devices: `DIR/credentials.toml`
//!   (pifleet-broker's file, hashed as `device add` hashes a generated secret, or with
//!   `--argon2` as `--secret-stdin` hashes a chosen one) and `DIR/passwords.txt` (`name:secret`
//!   lines, for `mosquitto_passwd -U`, and for `run`).
//! - `pifleet-storm run --target NAME=mqtts://HOST:PORT[@PID] --ca-file CA --passwords FILE`
//!   opens one TLS connection per line of FILE at the same moment, each sending CONNECT with
//!   client id = user name = the device's name. A connection that is refused or closed before
//!   its CONNACK tries again after about a second, as an agent would; each connected device
//!   stays connected until all are (or `--timeout`). Prints when the last got CONNACK 0, the
//!   spread, the retries, and with a PID the broker's CPU time and RSS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

#[derive(Parser)]
#[command(name = "pifleet-storm")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a fleet's credentials file and password list.
    Fleet {
        #[arg(long)]
        devices: usize,
        #[arg(long)]
        out: PathBuf,
        /// Hash every secret with argon2id, as for secrets given with `--secret-stdin` (and as
        /// every entry was before the fast scheme).
        #[arg(long)]
        argon2: bool,
    },
    /// Connect every device of a password list at once and time it.
    Run {
        /// NAME=mqtts://HOST:PORT or NAME=mqtts://HOST:PORT@PID (the PID adds CPU and RSS).
        #[arg(long)]
        target: String,
        /// The CA certificate that signed the broker's certificate (PEM).
        #[arg(long)]
        ca_file: PathBuf,
        /// `name:secret` lines, as written by `fleet`.
        #[arg(long)]
        passwords: PathBuf,
        /// Give up on devices not connected after this many seconds.
        #[arg(long, default_value = "300")]
        timeout: u64,
    },
}

fn main() {
    match Args::parse().cmd {
        Cmd::Fleet {
            devices,
            out,
            argon2,
        } => fleet(devices, &out, argon2),
        Cmd::Run {
            target,
            ca_file,
            passwords,
            timeout,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(
                &target,
                &ca_file,
                &passwords,
                Duration::from_secs(timeout),
            ));
            rt.shutdown_background();
        }
    }
}

/// Writes the fleet. Hashing is the broker's own code; argon2 runs on every core.
fn fleet(n: usize, out: &Path, argon2: bool) {
    use pifleet_broker::credentials::{generate_secret, hash_generated, hash_secret, Credentials};
    std::fs::create_dir_all(out).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("storm-{i}")).collect();
    let secrets: Vec<String> = names.iter().map(|_| generate_secret()).collect();
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let chunk = n.div_ceil(cores).max(1);
    let hashes: Vec<String> = std::thread::scope(|s| {
        let parts: Vec<_> = secrets
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|secret| match argon2 {
                            true => hash_secret(secret.as_bytes()).unwrap(),
                            false => hash_generated(secret.as_bytes()),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
    });
    let mut toml = String::from("# pifleet-storm fleet\n");
    let mut passwords = String::new();
    for ((name, secret), hash) in names.iter().zip(&secrets).zip(&hashes) {
        toml.push_str(&format!(
            "\n[[device]]\nname = \"{name}\"\nhash = \"{hash}\"\n"
        ));
        passwords.push_str(&format!("{name}:{secret}\n"));
    }
    let creds = out.join("credentials.toml");
    std::fs::write(&creds, toml).unwrap();
    std::fs::write(out.join("passwords.txt"), passwords).unwrap();
    // The broker reads it back the same way.
    let loaded = Credentials::load(&creds).expect("the written file loads");
    assert_eq!(loaded.len(), n);
    eprintln!(
        "pifleet-storm: {n} devices ({}) in {} in {:.1} s",
        if argon2 {
            "argon2id"
        } else {
            "generated-secret hash"
        },
        out.display(),
        started.elapsed().as_secs_f64()
    );
}

/// The CONNECT of a clean session with a 5-minute keep-alive, user name and password.
fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let push = |b: &mut Vec<u8>, s: &[u8]| {
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s);
    };
    push(&mut body, b"MQTT");
    body.push(4);
    body.push(0b1100_0010); // user name, password, clean session
    body.extend_from_slice(&300u16.to_be_bytes());
    push(&mut body, client_id.as_bytes());
    push(&mut body, user.as_bytes());
    push(&mut body, password.as_bytes());
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// What one device's attempts came to.
struct Outcome {
    /// Since the storm began, when it got CONNACK 0 (`None`: never, before the timeout).
    connected: Option<Duration>,
    attempts: u32,
    /// CONNACK return codes other than 0 it was answered with.
    refused: Vec<u8>,
}

/// One attempt: TCP, TLS, CONNECT, CONNACK. The stream on CONNACK 0, else the code (`None`:
/// closed or failed without a CONNACK).
async fn attempt(
    addr: &str,
    tls: &tokio_rustls::TlsConnector,
    server: &ServerName<'static>,
    connect: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Option<u8>> {
    let tcp = TcpStream::connect(addr).await.map_err(|_| None)?;
    let _ = tcp.set_nodelay(true);
    let mut s = tls.connect(server.clone(), tcp).await.map_err(|_| None)?;
    s.write_all(connect).await.map_err(|_| None)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.map_err(|_| None)?;
    if ack[0] != 0x20 {
        return Err(None);
    }
    match ack[3] {
        0 => Ok(s),
        code => Err(Some(code)),
    }
}

fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ
}

fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn run(target: &str, ca_file: &Path, passwords: &Path, timeout: Duration) {
    let (name, rest) = target
        .split_once('=')
        .expect("--target NAME=mqtts://HOST:PORT[@PID]");
    let (url, pid) = match rest.rsplit_once('@') {
        Some((u, p)) => (u, Some(p.parse::<u32>().expect("PID"))),
        None => (rest, None),
    };
    let addr = url
        .strip_prefix("mqtts://")
        .expect("an mqtts:// URL")
        .to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(cert.expect("CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    // The certificate of `tls self-signed` names localhost.
    let server = ServerName::try_from("localhost").unwrap();
    let devices: Vec<(String, String)> = std::fs::read_to_string(passwords)
        .expect("password list")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    let n = devices.len();
    println!("== {name} ({url}): {n} devices connect at once over TLS, each with a login");
    let cpu0 = pid.and_then(cpu_secs);
    // This process does every client's half of the TLS handshakes on the same cores.
    let own0 = cpu_secs(std::process::id());

    let (done_tx, mut done) = mpsc::unbounded_channel::<Outcome>();
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    for (i, (user, secret)) in devices.into_iter().enumerate() {
        let (addr, tls, server) = (addr.clone(), tls.clone(), server.clone());
        let (done_tx, mut stop) = (done_tx.clone(), stop.clone());
        tokio::spawn(async move {
            let connect = connect_packet(&user, &user, &secret);
            let mut out = Outcome {
                connected: None,
                attempts: 0,
                refused: Vec::new(),
            };
            // Spread retries a little (0.75-1.25 s), as agents' backoff does.
            let mut jitter = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut held = None;
            while tokio::time::Instant::now() < deadline {
                out.attempts += 1;
                let result =
                    tokio::time::timeout_at(deadline, attempt(&addr, &tls, &server, &connect))
                        .await;
                match result {
                    Ok(Ok(stream)) => {
                        out.connected = Some(started.elapsed());
                        held = Some(stream);
                        break;
                    }
                    Ok(Err(code)) => out.refused.extend(code),
                    Err(_) => break,
                }
                jitter ^= jitter << 13;
                jitter ^= jitter >> 7;
                jitter ^= jitter << 17;
                let pause = Duration::from_millis(750 + jitter % 500);
                tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
            }
            let _ = done_tx.send(out);
            let _ = stop.wait_for(|s| *s).await;
            drop(held);
        });
    }
    drop(done_tx);
    let mut outcomes = Vec::with_capacity(n);
    while let Some(o) = done.recv().await {
        outcomes.push(o);
        if outcomes.len() == n {
            break;
        }
    }
    let wall = started.elapsed();
    let cpu = match (cpu0, pid.and_then(cpu_secs)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let rss = pid.and_then(rss_mb);
    let own = match (own0, cpu_secs(std::process::id())) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let _ = stop_tx.send(true);

    let mut times: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.connected.map(|d| d.as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    let connected = times.len();
    let pct = |p: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let retries: u32 = outcomes.iter().map(|o| o.attempts - 1).sum();
    let refused: usize = outcomes.iter().map(|o| o.refused.len()).sum();
    let mut codes: Vec<u8> = outcomes.iter().flat_map(|o| o.refused.clone()).collect();
    codes.sort_unstable();
    codes.dedup();
    let all = if connected == n {
        format!("{:.2} s", pct(1.0))
    } else {
        format!(
            "not all: {connected} of {n} after {:.0} s",
            wall.as_secs_f64()
        )
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "  all {n} connected (CONNACK 0): {all}");
    let _ = writeln!(
        out,
        "  per device, p50 / p99 / max: {:.2} s / {:.2} s / {:.2} s",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let _ = writeln!(
        out,
        "  retries: {retries} ({refused} refused with CONNACK {codes:?}, the rest closed or failed before a CONNACK)"
    );
    if let Some(cpu) = cpu {
        let _ = writeln!(out, "  broker CPU during the storm: {cpu:.1} s");
    }
    if let Some(own) = own {
        let _ = writeln!(
            out,
            "  pifleet-storm's own CPU (the clients' TLS handshakes): {own:.1} s"
        );
    }
    if let Some(rss) = rss {
        let _ = writeln!(out, "  broker RSS with {connected} connected: {rss:.1} MB");
    }
}
