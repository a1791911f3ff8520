//! The attackers. Each flood is a set of tasks that loop until their count runs out or the
//! soak shuts their runtime down, and tallies what the broker did in a [`Counts`]: every
//! attempted item ends in exactly one `ok: …` (refused or closed as expected) or `bad: …` key;
//! other keys are information.
//!
//! Identities (made by bench/soak.sh): devices `attacker` (subscriptions), `hoarder` (retained),
//! `fighter` (takeovers) and `chatter` (a busy topic); controller `soak` (persistent sessions,
//! non-reading subscribers; the canary's controller is `soak` too). Every flood connects from
//! its own loopback source address ([`Src`]).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::v4::{LastWill, Packet, PubAck};
use rumqttc::{ConnectReturnCode, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

use crate::raw::{self, code_name, connect_packet, Net, Outcome, Port, Raw};

/// How long any CONNECT may take to be answered before it counts as unanswered: the broker's
/// own connect limit (`limits.connect_timeout_ms`).
pub const LOGIN_WAIT: Duration = Duration::from_secs(10);

/// Levels of the deep topics and filters.
pub const DEEP_LEVELS: usize = 10_000;
/// Bytes of the long (single-level) topics and filters.
pub const LONG_BYTES: usize = 40_000;

/// The loopback source address of each flood: a flood that fills its per-IP connection cap
/// locks out only itself. The canary and the login probe use 127.0.0.1.
pub struct Src;
impl Src {
    pub const CANARY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
    pub const LOGINS_TLS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    pub const LOGINS_PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
    pub const SUBSCRIPTIONS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
    pub const RETAINED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
    pub const SESSIONS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
    pub const WS_FRAMES: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
    pub const WS_SLOW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 8);
    pub const TAKEOVERS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
    pub const LURKERS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
    pub const WS_FRAGMENTS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
    pub const WS_SILENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
}

/// The sizes of the floods (flags of `pifleet-soak`).
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// (1) Wrong-password CONNECTs in flight at once, on each of the TLS and plain ports.
    #[arg(long, default_value = "200")]
    pub login_in_flight: usize,
    /// (1) Most wrong-password CONNECTs per port in all.
    #[arg(long, default_value = "1000000")]
    pub login_max: u64,
    /// (2) Overlapping filters (all matching one topic) the attacker device subscribes to per
    /// connection; at most 767 distinct ones exist.
    #[arg(long, default_value = "500")]
    pub sub_filters: usize,
    /// (2) `limits.max_subscriptions_per_client` of the broker under test: filters granted
    /// beyond it are a failure.
    #[arg(long, default_value = "100")]
    pub max_subscriptions: usize,
    /// (2) Publishes to the topic all the filters match, per connection.
    #[arg(long, default_value = "100")]
    pub sub_publishes: usize,
    /// (2) Most connections (rounds) of the subscription flood.
    #[arg(long, default_value = "10000")]
    pub sub_rounds: usize,
    /// (3) Retained topics the hoarder device fills (then overwrites, round after round).
    #[arg(long, default_value = "5000")]
    pub retained: usize,
    /// (3) Payload of each retained message, KiB.
    #[arg(long, default_value = "60")]
    pub retained_kib: usize,
    /// (3) Retained messages published per second.
    #[arg(long, default_value = "500")]
    pub retained_rate: usize,
    /// (3) Most retained messages published in all.
    #[arg(long, default_value = "100000")]
    pub retained_max: usize,
    /// (3) `limits.max_retained_bytes` of the broker under test, to judge the read-back.
    #[arg(long, default_value = "67108864")]
    pub max_retained_bytes: usize,
    /// (4) Most sessions the session flood opens (1 in 8 anonymous).
    #[arg(long, default_value = "1000000")]
    pub sessions: u64,
    /// (4) Session-flood connections at once.
    #[arg(long, default_value = "8")]
    pub session_workers: usize,
    /// (4) Separators between a controller's name and a suffix in its client ids, tried in turn
    /// (`soak:7`, `soak-7`); the first the broker accepts names the other controller sessions.
    #[arg(long, value_delimiter = ',', default_value = ":,-")]
    pub id_seps: Vec<char>,
    /// (5) WebSocket connections that upgrade and stream an unfinished frame.
    #[arg(long, default_value = "8")]
    pub ws_frames: usize,
    /// (5) The length the unfinished frame announces, MiB.
    #[arg(long, default_value = "16")]
    pub ws_frame_mib: u64,
    /// (5) Bytes per write while streaming a frame or fragment, KiB, and the pause between
    /// writes.
    #[arg(long, default_value = "16")]
    pub ws_chunk_kib: usize,
    #[arg(long, default_value = "10")]
    pub ws_chunk_ms: u64,
    /// (5) WebSocket connections that upgrade and stream a message that never ends: non-final
    /// frames of one chunk each.
    #[arg(long, default_value = "4")]
    pub ws_fragments: usize,
    /// (5) How much of the unending message each streams at most, MiB.
    #[arg(long, default_value = "64")]
    pub ws_fragment_mib: u64,
    /// (5) WebSocket connections that upgrade and then send nothing.
    #[arg(long, default_value = "1000")]
    pub ws_silent: usize,
    /// (5) WebSocket connections that never finish the HTTP upgrade (beyond the per-IP cap of
    /// 1,024, the rest are refused).
    #[arg(long, default_value = "1100")]
    pub ws_slow: usize,
    /// (6) Pairs of connections fighting over one client id.
    #[arg(long, default_value = "1")]
    pub takeover_pairs: usize,
    /// (6) Pause between a takeover loser's reconnects, ms.
    #[arg(long, default_value = "5")]
    pub takeover_pause_ms: u64,
    /// (6) Most takeover connections in all.
    #[arg(long, default_value = "100000")]
    pub takeover_max: u64,
    /// (7) Controller sessions subscribed to everything (`pifleet/#`) that never read.
    #[arg(long, default_value = "8")]
    pub lurkers: usize,
    /// (7) Messages per second on the busy topic they are subscribed to.
    #[arg(long, default_value = "2000")]
    pub chatter_rate: usize,
}

