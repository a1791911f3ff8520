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

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::auth::Refused;
use super::counters::bump;
use super::outbox::{self, Outbox, Stage};
use super::packet::{
    Ack, ConnectCode, ConnectRequest, Incoming, Message, Publish, QoS, SubscribeCode,
};
use super::tree::{valid_filter, valid_topic};
use super::v4::{self, DecodeError};
use super::{Engine, Link, Principal, SubscribeRefused};
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
    /// A reload of the credentials file removed the identity or changed its secret.
    Revoked,
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
            End::Revoked => write!(
                f,
                "the identity was removed from the credentials file or its secret changed"
            ),
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
            Ok(Err(ConnectError::Decode(DecodeError::Version))) => {
                v4::write_connack(&mut wbuf, ConnectCode::UnacceptableProtocolVersion, false);
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
    // The generation first: a reload between the two reads only makes the check below redo
    // what the reload did.
    let generation = engine.access_generation();
    let access = engine.access();
    let who = match Box::pin(engine.authenticate(&connect, peer, deadline, &access)).await {
        Ok(who) => who,
        Err(Refused::Connack(code)) => {
            v4::write_connack(&mut wbuf, code, false);
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
    let attachment = match engine.attach(
        &client_id,
        connect.clean_session,
        connect.will.clone(),
        connect.keep_alive,
        conn_id,
        &who,
    ) {
        Ok(a) => a,
        Err(code) => {
            v4::write_connack(&mut wbuf, code, false);
            let _ = w.write_all(&wbuf).await;
            let _ = w.shutdown().await;
            return;
        }
    };
    drop(connect);
    // A reload since the login was checked may have missed this session: review it now.
    if engine.access_generation() != generation
        && !engine.recheck_login(&access, &client_id, conn_id)
    {
        let _ = w.shutdown().await;
        return;
    }
    drop(access);
    tracing::debug!(%peer, client = %client_id, "connected");
    v4::write_connack(&mut wbuf, ConnectCode::Accepted, attachment.session_present);
    let mut c = Conn {
        engine,
        outbox: attachment.outbox,
        conn_id,
        client_id,
        who,
        generation,
        wbuf,
        denied: 0,
        congested: Vec::new(),
        forwarded: false,
    };
    c.resend_inflight();
    let end = c.run(&mut r, &mut w, rbuf, &attachment.link, max).await;
    let graceful = matches!(end, End::Graceful);
    match &end {
        End::Graceful | End::Closed | End::TakenOver => {
            tracing::debug!(%peer, client = %c.client_id, "disconnected: {end}")
        }
        _ => {
            if let Some(held_back) = engine.log_ends.admit(engine.now_ms()) {
                tracing::info!(%peer, client = %c.client_id, held_back, "connection ended: {end}")
            }
        }
    }
    match end {
        End::TakenOver => {}
        End::Revoked => engine.end_revoked(&c.client_id, conn_id),
        _ => engine.detach(&c.client_id, conn_id, graceful),
    }
    let _ = w.shutdown().await;
}

#[derive(Debug)]
enum ConnectError {
    Io(std::io::Error),
    Decode(DecodeError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Decode(e) => write!(f, "{e}"),
        }
    }
}

/// Reads until a whole CONNECT has arrived. Bytes behind it stay in `rbuf`. The protocol level
/// is where an MQTT 5 adapter would be chosen; this broker speaks 3.1.1 and answers the others
/// with CONNACK 1.
async fn read_connect<R: AsyncRead + Unpin>(
    r: &mut R,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<ConnectRequest, ConnectError> {
    loop {
        match v4::read_connect(rbuf, max) {
            Ok(c) => return Ok(c),
            Err(DecodeError::Incomplete) => {}
            Err(e) => return Err(ConnectError::Decode(e)),
        }
        match read_some(r, rbuf, READ_MIN).await {
            Ok(0) => return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(ConnectError::Io(e)),
        }
    }
}

struct Conn<'a> {
    engine: &'a Arc<Engine>,
    outbox: Arc<Outbox>,
    /// This connection's id: the owner of the session while attached.
    conn_id: u64,
    client_id: String,
    who: Principal,
    /// The [`Engine::access_generation`] `who` is up to date with.
    generation: u64,
    wbuf: BytesMut,
    denied: u32,
    /// Subscribers that the last publishes found congested: waited for before reading more.
    congested: Vec<Arc<Outbox>>,
    /// The packets just handled queued a message for another session.
    forwarded: bool,
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
                        lost(link)
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
                return Err(lost(link));
            }
            match v4::read(rbuf, max) {
                Ok(packet) => {
                    if let Err(end) = self.handle(packet) {
                        // Say what is already queued (e.g. SUBACK) before closing.
                        let _ = w.write_all(&self.wbuf).await;
                        return Err(end);
                    }
                }
                Err(DecodeError::Incomplete) => break,
                Err(e) => return Err(End::Protocol(format!("{e}"))),
            }
        }
        if std::mem::take(&mut self.forwarded) {
            // The subscribers' connections were just woken on this worker: let them write the
            // message before this one writes its PUBACK, so the acknowledgement (which the
            // publisher does not wait for) is not on the path of the delivery (which someone
            // does: a command's confirmation is two such hops).
            tokio::task::yield_now().await;
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
    fn owned_queue(&self) -> Result<std::sync::MutexGuard<'_, outbox::Queue>, End> {
        let q = self.outbox.lock();
        if q.owner() == self.conn_id {
            Ok(q)
        } else {
            Err(End::TakenOver)
        }
    }

    fn handle(&mut self, packet: Incoming) -> Result<(), End> {
        self.refresh_identity()?;
        match packet {
            Incoming::Publish(p) => self.on_publish(p)?,
            Incoming::PubAck(pkid) => {
                self.owned_queue()?.on_puback(pkid);
            }
            Incoming::PubRec(pkid) => {
                self.owned_queue()?.on_pubrec(pkid);
                // Answer PUBREC with PUBREL even for an unknown id, so the client can finish.
                v4::write_ack(&mut self.wbuf, Ack::PubRel, pkid);
            }
            Incoming::PubComp(pkid) => {
                self.owned_queue()?.on_pubcomp(pkid);
            }
            Incoming::PubRel(pkid) => {
                self.owned_queue()?.on_pubrel(pkid);
                v4::write_ack(&mut self.wbuf, Ack::PubComp, pkid);
            }
            Incoming::Subscribe { pkid, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                for (filter, qos) in &filters {
                    codes.push(self.subscribe(filter, *qos)?);
                }
                // SUBACK goes into the write buffer before the retained messages, which wait
                // in the outbox until the next drain.
                v4::write_suback(&mut self.wbuf, pkid, &codes);
            }
            Incoming::Unsubscribe { pkid, filters } => {
                for f in &filters {
                    self.engine.unsubscribe(&self.client_id, self.conn_id, f);
                }
                v4::write_ack(&mut self.wbuf, Ack::UnsubAck, pkid);
            }
            Incoming::PingReq => v4::write_pingresp(&mut self.wbuf),
            Incoming::Disconnect => return Err(End::Graceful),
            Incoming::Connect => return Err(End::Protocol("second CONNECT".into())),
            Incoming::Unexpected(what) => {
                return Err(End::Protocol(format!("unexpected {what} from a client")))
            }
        }
        Ok(())
    }

    /// After a reload, acts with the identity's new groups from now on, or ends if the identity
    /// is gone (the reload closes such connections too; this covers a packet already read).
    fn refresh_identity(&mut self) -> Result<(), End> {
        let now = self.engine.access_generation();
        if now != self.generation {
            self.who = self
                .engine
                .current_principal(&self.who)
                .ok_or(End::Revoked)?;
            self.generation = now;
        }
        Ok(())
    }

    /// One SUBSCRIBE filter: its return code.
    fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<SubscribeCode, End> {
        if !valid_filter(filter) {
            return Ok(SubscribeCode::Failure);
        }
        if !self.engine.bounds.allows(filter) {
            if bump(&self.engine.counters.topics_refused) {
                tracing::warn!(client = %self.client_id, bytes = filter.len(), "subscription refused: filter longer or deeper than limits.max_topic_len/max_topic_levels");
            }
            return Ok(SubscribeCode::Failure);
        }
        if !self.engine.may_subscribe(&self.who, filter) {
            if let Some(held_back) = self.engine.log_refusals.admit(self.engine.now_ms()) {
                tracing::warn!(client = %self.client_id, %filter, held_back, "subscription denied");
            }
            return Ok(SubscribeCode::Failure);
        }
        match self
            .engine
            .subscribe(&self.client_id, self.conn_id, filter, qos)
        {
            Ok(()) => Ok(SubscribeCode::Granted(qos)),
            Err(SubscribeRefused::TooMany) => Ok(SubscribeCode::Failure),
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
            if let Some(held_back) = self.engine.log_refusals.admit(self.engine.now_ms()) {
                tracing::warn!(client = %self.client_id, topic = %p.topic, held_back, "publish denied: dropped");
            }
        }
        let deliver = match p.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                v4::write_ack(&mut self.wbuf, Ack::PubAck, p.pkid);
                true
            }
            QoS::ExactlyOnce => {
                v4::write_ack(&mut self.wbuf, Ack::PubRec, p.pkid);
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
            self.forwarded |= self.engine.publish(
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
                Stage::Published => v4::write_publish(
                    &mut self.wbuf,
                    &i.delivery.message,
                    i.delivery.qos,
                    i.delivery.retain,
                    true,
                    i.pkid,
                ),
                Stage::Released => v4::write_ack(&mut self.wbuf, Ack::PubRel, i.pkid),
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
            v4::write_publish(
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

/// Why a connection whose session was taken from it ends.
fn lost(link: &Link) -> End {
    if link.revoked.load(Ordering::Acquire) {
        End::Revoked
    } else {
        End::TakenOver
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

#[cfg(test)]
mod test {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::config::Limits;
    use crate::engine::Access;

    /// Every write of every connection, in the order the engine made them.
    type Log = Arc<Mutex<Vec<(&'static str, Vec<u8>)>>>;

    /// A connection's socket that records what the engine writes to it.
    struct Recorded {
        inner: DuplexStream,
        name: &'static str,
        log: Log,
    }

    impl AsyncWrite for Recorded {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let res = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = res {
                let entry = (self.name, buf[..n].to_vec());
                self.log.lock().unwrap().push(entry);
            }
            res
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Starts a connection task for client `id`; returns the client's ends (what it sends, what
    /// it receives) after the CONNACK.
    async fn client(
        engine: &Arc<Engine>,
        id: &'static str,
        log: &Log,
    ) -> (DuplexStream, DuplexStream) {
        let (mut to_broker, from_client) = tokio::io::duplex(4096);
        let (to_client, mut from_broker) = tokio::io::duplex(4096);
        let w = Recorded {
            inner: to_client,
            name: id,
            log: log.clone(),
        };
        let engine = engine.clone();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        tokio::spawn(async move { serve(&engine, from_client, w, peer, deadline).await });
        let connect = [
            0x10,
            13,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            2,
            0,
            60,
            0,
            1,
            id.as_bytes()[0],
        ];
        to_broker.write_all(&connect).await.unwrap();
        let mut connack = [0u8; 4];
        from_broker.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
        (to_broker, from_broker)
    }

    /// The publisher does not wait for its PUBACK, the subscriber's answer is what someone
    /// waits for (a command's confirmation is two such hops): the delivery goes first.
    #[tokio::test]
    async fn a_delivery_is_written_before_the_publishers_puback() {
        let engine = Engine::new(Limits::default(), Access::default());
        let log = Log::default();
        let (mut sub_tx, mut sub_rx) = client(&engine, "s", &log).await;
        sub_tx
            .write_all(&[0x82, 6, 0, 1, 0, 1, b't', 1])
            .await
            .unwrap();
        let mut suback = [0u8; 5];
        sub_rx.read_exact(&mut suback).await.unwrap();
        assert_eq!(suback, [0x90, 3, 0, 1, 1]);
        let (mut pub_tx, mut pub_rx) = client(&engine, "p", &log).await;
        log.lock().unwrap().clear();

        pub_tx
            .write_all(&[0x32, 6, 0, 1, b't', 0, 7, b'x'])
            .await
            .unwrap();
        let mut puback = [0u8; 4];
        pub_rx.read_exact(&mut puback).await.unwrap();
        assert_eq!(puback, [0x40, 2, 0, 7]);
        let mut delivery = [0u8; 8];
        sub_rx.read_exact(&mut delivery).await.unwrap();
        assert_eq!(delivery, [0x32, 6, 0, 1, b't', 0, 1, b'x']);

        let order: Vec<&str> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(order, ["s", "p"], "delivery first, then the PUBACK");
    }
}
