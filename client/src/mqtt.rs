//! rumqttc, set up the way every pifleet client needs it. rumqttc leaves TCP_NODELAY off (a QoS 1
//! round trip then stalls 40-90 ms on delayed ACKs), reconnects in a tight loop with no backoff,
//! reports failures as nested enums, and (built without a crypto provider) cannot do TLS by
//! itself; this module fixes those in one place so the agent, the CLI and the benchmark behave
//! alike. The login and TLS settings themselves live in [`crate::security`], re-exported here.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, MqttOptions, NetworkOptions,
    StateError,
};
use rustls::CertificateError;

use crate::broker_url::BrokerUrl;
pub use crate::security::{transport, Password, Security, SecurityError};

/// The largest MQTT packet pifleet sends or accepts. Payloads are small JSON documents; this
/// leaves room for large presence messages while bounding what a broken peer can make us buffer.
pub const MAX_PACKET_SIZE: usize = 256 * 1024;

/// Builds a client for `url`, logging in and using TLS as `security` says. `keep_alive` also
/// decides how fast the broker notices a dead client (1.5 × keep-alive), so agents use a short
/// one. `connect_timeout` bounds the TCP connect; TLS and MQTT handshakes follow it.
///
/// Fails, before any network traffic, when the CA file cannot be used or a password comes
/// without a user name. Never `Debug`-print the `MqttOptions` given to `configure` or the
/// returned `EventLoop`: rumqttc prints the password there.
pub fn client(
    url: &BrokerUrl,
    client_id: &str,
    security: &Security,
    keep_alive: Duration,
    connect_timeout: Duration,
    configure: impl FnOnce(&mut MqttOptions),
) -> Result<(AsyncClient, EventLoop), SecurityError> {
    let transport = transport(url, security)?;
    // rumqttc takes host and port from the full URL for WebSocket (its parse_url is broken for
    // ws://, so the options are built by hand); for TLS the host is also the name the broker's
    // certificate must carry.
    let host = if url.scheme.is_websocket() {
        url.to_string()
    } else {
        url.host.clone()
    };
    let mut opts = MqttOptions::new(client_id, host, url.port);
    opts.set_transport(transport);
    match (security.user(), &security.password) {
        (Some(user), password) => {
            if password.is_some() && !url.scheme.is_tls() && !is_loopback(&url.host) {
                tracing::warn!(
                    "the password for {user:?} goes to {url} unencrypted; use mqtts:// or wss:// \
                     to protect it"
                );
            }
            let password = password.as_ref().map_or("", |p| p.expose());
            opts.set_credentials(user, password);
        }
        (None, Some(_)) => return Err(SecurityError::PasswordWithoutUser),
        (None, None) => {}
    }
    opts.set_keep_alive(keep_alive)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    configure(&mut opts);
    // The channel between AsyncClient and EventLoop: large enough that publishing a burst of
    // states after a reconnect never waits on the poll loop.
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    // Applies to the TCP socket under every transport, TLS and WebSocket included.
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);
    Ok((client, eventloop))
}

/// Whether `host` is this machine, where a clear-text password is not exposed to a network.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Capped exponential backoff with full jitter: after the n-th consecutive failure wait a random
/// time in `[0, min(max, base · 2^n)]`, with a floor so a fleet never spins. Jitter spreads a
/// thousand agents reconnecting to a restarted broker over the whole window.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        let ceiling = exp.min(self.max);
        self.failures = self.failures.saturating_add(1);
        let frac: f64 = rand::random();
        let floor = self.base / 2;
        floor + ceiling.saturating_sub(floor).mul_f64(frac)
    }

    /// A successful connection: start over from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Every error behind `e`, outermost first. An `io::Error`'s `source()` skips the error it wraps,
/// which is exactly where tokio-rustls puts the rustls error, so that link is followed by hand.
fn causes<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&err| {
        match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        }
    })
}

/// The I/O error kind behind a connection error, wherever rumqttc (or the TLS and WebSocket
/// layers under it) nested it.
pub fn io_kind(e: &ConnectionError) -> Option<io::ErrorKind> {
    match e {
        ConnectionError::Io(e) => Some(e.kind()),
        ConnectionError::MqttState(StateError::Io(e)) => Some(e.kind()),
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(e))) => {
            Some(e.kind())
        }
        _ => causes(e)
            .find_map(|c| c.downcast_ref::<io::Error>())
            .map(io::Error::kind),
    }
}

/// The rustls error behind a failed connection, if TLS is what failed.
fn rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    causes(e).find_map(|c| c.downcast_ref::<rustls::Error>())
}

