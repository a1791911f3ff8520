//! One MQTT session of the CLI: connect (failing fast with one sentence), subscribe, and collect
//! the retained snapshot.
//!
//! MQTT has no "end of retained messages" marker, so the session makes one: it subscribes to
//! `<prefix>/ctl/sync` together with the fleet filters, waits for the SUBACK, then publishes its
//! client id there as a marker. The broker delivers the retained messages while it processes the SUBSCRIBE,
//! so everything that arrives before the marker is the snapshot.

use std::time::Duration;

use pifleet_client::mqtt::{describe, is_auth_refusal, Account, Security};
use pifleet_client::BrokerUrl;
use pifleet_proto::{CommandId, Topics};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;

use crate::error::CliError;

/// The MQTT client id for one CLI session: `NAME:<random>` (`pifleet-cli:<random>` when not
/// logged in). A pifleet broker with authentication accepts a controller whose client id is its
/// name or starts with `NAME:`; `:` is not allowed in names, so the id can never be a device's.
/// The random part lets `pifleet watch` and `pifleet on` run at once under one name without
/// taking over each other's session (MQTT drops the older client with the same id).
pub fn client_id(security: &Security) -> String {
    let name = security.user().unwrap_or("pifleet-cli");
    format!("{name}:{}", CommandId::generate())
}

pub struct Session {
    pub client: AsyncClient,
    pub topics: Topics,
    url: BrokerUrl,
    rx: mpsc::UnboundedReceiver<Result<Packet, CliError>>,
    client_id: String,
}

impl Session {
    /// Connects and waits for the CONNACK, or fails within `connect_timeout`. A refused login is
    /// [`CliError::Auth`], an unusable CA file [`CliError::Usage`].
    pub async fn connect(
        url: &BrokerUrl,
        security: &Security,
        topics: Topics,
        connect_timeout: Duration,
    ) -> Result<Session, CliError> {
        let client_id = client_id(security);
        let (client, mut eventloop) = pifleet_client::mqtt::client(
            url,
            &client_id,
            security,
            Duration::from_secs(30),
            connect_timeout,
            |_| {},
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let u = url.clone();
        let who = Account::new("controller", security);
        let no_password = security.user().is_some() && security.password.is_none();
        tokio::spawn(async move {
            loop {
                let item = match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => Ok(p),
                    Ok(Event::Outgoing(_)) => continue,
                    // The CLI never retries: a script wants a fast, clear failure.
                    Err(e) if is_auth_refusal(&e) => {
                        let mut why = describe(&e, &u, &who);
                        if no_password {
                            why.push_str(
                                "; no password was given (PIFLEET_PASSWORD or --password-file)",
                            );
                        }
                        Err(CliError::Auth(why))
                    }
                    Err(e) => Err(CliError::Broker(describe(&e, &u, &who))),
                };
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    return;
                }
            }
        });
        let mut session = Session {
            client,
            topics,
            url: url.clone(),
            rx,
            client_id,
        };
        let deadline = connect_timeout + Duration::from_secs(1);
        let connack = tokio::time::timeout(deadline, async {
            loop {
                match session.rx.recv().await {
                    Some(Ok(Packet::ConnAck(_))) => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e),
                    None => return Err(CliError::Broker("connection task ended".into())),
                }
            }
        })
        .await;
        match connack {
            Ok(r) => r.map(|()| session),
            Err(_) => Err(CliError::Broker(format!(
                "no answer from the broker at {} within {} s",
                url.authority(),
                deadline.as_secs()
            ))),
        }
    }

    /// Subscribes to `filters` and returns the retained messages they matched.
    pub async fn subscribe_snapshot(
        &mut self,
        filters: Vec<String>,
    ) -> Result<Vec<Publish>, CliError> {
        let sync = self.topics.sync();
        // Other controllers share the topic; ours is the marker carrying our client id.
        let marker = self.client_id.clone();
        let mut subs: Vec<_> = filters
            .into_iter()
            // QoS 0: some brokers (rumqttd 0.20) deliver at most as many retained messages to a
            // QoS 1 subscription as the connection has free in-flight slots (100, shared by all
            // filters) and drop the rest; a snapshot needs no acknowledgements anyway.
            .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce))
            .collect();
        subs.push(SubscribeFilter::new(sync.clone(), QoS::AtMostOnce));
        self.client
            .subscribe_many(subs)
            .await
            .map_err(|e| CliError::Broker(e.to_string()))?;
        let mut snapshot = Vec::new();
        let mut marker_sent = false;
        loop {
            match self.next().await? {
                Packet::SubAck(_) if !marker_sent => {
                    marker_sent = true;
                    self.client
                        .publish(sync.clone(), QoS::AtLeastOnce, false, marker.clone())
                        .await
                        .map_err(|e| CliError::Broker(e.to_string()))?;
                }
                Packet::Publish(p) if p.topic == sync && p.payload == marker.as_bytes() => {
                    return Ok(snapshot);
                }
                Packet::Publish(p) if p.topic == sync => {}
                Packet::Publish(p) => snapshot.push(p),
                _ => {}
            }
        }
    }

    /// The next packet from the broker; a lost connection is an error.
    pub async fn next(&mut self) -> Result<Packet, CliError> {
        match self.rx.recv().await {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(e),
            None => Err(CliError::Broker(format!(
                "lost the connection to the broker at {}",
                self.url.authority()
            ))),
        }
    }

    /// The next PUBLISH from the broker.
    pub async fn next_publish(&mut self) -> Result<Publish, CliError> {
        loop {
            if let Packet::Publish(p) = self.next().await? {
                return Ok(p);
            }
        }
    }

    /// Sends DISCONNECT so the broker does not log an error for us; bounded in time.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.client.disconnect()).await;
        // Give the poll task a moment to write it; it ends when the broker closes.
        let mut rx = self.rx;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while rx.recv().await.is_some() {}
        })
        .await;
    }
}

#[cfg(test)]
mod test {
    use pifleet_client::mqtt::Password;

    use super::*;

    #[test]
    fn logged_in_client_ids_start_with_the_user_name_and_differ() {
        let alice = Security {
            username: Some("alice".into()),
            password: Some(Password::new("x")),
            ca_file: None,
        };
        let (a, b) = (client_id(&alice), client_id(&alice));
        assert!(
            a.starts_with("alice:") && b.starts_with("alice:"),
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert!(client_id(&Security::default()).starts_with("pifleet-cli:"));
    }
}
