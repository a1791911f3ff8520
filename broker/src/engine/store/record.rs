//! The record format of the state files (docs/broker.md, "Record format"): every file is a
//! sequence of frames, each `len: u32 LE | crc32: u32 LE | body (len bytes)`, where the CRC-32
//! (IEEE, `crc32fast`) covers the four length bytes and the body, and the body is one [`Record`]:
//! a tag byte, then its fields in a fixed order (integers little-endian, strings and payloads
//! length-prefixed). The first record of a file is its [`Record::Header`].
//!
//! [`read_frames`] walks a file and stops at the first frame that is cut short, fails its
//! checksum or does not decode, and says where ([`Damage`]): everything before it is intact.
//! Records borrow from the buffer they are decoded from or encoded out of, so the hot path
//! encodes straight from the engine's own strings and payloads.

use std::fmt;
use std::io::{self, Read};

use super::super::packet::QoS;
use crate::credentials::Role;

/// The first bytes of every header record's fields.
pub const MAGIC: &[u8; 8] = b"pifleet\0";
/// The format version in every header: a broker refuses (reports as damaged) other versions.
pub const VERSION: u8 = 1;
/// Frame header: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// No record is this long: a length beyond it is damage, not a reason to allocate.
pub const MAX_RECORD: usize = 1 << 28;

/// What a state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The whole state at one moment (a compaction).
    Snapshot = 1,
    /// The changes since the snapshot of the same generation.
    Log = 2,
}

/// The owner of a persistent session, as stored.
pub type StoredOwner<'a> = Option<(Role, &'a str)>;

/// Whose a last will is, as stored: who may still have it published after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillOwner<'a> {
    /// A client of a broker without credentials (or a Will record from before owners were
    /// stored, tag 16): published only while the broker still requires no login.
    Anonymous,
    /// An identity of the credentials file.
    Login(Role, &'a str),
    /// An in-process identity (legacy relay, demo fleet), registered again only after the
    /// restore, so checked when the will falls due.
    InProcess(Role, &'a str),
}

/// One change to (or, in a snapshot, one piece of) the broker's persistent state. `sid` is a
/// session's id and `mid` a stored message body's id, both only meaningful within one
/// generation of files (every start renumbers them in a fresh snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Header {
        kind: FileKind,
        generation: u64,
    },
    /// `topic`'s retained message is now this one.
    Retain {
        topic: &'a str,
        qos: QoS,
        payload: &'a [u8],
    },
    /// `topic` has no retained message any more.
    Unretain {
        topic: &'a str,
    },
    /// A persistent session (`clean_session = false`) was created. `offline_since` is Unix
    /// milliseconds, 0 while a client is connected.
    Session {
        sid: u64,
        client_id: &'a str,
        owner: StoredOwner<'a>,
        offline_since: u64,
    },
    /// The session was discarded (expired, replaced, evicted, or taken by a clean session).
    Gone {
        sid: u64,
    },
    /// A client attached to the session.
    Online {
        sid: u64,
    },
    /// The session's client went away at Unix millisecond `at`.
    Offline {
        sid: u64,
        at: u64,
    },
    Subscribe {
        sid: u64,
        filter: &'a str,
        qos: QoS,
    },
    Unsubscribe {
        sid: u64,
        filter: &'a str,
    },
    /// The body of a message queued for one or more persistent sessions (stored once).
    Message {
        mid: u64,
        topic: &'a str,
        qos: QoS,
        payload: &'a [u8],
    },
    /// Message `mid` was appended to the session's queue at `qos`.
    Queued {
        sid: u64,
        mid: u64,
        qos: QoS,
    },
    /// Message `mid` was sent with packet id `pkid` and waits for its acknowledgement.
    Sent {
        sid: u64,
        mid: u64,
        pkid: u16,
    },
    /// QoS 2: PUBREC arrived for `mid`; it waits for PUBCOMP.
    Released {
        sid: u64,
        mid: u64,
    },
    /// `mid` was acknowledged (PUBACK, PUBCOMP): it leaves the session.
    Done {
        sid: u64,
        mid: u64,
    },
    /// The last record of a complete snapshot, with the number of records before it.
    End {
        records: u64,
    },
    /// The live connection of `client_id` has this last will, due if the connection ends
    /// without DISCONNECT (a crash of the broker included). `keep_alive` is the seconds its
    /// CONNECT asked for: after a restart, the client has a grace counted from it to connect
    /// again before the will is published. `deadline` (Unix ms, 0: none yet) is when the
    /// grace of a will pending since an earlier start ends, so a restart does not extend it.
    /// Written as tag 18; tag 16 (no owner, no deadline) is read as `Anonymous`, 0.
    Will {
        client_id: &'a str,
        keep_alive: u16,
        owner: WillOwner<'a>,
        deadline: u64,
        topic: &'a str,
        qos: QoS,
        retain: bool,
        payload: &'a [u8],
    },
    /// `client_id`'s will is settled: published, discarded by a DISCONNECT, or replaced by
    /// what a new connection of the client id brought.
    WillGone {
        client_id: &'a str,
    },
}