/// Whether the broker refused our login (CONNACK return code 4, bad user name or password, or
/// 5, not authorized). Retrying cannot help until the credentials or the broker's ACL change,
/// so the CLI exits with a code of its own and the agent logs an error, not a warning.
pub fn is_auth_refusal(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
        )
    )
}

/// Which account is connecting, as [`describe`]'s sentences name it: "controller 'alice'", "device
/// 'kitchen'". It holds no secret, so it can travel into the tasks that report connection
/// errors. `Account::default()` is an anonymous client with no CA file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    label: Option<String>,
    ca_file: Option<PathBuf>,
}

impl Account {
    /// `role` is the word for what connects ("controller", "device"); the name is the MQTT user
    /// name, since that is the identity the broker checked.
    pub fn new(role: &str, security: &Security) -> Account {
        Account {
            label: security.user().map(|u| format!("{role} '{u}'")),
            ca_file: security.ca_file.clone(),
        }
    }
}

/// One sentence for a failed connection, naming the broker (and, for a refused login, the user):
/// what users see instead of a Debug dump of nested enums.
pub fn describe(e: &ConnectionError, url: &BrokerUrl, who: &Account) -> String {
    let at = url.authority();
    if url.scheme.is_tls() {
        if let Some(sentence) = describe_tls(e, url, who) {
            return sentence;
        }
    }
    match e {
        ConnectionError::ConnectionRefused(code) => match (code, &who.label) {
            (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized, None) => {
                format!("the broker at {at} requires a user name and password")
            }
            (ConnectReturnCode::BadUserNamePassword, Some(who)) => {
                format!("authentication failed for {who} at {at} (bad user name or password)")
            }
            (ConnectReturnCode::NotAuthorized, Some(who)) => {
                format!("authentication failed for {who} at {at} (not authorized)")
            }
            (ConnectReturnCode::BadClientId, _) => {
                format!("the broker at {at} refused the connection: client id rejected")
            }
            (ConnectReturnCode::RefusedProtocolVersion, _) => {
                format!("the broker at {at} refused the connection: it does not speak MQTT 3.1.1")
            }
            (ConnectReturnCode::ServiceUnavailable, _) => {
                format!("the broker at {at} refused the connection: service unavailable")
            }
            (other, _) => format!("the broker at {at} refused the connection: {other:?}"),
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
        // What a TLS listener's alert looks like to a plain MQTT client.
        ConnectionError::NotConnAck(_)
        | ConnectionError::MqttState(StateError::Deserialization(_))
            if !url.scheme.is_tls() =>
        {
            format!(
                "the server at {at} does not answer in MQTT (if it expects TLS, use mqtts:// or \
                 wss://)"
            )
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

/// The sentence for a failed TLS handshake, with a hint at the usual cause, or `None` when TLS
/// is not what failed.
fn describe_tls(e: &ConnectionError, url: &BrokerUrl, who: &Account) -> Option<String> {
    let at = url.authority();
    let plain_port = format!(
        " (is that a plain-text port? the usual {} port is {})",
        url.scheme.as_str(),
        url.scheme.default_port()
    );
    if let Some(tls) = rustls_error(e) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                match &who.ca_file {
                    Some(p) => format!(
                        " (is the CA file {} the one that signed the broker's certificate?)",
                        p.display()
                    ),
                    None => " (this system does not trust the broker's certificate: give its CA \
                             certificate as the CA file)"
                        .to_string(),
                }
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => " (connect by a name the certificate lists)".to_string(),
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => plain_port,
            _ => String::new(),
        };
        return Some(format!("TLS handshake with {at} failed: {tls}{hint}"));
    }
    // A plain-text listener typically drops a ClientHello it cannot parse, unread: the client
    // sees an end of file or, with bytes still unread on the server, a reset.
    let closed = matches!(
        io_kind(e),
        Some(
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
    );
    match e {
        ConnectionError::Tls(rumqttc::TlsError::DNSName(_)) => Some(format!(
            "TLS handshake with {at} failed: {:?} is not a valid TLS server name",
            url.host
        )),
        // rumqttc reports only the TLS handshake as `Tls`.
        ConnectionError::Tls(_) if closed => Some(format!(
            "TLS handshake with {at} failed: the server closed the connection{plain_port}"
        )),
        // For wss:// the TLS and the HTTP upgrade both come back as `Websocket`.
        ConnectionError::Websocket(_) if closed => Some(format!(
            "TLS or WebSocket handshake with {at} failed: the server closed the connection (is \
             that the broker's {} port and path? the usual port is {})",
            url.scheme.as_str(),
            url.scheme.default_port()
        )),
        _ => None,
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
            describe(&e, &url, &Account::default()),
            "cannot reach the broker at 127.0.0.1:9: connection refused (is pifleet-broker running?)"
        );
    }

    fn alice() -> Security {
        Security {
            username: Some("alice".into()),
            password: Some(Password::new("s3cret")),
            ca_file: None,
        }
    }

    #[test]
    fn a_refused_login_names_the_user() {
        let url: BrokerUrl = "mqtts://broker.example.org".parse().unwrap();
        let bad = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        let denied = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        let controller = Account::new("controller", &alice());
        assert_eq!(
            describe(&bad, &url, &controller),
            "authentication failed for controller 'alice' at broker.example.org:8883 \
             (bad user name or password)"
        );
        let device = Account::new(
            "device",
            &Security {
                username: Some("kitchen".into()),
                ..alice()
            },
        );
        assert_eq!(
            describe(&denied, &url, &device),
            "authentication failed for device 'kitchen' at broker.example.org:8883 (not authorized)"
        );
        for e in [&bad, &denied] {
            assert_eq!(
                describe(e, &url, &Account::default()),
                "the broker at broker.example.org:8883 requires a user name and password"
            );
            assert!(is_auth_refusal(e));
        }
        let busy = ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable);
        assert!(!is_auth_refusal(&busy));
        assert_eq!(
            describe(&busy, &url, &controller),
            "the broker at broker.example.org:8883 refused the connection: service unavailable"
        );
        assert!(!is_auth_refusal(&ConnectionError::NetworkTimeout));
    }

    #[test]
    fn certificate_problems_read_as_one_sentence_with_a_hint() {
        let url: BrokerUrl = "mqtts://pi.local:8883".parse().unwrap();
        let tls = |e: rustls::Error| {
            // The way tokio-rustls and rumqttc nest it.
            ConnectionError::Tls(rumqttc::TlsError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                e,
            )))
        };
        let unknown = tls(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            describe(&unknown, &url, &Account::default()),
            "TLS handshake with pi.local:8883 failed: invalid peer certificate: UnknownIssuer \
             (this system does not trust the broker's certificate: give its CA certificate as \
             the CA file)"
        );
        let with_ca = Account::new(
            "controller",
            &Security {
                ca_file: Some("/etc/pifleet/ca.pem".into()),
                ..alice()
            },
        );
        assert_eq!(
            describe(&unknown, &url, &with_ca),
            "TLS handshake with pi.local:8883 failed: invalid peer certificate: UnknownIssuer \
             (is the CA file /etc/pifleet/ca.pem the one that signed the broker's certificate?)"
        );
        let name = tls(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert!(
            describe(&name, &url, &with_ca).ends_with("(connect by a name the certificate lists)")
        );
        let expired = tls(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert_eq!(
            describe(&expired, &url, &with_ca),
            "TLS handshake with pi.local:8883 failed: invalid peer certificate: Expired"
        );
        // Through tungstenite for wss://.
        let url: BrokerUrl = "wss://pi.local".parse().unwrap();
        let ws = ConnectionError::Websocket(
            io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            )
            .into(),
        );
        assert!(describe(&ws, &url, &with_ca).starts_with(
            "TLS handshake with pi.local:8084 failed: invalid peer certificate: UnknownIssuer"
        ));
    }

    #[test]
    fn a_password_needs_a_user_name() {
        let url: BrokerUrl = "mqtt://127.0.0.1".parse().unwrap();
        let s = Security {
            username: None,
            ..alice()
        };
        let e = client(
            &url,
            "x",
            &s,
            Duration::from_secs(5),
            Duration::from_secs(1),
            |_| {},
        )
        .err()
        .expect("refused");
        assert!(matches!(e, SecurityError::PasswordWithoutUser), "{e}");
        let s = Security {
            username: Some(String::new()),
            ..alice()
        };
        assert!(client(
            &url,
            "x",
            &s,
            Duration::from_secs(5),
            Duration::from_secs(1),
            |_| {}
        )
        .is_err());
    }

    /// Handshakes against local servers on 127.0.0.1: a TLS "broker" that reads the CONNECT and
    /// answers a chosen CONNACK, and plain TCP servers for the wrong-port cases.
    mod handshake {
        use std::future::Future;
        use std::sync::Arc;

        use rumqttc::{Event, Packet, Transport};
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        use super::*;
        use crate::security::fixtures::path;

        /// Serves one connection on an ephemeral 127.0.0.1 port with `serve`.
        async fn one_connection<F, Fut>(serve: F) -> (u16, tokio::task::JoinHandle<()>)
        where
            F: FnOnce(TcpStream) -> Fut + Send + 'static,
            Fut: Future<Output = ()> + Send,
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let task = tokio::spawn(async move {
                let (socket, _) = listener.accept().await.unwrap();
                serve(socket).await;
            });
            (port, task)
        }

        fn acceptor() -> tokio_rustls::TlsAcceptor {
            let certs = CertificateDer::pem_file_iter(path("server.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(path("server.key")).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        }

        /// What a CONNECT carried: client id, user name, password.
        type Login = (String, Option<String>, Option<String>);

        /// Reads one MQTT 3.1.1 CONNECT.
        async fn read_connect(s: &mut (impl AsyncRead + Unpin)) -> Login {
            assert_eq!(s.read_u8().await.unwrap(), 0x10, "a CONNECT");
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = s.read_u8().await.unwrap();
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).await.unwrap();
            let flags = body[7];
            let mut at = 10; // protocol name, level, flags, keep-alive
            let mut field = || {
                let n = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
                let v = String::from_utf8(body[at + 2..at + 2 + n].to_vec()).unwrap();
                at += 2 + n;
                v
            };
            let id = field();
            if flags & 0x04 != 0 {
                field();
                field();
            }
            let user = (flags & 0x80 != 0).then(&mut field);
            let password = (flags & 0x40 != 0).then(&mut field);
            (id, user, password)
        }

        /// A TLS broker for one client: reads its CONNECT, answers CONNACK `code`, then waits
        /// for the client to go away. Returns the port and what the CONNECT carried.
        async fn tls_broker(code: u8) -> (u16, tokio::task::JoinHandle<Login>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let task = tokio::spawn(async move {
                let (socket, _) = listener.accept().await.unwrap();
                let mut tls = acceptor().accept(socket).await.unwrap();
                let login = read_connect(&mut tls).await;
                tls.write_all(&[0x20, 0x02, 0x00, code]).await.unwrap();
                tls.flush().await.unwrap();
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest).await;
                login
            });
            (port, task)
        }

        /// Connects like the CLI does and returns the CONNACK or describe()'s sentence.
        async fn connect(url: &str, security: &Security) -> Result<(), String> {
            let url: BrokerUrl = url.parse().unwrap();
            let (_client, mut eventloop) = client(
                &url,
                "test-client",
                security,
                Duration::from_secs(30),
                Duration::from_secs(5),
                |_| {},
            )
            .unwrap();
            let who = Account::new("controller", security);
            let outcome = async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                        Ok(_) => continue,
                        Err(e) => return Err(describe(&e, &url, &who)),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), outcome)
                .await
                .expect("an outcome within 10 s")
        }

        fn alice_with_ca(ca: &str) -> Security {
            Security {
                ca_file: Some(path(ca)),
                ..alice()
            }
        }

        #[tokio::test]
        async fn tls_login_carries_the_credentials() {
            let (port, broker) = tls_broker(0).await;
            let url = format!("mqtts://127.0.0.1:{port}");
            connect(&url, &alice_with_ca("ca.pem")).await.unwrap();
            let (id, user, password) = broker.await.unwrap();
            assert_eq!(id, "test-client");
            assert_eq!(user.as_deref(), Some("alice"));
            assert_eq!(password.as_deref(), Some("s3cret"));
        }

        #[tokio::test]
        async fn refused_logins_come_back_as_sentences() {
            let security = alice_with_ca("ca.pem");
            let (port, _broker) = tls_broker(4).await;
            assert_eq!(
                connect(&format!("mqtts://127.0.0.1:{port}"), &security).await,
                Err(format!(
                    "authentication failed for controller 'alice' at 127.0.0.1:{port} \
                     (bad user name or password)"
                ))
            );
            let (port, _broker) = tls_broker(5).await;
            assert_eq!(
                connect(&format!("mqtts://127.0.0.1:{port}"), &security).await,
                Err(format!(
                    "authentication failed for controller 'alice' at 127.0.0.1:{port} \
                     (not authorized)"
                ))
            );
            let anonymous = Security {
                ca_file: Some(path("ca.pem")),
                ..Security::default()
            };
            let (port, broker) = tls_broker(5).await;
            assert_eq!(
                connect(&format!("mqtts://127.0.0.1:{port}"), &anonymous).await,
                Err(format!(
                    "the broker at 127.0.0.1:{port} requires a user name and password"
                ))
            );
            assert_eq!(broker.await.unwrap().1, None, "no user name was sent");
        }

        #[tokio::test]
        async fn an_untrusted_certificate_names_the_ca_file() {
            let (port, _server) = one_connection(|socket| async move {
                let _ = acceptor().accept(socket).await;
            })
            .await;
            let security = alice_with_ca("other-ca.pem");
            assert_eq!(
                connect(&format!("mqtts://127.0.0.1:{port}"), &security).await,
                Err(format!(
                    "TLS handshake with 127.0.0.1:{port} failed: invalid peer certificate: \
                     UnknownIssuer (is the CA file {} the one that signed the broker's \
                     certificate?)",
                    path("other-ca.pem").display()
                ))
            );
        }

        #[tokio::test]
        async fn tls_to_a_plain_port_says_so() {
            // A plain MQTT listener answers a ClientHello with whatever it makes of it; here it
            // closes, as a broker does on a malformed CONNECT.
            let (port, _server) = one_connection(|mut socket| async move {
                let mut buf = [0u8; 64];
                let _ = socket.read(&mut buf).await;
            })
            .await;
            let sentence = connect(
                &format!("mqtts://127.0.0.1:{port}"),
                &alice_with_ca("ca.pem"),
            )
            .await
            .unwrap_err();
            assert_eq!(
                sentence,
                format!(
                    "TLS handshake with 127.0.0.1:{port} failed: the server closed the \
                     connection (is that a plain-text port? the usual mqtts port is 8883)"
                )
            );
            // One that answers in plain text.
            let (port, _server) = one_connection(|mut socket| async move {
                let mut buf = [0u8; 64];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                let _ = socket.read(&mut buf).await;
            })
            .await;
            let sentence = connect(
                &format!("mqtts://127.0.0.1:{port}"),
                &alice_with_ca("ca.pem"),
            )
            .await
            .unwrap_err();
            assert!(
                sentence.starts_with(&format!("TLS handshake with 127.0.0.1:{port} failed: "))
                    && sentence
                        .ends_with("(is that a plain-text port? the usual mqtts port is 8883)"),
                "{sentence}"
            );
        }

        #[tokio::test]
        async fn plain_mqtt_to_a_tls_port_says_so() {
            let (port, _server) = one_connection(|socket| async move {
                let _ = acceptor().accept(socket).await;
            })
            .await;
            let sentence = connect(&format!("mqtt://127.0.0.1:{port}"), &alice())
                .await
                .unwrap_err();
            assert_eq!(
                sentence,
                format!(
                    "the server at 127.0.0.1:{port} does not answer in MQTT (if it expects TLS, \
                     use mqtts:// or wss://)"
                )
            );
        }

        #[tokio::test]
        async fn wss_speaks_tls_then_http() {
            let (port, server) = one_connection(|socket| async move {
                let mut tls = acceptor().accept(socket).await.unwrap();
                let mut request = vec![0u8; 4096];
                let n = tls.read(&mut request).await.unwrap();
                request.truncate(n);
                let request = String::from_utf8(request).unwrap();
                assert!(request.starts_with("GET /mqtt HTTP/1.1\r\n"), "{request}");
                assert!(
                    request
                        .to_ascii_lowercase()
                        .contains("sec-websocket-protocol: mqtt"),
                    "{request}"
                );
            })
            .await;
            let url = format!("wss://127.0.0.1:{port}/mqtt");
            let security = alice_with_ca("ca.pem");
            assert!(matches!(
                transport(&url.parse().unwrap(), &security),
                Ok(Transport::Wss(_))
            ));
            let sentence = connect(&url, &security).await.unwrap_err();
            server.await.expect("the upgrade request arrived over TLS");
            assert_eq!(
                sentence,
                format!(
                    "TLS or WebSocket handshake with 127.0.0.1:{port} failed: the server closed \
                     the connection (is that the broker's wss port and path? the usual port is \
                     8084)"
                )
            );

            // And wss:// to a plain-text port.
            let (port, _server) = one_connection(|mut socket| async move {
                let mut buf = [0u8; 64];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            })
            .await;
            let sentence = connect(&format!("wss://127.0.0.1:{port}/mqtt"), &security)
                .await
                .unwrap_err();
            assert!(
                sentence.starts_with(&format!("TLS handshake with 127.0.0.1:{port} failed: "))
                    && sentence
                        .ends_with("(is that a plain-text port? the usual wss port is 8084)"),
                "{sentence}"
            );
        }
    }
}