/// A flood's tally.
#[derive(Default)]
pub struct Counts {
    inner: Mutex<Tally>,
}

#[derive(Default, Clone)]
pub struct Tally {
    pub n: BTreeMap<String, u64>,
    /// Values (durations in seconds, sizes), per key.
    pub samples: BTreeMap<String, Vec<f64>>,
    /// (now, highest) of things held open at once.
    pub gauges: BTreeMap<String, (i64, i64)>,
}

impl Counts {
    pub fn add(&self, key: &str, n: u64) {
        let mut t = self.inner.lock().unwrap();
        match t.n.get_mut(key) {
            Some(v) => *v += n,
            None => {
                t.n.insert(key.to_string(), n);
            }
        }
    }

    pub fn bump(&self, key: &str) {
        self.add(key, 1)
    }

    /// Records one value (a duration in seconds, a size) under `key`.
    pub fn sample(&self, key: &str, value: f64) {
        let mut t = self.inner.lock().unwrap();
        t.samples.entry(key.to_string()).or_default().push(value);
    }

    pub fn gauge(&self, key: &str, delta: i64) {
        let mut t = self.inner.lock().unwrap();
        let g = t.gauges.entry(key.to_string()).or_insert((0, 0));
        g.0 += delta;
        g.1 = g.1.max(g.0);
    }

    pub fn get(&self, key: &str) -> u64 {
        self.inner.lock().unwrap().n.get(key).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> Tally {
        self.inner.lock().unwrap().clone()
    }
}

impl Tally {
    pub fn attempted(&self) -> u64 {
        self.n.get("attempts").copied().unwrap_or(0)
    }

    fn sum(&self, prefix: &str) -> u64 {
        self.n
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn expected(&self) -> u64 {
        self.sum("ok: ")
    }

    pub fn other(&self) -> u64 {
        self.sum("bad: ")
    }
}

/// One flood: its name in the report, what it does, and its tally.
pub struct Flood {
    pub name: &'static str,
    pub what: String,
    pub counts: Counts,
}

impl Flood {
    pub fn new(name: &'static str, what: String) -> Arc<Flood> {
        Arc::new(Flood {
            name,
            what,
            counts: Counts::default(),
        })
    }
}

/// What every flood needs.
pub struct Ctx {
    pub net: Arc<Net>,
    /// Identity name → secret.
    pub secrets: HashMap<String, String>,
    /// The controller client-id separator the broker accepts (probed at start).
    pub sep: char,
    pub o: Opts,
}

impl Ctx {
    fn secret(&self, who: &str) -> &str {
        self.secrets
            .get(who)
            .map(String::as_str)
            .unwrap_or("missing-secret")
    }

