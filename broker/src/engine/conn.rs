//! One client connection: read the CONNECT, authenticate, attach the session, then one loop that
//! reads packets, writes what the outbox holds and watches the keep-alive.
//!
//! Reading and writing are branches of the same `select!` (with the cancel-safe `read_buf` and
//! `write_buf`), so a client that stops reading cannot stop us from reading its acknowledgements,
//! and one task per connection is all the memory a connection costs besides its buffers: the
//! read buffer starts at 512 bytes and grows only while a client streams, the write buffer is
//! released whenever it drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, Packet, Publish, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{ConnectReturnCode, QoS};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::auth::Refused;
use super::counters::bump;
use super::session::{self, Message, Outbox, Stage};
use super::tree::{valid_filter, valid_topic};
use super::{Engine, Link, SubscribeRefused, Who};
use std::sync::atomic::Ordering;

/// Read buffer size for a quiet connection; a busy one grows to [`READ_MAX`].
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
/// Stop moving messages from the outbox to the write buffer beyond this; the rest waits in the
/// outbox (where it counts against the queue bound) until the client reads.
const WRITE_HIGH: usize = 64 * 1024;
/// A client whose publishes are denied this many times is disconnected.
const DENIALS_BEFORE_CLOSE: u32 = 2;

/// Why a connection ended (for the log) and whether its last will is due.
#[derive(Debug)]
enum End {
    /// DISCONNECT received: no will.
    Graceful,
    Closed,
    Io(std::io::Error),
    Protocol(String),
    KeepAlive,
    TakenOver,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Graceful => write!(f, "DISCONNECT"),
            End::Closed => write!(f, "closed by the client"),
            End::Io(e) => write!(f, "{e}"),
            End::Protocol(why) => write!(f, "protocol error: {why}"),
            End::KeepAlive => write!(f, "silent for 1.5 x keep-alive"),
            End::TakenOver => write!(f, "another connection took the client id"),
        }
    }
}

pub(super) async fn serve<R, W>(
    engine: &Arc<Engine>,
    mut r: R,
    mut w: W,
    peer: SocketAddr,
    deadline: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let max = engine.limits.max_packet_size;
    let mut rbuf = BytesMut::with_capacity(READ_MIN);
    let mut wbuf = BytesMut::new();
    let connect =
        match tokio::time::timeout_at(deadline, read_connect(&mut r, &mut rbuf, max)).await {
            Ok(Ok(c)) => c,
            Ok(Err(ConnectError::Version)) => {
                write_connack(&mut wbuf, ConnectReturnCode::RefusedProtocolVersion, false);
                let _ = w.write_all(&wbuf).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "no valid CONNECT: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no CONNECT in time");
                return;
            }
        };
    let who = match Box::pin(engine.authenticate(&connect, peer, deadline)).await {
        Ok(who) => who,
        Err(Refused::Connack(code)) => {
            write_connack(&mut wbuf, code, false);
            let _ = w.write_all(&wbuf).await;
            let _ = w.shutdown().await;
            return;
        }
        Err(Refused::Close) => return,
    };
    let conn_id = engine.id();
    let client_id = if connect.client_id.is_empty() {
        format!("auto-{conn_id}")
    } else {
        connect.client_id.clone()
    };
    let keep_alive = Duration::from_secs(connect.keep_alive as u64);
    let attachment = match engine.attach(
        &client_id,
        connect.clean_session,
        connect.last_will.clone(),
        keep_alive,
        conn_id,
        &who,
    ) {
        Ok(a) => a,
        Err(code) => {
            write_connack(&mut wbuf, code, false);
            let _ = w.write_all(&wbuf).await;
            let _ = w.shutdown().await;
            return;
        }
    };
    drop(connect);
    tracing::debug!(%peer, client = %client_id, "connected");
    write_connack(
        &mut wbuf,
        ConnectReturnCode::Success,
        attachment.session_present,
    );
    let mut c = Conn {
        engine,
        outbox: attachment.outbox,
        conn_id,
        client_id,
        who,
        wbuf,
        denied: 0,
        congested: Vec::new(),
    };
    c.resend_inflight();
    let end = c.run(&mut r, &mut w, rbuf, &attachment.link, max).await;
    let graceful = matches!(end, End::Graceful);
    match &end {
        End::Graceful | End::Closed | End::TakenOver => {
            tracing::debug!(%peer, client = %c.client_id, "disconnected: {end}")
        }
        _ => tracing::info!(%peer, client = %c.client_id, "connection ended: {end}"),
    }
    if !matches!(end, End::TakenOver) {
        engine.detach(&c.client_id, conn_id, graceful);
    }
    let _ = w.shutdown().await;
}

