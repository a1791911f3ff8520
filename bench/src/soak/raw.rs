//! Raw MQTT 3.1.1 and WebSocket clients for the attackers. Every packet is built with rumqttc's
//! codec and written by hand, so an attacker can do what no client library would: hundreds of
//! wrong passwords at once, 10,000-level topics, never reading, unfinished WebSocket frames.
//!
//! Each flood connects from a loopback source address of its own (127.0.0.x, all of 127/8 is
//! loopback on Linux), so a flood that fills its per-IP connection cap (1,024 by default) does
//! not lock the other floods, or the canary on 127.0.0.1, out. Nothing here connects anywhere
//! but loopback: [`tcp`] refuses to.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The name the broker's certificate carries (`tls self-signed` always adds it).
pub const TLS_NAME: &str = "localhost";

/// Largest packet an attacker reads (a retained 60 KB message fits).
const READ_MAX: usize = 1 << 20;

/// A byte stream an attacker talks MQTT over: TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where the broker listens, and what a TLS client needs to trust it.
pub struct Net {
    pub mqtt: SocketAddr,
    pub mqtts: SocketAddr,
    pub ws: SocketAddr,
    pub tls: TlsConnector,
}

/// Which MQTT listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Mqtt,
    Mqtts,
}

impl Net {
    pub fn new(
        mqtt: SocketAddr,
        mqtts: SocketAddr,
        ws: SocketAddr,
        ca_file: &Path,
    ) -> Result<Net, String> {
        for a in [mqtt, mqtts, ws] {
            if !a.ip().is_loopback() {
                return Err(format!(
                    "{a} is not a loopback address: the soak stays on loopback"
                ));
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Net {
            mqtt,
            mqtts,
            ws,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    fn addr(&self, port: Port) -> SocketAddr {
        match port {
            Port::Mqtt => self.mqtt,
            Port::Mqtts => self.mqtts,
        }
    }
}

/// A TCP connection from loopback address `src` to loopback address `dst`. Closing it resets
/// the connection (zero linger), so a flood of short connections leaves no TIME_WAIT sockets
/// behind to exhaust the source address's ports.
pub async fn tcp(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    if !src.is_loopback() || !dst.ip().is_loopback() {
        return Err(io::Error::other(
            "the soak connects only from and to loopback",
        ));
    }
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddrV4::new(src, 0).into())?;
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    stream.set_zero_linger()?;
    Ok(stream)
}

/// Whether an I/O error means the broker closed (or reset) the connection.
pub fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// One MQTT connection, spoken packet by packet.
pub struct Raw {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_pkid: u16,
}

/// How a CONNECT attempt ended.
pub enum Outcome {
    /// CONNACK 0; the flag is "session present".
    Accepted(Raw, bool),
    Refused(ConnectReturnCode),
    /// The broker closed the connection before answering (a connection cap, a failed
    /// handshake).
    Closed,
    /// No CONNACK within the time allowed.
    NoAnswer,
    /// Could not connect at all (or another I/O error).
    Failed(io::Error),
}

/// The words for a CONNACK code, for the report.
pub fn code_name(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "0 accepted",
        ConnectReturnCode::RefusedProtocolVersion => "1 unacceptable protocol version",
        ConnectReturnCode::BadClientId => "2 identifier rejected",
        ConnectReturnCode::ServiceUnavailable => "3 server unavailable",
        ConnectReturnCode::BadUserNamePassword => "4 bad user name or password",
        ConnectReturnCode::NotAuthorized => "5 not authorized",
    }
}

/// A CONNECT packet: `login` is (user, password).
pub fn connect_packet(
    client_id: &str,
    login: Option<(&str, &str)>,
    clean_session: bool,
    keep_alive: u16,
) -> Connect {
    let mut c = Connect::new(client_id);
    c.clean_session = clean_session;
    c.keep_alive = keep_alive;
    if let Some((user, password)) = login {
        c.set_login(user, password);
    }
    c
}

/// Connects from `src` to `port`, sends `connect` and waits for the CONNACK, all within
/// `within`.
pub async fn connect(
    net: &Net,
    port: Port,
    src: Ipv4Addr,
    connect: Connect,
    within: Duration,
) -> Outcome {
    let attempt = async {
        let tcp = tcp(src, net.addr(port)).await?;
        let io: Box<dyn Io> = match port {
            Port::Mqtt => Box::new(tcp),
            Port::Mqtts => {
                let name = ServerName::try_from(TLS_NAME).expect("a valid DNS name");
                Box::new(net.tls.connect(name, tcp).await?)
            }
        };
        let mut raw = Raw {
            io,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::new(),
            next_pkid: 0,
        };
        raw.send(Packet::Connect(connect)).await?;
        Ok::<_, io::Error>(match raw.recv().await? {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                Outcome::Accepted(raw, ack.session_present)
            }
            Some(Packet::ConnAck(ack)) => Outcome::Refused(ack.code),
            Some(other) => {
                Outcome::Failed(io::Error::other(format!("expected CONNACK, got {other:?}")))
            }
            None => Outcome::Closed,
        })
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) if is_closed(&e) => Outcome::Closed,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::NoAnswer,
    }
}