mod tag {
    pub const HEADER: u8 = 1;
    pub const RETAIN: u8 = 2;
    pub const UNRETAIN: u8 = 3;
    pub const SESSION: u8 = 4;
    pub const GONE: u8 = 5;
    pub const ONLINE: u8 = 6;
    pub const OFFLINE: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const UNSUBSCRIBE: u8 = 9;
    pub const MESSAGE: u8 = 10;
    pub const QUEUED: u8 = 11;
    pub const SENT: u8 = 12;
    pub const RELEASED: u8 = 13;
    pub const DONE: u8 = 14;
    pub const END: u8 = 15;
    pub const WILL: u8 = 16;
    pub const WILL_GONE: u8 = 17;
    pub const OWNED_WILL: u8 = 18;
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A string of at most 65,535 bytes (client ids, topics, filters and names are MQTT strings).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("MQTT strings are at most 65,535 bytes");
    put_u16(out, len);
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("payloads are bounded by max_packet_size");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Device => 1,
        Role::Controller => 2,
    }
}

impl Record<'_> {
    /// Appends this record as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        self.encode_body(out);
        let len = (out.len() - start - FRAME_HEADER) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&out[start..start + 4], &out[start + FRAME_HEADER..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match *self {
            Record::Header { kind, generation } => {
                out.push(tag::HEADER);
                out.extend_from_slice(MAGIC);
                out.push(VERSION);
                out.push(kind as u8);
                put_u64(out, generation);
            }
            Record::Retain {
                topic,
                qos,
                payload,
            } => {
                out.push(tag::RETAIN);
                out.push(qos as u8);
                put_str(out, topic);
                put_bytes(out, payload);
            }
            Record::Unretain { topic } => {
                out.push(tag::UNRETAIN);
                put_str(out, topic);
            }
            Record::Session {
                sid,
                client_id,
                owner,
                offline_since,
            } => {
                out.push(tag::SESSION);
                put_u64(out, sid);
                put_u64(out, offline_since);
                put_str(out, client_id);
                match owner {
                    None => out.push(0),
                    Some((role, name)) => {
                        out.push(role_byte(role));
                        put_str(out, name);
                    }
                }
            }
            Record::Gone { sid } => {
                out.push(tag::GONE);
                put_u64(out, sid);
            }
            Record::Online { sid } => {
                out.push(tag::ONLINE);
                put_u64(out, sid);
            }
            Record::Offline { sid, at } => {
                out.push(tag::OFFLINE);
                put_u64(out, sid);
                put_u64(out, at);
            }
            Record::Subscribe { sid, filter, qos } => {
                out.push(tag::SUBSCRIBE);
                put_u64(out, sid);
                out.push(qos as u8);
                put_str(out, filter);
            }
            Record::Unsubscribe { sid, filter } => {
                out.push(tag::UNSUBSCRIBE);
                put_u64(out, sid);
                put_str(out, filter);
            }
            Record::Message {
                mid,
                topic,
                qos,
                payload,
            } => {
                out.push(tag::MESSAGE);
                put_u64(out, mid);
                out.push(qos as u8);
                put_str(out, topic);
                put_bytes(out, payload);
            }
            Record::Queued { sid, mid, qos } => {
                out.push(tag::QUEUED);
                put_u64(out, sid);
                put_u64(out, mid);
                out.push(qos as u8);
            }
            Record::Sent { sid, mid, pkid } => {
                out.push(tag::SENT);
                put_u64(out, sid);
                put_u64(out, mid);
                put_u16(out, pkid);
            }
            Record::Released { sid, mid } => {
                out.push(tag::RELEASED);
                put_u64(out, sid);
                put_u64(out, mid);
            }
            Record::Done { sid, mid } => {
                out.push(tag::DONE);
                put_u64(out, sid);
                put_u64(out, mid);
            }
            Record::End { records } => {
                out.push(tag::END);
                put_u64(out, records);
            }
            Record::Will {
                client_id,
                keep_alive,
                owner,
                deadline,
                topic,
                qos,
                retain,
                payload,
            } => {
                out.push(tag::OWNED_WILL);
                out.push(qos as u8);
                out.push(retain as u8);
                put_u16(out, keep_alive);
                put_u64(out, deadline);
                match owner {
                    WillOwner::Anonymous => out.push(0),
                    WillOwner::Login(role, name) => {
                        out.push(role_byte(role));
                        put_str(out, name);
                    }
                    WillOwner::InProcess(role, name) => {
                        out.push(role_byte(role) + 2);
                        put_str(out, name);
                    }
                }
                put_str(out, client_id);
                put_str(out, topic);
                put_bytes(out, payload);
            }
            Record::WillGone { client_id } => {
                out.push(tag::WILL_GONE);
                put_str(out, client_id);
            }
        }
    }
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// A body whose checksum is right but whose fields are not a record of this version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable(pub &'static str);

