//! The task that owns rumqttc's event loop. It only polls and forwards: the agent core publishes
//! through the `AsyncClient`, never from here, so a slow publish can never stop the loop that
//! would drain it. rumqttc retries a failed connection on the very next poll; this task sleeps a
//! jittered, capped exponential backoff between attempts instead of hammering the broker.

use std::time::Duration;

use pifleet_proto::mqtt::{describe, Backoff};
use pifleet_proto::BrokerUrl;
use rumqttc::{Event, EventLoop, Outgoing, Packet, Publish};
use tokio::sync::mpsc::UnboundedSender;

/// What the connection reports to the agent core.
#[derive(Debug)]
pub enum NetEvent {
    /// A CONNACK arrived: subscribe and republish everything (rumqttc restores neither).
    Connected,
    /// The connection failed or dropped; the next attempt follows after `retry_in`.
    Disconnected {
        why: String,
        retry_in: Duration,
    },
    Message(Publish),
}

/// Polls until a DISCONNECT we asked for has been sent (or the receiver is gone).
pub async fn drive(
    mut eventloop: EventLoop,
    url: BrokerUrl,
    mut backoff: Backoff,
    tx: UnboundedSender<NetEvent>,
) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                NetEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => NetEvent::Message(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                let retry_in = backoff.next_delay();
                let why = describe(&e, &url);
                if tx.send(NetEvent::Disconnected { why, retry_in }).is_err() {
                    return;
                }
                tokio::time::sleep(retry_in).await;
                continue;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
