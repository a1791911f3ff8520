//! What the agent publishes: a [`Message`] (topic, payload, QoS, retain), and [`Wire`], which
//! makes each kind of message for this device with the QoS and retain flag that the topic table
//! in docs/protocol.md gives it. Nothing here sends anything.

use std::fmt;

use pifleet_proto::payload::{InputState, OutputState, Presence, SensorReading};
use pifleet_proto::{Event, Name, Topics};
use rumqttc::QoS;

/// One PUBLISH to hand to the MQTT client.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl Message {
    fn json<T: serde::Serialize>(topic: String, value: &T, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload: serde_json::to_vec(value).expect("payloads serialize"),
            qos,
            retain,
        }
    }
}

/// The payload as text: every payload the agent makes is JSON, and a failed assertion on
/// bytes would be unreadable.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish()
    }
}

/// This device's messages: everything under `<prefix>/dev/<device>/`.
#[derive(Debug, Clone)]
pub struct Wire {
    topics: Topics,
    device: Name,
}

impl Wire {
    pub fn new(topics: Topics, device: Name) -> Wire {
        Wire { topics, device }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn device(&self) -> &Name {
        &self.device
    }

    /// Presence: QoS 1, retained.
    pub fn status(&self, presence: &Presence) -> Message {
        let topic = self.topics.status(&self.device);
        Message::json(topic, presence, QoS::AtLeastOnce, true)
    }

    /// An output's state, the acknowledgement of a command: QoS 1, retained.
    pub fn output(&self, output: &Name, state: &OutputState) -> Message {
        let topic = self.topics.output(&self.device, output);
        Message::json(topic, state, QoS::AtLeastOnce, true)
    }

    /// An input's state: QoS 1, retained.
    pub fn input(&self, input: &Name, state: &InputState) -> Message {
        let topic = self.topics.input(&self.device, input);
        Message::json(topic, state, QoS::AtLeastOnce, true)
    }

    /// A sensor's latest reading: QoS 0 (the next reading replaces a lost one), retained.
    pub fn sensor(&self, sensor: &Name, reading: &SensorReading) -> Message {
        let topic = self.topics.sensor(&self.device, sensor);
        Message::json(topic, reading, QoS::AtMostOnce, true)
    }

    /// An event: QoS 1, never retained.
    pub fn event(&self, event: &Event) -> Message {
        let topic = self.topics.event(&self.device);
        Message::json(topic, event, QoS::AtLeastOnce, false)
    }
}