/// Reads a record body's fields in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Undecodable> {
        if self.0.len() < n {
            return Err(Undecodable("record shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Undecodable> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Undecodable> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, Undecodable> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, Undecodable> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn qos(&mut self) -> Result<QoS, Undecodable> {
        QoS::from_u8(self.u8()?).ok_or(Undecodable("QoS beyond 2"))
    }
    fn str(&mut self) -> Result<&'a str, Undecodable> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Undecodable("string is not UTF-8"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Undecodable> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decodes one record body (a frame without its length and checksum).
pub fn decode(body: &[u8]) -> Result<Record<'_>, Undecodable> {
    let mut f = Fields(body);
    let record = match f.u8()? {
        tag::HEADER => {
            if f.take(MAGIC.len())? != MAGIC {
                return Err(Undecodable("not a pifleet-broker state file"));
            }
            if f.u8()? != VERSION {
                return Err(Undecodable("state format of another version"));
            }
            let kind = match f.u8()? {
                1 => FileKind::Snapshot,
                2 => FileKind::Log,
                _ => return Err(Undecodable("unknown file kind")),
            };
            Record::Header {
                kind,
                generation: f.u64()?,
            }
        }
        tag::RETAIN => {
            let qos = f.qos()?;
            Record::Retain {
                topic: f.str()?,
                qos,
                payload: f.bytes()?,
            }
        }
        tag::UNRETAIN => Record::Unretain { topic: f.str()? },
        tag::SESSION => {
            let sid = f.u64()?;
            let offline_since = f.u64()?;
            let client_id = f.str()?;
            let owner = match f.u8()? {
                0 => None,
                1 => Some((Role::Device, f.str()?)),
                2 => Some((Role::Controller, f.str()?)),
                _ => return Err(Undecodable("unknown role")),
            };
            Record::Session {
                sid,
                client_id,
                owner,
                offline_since,
            }
        }
        tag::GONE => Record::Gone { sid: f.u64()? },
        tag::ONLINE => Record::Online { sid: f.u64()? },
        tag::OFFLINE => Record::Offline {
            sid: f.u64()?,
            at: f.u64()?,
        },
        tag::SUBSCRIBE => {
            let sid = f.u64()?;
            let qos = f.qos()?;
            Record::Subscribe {
                sid,
                filter: f.str()?,
                qos,
            }
        }
        tag::UNSUBSCRIBE => Record::Unsubscribe {
            sid: f.u64()?,
            filter: f.str()?,
        },
        tag::MESSAGE => {
            let mid = f.u64()?;
            let qos = f.qos()?;
            Record::Message {
                mid,
                topic: f.str()?,
                qos,
                payload: f.bytes()?,
            }
        }
        tag::QUEUED => Record::Queued {
            sid: f.u64()?,
            mid: f.u64()?,
            qos: f.qos()?,
        },
        tag::SENT => Record::Sent {
            sid: f.u64()?,
            mid: f.u64()?,
            pkid: f.u16()?,
        },
        tag::RELEASED => Record::Released {
            sid: f.u64()?,
            mid: f.u64()?,
        },
        tag::DONE => Record::Done {
            sid: f.u64()?,
            mid: f.u64()?,
        },
        tag::END => Record::End { records: f.u64()? },
        t @ (tag::WILL | tag::OWNED_WILL) => {
            let qos = f.qos()?;
            let retain = match f.u8()? {
                0 => false,
                1 => true,
                _ => return Err(Undecodable("retain flag beyond 1")),
            };
            let keep_alive = f.u16()?;
            let (deadline, owner) = match t {
                tag::WILL => (0, WillOwner::Anonymous),
                _ => {
                    let deadline = f.u64()?;
                    let owner = match f.u8()? {
                        0 => WillOwner::Anonymous,
                        1 => WillOwner::Login(Role::Device, f.str()?),
                        2 => WillOwner::Login(Role::Controller, f.str()?),
                        3 => WillOwner::InProcess(Role::Device, f.str()?),
                        4 => WillOwner::InProcess(Role::Controller, f.str()?),
                        _ => return Err(Undecodable("unknown role")),
                    };
                    (deadline, owner)
                }
            };
            Record::Will {
                keep_alive,
                owner,
                deadline,
                client_id: f.str()?,
                topic: f.str()?,
                qos,
                retain,
                payload: f.bytes()?,
            }
        }
        tag::WILL_GONE => Record::WillGone {
            client_id: f.str()?,
        },
        _ => return Err(Undecodable("unknown record type")),
    };
    if !f.0.is_empty() {
        return Err(Undecodable("record longer than its fields"));
    }
    Ok(record)
}

/// Why reading a file stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The file ends inside a frame: a write that a crash cut short.
    Torn,
    /// A frame's length is beyond [`MAX_RECORD`].
    Length(u64),
    Checksum,
    Undecodable(&'static str),
    /// The first record is not the header this file should have.
    Header(String),
    /// A snapshot without its end record (cut off at a record boundary).
    NoEnd,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Torn => write!(f, "the file ends inside a record"),
            Why::Length(n) => write!(f, "a record claims an impossible length of {n} bytes"),
            Why::Checksum => write!(f, "checksum mismatch"),
            Why::Undecodable(why) => write!(f, "undecodable record: {why}"),
            Why::Header(why) => write!(f, "bad file header: {why}"),
            Why::NoEnd => write!(f, "the snapshot ends before its end record"),
        }
    }
}

