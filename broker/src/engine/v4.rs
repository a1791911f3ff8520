//! The MQTT 3.1.1 adapter: bytes to the engine's [`packet`](super::packet) types and back. The
//! only module that knows the codec (rumqttc's `mqttbytes::v4`, which reads every packet type);
//! an MQTT 5 adapter would sit beside it and be chosen by the CONNECT's protocol level.
//!
//! Writing is done by hand for what the engine sends most: a PUBLISH straight from the shared
//! message (no per-delivery struct, no topic copy) and the two-byte acknowledgements.

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{self as codec, Packet};
use rumqttc::mqttbytes::Error as CodecError;

use super::packet::{
    Ack, ConnectCode, ConnectRequest, Incoming, Login, Message, Publish, QoS, SubscribeCode, Will,
};

/// Why bytes are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a whole packet yet: read more.
    #[error("incomplete packet")]
    Incomplete,
    /// MQTT 3.1 or 5: answer CONNACK 1 (§3.1.2.2) and close.
    #[error("unsupported protocol version")]
    Version,
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("{0}")]
    Malformed(String),
}

fn qos(q: rumqttc::QoS) -> QoS {
    match q {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn malformed(e: CodecError) -> DecodeError {
    match e {
        CodecError::InsufficientBytes(_) => DecodeError::Incomplete,
        CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_) => DecodeError::Version,
        e => DecodeError::Malformed(e.to_string()),
    }
}

/// Reads the CONNECT from the start of `buf`, consuming it (packets behind it stay in `buf`).
/// Packets larger than `max` bytes are refused.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<ConnectRequest, DecodeError> {
    if unsupported_version(buf) {
        return Err(DecodeError::Version);
    }
    match Packet::read(buf, max).map_err(malformed)? {
        Packet::Connect(c) => {
            if c.protocol != rumqttc::Protocol::V4 {
                return Err(DecodeError::Version);
            }
            Ok(ConnectRequest {
                client_id: c.client_id,
                clean_session: c.clean_session,
                keep_alive: std::time::Duration::from_secs(c.keep_alive as u64),
                will: c.last_will.map(|w| Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: qos(w.qos),
                    retain: w.retain,
                }),
                login: c.login.map(|l| Login {
                    username: l.username,
                    password: l.password,
                }),
            })
        }
        _ => Err(DecodeError::NotConnect),
    }
}

/// Whether `buf` starts a CONNECT of a protocol other than MQTT 3.1.1: MQTT 3.1 (`MQIsdp`,
/// level 3) or MQTT 5 (`MQTT`, level 5), which §3.1.2.2 says to answer with CONNACK 1. Decided
/// from the protocol name and level alone, because the v4 codec cannot parse the rest of an
/// MQTT 5 CONNECT (its properties) and would fail on it before looking at the level.
pub fn unsupported_version(buf: &[u8]) -> bool {
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

/// Reads the next packet from the start of `buf`, consuming it.
pub fn read(buf: &mut BytesMut, max: usize) -> Result<Incoming, DecodeError> {
    Ok(match Packet::read(buf, max).map_err(malformed)? {
        Packet::Publish(p) => Incoming::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: qos(p.qos),
            retain: p.retain,
            pkid: p.pkid,
        }),
        Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        Packet::PubRec(a) => Incoming::PubRec(a.pkid),
        Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos(f.qos)))
                .collect(),
        },
        Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        Packet::PingReq => Incoming::PingReq,
        Packet::Disconnect => Incoming::Disconnect,
        Packet::Connect(_) => Incoming::Connect,
        Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        Packet::PingResp => Incoming::Unexpected("PINGRESP"),
    })
}

pub fn write_connack(buf: &mut BytesMut, code: ConnectCode, session_present: bool) {
    buf.put_slice(&[0x20, 2, session_present as u8, code as u8]);
}

pub fn write_suback(buf: &mut BytesMut, pkid: u16, codes: &[SubscribeCode]) {
    let codes: Vec<codec::SubscribeReasonCode> = codes
        .iter()
        .map(|c| match c {
            SubscribeCode::Granted(q) => codec::SubscribeReasonCode::Success(match q {
                QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
                QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
            }),
            SubscribeCode::Failure => codec::SubscribeReasonCode::Failure,
        })
        .collect();
    codec::SubAck::new(pkid, codes)
        .write(buf)
        .expect("SUBACK encodes");
}

