//! [`Agent`]: the agent built from its configuration. [`Agent::new`] reads the login and TLS
//! files, loads the state file, claims every configured pin and opens the sensors, then hands
//! the result to the core ([`AgentState`]) and the shell ([`crate::run`]); [`Agent::run`]
//! connects and serves.

use std::future::Future;
use std::time::Duration;

use pifleet_proto::payload::StateSource;
use pifleet_proto::time::now_ms;
use pifleet_proto::Level;
use tokio::sync::mpsc;

use crate::backlog::Backlog;
use crate::config::{Config, ConfigError, Initial, OutputKind, DEFAULT_PWM_HZ};
use crate::gpio::{sim::SimBoard, Backend, Button, Dimmer, GpioError, OutputPin, Switch};
use crate::message::Wire;
use crate::run::{InputPin, Shell};
use crate::sensor;
use crate::state::AgentState;
use crate::state_file;

// Where they were before the agent was split by concept; `pifleet_agent::agent::AgentHandle`
// keeps working.
pub use crate::handle::{AgentHandle, RequestError, Snapshot};

/// Fatal agent errors: the ones that stop it before it can serve anything.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Gpio(#[from] GpioError),
    /// The login or TLS settings cannot be used (unreadable password or CA file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the agent has stopped")]
    Stopped,
    #[error("cannot listen for legacy clients on {addr}: {source}")]
    Legacy {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// An agent ready to run: pins claimed, nothing on the network yet.
pub struct Agent {
    pub(crate) shell: Shell,
}

impl Agent {
    /// Reads the login and TLS files, claims every configured pin (outputs first, at their
    /// initial level) and prepares sensors. Nothing touches the network until [`Agent::run`].
    pub fn new(
        config: Config,
        backend: &mut dyn Backend,
        sim: Option<SimBoard>,
    ) -> Result<(Agent, AgentHandle), AgentError> {
        let security = config.security()?;
        let wire = Wire::new(config.topics(), config.device.clone());
        let mut core = AgentState::new(wire, config.groups.clone(), now_ms);
        // Reported once connected; the agent starts anyway, with the configured defaults.
        let mut startup_problem = None;

        let needs_state = config.outputs.iter().any(|o| o.initial == Initial::Restore);
        let state_path = needs_state.then(|| config.state_file_path());
        let saved = match &state_path {
            Some(p) => state_file::load(p).unwrap_or_else(|e| {
                startup_problem = Some(e.to_string());
                Default::default()
            }),
            None => Default::default(),
        };

        let mut switches = Vec::new();
        for o in &config.outputs {
            let (on, source) = match o.initial {
                Initial::Off => (false, StateSource::Initial),
                Initial::On => (true, StateSource::Initial),
                Initial::Restore => match saved.get(o.name.as_str()) {
                    Some(&on) => (on, StateSource::Restore),
                    None => (false, StateSource::Initial),
                },
            };
            let pin = match o.kind {
                OutputKind::Switch => {
                    OutputPin::Switch(Switch::new(backend, o.pin, o.active_low, on)?)
                }
                OutputKind::Pwm => OutputPin::Dimmer(Dimmer::new(
                    backend,
                    o.pin,
                    o.active_low,
                    o.frequency_hz.unwrap_or(DEFAULT_PWM_HZ),
                    if on { Level::MAX } else { 0.0 },
                )?),
            };
            tracing::info!(
                "output {} on BCM {} starts {} ({:?})",
                o.name,
                o.pin,
                if on { "on" } else { "off" },
                source
            );
            let index = core.add_output(o.name.clone(), o.initial == Initial::Restore, on, source);
            if o.kind == OutputKind::Pwm {
                core.make_dimmable(index);
            }
            if let Some(secs) = o.pulse_secs {
                core.set_pulse_default(index, secs);
            }
            switches.push(pin);
        }

        let (edge_tx, edges) = mpsc::unbounded_channel();
        let mut buttons = Vec::new();
        for (index, i) in config.inputs.iter().enumerate() {
            let tx = edge_tx.clone();
            let button = Button::new(
                backend,
                i.pin,
                i.pull,
                i.active_low,
                Duration::from_millis(i.debounce_ms),
                move |active| {
                    let _ = tx.send((index, active));
                },
            )?;
            core.add_input(i.name.clone(), button.is_active());
            buttons.push(InputPin {
                button,
                pin: i.pin,
                active_low: i.active_low,
            });
        }

        // The simulator simulates the chips on the board's buses too.
        let hardware = if sim.is_some() {
            sensor::Hardware::Sim
        } else {
            sensor::Hardware::Rppal
        };
        let mut sensors = Vec::new();
        for s in &config.sensors {
            // One core slot (one topic) per quantity; the config validated the names.
            let first = core.sensors().len();
            for name in s.topic_names().map_err(ConfigError::Invalid)? {
                let index = core.add_sensor(name);
                core.set_sensor_interval(index, s.interval_secs);
            }
            let slots = first..core.sensors().len();
            let interval = Duration::from_secs_f64(s.interval_secs);
            sensors.push((slots, sensor::open(s, hardware), interval));
        }

        let mut backlog = Backlog::default();
        if let Some(message) = startup_problem {
            backlog.push(core.state_file_failed(message), false);
        }
        let (handle, requests) = AgentHandle::new();
        let shell = Shell {
            backend: backend.name(),
            handle: handle.clone(),
            security,
            core,
            backlog,
            pulses: vec![None; switches.len()],
            switches,
            buttons,
            sim,
            sensors,
            edges,
            requests,
            state_path,
            config,
        };
        Ok((Agent { shell }, handle))
    }

    pub fn backend_name(&self) -> &'static str {
        self.shell.backend
    }

    /// Connects and serves until `shutdown` resolves, then says goodbye: offline presence, a
    /// clean DISCONNECT (so the broker discards the last will), outputs left as they are.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        self.shell.run(shutdown).await
    }
}