/// Where and why a file stopped being readable: the records before `offset` are intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first frame not kept.
    pub offset: u64,
    pub why: Why,
}

/// What [`read_frames`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Frames read and handed on, the header included.
    pub records: u64,
    /// Bytes of intact frames.
    pub intact: u64,
    pub damage: Option<Damage>,
}

/// Reads frames from `r` and hands each decoded record to `each`, until the end of the input or
/// the first damaged frame. Only I/O errors of the reader itself are errors.
pub fn read_frames(r: &mut impl Read, mut each: impl FnMut(Record<'_>)) -> io::Result<Walk> {
    let mut walk = Walk {
        records: 0,
        intact: 0,
        damage: None,
    };
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; FRAME_HEADER];
        let got = read_full(r, &mut head)?;
        if got == 0 {
            return Ok(walk);
        }
        let at = walk.intact;
        let stop = |why| {
            Ok(Walk {
                damage: Some(Damage { offset: at, why }),
                ..walk.clone()
            })
        };
        if got < FRAME_HEADER {
            return stop(Why::Torn);
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return stop(Why::Length(len as u64));
        }
        body.clear();
        body.resize(len, 0);
        if read_full(r, &mut body)? < len {
            return stop(Why::Torn);
        }
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if checksum(&head[..4], &body) != crc {
            return stop(Why::Checksum);
        }
        match decode(&body) {
            Ok(record) => each(record),
            Err(Undecodable(why)) => return stop(Why::Undecodable(why)),
        }
        walk.records += 1;
        walk.intact += (FRAME_HEADER + len) as u64;
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod test {
    use super::*;

    fn all_kinds() -> Vec<Record<'static>> {
        vec![
            Record::Header {
                kind: FileKind::Log,
                generation: 7,
            },
            Record::Retain {
                topic: "pifleet/dev/kitchen/status",
                qos: QoS::AtLeastOnce,
                payload: b"{\"online\":false}",
            },
            Record::Unretain { topic: "a/b" },
            Record::Session {
                sid: 3,
                client_id: "alice:laptop",
                owner: Some((Role::Controller, "alice")),
                offline_since: 1_700_000_000_000,
            },
            Record::Session {
                sid: 4,
                client_id: "anon",
                owner: None,
                offline_since: 0,
            },
            Record::Gone { sid: 3 },
            Record::Online { sid: 4 },
            Record::Offline { sid: 4, at: 99 },
            Record::Subscribe {
                sid: 4,
                filter: "pifleet/dev/+/out/#",
                qos: QoS::ExactlyOnce,
            },
            Record::Unsubscribe {
                sid: 4,
                filter: "x",
            },
            Record::Message {
                mid: 1,
                topic: "pifleet/all/cmnd",
                qos: QoS::AtLeastOnce,
                payload: &[0, 1, 2, 255],
            },
            Record::Queued {
                sid: 4,
                mid: 1,
                qos: QoS::AtLeastOnce,
            },
            Record::Sent {
                sid: 4,
                mid: 1,
                pkid: 65535,
            },
            Record::Released { sid: 4, mid: 1 },
            Record::Done { sid: 4, mid: 1 },
            Record::Will {
                client_id: "kitchen",
                keep_alive: 30,
                owner: WillOwner::Login(Role::Device, "kitchen"),
                deadline: 1_700_000_090_000,
                topic: "pifleet/dev/kitchen/status",
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: b"{\"online\":false}",
            },
            Record::Will {
                client_id: "auto-7",
                keep_alive: 0,
                owner: WillOwner::Anonymous,
                deadline: 0,
                topic: "t",
                qos: QoS::AtMostOnce,
                retain: false,
                payload: b"",
            },
            Record::Will {
                client_id: "relay",
                keep_alive: 5,
                owner: WillOwner::InProcess(Role::Controller, "relay"),
                deadline: 0,
                topic: "t",
                qos: QoS::AtMostOnce,
                retain: false,
                payload: b"",
            },
            Record::WillGone {
                client_id: "auto-7",
            },
            Record::End { records: 19 },
        ]
    }

    fn walk(bytes: &[u8]) -> (Vec<String>, Walk) {
        let mut seen = Vec::new();
        let w = read_frames(&mut &bytes[..], |r| seen.push(format!("{r:?}"))).unwrap();
        (seen, w)
    }

    #[test]
    fn every_record_kind_decodes_to_what_was_encoded() {
        let records = all_kinds();
        let mut buf = Vec::new();
        for r in &records {
            r.encode(&mut buf);
        }
        let (seen, w) = walk(&buf);
        let want: Vec<String> = records.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(seen, want);
        assert_eq!(w.damage, None);
        assert_eq!(
            (w.records, w.intact),
            (records.len() as u64, buf.len() as u64)
        );
    }

    #[test]
    fn a_frame_is_length_checksum_and_body_in_this_exact_layout() {
        let mut buf = Vec::new();
        Record::Unretain { topic: "a/b" }.encode(&mut buf);
        // len 6 | crc32 of (len bytes, body) | tag 3, string length 3, "a/b"
        let body = [3u8, 3, 0, b'a', b'/', b'b'];
        let mut want = vec![6, 0, 0, 0];
        let mut h = crc32fast::Hasher::new();
        h.update(&want);
        h.update(&body);
        want.extend_from_slice(&h.finalize().to_le_bytes());
        want.extend_from_slice(&body);
        assert_eq!(buf, want);
        let mut header = Vec::new();
        Record::Header {
            kind: FileKind::Snapshot,
            generation: 2,
        }
        .encode(&mut header);
        assert_eq!(
            &header[8..],
            b"\x01pifleet\0\x01\x01\x02\0\0\0\0\0\0\0",
            "tag, magic, version, kind, generation"
        );
    }

    #[test]
    fn a_truncated_tail_keeps_every_whole_record_before_it() {
        let mut buf = Vec::new();
        for r in &all_kinds()[..4] {
            r.encode(&mut buf);
        }
        let whole = buf.len();
        Record::Retain {
            topic: "t",
            qos: QoS::AtMostOnce,
            payload: b"cut off here",
        }
        .encode(&mut buf);
        for cut in [whole + 3, whole + FRAME_HEADER + 2, buf.len() - 1] {
            let (seen, w) = walk(&buf[..cut]);
            assert_eq!(seen.len(), 4, "cut at {cut}");
            assert_eq!(
                w.damage,
                Some(Damage {
                    offset: whole as u64,
                    why: Why::Torn
                })
            );
            assert_eq!(w.intact, whole as u64);
        }
    }

    #[test]
    fn a_will_torn_off_at_the_end_keeps_every_record_and_will_before_it() {
        let kept = [
            Record::Will {
                client_id: "kitchen",
                keep_alive: 2,
                owner: WillOwner::Anonymous,
                deadline: 0,
                topic: "pifleet/dev/kitchen/status",
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: b"offline",
            },
            Record::WillGone {
                client_id: "kitchen",
            },
            Record::Will {
                client_id: "attic",
                keep_alive: 60,
                owner: WillOwner::Anonymous,
                deadline: 0,
                topic: "pifleet/dev/attic/status",
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: b"offline",
            },
        ];
        let mut buf = Vec::new();
        for r in &kept {
            r.encode(&mut buf);
        }
        let whole = buf.len();
        Record::Will {
            client_id: "garage",
            keep_alive: 5,
            owner: WillOwner::Anonymous,
            deadline: 0,
            topic: "pifleet/dev/garage/status",
            qos: QoS::AtLeastOnce,
            retain: true,
            payload: b"offline, cut off",
        }
        .encode(&mut buf);
        let want: Vec<String> = kept.iter().map(|r| format!("{r:?}")).collect();
        for cut in whole + 1..buf.len() {
            let (seen, w) = walk(&buf[..cut]);
            assert_eq!(seen, want, "cut at {cut}");
            assert_eq!(
                w.damage,
                Some(Damage {
                    offset: whole as u64,
                    why: Why::Torn
                })
            );
        }
    }

    #[test]
    fn a_will_is_tag_qos_retain_keep_alive_deadline_owner_client_id_topic_payload() {
        let mut buf = Vec::new();
        Record::Will {
            client_id: "c",
            keep_alive: 0x0102,
            owner: WillOwner::Login(Role::Controller, "al"),
            deadline: 0x0807_0605_0403_0201,
            topic: "t",
            qos: QoS::AtLeastOnce,
            retain: true,
            payload: b"p",
        }
        .encode(&mut buf);
        assert_eq!(
            &buf[FRAME_HEADER..],
            b"\x12\x01\x01\x02\x01\x01\x02\x03\x04\x05\x06\x07\x08\x02\x02\0al\x01\0c\x01\0t\x01\0\0\0p"
        );
        let mut gone = Vec::new();
        Record::WillGone { client_id: "c" }.encode(&mut gone);
        assert_eq!(&gone[FRAME_HEADER..], b"\x11\x01\0c");
        let mut bad = buf[FRAME_HEADER..].to_vec();
        bad[2] = 2;
        assert_eq!(decode(&bad), Err(Undecodable("retain flag beyond 1")));
        let mut bad = buf[FRAME_HEADER..].to_vec();
        bad[13] = 5;
        assert_eq!(decode(&bad), Err(Undecodable("unknown role")));
    }

    #[test]
    fn a_will_record_from_before_owners_reads_as_anonymous_without_a_deadline() {
        let legacy = b"\x10\x01\x01\x02\x01\x01\0c\x01\0t\x01\0\0\0p";
        assert_eq!(
            decode(legacy),
            Ok(Record::Will {
                client_id: "c",
                keep_alive: 0x0102,
                owner: WillOwner::Anonymous,
                deadline: 0,
                topic: "t",
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: b"p",
            })
        );
    }

    #[test]
    fn a_flipped_byte_in_the_middle_keeps_the_prefix_and_names_the_offset() {
        let records = all_kinds();
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for r in &records {
            starts.push(buf.len());
            r.encode(&mut buf);
        }
        // A byte inside the payload of the 11th record (the message body).
        let victim = 10;
        let flip = starts[victim] + FRAME_HEADER + 20;
        buf[flip] ^= 0x20;
        let (seen, w) = walk(&buf);
        assert_eq!(seen.len(), victim);
        assert_eq!(
            w.damage,
            Some(Damage {
                offset: starts[victim] as u64,
                why: Why::Checksum
            })
        );
        // A flipped length byte is caught too (by the checksum, or as an impossible length).
        let mut buf2 = Vec::new();
        for r in &records {
            r.encode(&mut buf2);
        }
        buf2[starts[victim] + 3] ^= 0x40;
        let (seen, w) = walk(&buf2);
        assert_eq!(seen.len(), victim);
        assert_eq!(w.damage.unwrap().offset, starts[victim] as u64);
    }

    #[test]
    fn a_checksummed_but_unknown_record_is_damage_not_a_panic() {
        let mut buf = Vec::new();
        Record::Gone { sid: 1 }.encode(&mut buf);
        // Re-frame a body with an unknown tag and a valid checksum.
        let body = [200u8, 1, 2];
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        let crc = checksum(&frame, &body);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(&body);
        let first = buf.len() as u64;
        buf.extend_from_slice(&frame);
        let (seen, w) = walk(&buf);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            w.damage,
            Some(Damage {
                offset: first,
                why: Why::Undecodable("unknown record type")
            })
        );
        assert!(decode(&[tag::QUEUED, 1]).is_err(), "short fields");
    }
}