    /// Logs in as `user` (its own secret); a failure is tallied under `what`.
    async fn login(
        &self,
        f: &Flood,
        what: &str,
        src: Ipv4Addr,
        user: &str,
        client_id: &str,
        clean: bool,
    ) -> Option<(Raw, bool)> {
        let c = connect_packet(client_id, Some((user, self.secret(user))), clean, 0);
        match raw::connect(&self.net, Port::Mqtt, src, c, LOGIN_WAIT).await {
            Outcome::Accepted(raw, present) => Some((raw, present)),
            other => {
                f.counts
                    .bump(&format!("{what}: could not log in: {}", describe(&other)));
                None
            }
        }
    }
}

/// An outcome other than acceptance, in words.
pub fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Accepted(..) => "accepted".into(),
        Outcome::Refused(c) => format!("CONNACK {}", code_name(*c)),
        Outcome::Closed => "closed before CONNACK".into(),
        Outcome::NoAnswer => format!("no CONNACK within {} s", LOGIN_WAIT.as_secs()),
        Outcome::Failed(e) => format!("{e}"),
    }
}

/// Keeps a connection open, unread, until the soak ends.
async fn hold<T>(conn: T) {
    let _conn = conn;
    std::future::pending::<()>().await
}

/// (1) Wrong-password CONNECTs, `login_in_flight` at a time, on `port`: a third for device
/// `canary`, a third for controller `soak`, a third for users that do not exist.
pub async fn logins(ctx: Arc<Ctx>, f: Arc<Flood>, port: Port, src: Ipv4Addr) {
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..ctx.o.login_in_flight {
        let (ctx, f, next) = (ctx.clone(), f.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ctx.o.login_max {
                    return;
                }
                f.counts.bump("attempts");
                let user = match i % 3 {
                    0 => "canary".to_string(),
                    1 => "soak".to_string(),
                    _ => format!("nobody{i}"),
                };
                let password = format!("wrong-password-{i}");
                let c = connect_packet(&user, Some((&user, &password)), true, 30);
                let started = Instant::now();
                match raw::connect(&ctx.net, port, src, c, LOGIN_WAIT).await {
                    Outcome::Refused(ConnectReturnCode::BadUserNamePassword) => {
                        f.counts.bump("ok: CONNACK 4 bad user name or password");
                        f.counts
                            .sample("CONNACK 4 after (s)", started.elapsed().as_secs_f64());
                    }
                    // The per-IP cap closes at accept (later when the broker is busy), a
                    // deadline after its time: the times tell which.
                    Outcome::Closed => {
                        f.counts.bump(
                            "ok: closed before CONNACK (per-IP connection cap or a deadline)",
                        );
                        f.counts
                            .sample("closed after (s)", started.elapsed().as_secs_f64());
                        sleep(Duration::from_millis(100)).await;
                    }
                    Outcome::Accepted(..) => f.counts.bump("bad: accepted a wrong password"),
                    other => {
                        f.counts.bump(&format!("bad: {}", describe(&other)));
                        if matches!(other, Outcome::Failed(_)) {
                            sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
    }
}

/// Distinct filters inside `base` that all match `base/levels…`: each level exact or `+`, with
/// and without a trailing `#`, and every shorter prefix followed by `#`; at most `n`.
pub fn overlapping_filters(base: &str, levels: &[&str], n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for depth in (0..=levels.len()).rev() {
        for mask in 0..(1u32 << depth) {
            let mut f = base.to_string();
            for (i, level) in levels.iter().enumerate().take(depth) {
                f.push('/');
                f.push_str(if mask >> i & 1 == 1 { "+" } else { level });
            }
            if depth == levels.len() {
                out.push(f.clone());
            }
            out.push(format!("{f}/#"));
        }
    }
    out.truncate(n);
    out
}

/// (2) The attacker device, connection after connection: subscribes to as many overlapping
/// filters in its own subtree as it can (beyond `max_subscriptions` refused), publishes to
/// the topic they all match (one copy per publish expected back), subscribes to a 10,000-level
/// and a 40 KB filter (refused), then publishes to a 10,000-level or 40 KB topic (the broker
/// closes the connection).
pub async fn subscriptions(ctx: Arc<Ctx>, f: Arc<Flood>) {
    let base = "pifleet/dev/attacker";
    let levels = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let topic = format!("{base}/{}", levels.join("/"));
    let filters = overlapping_filters(base, &levels, ctx.o.sub_filters);
    let deep = format!("{base}/{}", vec!["d"; DEEP_LEVELS].join("/"));
    let long = format!("{base}/{}", "x".repeat(LONG_BYTES));
    let payload = Bytes::from_static(b"overlap");
    let wait = Duration::from_secs(10);
    for round in 0..ctx.o.sub_rounds {
        let Some((mut c, _)) = ctx
            .login(&f, "info", Src::SUBSCRIPTIONS, "attacker", "attacker", true)
            .await
        else {
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        let (mut granted, mut refused) = (0, 0);
        let mut lost = false;
        for chunk in filters.chunks(50) {
            match c.subscribe_acked(chunk, QoS::AtMostOnce, wait).await {
                Ok((g, r)) => {
                    granted += g;
                    refused += r;
                }
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            f.counts
                .bump("info: connection lost while subscribing (round abandoned)");
            continue;
        }
        let cap = ctx.o.max_subscriptions.min(filters.len());
        f.counts.add("attempts", (granted + refused) as u64);
        f.counts.add(
            "ok: overlapping filter granted (within max_subscriptions_per_client)",
            granted.min(cap) as u64,
        );
        if granted > cap {
            f.counts.add(
                "bad: overlapping filter granted beyond max_subscriptions_per_client",
                (granted - cap) as u64,
            );
        }
        let short = cap.saturating_sub(granted).min(refused);
        f.counts.add(
            "ok: overlapping filter refused (SUBACK 0x80)",
            (refused - short) as u64,
        );
        if short > 0 {
            f.counts.add(
                "bad: overlapping filter refused below the cap",
                short as u64,
            );
        }

        // One publish matching every granted filter: one copy each comes back.
        let mut ok = true;
        for _ in 0..ctx.o.sub_publishes {
            if c.publish(&topic, QoS::AtMostOnce, false, payload.clone())
                .await
                .is_err()
            {
                ok = false;
                break;
            }
        }
        if !ok {
            f.counts
                .bump("info: connection lost while publishing (round abandoned)");
            continue;
        }
        let mut copies = 0usize;
        let mut deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(p)) = c.recv_until(deadline).await {
            if let Packet::Publish(p) = p {
                if p.topic == topic {
                    copies += 1;
                    deadline = Instant::now() + Duration::from_millis(500);
                }
            }
        }
        let sent = ctx.o.sub_publishes;
        f.counts.add("attempts", sent as u64);
        if granted > 0 {
            f.counts.add(
                "ok: matching publish delivered back exactly once",
                copies.min(sent) as u64,
            );
            if copies > sent {
                f.counts.add(
                    "bad: extra copies of a publish (one per overlapping filter?)",
                    (copies - sent) as u64,
                );
            }
            if copies < sent {
                f.counts.add(
                    "bad: matching publish not delivered back",
                    (sent - copies) as u64,
                );
            }
        } else {
            f.counts
                .add("info: publishes with no filter granted", sent as u64);
        }

        // Deep and long filters: refused.
        f.counts.add("attempts", 2);
        match c
            .subscribe_acked(&[deep.clone(), long.clone()], QoS::AtMostOnce, wait)
            .await
        {
            Ok((g, r)) => {
                f.counts.add(
                    "ok: 10,000-level / 40 KB filter refused (SUBACK 0x80)",
                    r as u64,
                );
                f.counts
                    .add("bad: 10,000-level / 40 KB filter granted", g as u64);
            }
            Err(_) => {
                f.counts
                    .add("bad: connection lost on a 10,000-level / 40 KB filter", 2);
                continue;
            }
        }

        // A deep or long topic: the broker closes the connection.
        f.counts.bump("attempts");
        let (bad_topic, label) = if round % 2 == 0 {
            (&deep, "10,000-level")
        } else {
            (&long, "40 KB")
        };
        let _ = c
            .publish(bad_topic, QoS::AtMostOnce, false, payload.clone())
            .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let closed = loop {
            match c.recv_until(deadline).await {
                Ok(Some(_)) => {}
                Ok(None) => break true,
                Err(e) => break raw::is_closed(&e),
            }
        };
        if closed {
            f.counts
                .bump(&format!("ok: {label} topic published: connection closed"));
        } else {
            f.counts.bump(&format!(
                "bad: {label} topic published: connection still open after 5 s"
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// A controller session (`soak` + separator + `name`) subscribed to `filter` that never reads.
async fn lurk(ctx: Arc<Ctx>, f: Arc<Flood>, src: Ipv4Addr, name: String, filter: &str, qos: QoS) {
    let id = format!("soak{}{name}", ctx.sep);
    f.counts.bump("attempts");
    let label = format!("non-reading subscriber to {filter}");
    let Some((mut c, _)) = ctx.login(&f, "bad", src, "soak", &id, true).await else {
        return;
    };
    match c
        .subscribe_acked(&[filter.to_string()], qos, LOGIN_WAIT)
        .await
    {
        Ok((1, 0)) => {
            f.counts
                .bump(&format!("ok: {label}: subscribed, never reads"));
            hold(c).await
        }
        Ok(_) => f
            .counts
            .bump(&format!("bad: {label}: subscription refused")),
        Err(e) => f.counts.bump(&format!("bad: {label}: {e}")),
    }
}

/// (3) The hoarder device stores retained messages with large payloads in its own subtree,
/// topic after topic and then over again, while two controller sessions subscribed to the
/// subtree never read (a third subscribes once the topics are all written). The store's bound
/// is checked afterwards by [`retained_readback`].
pub async fn retained(ctx: Arc<Ctx>, f: Arc<Flood>) {
    let filter = "pifleet/dev/hoarder/#";
    for k in 0..2 {
        tokio::spawn(lurk(
            ctx.clone(),
            f.clone(),
            Src::RETAINED,
            format!("hoard-lurk-{k}"),
            filter,
            QoS::AtLeastOnce,
        ));
    }
    let payload = Bytes::from(vec![b'r'; ctx.o.retained_kib * 1024]);
    let per_tick = ctx.o.retained_rate.div_ceil(100).max(1);
    let mut published = 0usize;
    let mut late = false;
    while published < ctx.o.retained_max {
        let Some((mut c, _)) = ctx
            .login(&f, "info", Src::RETAINED, "hoarder", "hoarder", true)
            .await
        else {
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        'connected: loop {
            tick.tick().await;
            for _ in 0..per_tick {
                if published >= ctx.o.retained_max {
                    break 'connected;
                }
                let topic = format!("pifleet/dev/hoarder/r/{}", published % ctx.o.retained);
                if c.publish(&topic, QoS::AtMostOnce, true, payload.clone())
                    .await
                    .is_err()
                {
                    f.counts.bump("info: hoarder connection lost");
                    break 'connected;
                }
                published += 1;
                f.counts
                    .bump("info: retained messages published (with overwrites)");
                if published == ctx.o.retained && !late {
                    late = true;
                    tokio::spawn(lurk(
                        ctx.clone(),
                        f.clone(),
                        Src::RETAINED,
                        "hoard-lurk-late".into(),
                        filter,
                        QoS::AtLeastOnce,
                    ));
                }
            }
        }
    }
}

/// The connection [`retained_readback`] reads through, opened before the floods (a login
/// afterwards could wait behind what the login floods left queued).
pub async fn readback_connection(ctx: &Ctx, f: &Flood) -> Option<Raw> {
    let id = format!("soak{}readback", ctx.sep);
    ctx.login(f, "info", Src::CANARY, "soak", &id, true)
        .await
        .map(|(c, _)| c)
}

/// After the floods: how many of the hoarder's retained messages the broker stored, read back
/// (on `c`, which reads) by subscribing to them. Tallied against the store's byte bound.
pub async fn retained_readback(ctx: &Ctx, f: &Flood, c: Option<Raw>) {
    let published = f
        .counts
        .get("info: retained messages published (with overwrites)") as usize;
    let distinct = published.min(ctx.o.retained);
    if distinct == 0 {
        return;
    }
    f.counts.add("attempts", distinct as u64);
    let Some(mut c) = c else {
        f.counts.add(
            "bad: retained topic not checked (no read-back connection)",
            distinct as u64,
        );
        return;
    };
    let started = Instant::now();
    let filter = "pifleet/dev/hoarder/r/+".to_string();
    let mut stored = 0usize;
    let mut pkid = None;
    if let Ok(id) = c.subscribe(&[filter], QoS::AtMostOnce).await {
        pkid = Some(id);
    }
    let mut deadline = Instant::now() + Duration::from_secs(10);
    while pkid.is_some() {
        match c.recv_until(deadline).await {
            Ok(Some(Packet::Publish(p))) if p.retain => {
                stored += 1;
                deadline = Instant::now() + Duration::from_secs(2);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    c.disconnect().await;
    let topic_len = "pifleet/dev/hoarder/r/0000".len();
    // What the broker charges a retained message: topic + payload + 64, plus 64 per level.
    let cost = topic_len + ctx.o.retained_kib * 1024 + 64 + 64 * 5;
    let cap = ctx.o.max_retained_bytes / cost;
    f.counts.add(
        "ok: retained message stored (read back afterwards)",
        stored.min(cap) as u64,
    );
    if stored > cap {
        f.counts.add(
            "bad: retained message stored beyond max_retained_bytes",
            (stored - cap) as u64,
        );
    }
    f.counts.add(
        "ok: retained message not stored (store full)",
        distinct.saturating_sub(stored) as u64,
    );
}

/// (4) Controller `soak` opens persistent sessions (clean_session = false, each subscribed at
/// QoS 1 to the canary's output state, so offline they queue) under client ids `soak<sep><n>`
/// for every separator in turn, and leaves; one attempt in eight is an anonymous CONNECT on
/// the plain port, which must be refused.
pub async fn sessions(ctx: Arc<Ctx>, f: Arc<Flood>) {
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..ctx.o.session_workers {
        let (ctx, f, next) = (ctx.clone(), f.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ctx.o.sessions {
                    return;
                }
                f.counts.bump("attempts");
                if i % 8 == 7 {
                    let c = connect_packet(&format!("anon-{i}"), None, false, 0);
                    match raw::connect(&ctx.net, Port::Mqtt, Src::SESSIONS, c, LOGIN_WAIT).await {
                        Outcome::Refused(ConnectReturnCode::NotAuthorized) => {
                            f.counts.bump("ok: anonymous: CONNACK 5 not authorized")
                        }
                        other => f
                            .counts
                            .bump(&format!("bad: anonymous: {}", describe(&other))),
                    }
                    continue;
                }
                let sep = ctx.o.id_seps[i as usize % ctx.o.id_seps.len()];
                let id = format!("soak{sep}{i}");
                let c = connect_packet(&id, Some(("soak", ctx.secret("soak"))), false, 0);
                match raw::connect(&ctx.net, Port::Mqtt, Src::SESSIONS, c, LOGIN_WAIT).await {
                    Outcome::Accepted(mut c, _) => {
                        let filter = "pifleet/dev/canary/output/+".to_string();
                        match c
                            .subscribe_acked(&[filter], QoS::AtLeastOnce, LOGIN_WAIT)
                            .await
                        {
                            Ok(_) => f.counts.bump(&format!(
                                "ok: soak{sep}<n>: persistent session opened, subscribed, left"
                            )),
                            Err(e) => f
                                .counts
                                .bump(&format!("bad: soak{sep}<n>: lost while subscribing: {e}")),
                        }
                        c.disconnect().await;
                    }
                    Outcome::Refused(ConnectReturnCode::BadClientId) => f
                        .counts
                        .bump(&format!("ok: soak{sep}<n>: CONNACK 2 identifier rejected")),
                    Outcome::Refused(ConnectReturnCode::ServiceUnavailable) => f
                        .counts
                        .bump("ok: CONNACK 3 server unavailable (session caps)"),
                    other => f
                        .counts
                        .bump(&format!("bad: soak{sep}<n>: {}", describe(&other))),
                }
            }
        });
    }
}

/// What an upgraded WebSocket attacker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMode {
    /// One frame announcing `ws_frame_mib` MiB, streamed to one chunk short of its end.
    Frame,
    /// A message that never ends: non-final frames of one chunk each, up to
    /// `ws_fragment_mib` MiB in all.
    Fragments,
    /// Nothing at all after the upgrade.
    Silent,
}

/// (5a) WebSocket connections that complete the upgrade and then send `mode`, slowly and never
/// finishing; each reconnects once the broker closes it.
pub async fn ws_upgraded(ctx: Arc<Ctx>, f: Arc<Flood>, mode: WsMode, n: usize, src: Ipv4Addr) {
    for w in 0..n {
        let (ctx, f) = (ctx.clone(), f.clone());
        tokio::spawn(async move {
            sleep(Duration::from_millis(5 * w as u64)).await;
            loop {
                ws_once(&ctx, &f, mode, src).await;
                sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

async fn ws_once(ctx: &Ctx, f: &Flood, mode: WsMode, src: Ipv4Addr) {
    f.counts.bump("attempts");
    let started = Instant::now();
    let mut s = match raw::tcp(src, ctx.net.ws).await {
        Ok(s) => s,
        Err(e) => {
            f.counts.bump(&format!("bad: cannot connect: {e}"));
            sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    let cap = "ok: closed before the upgrade (per-IP connection cap)";
    if s.write_all(raw::ws_upgrade_request(ctx.net.ws).as_bytes())
        .await
        .is_err()
    {
        f.counts.bump(cap);
        return;
    }
    match tokio::time::timeout(LOGIN_WAIT, raw::read_http_head(&mut s)).await {
        Ok(Ok(Some(head))) if head.starts_with("HTTP/1.1 101") => {}
        Ok(Ok(Some(head))) => {
            let line = head.lines().next().unwrap_or("").to_string();
            f.counts.bump(&format!("bad: upgrade refused: {line}"));
            return;
        }
        Ok(Ok(None)) => {
            f.counts.bump(cap);
            return;
        }
        Ok(Err(e)) => {
            f.counts.bump(&format!("bad: upgrade: {e}"));
            return;
        }
        Err(_) => {
            f.counts.bump("bad: no upgrade answer within 10 s");
            return;
        }
    }
    let chunk = vec![0u8; ctx.o.ws_chunk_kib * 1024];
    let pause = Duration::from_millis(ctx.o.ws_chunk_ms);
    let held = "upgraded connections held open at once";
    f.counts.gauge(held, 1);
    let mut sent = 0u64;
    let mut closed = false;
    match mode {
        WsMode::Frame => {
            let len = ctx.o.ws_frame_mib << 20;
            closed = s
                .write_all(&raw::ws_frame_header(true, 2, len))
                .await
                .is_err();
            // All but the last chunk: the frame never completes.
            while !closed && sent + (chunk.len() as u64) < len {
                if s.write_all(&chunk).await.is_err() {
                    closed = true;
                    break;
                }
                sent += chunk.len() as u64;
                sleep(pause).await;
            }
        }
        WsMode::Fragments => {
            let total = ctx.o.ws_fragment_mib << 20;
            while !closed && sent + (chunk.len() as u64) < total {
                // The first frame opens a binary message, the rest continue it; none is final.
                let opcode = if sent == 0 { 2 } else { 0 };
                let mut frame = raw::ws_frame_header(false, opcode, chunk.len() as u64);
                frame.extend_from_slice(&chunk);
                if s.write_all(&frame).await.is_err() {
                    closed = true;
                    break;
                }
                sent += chunk.len() as u64;
                sleep(pause).await;
            }
        }
        WsMode::Silent => {}
    }
    if !closed {
        // Wait for the broker to close it (its connect deadline, at the latest).
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    f.counts.gauge(held, -1);
    f.counts.bump("ok: connection closed by the broker");
    f.counts.sample(
        "closed after (s from connect)",
        started.elapsed().as_secs_f64(),
    );
    if mode != WsMode::Silent {
        f.counts
            .sample("MiB sent before the close", sent as f64 / (1 << 20) as f64);
    }
}

/// (5b) WebSocket connections that never finish the HTTP upgrade: half a request, then
/// silence, `ws_slow` at once (beyond the per-IP cap the broker closes them at once).
pub async fn ws_slow(ctx: Arc<Ctx>, f: Arc<Flood>) {
    for w in 0..ctx.o.ws_slow {
        let (ctx, f) = (ctx.clone(), f.clone());
        tokio::spawn(async move {
            sleep(Duration::from_millis(2 * w as u64)).await;
            loop {
                f.counts.bump("attempts");
                let started = Instant::now();
                let mut s = match raw::tcp(Src::WS_SLOW, ctx.net.ws).await {
                    Ok(s) => s,
                    Err(e) => {
                        f.counts.bump(&format!("bad: cannot connect: {e}"));
                        sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let half = format!(
                    "GET /mqtt HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n",
                    ctx.net.ws
                );
                let _ = s.write_all(half.as_bytes()).await;
                f.counts.gauge("unfinished upgrades held open at once", 1);
                let mut b = [0u8; 256];
                let r = tokio::time::timeout(Duration::from_secs(60), s.read(&mut b)).await;
                f.counts.gauge("unfinished upgrades held open at once", -1);
                let took = started.elapsed();
                match r {
                    Ok(Ok(0)) | Ok(Err(_)) if took < Duration::from_secs(1) => {
                        f.counts.bump("ok: closed at once (per-IP connection cap)")
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        f.counts.bump("ok: closed by the broker (connect deadline)");
                        f.counts.sample("closed after (s)", took.as_secs_f64());
                    }
                    Ok(Ok(_)) => f.counts.bump("bad: answered an unfinished upgrade"),
                    Err(_) => f.counts.bump("bad: still open after 60 s"),
                }
                sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// (6) Pairs of connections fighting over the fighter device's client id: each logs in (one
/// with a persistent session, one clean, both with a last will), subscribes at QoS 1 and
/// publishes, and once the other takes the id over, logs in again.
pub async fn takeovers(ctx: Arc<Ctx>, f: Arc<Flood>) {
    let next = Arc::new(AtomicU64::new(0));
    for w in 0..2 * ctx.o.takeover_pairs {
        let (ctx, f, next) = (ctx.clone(), f.clone(), next.clone());
        tokio::spawn(async move {
            let clean = w % 2 == 1;
            loop {
                if next.fetch_add(1, Ordering::Relaxed) >= ctx.o.takeover_max {
                    return;
                }
                takeover_once(&ctx, &f, clean).await;
                sleep(Duration::from_millis(ctx.o.takeover_pause_ms)).await;
            }
        });
    }
}

async fn takeover_once(ctx: &Ctx, f: &Flood, clean: bool) {
    f.counts.bump("attempts");
    let mut c = connect_packet(
        "fighter",
        Some(("fighter", ctx.secret("fighter"))),
        clean,
        30,
    );
    c.last_will = Some(LastWill::new(
        "pifleet/dev/fighter/will",
        "gone",
        QoS::AtMostOnce,
        false,
    ));
    let mut c = match raw::connect(&ctx.net, Port::Mqtt, Src::TAKEOVERS, c, LOGIN_WAIT).await {
        Outcome::Accepted(c, present) => {
            if present {
                f.counts.bump("info: persistent session resumed");
            }
            c
        }
        other => {
            f.counts.bump(&format!("bad: {}", describe(&other)));
            return;
        }
    };
    let taken = "ok: connected, then taken over (closed by the broker)";
    let filter = "pifleet/dev/fighter/#".to_string();
    if c.subscribe_acked(&[filter], QoS::AtLeastOnce, Duration::from_secs(5))
        .await
        .is_err()
    {
        f.counts.bump(taken);
        return;
    }
    let _ = c
        .publish(
            "pifleet/dev/fighter/x",
            QoS::AtLeastOnce,
            false,
            Bytes::from_static(b"mine"),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.recv_until(deadline).await {
            Ok(Some(Packet::Publish(p))) => {
                if p.topic.ends_with("/will") {
                    f.counts
                        .bump("info: last wills of taken-over connections received");
                }
                if p.qos == QoS::AtLeastOnce {
                    let _ = c.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                f.counts.bump(taken);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                f.counts
                    .bump("ok: connected, not challenged for 5 s (left by itself)");
                c.disconnect().await;
                return;
            }
            Err(_) => {
                f.counts.bump(taken);
                return;
            }
        }
    }
}

/// (7) Controller sessions subscribed to everything that never read, and a device publishing
/// small messages on a topic they all match at `chatter_rate` per second.
pub async fn lurkers(ctx: Arc<Ctx>, f: Arc<Flood>) {
    for k in 0..ctx.o.lurkers {
        let qos = if k % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        tokio::spawn(lurk(
            ctx.clone(),
            f.clone(),
            Src::LURKERS,
            format!("lurk-{k}"),
            "pifleet/#",
            qos,
        ));
    }
    let payload = Bytes::from(vec![b'c'; 64]);
    let per_tick = ctx.o.chatter_rate.div_ceil(100).max(1);
    loop {
        let Some((mut c, _)) = ctx
            .login(&f, "info", Src::LURKERS, "chatter", "chatter", true)
            .await
        else {
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        'connected: loop {
            tick.tick().await;
            for _ in 0..per_tick {
                if c.publish(
                    "pifleet/dev/chatter/sensor/t",
                    QoS::AtMostOnce,
                    false,
                    payload.clone(),
                )
                .await
                .is_err()
                {
                    f.counts.bump("info: chatter connection lost");
                    break 'connected;
                }
                f.counts.bump("info: busy-topic messages published");
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// MQTT topic matching (§4.7), for checking the generated filters.
    fn matches(filter: &str, topic: &str) -> bool {
        let (mut f, mut t) = (filter.split('/'), topic.split('/'));
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn overlapping_filters_are_distinct_and_all_match_the_one_topic() {
        let levels = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let all = overlapping_filters("p/dev/x", &levels, usize::MAX);
        assert_eq!(all.len(), 767);
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        for f in &all {
            assert!(f.starts_with("p/dev/x/"), "{f} stays in the subtree");
            assert!(matches(f, "p/dev/x/a/b/c/d/e/f/g/h"), "{f}");
        }
        assert_eq!(overlapping_filters("p/dev/x", &levels, 10).len(), 10);
    }

    #[test]
    fn a_tally_sorts_outcomes_into_expected_and_other() {
        let c = Counts::default();
        c.add("attempts", 5);
        c.add("ok: refused", 3);
        c.bump("bad: accepted");
        c.bump("info: something");
        c.gauge("open", 2);
        c.gauge("open", -1);
        let t = c.snapshot();
        assert_eq!((t.attempted(), t.expected(), t.other()), (5, 3, 1));
        assert_eq!(t.gauges["open"], (1, 2));
    }
}