pub fn write_pingresp(buf: &mut BytesMut) {
    buf.put_slice(&[0xD0, 0]);
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK share one shape: type byte, length 2, packet id.
pub fn write_ack(buf: &mut BytesMut, ack: Ack, pkid: u16) {
    let first = match ack {
        Ack::PubAck => 0x40,
        Ack::PubRec => 0x50,
        Ack::PubRel => 0x62,
        Ack::PubComp => 0x70,
        Ack::UnsubAck => 0xB0,
    };
    buf.put_u8(first);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

fn remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Writes a PUBLISH for `message` straight from the shared copy.
pub fn write_publish(
    buf: &mut BytesMut,
    message: &Message,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
) {
    let topic = message.topic.as_bytes();
    let mut len = 2 + topic.len() + message.payload.len();
    if qos != QoS::AtMostOnce {
        len += 2;
    }
    buf.reserve(len + 5);
    buf.put_u8(0x30 | (dup as u8) << 3 | (qos as u8) << 1 | retain as u8);
    remaining_length(buf, len);
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic);
    if qos != QoS::AtMostOnce {
        buf.put_u16(pkid);
    }
    buf.put_slice(&message.payload);
}

#[cfg(test)]
mod test {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_written_publish_reads_back() {
        let m = Message {
            topic: "pifleet/dev/kitchen/cmnd".into(),
            payload: Bytes::from(vec![7u8; 300]),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let mut buf = BytesMut::new();
        write_publish(&mut buf, &m, QoS::ExactlyOnce, true, true, 513);
        write_ack(&mut buf, Ack::PubRel, 9);
        match Packet::read(&mut buf, 1 << 20).unwrap() {
            Packet::Publish(p) => {
                assert_eq!(p.topic, "pifleet/dev/kitchen/cmnd");
                assert_eq!(
                    (p.qos, p.retain, p.dup, p.pkid),
                    (rumqttc::QoS::ExactlyOnce, true, true, 513)
                );
                assert_eq!(p.payload.len(), 300);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read(&mut buf, 1 << 20).unwrap(), Incoming::PubRel(9));
        assert_eq!(
            read(&mut buf, 1 << 20).unwrap_err(),
            DecodeError::Incomplete
        );
    }

    #[test]
    fn acknowledgements_and_connacks_are_the_literal_bytes_of_the_spec() {
        let mut buf = BytesMut::new();
        write_ack(&mut buf, Ack::PubAck, 0x0102);
        write_ack(&mut buf, Ack::PubRec, 1);
        write_ack(&mut buf, Ack::PubRel, 1);
        write_ack(&mut buf, Ack::PubComp, 1);
        write_ack(&mut buf, Ack::UnsubAck, 1);
        write_connack(&mut buf, ConnectCode::ServerUnavailable, false);
        write_connack(&mut buf, ConnectCode::Accepted, true);
        write_pingresp(&mut buf);
        write_suback(
            &mut buf,
            7,
            &[
                SubscribeCode::Granted(QoS::AtLeastOnce),
                SubscribeCode::Failure,
            ],
        );
        assert_eq!(
            &buf[..],
            [
                0x40, 2, 1, 2, 0x50, 2, 0, 1, 0x62, 2, 0, 1, 0x70, 2, 0, 1, 0xB0, 2, 0, 1, 0x20, 2,
                0, 3, 0x20, 2, 1, 0, 0xD0, 0, 0x90, 4, 0, 7, 1, 0x80
            ]
        );
    }

    #[test]
    fn connects_and_packets_behind_them_decode_into_the_engines_types() {
        // CONNECT "c", clean, keep-alive 60, will "w" = "bye" QoS 1 retained, user "u" / "p".
        let mut buf = BytesMut::from(
            &[
                0x10,
                27,
                0,
                4,
                b'M',
                b'Q',
                b'T',
                b'T',
                4,
                0b1110_1110,
                0,
                60,
                0,
                1,
                b'c',
                0,
                1,
                b'w',
                0,
                3,
                b'b',
                b'y',
                b'e',
                0,
                1,
                b'u',
                0,
                1,
                b'p',
                // PINGREQ, then SUBSCRIBE id 5 to "a/#" at QoS 2
                0xC0,
                0,
                0x82,
                8,
                0,
                5,
                0,
                3,
                b'a',
                b'/',
                b'#',
                2,
            ][..],
        );
        let c = read_connect(&mut buf, 1024).unwrap();
        assert_eq!(c.client_id, "c");
        assert!(c.clean_session);
        assert_eq!(c.keep_alive.as_secs(), 60);
        let w = c.will.unwrap();
        assert_eq!(
            (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
            ("w", &b"bye"[..], QoS::AtLeastOnce, true)
        );
        let l = c.login.unwrap();
        assert_eq!((l.username.as_str(), l.password.as_str()), ("u", "p"));
        assert_eq!(read(&mut buf, 1024).unwrap(), Incoming::PingReq);
        assert_eq!(
            read(&mut buf, 1024).unwrap(),
            Incoming::Subscribe {
                pkid: 5,
                filters: vec![("a/#".into(), QoS::ExactlyOnce)]
            }
        );
    }

    #[test]
    fn mqtt_3_1_and_5_are_recognised_from_name_and_level_alone() {
        let v5 = [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0];
        let v31 = [0x10, 20, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        let v4 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4];
        assert!(unsupported_version(&v5) && unsupported_version(&v31));
        assert!(!unsupported_version(&v4) && !unsupported_version(&[0x10]));
        let mut buf = BytesMut::from(&v5[..]);
        assert_eq!(
            read_connect(&mut buf, 1024).unwrap_err(),
            DecodeError::Version
        );
    }

    #[test]
    fn a_packet_larger_than_the_bound_is_malformed_before_its_body_arrives() {
        // PUBLISH announcing 100,000 bytes; only the header is here.
        let mut buf = BytesMut::from(&[0x30, 0xA0, 0x8D, 0x06][..]);
        assert!(matches!(
            read(&mut buf, 65_536),
            Err(DecodeError::Malformed(_))
        ));
    }
}
