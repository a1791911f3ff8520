//! Simulated devices and a controller for the benchmarks. The devices are real agents (the
//! agent library with the simulated GPIO backend) running as tasks of the benchmark process,
//! so the figures include the agent's own code; the controller speaks the CLI's protocol.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pifleet_agent::config::{
    Config, GpioChoice, InputConfig, OutputConfig, Pull, SensorConfig, SensorKind,
};
use pifleet_agent::{gpio, Agent, AgentHandle};
use pifleet_client::BrokerUrl;
use pifleet_proto::fleet::decode;
use pifleet_proto::report::WatchEvent;
use pifleet_proto::{CommandId, Name, Topics};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};

/// A plain MQTT client of the benchmark (no TLS, no login, the CLI's keep-alive and connect
/// timeout), with `tune` applied to its options; the caller drives the event loop.
pub fn client(
    url: &BrokerUrl,
    id: &str,
    tune: impl FnOnce(&mut rumqttc::MqttOptions),
) -> (AsyncClient, rumqttc::EventLoop) {
    pifleet_client::mqtt::client(
        url,
        id,
        &pifleet_client::mqtt::Security::default(),
        Duration::from_secs(60),
        Duration::from_secs(10),
        tune,
    )
    .expect("no TLS or login in the benchmark")
}

/// A controller-side MQTT client: publishes arrive on a channel.
pub struct Controller {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Publish>,
    suback: mpsc::UnboundedReceiver<()>,
}

impl Controller {
    pub async fn connect(url: &BrokerUrl, id: &str) -> Controller {
        let (client, mut ev) = client(url, id, |o| {
            o.set_inflight(1000);
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (stx, suback) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Until nobody reads what arrives.
            while !tx.is_closed() {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = stx.send(());
                    }
                    Ok(_) => {}
                    Err(_) if tx.is_closed() => return,
                    Err(e) => {
                        eprintln!("controller connection: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Controller { client, rx, suback }
    }

    pub async fn subscribe(&mut self, filters: Vec<String>) {
        let subs = filters
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce));
        self.client.subscribe_many(subs).await.unwrap();
        self.suback.recv().await.unwrap();
    }
}

/// Simulated devices: real agents in this process.
pub struct Fleet {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each agent's handle (its simulated board), in device order.
    pub handles: Vec<AgentHandle>,
}

/// A device with output `led` (pin 17) and input `button` (pin 27, active low), no sensor.
pub fn agent_config(url: &BrokerUrl, device: &str) -> Config {
    Config {
        device: Name::new(device).unwrap(),
        broker: url.clone(),
        gpio: GpioChoice::Sim,
        keep_alive_secs: 30,
        outputs: vec![OutputConfig::switch(Name::new("led").unwrap(), 17)],
        inputs: vec![InputConfig {
            name: Name::new("button").unwrap(),
            pin: 27,
            pull: Pull::Up,
            active_low: true,
            debounce_ms: 0,
        }],
        sensors: vec![],
        ..Config::default()
    }
}

/// A simulated temperature sensor named `name`, read every `interval_secs`.
pub fn sim_sensor(name: &str, interval_secs: f64) -> SensorConfig {
    SensorConfig {
        interval_secs,
        ..SensorConfig::new(Name::new(name).unwrap(), SensorKind::Sim)
    }
}

impl Fleet {
    /// Starts `n` agents named `PREFIX-0` … and waits until the broker has every one's online
    /// presence (an agent announces itself after subscribing, so then every one can receive
    /// commands). Returns how many joined within `join`.
    pub async fn start(
        url: &BrokerUrl,
        prefix: &str,
        n: usize,
        topics: &Topics,
        join: Duration,
    ) -> (Fleet, usize) {
        Fleet::start_with(url, prefix, n, topics, join, |_, _| {}).await
    }

    /// [`Fleet::start`] with each device's [`agent_config`] changed by `configure` (given the
    /// device's index) first.
    pub async fn start_with(
        url: &BrokerUrl,
        prefix: &str,
        n: usize,
        topics: &Topics,
        join: Duration,
        configure: impl Fn(usize, &mut Config),
    ) -> (Fleet, usize) {
        let mut watcher =
            Controller::connect(url, &format!("bench-watch:{}", CommandId::generate())).await;
        watcher.subscribe(vec![topics.status_filter(None)]).await;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut handles = Vec::new();
        for i in 0..n {
            let mut config = agent_config(url, &format!("{prefix}-{i}"));
            config.prefix = topics.prefix().to_string();
            configure(i, &mut config);
            let (mut backend, sim) = gpio::open(GpioChoice::Sim).unwrap();
            let (agent, handle) = Agent::new(config, backend.as_mut(), sim).unwrap();
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let _ = agent
                    .run(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            }));
            handles.push(handle);
            if i % 500 == 499 {
                tokio::task::yield_now().await;
            }
        }
        let mut online = HashSet::new();
        let deadline = Instant::now() + join;
        while online.len() < n && Instant::now() < deadline {
            let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(5), watcher.rx.recv()).await
            else {
                continue;
            };
            if let Ok(Some(WatchEvent::Presence { device, presence })) =
                decode(topics, &p.topic, &p.payload)
            {
                if presence.is_online() && device.as_str().starts_with(prefix) {
                    online.insert(device);
                }
            }
        }
        let joined = online.len();
        (
            Fleet {
                stop,
                tasks,
                handles,
            },
            joined,
        )
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
