//! A simulated fleet inside the broker process, for the quickstart: real agents (the agent
//! library with the simulated GPIO backend) connected to the broker over real MQTT, so what a
//! newcomer sees with `pifleet status` is exactly what a fleet of Pis would show.

use std::net::SocketAddr;
use std::time::Duration;

use pifleet_agent::agent::AgentHandle;
use pifleet_agent::config::{Config as AgentConfig, GpioChoice, SensorConfig, SensorKind};
use pifleet_agent::{console, gpio, Agent};
use pifleet_client::BrokerUrl;
use pifleet_proto::Name;

use crate::credentials::Role;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Demo device names and their groups: a house, because that is what people wire up first.
const DEVICES: &[(&str, &[&str])] = &[
    ("kitchen", &["downstairs"]),
    ("garage", &["outside"]),
    ("porch", &["outside", "downstairs"]),
    ("attic", &[]),
    ("hallway", &["downstairs"]),
    ("shed", &["outside"]),
];

/// The demo agents, running until [`Demo::stop`].
pub struct Demo {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    pub handles: Vec<(Name, AgentHandle)>,
}

/// The configuration of demo device number `i` (names repeat with a number after six).
pub fn device_config(i: usize, broker: SocketAddr, prefix: &str) -> AgentConfig {
    let (base, groups) = DEVICES[i % DEVICES.len()];
    let name = if i < DEVICES.len() {
        base.to_string()
    } else {
        format!("{base}-{}", i / DEVICES.len() + 1)
    };
    let host = if broker.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        broker.ip().to_string()
    };
    AgentConfig {
        device: Name::new(name).expect("valid demo name"),
        broker: BrokerUrl {
            scheme: pifleet_client::Scheme::Mqtt,
            host,
            port: broker.port(),
            path: String::new(),
        },
        prefix: prefix.to_string(),
        groups: groups
            .iter()
            .map(|g| Name::new(*g).expect("valid"))
            .collect(),
        gpio: GpioChoice::Sim,
        keep_alive_secs: 5,
        reconnect_max_secs: 2.0,
        // The defaults' CPU sensor would only report errors on most PCs.
        sensors: vec![SensorConfig {
            interval_secs: 5.0,
            ..SensorConfig::new(Name::new("temp").expect("valid"), SensorKind::Sim)
        }],
        ..AgentConfig::default()
    }
}

impl Demo {
    /// Starts `count` simulated agents against the broker `running` (as internal device
    /// identities when the broker requires a login).
    pub fn start(
        count: usize,
        running: &crate::Running,
        prefix: &str,
    ) -> Result<Demo, pifleet_agent::AgentError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut handles = Vec::new();
        for i in 0..count {
            let mut config = device_config(i, running.mqtt, prefix);
            let groups = config.groups.iter().map(|g| g.to_string()).collect();
            let login = crate::services::login(
                &running.engine,
                config.device.as_str(),
                Role::Device,
                groups,
            );
            config.password = login.password;
            let name = config.device.clone();
            let (mut backend, sim) = gpio::open(GpioChoice::Sim)?;
            let (agent, handle) = Agent::new(config, backend.as_mut(), sim)?;
            let mut stopped = stopped.clone();
            let span = tracing::info_span!("agent", device = %name);
            tasks.spawn(
                async move {
                    let _ = agent
                        .run(async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        })
                        .await;
                }
                .instrument(span),
            );
            handles.push((name, handle));
        }
        Ok(Demo {
            stop,
            tasks,
            handles,
        })
    }

    /// Stops every agent with a goodbye (offline presence, clean disconnect).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }

    /// Serves the demo console on stdin: `<device> press [input]`, `<device> show`, `show`.
    pub async fn console(handles: Vec<(Name, AgentHandle)>) {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut out = tokio::io::stdout();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (first, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let targets: Vec<&(Name, AgentHandle)> = if first == "show" {
                handles.iter().collect()
            } else {
                handles
                    .iter()
                    .filter(|(n, _)| n.as_str() == first)
                    .collect()
            };
            let command = if first == "show" { "show" } else { rest };
            let result =
                match (targets.is_empty(), console::parse(command)) {
                    (true, _) => Err(format!(
                    "no demo device {first:?}; try `<device> press`, `<device> show` or `show` \
                     (devices: {})",
                    handles.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                )),
                    (false, Ok(Some(cmd))) => Ok(cmd),
                    (false, Ok(None)) => Err(console::HELP.to_string()),
                    (false, Err(e)) => Err(e),
                };
            match result {
                Ok(cmd) => {
                    for (name, handle) in targets {
                        let label = format!("{name}: ");
                        if console::execute(handle, cmd.clone(), &label, &mut out)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if out.write_all(format!("{e}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
