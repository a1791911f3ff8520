//! rumqttc, set up the way every pifleet client needs it. rumqttc leaves TCP_NODELAY off (a QoS 1
//! round trip then stalls 40-90 ms on delayed ACKs), reconnects in a tight loop with no backoff,
//! and reports failures as nested enums; this module fixes those three in one place so the agent,
//! the CLI and the benchmark behave alike.

use std::io;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, MqttOptions, NetworkOptions,
    StateError, Transport,
};

use crate::broker_url::{BrokerUrl, Scheme};

/// The largest MQTT packet pifleet sends or accepts. Payloads are small JSON documents; this
/// leaves room for large presence messages while bounding what a broken peer can make us buffer.
pub const MAX_PACKET_SIZE: usize = 256 * 1024;

/// Builds a client for `url`. `keep_alive` also decides how fast the broker notices a dead client
/// (1.5 × keep-alive), so agents use a short one. `connect_timeout` bounds TCP + MQTT handshake.
pub fn client(
    url: &BrokerUrl,
    client_id: &str,
    keep_alive: Duration,
    connect_timeout: Duration,
    configure: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, EventLoop) {
    let mut opts = match url.scheme {
        Scheme::Mqtt => MqttOptions::new(client_id, url.host.clone(), url.port),
        Scheme::Ws => {
            // rumqttc takes host and port from the full URL for WebSocket (its parse_url is broken
            // for ws://, so the options are built by hand).
            let mut o = MqttOptions::new(client_id, url.to_string(), url.port);
            o.set_transport(Transport::Ws);
            o
        }
    };
    opts.set_keep_alive(keep_alive)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    configure(&mut opts);
    // The channel between AsyncClient and EventLoop: large enough that publishing a burst of
    // states after a reconnect never waits on the poll loop.
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);
    (client, eventloop)
}

/// Capped exponential backoff with full jitter: after the n-th consecutive failure wait a random
/// time in `[0, min(max, base · 2^n)]`, with a floor so a fleet never spins. Jitter spreads a
/// thousand agents reconnecting to a restarted broker over the whole window.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
            rng: seed(),
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        let ceiling = exp.min(self.max);
        self.failures = self.failures.saturating_add(1);
        // xorshift64*: plenty for jitter, and no RNG crate in the build.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        let floor = self.base / 2;
        floor + ceiling.saturating_sub(floor).mul_f64(frac)
    }

    /// A successful connection: start over from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(crate::time::now_ms());
    h.finish() | 1
}

/// The I/O error kind behind a connection error, wherever rumqttc nested it.
pub fn io_kind(e: &ConnectionError) -> Option<io::ErrorKind> {
    match e {
        ConnectionError::Io(e) => Some(e.kind()),
        ConnectionError::MqttState(StateError::Io(e)) => Some(e.kind()),
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(e))) => {
            Some(e.kind())
        }
        _ => None,
    }
}

/// One sentence for a failed connection, naming the broker: what users see instead of a Debug
/// dump of nested enums.
pub fn describe(e: &ConnectionError, url: &BrokerUrl) -> String {
    let at = url.authority();
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => {
                format!("the broker at {at} refused the connection: bad user name or password")
            }
            ConnectReturnCode::NotAuthorized => {
                format!("the broker at {at} refused the connection: not authorized")
            }
            other => format!("the broker at {at} refused the connection: {other:?}"),
        },
        ConnectionError::NetworkTimeout => {
            format!("no answer from the broker at {at} (connection timed out)")
        }
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            format!("the broker at {at} closed the connection")
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            format!("lost the connection to the broker at {at} (no ping response)")
        }
        ConnectionError::Io(io) if io.to_string().contains("failed to lookup address") => {
            format!("cannot resolve the broker host {:?} ({io})", url.host)
        }
        _ => match io_kind(e) {
            Some(io::ErrorKind::ConnectionRefused) => {
                format!("cannot reach the broker at {at}: connection refused (is pifleet-broker running?)")
            }
            Some(io::ErrorKind::NotFound) => {
                format!("cannot resolve the broker host in {url}")
            }
            Some(kind) => format!("lost the connection to the broker at {at}: {kind}"),
            None => format!("cannot talk to the broker at {at}: {e}"),
        },
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(base, max);
        for n in 0..20 {
            let d = b.next_delay();
            let ceiling = (base * (1 << n.min(16))).min(max);
            assert!(d >= base / 2 && d <= ceiling, "attempt {n}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= base);
    }

    #[test]
    fn backoff_is_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        for _ in 0..10 {
            b.next_delay();
        }
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    }

    #[test]
    fn refused_connection_reads_as_a_sentence() {
        let url: BrokerUrl = "mqtt://127.0.0.1:9".parse().unwrap();
        let e = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            describe(&e, &url),
            "cannot reach the broker at 127.0.0.1:9: connection refused (is pifleet-broker running?)"
        );
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        assert!(describe(&e, &url).contains("bad user name or password"));
    }
}
