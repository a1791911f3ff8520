//! Raw MQTT 3.1.1 on a blocking TCP socket, for what a well-behaved client library will not
//! send (or not send that way): hostile and oversized packets, several packets in one write,
//! bursts timed against another connection, clients that stop reading.
//!
//! Encoders return the bytes of one packet, so a test can concatenate them into one write;
//! [`read_packet`] decodes what the broker sends back; [`Client`] ties both to a socket for
//! the common conversation (CONNECT, SUBSCRIBE, PUBLISH, read until a marker).

use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a read waits before a test gives up on the broker.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub const PINGREQ: [u8; 2] = [0xC0, 0];
pub const DISCONNECT: [u8; 2] = [0xE0, 0];

/// SUBACK return code of a refused filter.
pub const REFUSED: u8 = 0x80;

/// The fields of a CONNECT that tests vary.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub clean_session: bool,
    pub keep_alive: u16,
    /// Last will: topic and message (QoS 0, not retained).
    pub will: Option<(&'a str, &'a str)>,
    /// User name and password.
    pub login: Option<(&'a str, &'a str)>,
}

impl<'a> Connect<'a> {
    /// A clean session with a 30 s keep-alive, no will, no login.
    pub fn new(client_id: &'a str) -> Connect<'a> {
        Connect {
            client_id,
            clean_session: true,
            keep_alive: 30,
            will: None,
            login: None,
        }
    }

    /// `clean_session = false`.
    pub fn persistent(self) -> Connect<'a> {
        Connect {
            clean_session: false,
            ..self
        }
    }

    pub fn login(self, user: &'a str, password: &'a str) -> Connect<'a> {
        Connect {
            login: Some((user, password)),
            ..self
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0x02;
        }
        if self.will.is_some() {
            flags |= 0x04 | 0x20;
        }
        if self.login.is_some() {
            flags |= 0x80 | 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        push_str(&mut body, self.client_id);
        if let Some((topic, msg)) = self.will {
            push_str(&mut body, topic);
            push_str(&mut body, msg);
        }
        if let Some((user, password)) = self.login {
            push_str(&mut body, user);
            push_str(&mut body, password);
        }
        frame(0x10, &body)
    }
}

/// A clean-session CONNECT, optionally with a retained last will.
pub fn connect_packet(client_id: &str, keep_alive: u16, will: Option<(&str, &str)>) -> Vec<u8> {
    Connect {
        keep_alive,
        will,
        ..Connect::new(client_id)
    }
    .encode()
}

/// SUBSCRIBE with one `(filter, requested QoS)` per entry.
pub fn subscribe_packet(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        push_str(&mut body, filter);
        body.push(*qos);
    }
    frame(0x82, &body)
}

pub fn unsubscribe_packet(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for filter in filters {
        push_str(&mut body, filter);
    }
    frame(0xA2, &body)
}

/// PUBLISH; `pkid` is written only for QoS 1 and 2.
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    push_str(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | qos << 1 | retain as u8, &body)
}

pub fn puback_packet(pkid: u16) -> Vec<u8> {
    frame(0x40, &pkid.to_be_bytes())
}

/// A length-prefixed UTF-8 string. Topics longer than 65,535 bytes cannot be encoded.
pub fn push_str(buf: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("an MQTT string holds at most 65535 bytes");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Fixed header (first byte, remaining length) followed by `body`.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
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

/// A packet the broker sent, decoded as far as tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        dup: bool,
        pkid: u16,
    },
    PubAck(u16),
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    UnsubAck(u16),
    PingResp,
    Other {
        first: u8,
        body: Vec<u8>,
    },
}

/// Reads one packet. `Ok(None)`: the stream ended cleanly before the packet's first byte.
pub fn read_packet(r: &mut impl Read) -> io::Result<Option<Packet>> {
    let mut first = [0u8; 1];
    loop {
        match r.read(&mut first) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let mut len = 0usize;
    for shift in 0..4 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        len |= ((b[0] & 0x7F) as usize) << (7 * shift);
        if b[0] & 0x80 == 0 {
            break;
        }
        if shift == 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "remaining length longer than 4 bytes",
            ));
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let id = |body: &[u8]| -> io::Result<u16> {
        match body {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(bad("packet id missing")),
        }
    };
    let first = first[0];
    Ok(Some(match first >> 4 {
        2 if body.len() == 2 => Packet::ConnAck {
            session_present: body[0] & 1 == 1,
            code: body[1],
        },
        3 => {
            let qos = (first >> 1) & 3;
            let tlen = id(&body)? as usize;
            let topic_end = 2 + tlen;
            if body.len() < topic_end {
                return Err(bad("PUBLISH topic runs past the packet"));
            }
            let topic = String::from_utf8(body[2..topic_end].to_vec())
                .map_err(|_| bad("PUBLISH topic is not UTF-8"))?;
            let (pkid, start) = if qos > 0 {
                (id(&body[topic_end..])?, topic_end + 2)
            } else {
                (0, topic_end)
            };
            Packet::Publish {
                topic,
                payload: body[start..].to_vec(),
                qos,
                retain: first & 1 == 1,
                dup: first & 8 == 8,
                pkid,
            }
        }
        4 => Packet::PubAck(id(&body)?),
        9 => Packet::SubAck {
            pkid: id(&body)?,
            codes: body[2..].to_vec(),
        },
        11 => Packet::UnsubAck(id(&body)?),
        13 => Packet::PingResp,
        _ => Packet::Other { first, body },
    }))
}

