//! The engine, started in this process on `127.0.0.1:0`, fed for a bounded time with random
//! bytes, random mutations of valid packets (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PUBLISH with
//! random flags, lengths and topics, acknowledgements) and truncated packets, several
//! connections at once. Afterwards a client that was connected all along and a new one both
//! still publish and receive, and no task of the engine panicked. The seed is printed;
//! `PIFLEET_SEED=N` replays the same inputs (the interleaving of connections may differ).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{seed, Rng};
use pifleet_broker::Config;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUDGET: Duration = Duration::from_secs(3);
/// Connections open at once.
const AT_ONCE: usize = 8;

static PANICS: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// Packet generators (MQTT 3.1.1 framing, contents anything from valid to absurd)

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn push_str(buf: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(65_535)];
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// A topic name or filter: usually a few levels from a small pool (wildcards anywhere, empty
/// levels, `$` topics, the fleet's prefix), sometimes very deep, very long, or not UTF-8.
fn topic(rng: &mut Rng) -> Vec<u8> {
    match rng.below(60) {
        0 => {
            let levels = 1_000 + rng.below(29_000);
            let mut t = "a/".repeat(levels);
            t.pop();
            t.into_bytes()
        }
        1 => vec![b'x'; 1_000 + rng.below(50_000)],
        2 => rng.some_bytes(40),
        3 => Vec::new(),
        _ => {
            let pool = [
                "a", "b", "", "+", "#", "$SYS", "pifleet", "dev", "porch", "cmnd", "status", "é",
                "a+", "#x",
            ];
            let n = 1 + rng.below(8);
            let levels: Vec<&str> = (0..n).map(|_| rng.pick(&pool)).collect();
            levels.join("/").into_bytes()
        }
    }
}

fn client_id(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        // A few shared ids, so connections take over each other's sessions.
        0 | 1 => format!("fuzz-{}", rng.below(4)).into_bytes(),
        2 => Vec::new(),
        _ => rng.some_bytes(30),
    }
}

/// A CONNECT: valid, or (`wild`) with random flags, protocol level and fields.
fn connect(rng: &mut Rng, wild: bool) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(
        &mut body,
        if wild && rng.one_in(10) {
            b"MQIsdp"
        } else {
            b"MQTT"
        },
    );
    body.push(if wild && rng.one_in(5) {
        rng.below(8) as u8
    } else {
        4
    });
    let flags = if wild {
        rng.next_u64() as u8
    } else {
        // Clean session or not, a will (QoS 0-2, retained or not) or none.
        let will = if rng.one_in(3) {
            0x04 | (rng.below(3) as u8) << 3 | (rng.below(2) as u8) << 5
        } else {
            0
        };
        (rng.below(2) as u8) << 1 | will
    };
    body.push(flags);
    body.extend_from_slice(&(rng.below(120) as u16).to_be_bytes());
    let mut id = client_id(rng);
    if !wild && (std::str::from_utf8(&id).is_err() || id.is_empty() && flags & 0x02 == 0) {
        id = format!("fuzz-{}", rng.below(8)).into_bytes();
    }
    push_str(&mut body, &id);
    if flags & 0x04 != 0 {
        push_str(&mut body, &topic(rng));
        push_str(&mut body, &rng.some_bytes(20));
    }
    if flags & 0x80 != 0 {
        push_str(&mut body, b"user");
    }
    if flags & 0x40 != 0 {
        push_str(&mut body, b"password");
    }
    frame(0x10, &body)
}

/// One packet a connected client might send, valid or not.
fn packet(rng: &mut Rng) -> Vec<u8> {
    let pkid = |rng: &mut Rng| {
        if rng.one_in(20) {
            0
        } else {
            rng.below(65_536) as u16
        }
    };
    match rng.below(10) {
        0..=2 => {
            // PUBLISH: random DUP/QoS (3 is invalid)/RETAIN, empty payloads clear retained ones.
            let flags = rng.below(16) as u8;
            let mut body = Vec::new();
            push_str(&mut body, &topic(rng));
            if flags & 0x06 != 0 {
                body.extend_from_slice(&pkid(rng).to_be_bytes());
            }
            let n = if rng.one_in(4) { 0 } else { rng.below(2_000) };
            body.extend_from_slice(&rng.bytes(n));
            frame(0x30 | flags, &body)
        }
        3 | 4 => {
            let mut body = pkid(rng).to_be_bytes().to_vec();
            for _ in 0..rng.below(5) {
                push_str(&mut body, &topic(rng));
                let qos = if rng.one_in(10) { 256 } else { 3 };
                body.push(rng.below(qos) as u8);
            }
            frame(if rng.one_in(10) { 0x80 } else { 0x82 }, &body)
        }
        5 => {
            let mut body = pkid(rng).to_be_bytes().to_vec();
            for _ in 0..rng.below(4) {
                push_str(&mut body, &topic(rng));
            }
            frame(0xA2, &body)
        }
        6 => {
            let first = rng.pick(&[0x40, 0x50, 0x62, 0x70]);
            frame(first, &pkid(rng).to_be_bytes())
        }
        7 => frame(rng.pick(&[0xC0, 0xE0, 0xD0, 0x20, 0xF0, 0x00]), &[]),
        8 => {
            let wild = rng.one_in(2);
            connect(rng, wild)
        }
        _ => {
            let n = rng.below(64);
            frame(rng.next_u64() as u8, &rng.bytes(n))
        }
    }
}

