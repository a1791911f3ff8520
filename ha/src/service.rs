//! The discovery service: an MQTT client of any broker that feeds [`Discovery`] with presence,
//! sensor readings and Home Assistant's status, and publishes what it returns, retained.
//! `pifleet-broker` runs it over loopback (`[homeassistant] enabled`), `pifleet homeassistant`
//! against any broker.
//!
//! Two tasks, so that publishing never waits on the loop that must run for it to complete: the
//! MQTT task polls rumqttc and forwards messages; the builder task owns the [`Discovery`] and
//! publishes (QoS 1, retained). After every CONNACK the MQTT task subscribes again (rumqttc
//! does not) and the builder republishes every config it knows, since a broker that restarted
//! without its retained store has forgotten them. The first connection fails fast with the
//! reason; later losses are retried with backoff, logged.

use std::time::Duration;

use pifleet_client::mqtt::{describe, is_auth_refusal, Account, Backoff, Security, SecurityError};
use pifleet_client::BrokerUrl;
use pifleet_proto::Topics;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot};

use crate::discovery::Discovery;

const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// What the service needs: where the broker is, how to log in, and the two prefixes.
pub struct Options {
    pub broker: BrokerUrl,
    /// A controller's client id is `NAME` or `NAME:anything` on a pifleet broker with
    /// credentials (see the broker's `engine/auth.rs`).
    pub client_id: String,
    pub security: Security,
    /// How connection errors name the account: `controller` → "controller 'alice'".
    pub role: &'static str,
    pub topics: Topics,
    pub discovery_prefix: String,
    pub connect_timeout: Duration,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Security(SecurityError),
    /// One sentence naming the broker; `auth` when it refused the login or a subscription.
    #[error("{message}")]
    Connect { message: String, auth: bool },
}

/// A running discovery service; dropping it stops it.
pub struct Running {
    client: AsyncClient,
    mqtt: tokio::task::JoinHandle<()>,
    builder: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Disconnects and waits (briefly) for the tasks to end. The retained configs stay on the
    /// broker: Home Assistant keeps showing the devices, with their own availability.
    pub async fn stop(mut self) {
        let _ = self.client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(1), &mut self.mqtt)
            .await
            .is_err()
        {
            self.mqtt.abort();
        }
        self.builder.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.mqtt.abort();
        self.builder.abort();
    }
}

enum Input {
    Connected,
    Message(rumqttc::Publish),
}

/// Starts the service and returns once it is subscribed (the retained fleet state is then
/// being replayed to it, and each device's config follows).
pub async fn start(opts: Options) -> Result<Running, StartError> {
    let (client, mut eventloop) = pifleet_client::mqtt::client(
        &opts.broker,
        &opts.client_id,
        &opts.security,
        KEEP_ALIVE,
        opts.connect_timeout,
        |_| {},
    )
    .map_err(StartError::Security)?;
    let mut discovery = Discovery::new(opts.topics.clone(), &opts.discovery_prefix);
    let filters: Vec<SubscribeFilter> = discovery
        .filters()
        .into_iter()
        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
        .collect();

    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    let publisher = client.clone();
    let builder = tokio::spawn(async move {
        while let Some(input) = rx.recv().await {
            let out = match input {
                Input::Connected => discovery.all(),
                Input::Message(p) => discovery.handle(&p.topic, &p.payload),
            };
            for r in out {
                tracing::debug!(
                    "homeassistant: publishing {} ({} bytes)",
                    r.topic,
                    r.payload.len()
                );
                if publisher
                    .publish(r.topic, QoS::AtLeastOnce, true, r.payload.into_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });

    let (ready_tx, ready) = oneshot::channel::<Result<(), StartError>>();
    let url = opts.broker.clone();
    let who = Account::new(opts.role, &opts.security);
    let subscriber = client.clone();
    let mqtt = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if ready.is_none() {
                        tracing::info!("homeassistant: reconnected to {}", url.authority());
                    }
                    backoff.reset();
                    let _ = subscriber.try_subscribe_many(filters.clone());
                    if tx.send(Input::Connected).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<&str> = ack
                        .return_codes
                        .iter()
                        .zip(&filters)
                        .filter(|(c, _)| matches!(c, SubscribeReasonCode::Failure))
                        .map(|(_, f)| f.path.as_str())
                        .collect();
                    let error = (!refused.is_empty()).then(|| {
                        format!(
                            "the broker at {} refused the subscription to {} (a controller \
                             account, allowed to use the discovery prefix, is needed)",
                            url.authority(),
                            refused.join(", ")
                        )
                    });
                    match (ready.take(), error) {
                        (Some(r), None) => {
                            let _ = r.send(Ok(()));
                        }
                        (Some(r), Some(message)) => {
                            let _ = r.send(Err(StartError::Connect {
                                message,
                                auth: true,
                            }));
                            return;
                        }
                        (None, Some(message)) => tracing::error!("homeassistant: {message}"),
                        (None, None) => {}
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(Input::Message(p)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    let message = describe(&e, &url, &who);
                    if let Some(r) = ready.take() {
                        let auth = is_auth_refusal(&e);
                        let _ = r.send(Err(StartError::Connect { message, auth }));
                        return;
                    }
                    tracing::warn!("homeassistant: {message}; reconnecting");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    });

    let deadline = opts.connect_timeout + Duration::from_secs(10);
    let failed = match tokio::time::timeout(deadline, ready).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e),
        Ok(Err(_)) => Some(StartError::Connect {
            message: "the discovery service's connection task ended".into(),
            auth: false,
        }),
        Err(_) => Some(StartError::Connect {
            message: format!(
                "no answer from the broker at {} within {} s",
                opts.broker.authority(),
                deadline.as_secs()
            ),
            auth: false,
        }),
    };
    if let Some(e) = failed {
        mqtt.abort();
        builder.abort();
        return Err(e);
    }
    Ok(Running {
        client,
        mqtt,
        builder,
    })
}