/// A PUBLISH as a subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

impl Received {
    /// The payload as text (tests publish text).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A TCP connection to `addr` with [`READ_TIMEOUT`] on reads.
pub fn open(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let _ = s.set_nodelay(true);
    s
}

/// Sends CONNECT and returns the CONNACK return code.
pub fn connack_code(s: &mut TcpStream, connect: &[u8]) -> u8 {
    s.write_all(connect).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], 0x20, "CONNACK expected, got {ack:?}");
    ack[3]
}

/// Whether the broker closed the socket (read returns 0 or a reset) within the read timeout.
/// Anything the broker still sends before closing is skipped.
pub fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// One raw client conversation. Packets read while waiting for something else (a PUBLISH
/// before the SUBACK it was waiting for) are kept and returned by the next [`Client::read`].
pub struct Client {
    /// The socket, for writes and socket options (reads go through a buffer of their own).
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// What the client is called in assertion messages.
    pub label: String,
    pending: VecDeque<Packet>,
}

impl Client {
    /// Opens a connection and sends `connect`; returns the client and its CONNACK
    /// `(session_present, return code)`. A refused client's connection is still returned.
    pub fn connect(addr: &str, connect: &Connect) -> (Client, bool, u8) {
        let mut c = Client::open(addr, connect.client_id);
        c.send(&connect.encode());
        match c.read() {
            Packet::ConnAck {
                session_present,
                code,
            } => (c, session_present, code),
            other => panic!("{}: CONNACK expected, got {other:?}", c.label),
        }
    }

    /// [`Client::connect`] that insists on acceptance (return code 0).
    pub fn accepted(addr: &str, connect: &Connect) -> Client {
        let (c, _, code) = Client::connect(addr, connect);
        assert_eq!(code, 0, "{}: CONNACK return code", c.label);
        c
    }

    /// A TCP connection with nothing sent yet.
    pub fn open(addr: &str, label: &str) -> Client {
        let stream = open(addr);
        Client {
            reader: BufReader::with_capacity(64 * 1024, stream.try_clone().expect("clone socket")),
            stream,
            label: label.to_string(),
            pending: VecDeque::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let label = &self.label;
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{label}: write: {e}"));
    }

    /// The next packet; panics (naming the client) on end of stream, error or timeout.
    pub fn read(&mut self) -> Packet {
        match self.try_read() {
            Ok(Some(p)) => p,
            Ok(None) => panic!("{}: the broker closed the connection", self.label),
            Err(e) => panic!("{}: no packet from the broker: {e}", self.label),
        }
    }

    /// The next packet, `None` at end of stream.
    pub fn try_read(&mut self) -> io::Result<Option<Packet>> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        read_packet(&mut self.reader)
    }

    /// Reads until `want` picks a packet out; the packets before it are kept for later reads.
    pub fn read_until<T>(&mut self, what: &str, mut want: impl FnMut(&Packet) -> Option<T>) -> T {
        if let Some((i, t)) = self
            .pending
            .iter()
            .enumerate()
            .find_map(|(i, p)| want(p).map(|t| (i, t)))
        {
            self.pending.remove(i);
            return t;
        }
        loop {
            let p = match read_packet(&mut self.reader) {
                Ok(Some(p)) => p,
                Ok(None) => panic!("{}: closed while waiting for {what}", self.label),
                Err(e) => panic!("{}: no {what}: {e}", self.label),
            };
            if let Some(t) = want(&p) {
                return t;
            }
            self.pending.push_back(p);
        }
    }