/// Flips, overwrites or cuts a few bytes of `p` (the remaining length included).
fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    match rng.below(4) {
        0 if !p.is_empty() => {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(p.len());
                p[i] ^= 1 << rng.below(8);
            }
        }
        1 if p.len() > 1 => p[1] = rng.next_u64() as u8,
        2 => p.truncate(rng.below(p.len() + 1)),
        _ => {
            let i = rng.below(p.len() + 1);
            let extra = rng.some_bytes(9);
            p.splice(i..i, extra);
        }
    }
    p
}

/// What one fuzzing connection sends.
fn conversation(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let n = rng.below(2_048);
            rng.bytes(n)
        }
        1 => {
            let c = connect(rng, true);
            mutate(rng, c)
        }
        _ => {
            let wild = rng.one_in(4);
            let mut out = connect(rng, wild);
            for _ in 0..rng.below(20) {
                let p = packet(rng);
                out.extend(if rng.one_in(3) { mutate(rng, p) } else { p });
            }
            if rng.one_in(4) {
                out.truncate(rng.below(out.len() + 1));
            }
            out
        }
    }
}

async fn fuzz_connection(addr: SocketAddr, mut rng: Rng) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let bytes = conversation(&mut rng);
    // In random pieces, so packets straddle reads.
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(4_096)).min(rest.len());
        if s.write_all(&rest[..n]).await.is_err() {
            return;
        }
        rest = &rest[n..];
        if rng.one_in(4) {
            tokio::task::yield_now().await;
        }
    }
    // Read what comes back for a moment (or, sometimes, not at all), then close.
    let linger = Duration::from_millis(rng.below(30) as u64);
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(linger, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Well-behaved clients

fn client(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(o, 16)
}

/// Polls until a PUBLISH on `topic` arrives (10 s at most) and returns its payload.
async fn receive(ev: &mut EventLoop, topic: &str) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return p.payload.to_vec()
                }
                Ok(_) => {}
                Err(e) => panic!("well-behaved client lost its connection: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no message on {topic} within 10 s"))
}

async fn subscribed(c: &AsyncClient, ev: &mut EventLoop, filter: &str) {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("well-behaved client lost its connection: {e}"),
            }
        }
    })
    .await
    .expect("SUBACK within 10 s");
}

#[test]
fn random_and_mutated_packets_leave_the_engine_serving() {
    let seed = seed("fuzz engine");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = Config::default();
        config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        config.websocket.enabled = false;
        config.state.enabled = false;
        let running = pifleet_broker::start(&config).await.expect("engine starts");
        let addr = running.mqtt;

        // Connected through it all, subscribed to a topic of its own.
        let (by, mut by_ev) = client(addr, "bystander");
        subscribed(&by, &mut by_ev, "fuzz-ok/#").await;
        let bystander = tokio::spawn(async move {
            let got = receive(&mut by_ev, "fuzz-ok/after").await;
            (by, by_ev, got)
        });

        let mut rng = Rng::new(seed);
        let started = Instant::now();
        let mut connections = 0;
        while started.elapsed() < BUDGET {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..AT_ONCE {
                batch.spawn(fuzz_connection(addr, rng.fork()));
                connections += 1;
            }
            while let Some(done) = batch.join_next().await {
                done.expect("a fuzzing connection does not panic");
            }
        }
        println!("{connections} fuzzing connections");

        let (fresh, mut fresh_ev) = client(addr, "fresh");
        subscribed(&fresh, &mut fresh_ev, "fuzz-ok/#").await;
        fresh
            .publish("fuzz-ok/after", QoS::AtLeastOnce, false, "still here")
            .await
            .unwrap();
        assert_eq!(receive(&mut fresh_ev, "fuzz-ok/after").await, b"still here");
        let (_by, _by_ev, got) = bystander.await.expect("bystander task");
        assert_eq!(got, b"still here");
    });
    assert_eq!(
        PANICS.load(Ordering::Relaxed),
        0,
        "a task of the engine panicked (seed {seed})"
    );
}