impl Raw {
    pub fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    pub async fn send(&mut self, packet: Packet) -> io::Result<()> {
        self.wbuf.clear();
        packet
            .write(&mut self.wbuf, usize::MAX)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await
    }

    /// Sends a PUBLISH (a packet id is chosen for QoS 1/2).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: bytes::Bytes,
    ) -> io::Result<()> {
        let mut p = Publish::from_bytes(topic, qos, payload);
        p.retain = retain;
        if qos != QoS::AtMostOnce {
            p.pkid = self.pkid();
        }
        self.send(Packet::Publish(p)).await
    }

    /// Sends one SUBSCRIBE with `filters` (not waiting for the SUBACK).
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> io::Result<u16> {
        let mut s =
            Subscribe::new_many(filters.iter().map(|f| SubscribeFilter::new(f.clone(), qos)));
        s.pkid = self.pkid();
        let pkid = s.pkid;
        self.send(Packet::Subscribe(s)).await?;
        Ok(pkid)
    }

    /// Subscribes and waits (up to `within`) for the SUBACK, acknowledging QoS 1 publishes that
    /// arrive meanwhile. Returns how many filters were granted and how many refused.
    pub async fn subscribe_acked(
        &mut self,
        filters: &[String],
        qos: QoS,
        within: Duration,
    ) -> io::Result<(usize, usize)> {
        let pkid = self.subscribe(filters, qos).await?;
        let deadline = Instant::now() + within;
        loop {
            match self.recv_until(deadline).await? {
                Some(Packet::SubAck(ack)) if ack.pkid == pkid => {
                    let granted = ack
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        .count();
                    return Ok((granted, ack.return_codes.len() - granted));
                }
                Some(Packet::Publish(p)) if p.qos == QoS::AtLeastOnce => {
                    self.send(Packet::PubAck(PubAck::new(p.pkid))).await?
                }
                Some(_) => {}
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// The next packet; `None` once the broker closed the connection.
    pub async fn recv(&mut self) -> io::Result<Option<Packet>> {
        loop {
            match Packet::read(&mut self.rbuf, READ_MAX) {
                Ok(p) => return Ok(Some(p)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            self.rbuf.reserve(8192);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if is_closed(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Raw::recv`], giving up at `deadline` with a `TimedOut` error.
    pub async fn recv_until(&mut self, deadline: Instant) -> io::Result<Option<Packet>> {
        match tokio::time::timeout_at(deadline, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Sends DISCONNECT and closes.
    pub async fn disconnect(mut self) {
        let _ = self.send(Packet::Disconnect).await;
        let _ = self.io.shutdown().await;
    }
}

/// The HTTP request that upgrades a connection to WebSocket with the `mqtt` subprotocol.
pub fn ws_upgrade_request(host: SocketAddr) -> String {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
}

/// Reads the HTTP response head (up to 8 KiB). `Ok(None)`: closed before it was complete.
pub async fn read_http_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(io::Error::other("HTTP response head over 8 KiB"));
        }
        match stream.read(&mut byte).await {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&byte[..n]),
            Err(e) if is_closed(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// A client-to-server WebSocket frame header announcing `len` payload bytes, masked with the
/// all-zero key (legal, and the payload then goes as it is).
pub fn ws_frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![(fin as u8) << 7 | (opcode & 0x0f)];
    const MASKED: u8 = 0x80;
    if len < 126 {
        h.push(MASKED | len as u8);
    } else if len <= u16::MAX as u64 {
        h.push(MASKED | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(MASKED | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn frame_headers_use_the_shortest_length_encoding_and_a_mask() {
        assert_eq!(ws_frame_header(true, 2, 5), [0x82, 0x85, 0, 0, 0, 0]);
        assert_eq!(
            ws_frame_header(false, 2, 300),
            [0x02, 0x80 | 126, 0x01, 0x2c, 0, 0, 0, 0]
        );
        assert_eq!(
            ws_frame_header(true, 2, 16 << 20),
            [0x82, 0x80 | 127, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[tokio::test]
    async fn connections_leave_loopback_never() {
        let outside: SocketAddr = "192.0.2.1:1883".parse().unwrap();
        assert!(tcp(Ipv4Addr::LOCALHOST, outside).await.is_err());
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tcp(Ipv4Addr::new(192, 0, 2, 1), local).await.is_err());
    }
}