    /// Subscribes and returns the SUBACK's return codes, one per filter.
    pub fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&subscribe_packet(pkid, filters));
        self.read_until("SUBACK", |p| match p {
            Packet::SubAck { pkid: id, codes } if *id == pkid => Some(codes.clone()),
            _ => None,
        })
    }

    pub fn unsubscribe(&mut self, pkid: u16, filters: &[&str]) {
        self.send(&unsubscribe_packet(pkid, filters));
        self.read_until("UNSUBACK", |p| (*p == Packet::UnsubAck(pkid)).then_some(()));
    }

    /// Publishes with QoS 1 and waits for the PUBACK.
    pub fn publish_acked(&mut self, topic: &str, payload: &[u8], retain: bool, pkid: u16) {
        self.send(&publish_packet(topic, payload, 1, retain, pkid));
        self.read_until("PUBACK", |p| (*p == Packet::PubAck(pkid)).then_some(()));
    }

    /// Sends PINGREQ and returns everything that arrived before the PINGRESP.
    pub fn ping(&mut self) -> Vec<Packet> {
        self.send(&PINGREQ);
        let mut got: Vec<Packet> = self.pending.drain(..).collect();
        loop {
            match read_packet(&mut self.reader) {
                Ok(Some(Packet::PingResp)) => return got,
                Ok(Some(p)) => got.push(p),
                Ok(None) => panic!("{}: closed while waiting for PINGRESP", self.label),
                Err(e) => panic!("{}: no PINGRESP: {e}", self.label),
            }
        }
    }

    /// The next PUBLISH (acknowledged if QoS 1); other packets before it are skipped.
    pub fn next_publish(&mut self) -> Received {
        loop {
            if let Packet::Publish {
                topic,
                payload,
                qos,
                retain,
                pkid,
                ..
            } = self.read()
            {
                if qos == 1 {
                    self.send(&puback_packet(pkid));
                }
                return Received {
                    topic,
                    payload,
                    qos,
                    retain,
                };
            }
        }
    }

    /// Every PUBLISH that arrives before one on `marker`, which the caller has subscribed to
    /// and publishes (or has published) after what it wants to see.
    pub fn publishes_until(&mut self, marker: &str) -> Vec<Received> {
        let mut got = Vec::new();
        loop {
            let p = self.next_publish();
            if p.topic == marker {
                return got;
            }
            got.push(p);
        }
    }

    /// Sends DISCONNECT and waits until the broker closed the connection, which it does only
    /// after it has let go of the session.
    pub fn disconnect(mut self) {
        let _ = self.stream.write_all(&DISCONNECT);
        assert!(
            closed(&mut self.stream),
            "{}: the broker did not close the connection after DISCONNECT",
            self.label
        );
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn encoders_write_the_bytes_of_the_spec() {
        assert_eq!(
            Connect::new("a").persistent().login("u", "p").encode(),
            [
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC0, 0, 30, 0, 1, b'a', 0, 1, b'u', 0,
                1, b'p'
            ]
        );
        assert_eq!(
            subscribe_packet(7, &[("a/#", 1)]),
            [0x82, 8, 0, 7, 0, 3, b'a', b'/', b'#', 1]
        );
        assert_eq!(unsubscribe_packet(7, &["a"]), [0xA2, 5, 0, 7, 0, 1, b'a']);
        assert_eq!(
            publish_packet("t", b"x", 1, true, 5),
            [0x33, 6, 0, 1, b't', 0, 5, b'x']
        );
        assert_eq!(publish_packet("t", b"", 0, false, 5), [0x30, 3, 0, 1, b't']);
        // Remaining length 200 takes two bytes.
        assert_eq!(&frame(0x30, &[0; 200])[..3], [0x30, 0xC8, 0x01]);
    }

    #[test]
    fn the_reader_decodes_what_the_broker_sends() {
        let mut bytes: &[u8] = &[
            0x20, 2, 1, 0, // CONNACK, session present
            0x90, 4, 0, 9, 1, 0x80, // SUBACK
            0x3B, 7, 0, 1, b't', 0, 3, b'h', b'i', // PUBLISH QoS 1, DUP, retain
            0x40, 2, 0, 3, // PUBACK
            0xB0, 2, 0, 4, // UNSUBACK
            0xD0, 0, // PINGRESP
        ];
        let mut next = || read_packet(&mut bytes).unwrap();
        assert_eq!(
            next(),
            Some(Packet::ConnAck {
                session_present: true,
                code: 0
            })
        );
        assert_eq!(
            next(),
            Some(Packet::SubAck {
                pkid: 9,
                codes: vec![1, REFUSED]
            })
        );
        assert_eq!(
            next(),
            Some(Packet::Publish {
                topic: "t".into(),
                payload: b"hi".to_vec(),
                qos: 1,
                retain: true,
                dup: true,
                pkid: 3
            })
        );
        assert_eq!(next(), Some(Packet::PubAck(3)));
        assert_eq!(next(), Some(Packet::UnsubAck(4)));
        assert_eq!(next(), Some(Packet::PingResp));
        assert_eq!(next(), None);
    }
}