#[derive(Debug)]
enum ConnectError {
    Io(std::io::Error),
    Codec(CodecError),
    NotConnect,
    /// MQTT 3.1 or 5: answered with "unacceptable protocol version".
    Version,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Codec(e) => write!(f, "{e}"),
            ConnectError::NotConnect => write!(f, "first packet is not CONNECT"),
            ConnectError::Version => write!(f, "unsupported protocol version"),
        }
    }
}

async fn read_connect<R: AsyncRead + Unpin>(
    r: &mut R,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Connect, ConnectError> {
    loop {
        if unsupported_version(rbuf) {
            return Err(ConnectError::Version);
        }
        match Packet::read(rbuf, max) {
            Ok(Packet::Connect(c)) => return Ok(c),
            Ok(_) => return Err(ConnectError::NotConnect),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_)) => {
                return Err(ConnectError::Version)
            }
            Err(e) => return Err(ConnectError::Codec(e)),
        }
        match read_some(r, rbuf, READ_MIN).await {
            Ok(0) => return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(ConnectError::Io(e)),
        }
    }
}

/// Whether `buf` starts a CONNECT of a protocol other than MQTT 3.1.1: MQTT 3.1 (`MQIsdp`,
/// level 3) or MQTT 5 (`MQTT`, level 5), which §3.1.2.2 says to answer with CONNACK 1. Decided
/// from the protocol name and level alone, because the v4 codec cannot parse the rest of an
/// MQTT 5 CONNECT (its properties) and would fail on it before looking at the level.
fn unsupported_version(buf: &[u8]) -> bool {
    if buf.first() != Some(&0x10) {
        return false;
    }
    // Skip the remaining length (1 to 4 bytes, high bit: more follow).
    let Some(len_bytes) = buf[1..].iter().take(4).position(|b| b & 0x80 == 0) else {
        return false;
    };
    let header = &buf[2 + len_bytes..];
    match header {
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, ..] => true,
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] => *level != 4,
        _ => false,
    }
}

fn write_connack(buf: &mut BytesMut, code: ConnectReturnCode, session_present: bool) {
    ConnAck::new(code, session_present)
        .write(buf)
        .expect("CONNACK encodes");
}

struct Conn<'a> {
    engine: &'a Arc<Engine>,
    outbox: Arc<Outbox>,
    /// This connection's id: the owner of the session while attached.
    conn_id: u64,
    client_id: String,
    who: Who,
    wbuf: BytesMut,
    denied: u32,
    /// Subscribers that the last publishes found congested: waited for before reading more.
    congested: Vec<Arc<Outbox>>,
}

