//! The discovery service: an MQTT client of any broker that feeds [`Discovery`] with presence,
//! sensor readings and Home Assistant's status, and publishes what it returns, retained.
//! `pifleet-broker` runs it over loopback (`[homeassistant] enabled`), `pifleet homeassistant`
//! against any broker.
//!
//! Two tasks, so that publishing never waits on the loop that must run for it to complete: the
//! MQTT task (`pifleet_client::service`, shared with the recorder) polls rumqttc and forwards messages; the builder task owns the [`Discovery`] and
//! publishes (QoS 1, retained). After every CONNACK the MQTT task subscribes again (rumqttc
//! does not) and the builder republishes every config it knows, since a broker that restarted
//! without its retained store has forgotten them. The first connection fails fast with the
//! reason; later losses are retried with backoff, logged.

use std::time::Duration;

use pifleet_client::mqtt::SecurityError;
use pifleet_client::service::{ConnectError, Connection, Handler, Login, Subscription};
use pifleet_proto::Topics;
use rumqttc::{AsyncClient, Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;

use crate::discovery::Discovery;

/// What the service needs: where the broker is and how to log in, and the two prefixes.
pub struct Options {
    pub login: Login,
    pub topics: Topics,
    pub discovery_prefix: String,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Security(SecurityError),
    /// The first connection failed, or the broker refused the login or a subscription.
    #[error(transparent)]
    Connect(ConnectError),
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
    Message(Publish),
}

/// The MQTT task's side: every connection makes the builder republish everything it knows.
struct Forward;

impl Handler for Forward {
    type Item = Input;

    fn connected(&mut self) -> Option<Input> {
        Some(Input::Connected)
    }

    fn message(&mut self, publish: Publish) -> Input {
        Input::Message(publish)
    }

    fn refused(&mut self, message: &str) {
        tracing::error!("homeassistant: {message}");
    }

    fn lost(&mut self, message: &str, _auth: bool) {
        tracing::warn!("homeassistant: {message}; reconnecting");
    }
}

/// Starts the service and returns once it is subscribed (the retained fleet state is then
/// being replayed to it, and each device's config follows).
pub async fn start(opts: Options) -> Result<Running, StartError> {
    let connection = Connection::new(&opts.login).map_err(StartError::Security)?;
    let client = connection.client().clone();
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

    let subscription = Subscription {
        name: "homeassistant",
        owner: "the discovery service",
        filters,
        refused_hint: "(a controller account, allowed to use the discovery prefix, is needed)",
    };
    match connection.run(subscription, Forward, tx).await {
        Ok(mqtt) => Ok(Running {
            client,
            mqtt,
            builder,
        }),
        Err(e) => {
            builder.abort();
            Err(StartError::Connect(e))
        }
    }
}
