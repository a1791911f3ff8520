//! The engine's own words for MQTT: quality of service, the CONNECT's session parameters, the
//! packets a client sends and the answers the engine gives. Nothing here depends on a codec or a
//! protocol version: the MQTT 3.1.1 adapter ([`super::v4`]) turns bytes into these types and
//! back, and an MQTT 5 adapter would produce the same ones (its extra properties would become
//! fields here, defaulted for 3.1.1).

use std::time::Duration;

use bytes::Bytes;

/// Quality of service. Ordered, so "the lower of the two" is `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of wire value `v` (0, 1, 2).
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A published message as the engine stores it: once, shared by every queue and the retained
/// tree.
#[derive(Debug)]
pub struct Message {
    pub topic: Box<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// What a message is charged in the queue bounds beyond its topic and payload: its shared
/// allocation, and a queue slot.
pub const MESSAGE_OVERHEAD: usize = 64;

impl Message {
    /// Bytes this message is charged in queue and store bounds.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + MESSAGE_OVERHEAD
    }
}

/// A last will, published when the connection is lost without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl Will {
    pub fn into_message(self) -> Message {
        Message {
            topic: self.topic.into(),
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
        }
    }
}

/// User name and password of a CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a CONNECT asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub client_id: String,
    pub clean_session: bool,
    /// Zero: no keep-alive.
    pub keep_alive: Duration,
    pub will: Option<Will>,
    pub login: Option<Login>,
}

/// The CONNACK return codes of MQTT 3.1.1 §3.2.2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

/// An incoming PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Zero for QoS 0.
    pub pkid: u16,
}

/// A packet a client sends after its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, QoS)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A second CONNECT (a protocol violation).
    Connect,
    /// A packet only a server sends (CONNACK, SUBACK, …): a protocol violation.
    Unexpected(&'static str),
}

/// One SUBACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeCode {
    Granted(QoS),
    Failure,
}

/// The acknowledgements that are a packet id and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    UnsubAck,
}