impl Conn<'_> {
    async fn run<R, W>(
        &mut self,
        r: &mut R,
        w: &mut W,
        mut rbuf: BytesMut,
        link: &Link,
        max: usize,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // The wake-ups are created once and re-armed, not rebuilt per iteration: re-registering
        // them on every packet showed up in the confirmation latency.
        let kicked = link.kick.notified();
        tokio::pin!(kicked);
        let outbox = self.outbox.clone();
        let woken = outbox.notified();
        tokio::pin!(woken);
        let mut read_size = READ_MIN;
        // Packets that arrived in the same read as the CONNECT (legal in 3.1.1) are handled
        // now, not when more bytes happen to arrive.
        if let Err(end) = self.process(w, &mut rbuf, link, max).await {
            return end;
        }
        loop {
            let writing = !self.wbuf.is_empty();
            tokio::select! {
                biased;
                _ = &mut kicked => {
                    return if link.expired.load(Ordering::Relaxed) {
                        End::KeepAlive
                    } else {
                        End::TakenOver
                    };
                }
                res = w.write_buf(&mut self.wbuf), if writing => match res {
                    Ok(0) => return End::Closed,
                    Ok(_) => {
                        if self.wbuf.is_empty() {
                            // Flushes for TLS/WebSocket; a no-op for TCP.
                            if let Err(e) = w.flush().await {
                                return End::Io(e);
                            }
                            // An idle client keeps no write buffer at all.
                            self.wbuf = BytesMut::new();
                        }
                        if self.wbuf.len() < WRITE_HIGH / 2 {
                            if let Err(end) = self.drain() {
                                return end;
                            }
                        }
                    }
                    Err(e) => return End::Io(e),
                },
                res = read_some(r, &mut rbuf, read_size) => match res {
                    Ok(0) => return End::Closed,
                    Ok(n) => {
                        link.last_heard.store(self.engine.now_ms(), Ordering::Relaxed);
                        // A client that fills the buffer is streaming: read more at once.
                        read_size = if n >= read_size { (read_size * 2).min(READ_MAX) } else { READ_MIN };
                        if let Err(end) = self.process(w, &mut rbuf, link, max).await {
                            return end;
                        }
                    }
                    Err(e) => return End::Io(e),
                },
                _ = &mut woken, if self.wbuf.len() < WRITE_HIGH => {
                    woken.set(outbox.notified());
                    if let Err(end) = self.drain() {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles every complete packet in `rbuf`, then applies backpressure and moves queued
    /// messages into the write buffer.
    async fn process<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        rbuf: &mut BytesMut,
        link: &Link,
        max: usize,
    ) -> Result<(), End> {
        loop {
            // A connection that lost its session stops before the next buffered packet.
            if link.taken_over.load(Ordering::Acquire) {
                return Err(End::TakenOver);
            }
            match Packet::read(rbuf, max) {
                Ok(packet) => {
                    if let Err(end) = self.handle(packet) {
                        // Say what is already queued (e.g. SUBACK) before closing.
                        let _ = w.write_all(&self.wbuf).await;
                        return Err(end);
                    }
                }
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(e) => return Err(End::Protocol(format!("{e}"))),
            }
        }
        if !self.congested.is_empty() {
            // Backpressure: answer what we owe, then let the slow subscribers catch up before
            // reading more from this publisher.
            if let Err(e) = w.write_all(&self.wbuf).await {
                return Err(End::Io(e));
            }
            self.wbuf.clear();
            for o in std::mem::take(&mut self.congested) {
                // Boxed: its timer is needed only while waiting.
                Box::pin(o.wait_uncongested()).await;
            }
        }
        self.drain()
    }

    /// The session's queue, if this connection still owns it.
    fn owned_queue(&self) -> Result<std::sync::MutexGuard<'_, session::Queue>, End> {
        let q = self.outbox.lock();
        if q.owner() == self.conn_id {
            Ok(q)
        } else {
            Err(End::TakenOver)
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p)?,
            Packet::PubAck(a) => {
                self.owned_queue()?.on_puback(a.pkid);
            }
            Packet::PubRec(a) => {
                self.owned_queue()?.on_pubrec(a.pkid);
                // Answer PUBREC with PUBREL even for an unknown id, so the client can finish.
                session::encode_ack(&mut self.wbuf, session::PUBREL, a.pkid);
            }
            Packet::PubComp(a) => {
                self.owned_queue()?.on_pubcomp(a.pkid);
            }
            Packet::PubRel(a) => {
                self.owned_queue()?.on_pubrel(a.pkid);
                session::encode_ack(&mut self.wbuf, session::PUBCOMP, a.pkid);
            }
            Packet::Subscribe(s) => {
                let mut codes = Vec::with_capacity(s.filters.len());
                for f in &s.filters {
                    codes.push(self.subscribe(&f.path, f.qos)?);
                }
                // SUBACK goes into the write buffer before the retained messages, which wait
                // in the outbox until the next drain.
                SubAck::new(s.pkid, codes)
                    .write(&mut self.wbuf)
                    .expect("SUBACK encodes");
            }
            Packet::Unsubscribe(u) => {
                for f in &u.topics {
                    self.engine.unsubscribe(&self.client_id, self.conn_id, f);
                }
                session::encode_ack(&mut self.wbuf, session::UNSUBACK, u.pkid);
            }
            Packet::PingReq => {
                rumqttc::mqttbytes::v4::PingResp
                    .write(&mut self.wbuf)
                    .expect("PINGRESP encodes");
            }
            Packet::Disconnect => return Err(End::Graceful),
            Packet::Connect(_) => return Err(End::Protocol("second CONNECT".into())),
            other => return Err(End::Protocol(format!("unexpected {other:?}"))),
        }
        Ok(())
    }

    /// One SUBSCRIBE filter: its return code.
    fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<SubscribeReasonCode, End> {
        if !valid_filter(filter) {
            return Ok(SubscribeReasonCode::Failure);
        }
        if !self.engine.bounds.allows(filter) {
            if bump(&self.engine.counters.topics_refused) {
                tracing::warn!(client = %self.client_id, bytes = filter.len(), "subscription refused: filter longer or deeper than limits.max_topic_len/max_topic_levels");
            }
            return Ok(SubscribeReasonCode::Failure);
        }
        if !self.engine.may_subscribe(&self.who, filter) {
            tracing::warn!(client = %self.client_id, %filter, "subscription denied");
            return Ok(SubscribeReasonCode::Failure);
        }
        match self
            .engine
            .subscribe(&self.client_id, self.conn_id, filter, qos)
        {
            Ok(()) => Ok(SubscribeReasonCode::Success(qos)),
            Err(SubscribeRefused::TooMany) => Ok(SubscribeReasonCode::Failure),
            Err(SubscribeRefused::NotOwner) => Err(End::TakenOver),
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        if !valid_topic(&p.topic) {
            return Err(End::Protocol(format!("invalid topic name {:?}", p.topic)));
        }
        if !self.engine.bounds.allows(&p.topic) {
            bump(&self.engine.counters.topics_refused);
            return Err(End::Protocol(format!(
                "topic of {} bytes is longer or deeper than limits.max_topic_len/max_topic_levels",
                p.topic.len()
            )));
        }
        let allowed = self.engine.may_publish(&self.who, &p.topic);
        if !allowed {
            self.denied += 1;
            tracing::warn!(client = %self.client_id, topic = %p.topic, "publish denied: dropped");
        }
        let deliver = match p.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                session::encode_ack(&mut self.wbuf, session::PUBACK, p.pkid);
                true
            }
            QoS::ExactlyOnce => {
                session::encode_ack(&mut self.wbuf, session::PUBREC, p.pkid);
                // A retransmitted QoS 2 PUBLISH (same id, not yet released) is not delivered
                // twice.
                self.owned_queue()?.on_incoming_qos2(p.pkid)
            }
        };
        if !allowed {
            if self.denied >= DENIALS_BEFORE_CLOSE {
                return Err(End::Protocol(format!(
                    "{} publishes denied (last to {})",
                    self.denied, p.topic
                )));
            }
            return Ok(());
        }
        if deliver {
            self.engine.publish(
                Message {
                    topic: p.topic.into_boxed_str(),
                    // A copy, so a retained message does not pin the read buffer it arrived in.
                    payload: Bytes::copy_from_slice(&p.payload),
                    qos: p.qos,
                    retain: p.retain,
                },
                self.outbox.id,
                &mut self.congested,
            );
        }
        Ok(())
    }

    /// After a persistent session resumes: what was in flight goes out again, marked DUP.
    fn resend_inflight(&mut self) {
        let q = self.outbox.lock();
        for i in q.inflight() {
            match i.stage {
                Stage::Published => session::encode_publish(
                    &mut self.wbuf,
                    &i.delivery.message,
                    i.delivery.qos,
                    i.delivery.retain,
                    true,
                    i.pkid,
                ),
                Stage::Released => session::encode_ack(&mut self.wbuf, session::PUBREL, i.pkid),
            }
        }
    }

    /// Moves queued messages into the write buffer, QoS 1/2 ones as far as in-flight slots
    /// allow. Fails once another connection owns the session.
    fn drain(&mut self) -> Result<(), End> {
        let max_inflight = self.engine.limits.max_inflight as usize;
        // Locked through the field, not `owned_queue`, so the write buffer stays writable.
        let mut q = self.outbox.lock();
        if q.owner() != self.conn_id {
            return Err(End::TakenOver);
        }
        while self.wbuf.len() < WRITE_HIGH {
            let Some((d, pkid)) = q.next_to_send(max_inflight) else {
                break;
            };
            session::encode_publish(
                &mut self.wbuf,
                &d.message,
                d.qos,
                d.retain,
                false,
                pkid.unwrap_or(0),
            );
        }
        let left = q.pending_len();
        q.shrink_if_empty();
        drop(q);
        self.outbox.drained_to(left);
        Ok(())
    }
}

/// Reads once into `buf`, growing it by `size` when nearly full. While the client is quiet and
/// nothing is buffered the buffer is released, so ten thousand idle devices hold no read buffers
/// (it is allocated again when data arrives).
fn read_some<'a, R: AsyncRead + Unpin>(
    r: &'a mut R,
    buf: &'a mut BytesMut,
    size: usize,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if buf.capacity() - buf.len() < READ_MIN / 2 {
            buf.reserve(size);
        }
        let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                Poll::Pending
            }
        }
    })
}
