//! The canary: a real agent (the agent library, simulated GPIO) logged in as device `canary`
//! over TLS, and a controller logged in as `soak` over TLS that sends it an on/off command
//! every `interval` and times each confirmation, exactly as the CLI waits for one (the output
//! state carrying the command's id). A command not confirmed within `timeout` is a failure.
//! Alongside, a login probe: controller `probe` logs in over TLS every two seconds, the way a
//! CLI run or an agent's reconnect would during an attack.
//!
//! All of it runs on a thread and a runtime of its own, so the attackers' tasks cannot delay
//! its timers; it connects from 127.0.0.1, where no flood comes from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pifleet_agent::config::{Config, GpioChoice, OutputConfig};
use pifleet_agent::{gpio, Agent};
use pifleet_client::mqtt::{Password, Security};
use pifleet_client::BrokerUrl;
use pifleet_proto::fleet::decode;
use pifleet_proto::report::WatchEvent;
use pifleet_proto::{Action, Command, Name, Target, Topics};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use crate::floods::{describe, Src, LOGIN_WAIT};
use crate::raw::{self, connect_packet, Net, Outcome, Port};

/// Before the floods, during them, and stopping.
pub const BASELINE: u8 = 0;
pub const ATTACK: u8 = 1;
pub const DONE: u8 = 2;

pub struct Settings {
    /// `mqtts://localhost:PORT`.
    pub url: BrokerUrl,
    pub ca_file: PathBuf,
    pub canary_secret: String,
    pub soak_secret: String,
    pub probe_secret: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One command: when it was sent (seconds since the floods began; negative before) and its
/// round trip, `None` if it timed out.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: f64,
    pub ms: Option<f64>,
}

#[derive(Debug, Default, Clone)]
pub struct Record {
    pub baseline: Vec<Sample>,
    pub attack: Vec<Sample>,
    /// Login probe round trips (ms) and failures in words.
    pub probe_ms: Vec<f64>,
    pub probe_failed: Vec<String>,
    /// Errors the controller's connection reported (it reconnects by itself).
    pub controller_errors: Vec<String>,
}

/// The shared clock: when the floods began (set by the soak when it switches to [`ATTACK`]).
#[derive(Default)]
pub struct Clock {
    pub attack_started: Mutex<Option<Instant>>,
}

impl Clock {
    fn at(&self) -> f64 {
        match *self.attack_started.lock().unwrap() {
            Some(t) => t.elapsed().as_secs_f64(),
            None => f64::NEG_INFINITY,
        }
    }
}

/// Starts the canary's thread. `ready` receives `Ok` once a first command was confirmed (or
/// why not); afterwards the thread records into `record` until `phase` is [`DONE`].
pub fn start(
    settings: Settings,
    net: Arc<Net>,
    phase: Arc<AtomicU8>,
    clock: Arc<Clock>,
    record: Arc<Mutex<Record>>,
) -> (
    std_mpsc::Receiver<Result<(), String>>,
    std::thread::JoinHandle<()>,
) {
    let (ready_tx, ready) = std_mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("canary".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("canary runtime");
            rt.block_on(run(settings, net, phase, clock, record, ready_tx));
            rt.shutdown_timeout(Duration::from_secs(2));
        })
        .expect("spawn the canary thread");
    (ready, handle)
}

async fn run(
    s: Settings,
    net: Arc<Net>,
    phase: Arc<AtomicU8>,
    clock: Arc<Clock>,
    record: Arc<Mutex<Record>>,
    ready: std_mpsc::Sender<Result<(), String>>,
) {
    let topics = Topics::default();
    let device = Name::new("canary").expect("valid name");
    let config = Config {
        device: device.clone(),
        broker: s.url.clone(),
        password: Some(Password::new(s.canary_secret.clone())),
        ca_file: Some(s.ca_file.clone()),
        gpio: GpioChoice::Sim,
        keep_alive_secs: 30,
        outputs: vec![OutputConfig::switch(
            Name::new("led").expect("valid name"),
            17,
        )],
        inputs: vec![],
        sensors: vec![],
        ..Config::default()
    };
    let agent = gpio::open(GpioChoice::Sim)
        .map_err(|e| e.to_string())
        .and_then(|(mut backend, sim)| {
            Agent::new(config, backend.as_mut(), sim).map_err(|e| e.to_string())
        });
    let (agent, _handle) = match agent {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(format!("canary agent: {e}")));
            return;
        }
    };
    let (stop_agent, mut stopped) = watch::channel(false);
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let security = Security {
        username: Some("soak".into()),
        password: Some(Password::new(s.soak_secret.clone())),
        ca_file: Some(s.ca_file.clone()),
    };
    let client = pifleet_client::mqtt::client(
        &s.url,
        "soak",
        &security,
        Duration::from_secs(30),
        Duration::from_secs(10),
        |o| {
            o.set_inflight(100);
        },
    );
    let (client, mut ev) = match client {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("canary controller: {e}")));
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let (sub_tx, mut suback) = mpsc::unbounded_channel::<()>();
    let errors = record.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    errors.lock().unwrap().controller_errors.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let subscribed = async {
        client
            .subscribe(topics.output_filter(Some(&device)), QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        suback.recv().await.ok_or("controller event loop ended")?;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(20), subscribed).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = ready.send(Err(format!("canary controller: {e}")));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err(
                "canary controller: no SUBACK within 20 s (TLS or login failed?)".into(),
            ));
            return;
        }
    }
    // The agent is ready once it confirms a command.
    let target = Target::Device(device.clone());
    let warm_up = Instant::now() + Duration::from_secs(30);
    let mut on = true;
    loop {
        let action = if on { Action::On } else { Action::Off };
        on = !on;
        if round(
            &client,
            &mut rx,
            &topics,
            &target,
            action,
            Duration::from_secs(2),
        )
        .await
        .is_some()
        {
            break;
        }
        if Instant::now() > warm_up {
            let _ = ready.send(Err(
                "the canary agent confirmed no command within 30 s".into()
            ));
            return;
        }
    }
    let _ = ready.send(Ok(()));

    tokio::spawn(probe(
        net,
        s.probe_secret.clone(),
        phase.clone(),
        record.clone(),
    ));
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = phase.load(Ordering::Relaxed);
        if now == DONE {
            break;
        }
        let action = if on { Action::On } else { Action::Off };
        on = !on;
        let at = clock.at();
        let ms = round(&client, &mut rx, &topics, &target, action, s.timeout).await;
        let sample = Sample { at, ms };
        let mut r = record.lock().unwrap();
        if now == BASELINE {
            r.baseline.push(sample)
        } else {
            r.attack.push(sample)
        }
    }
    let _ = stop_agent.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
}

/// One command and its confirmation: the round trip in ms, `None` after `timeout`.
async fn round(
    client: &AsyncClient,
    rx: &mut mpsc::UnboundedReceiver<Publish>,
    topics: &Topics,
    target: &Target,
    action: Action,
    timeout: Duration,
) -> Option<f64> {
    let cmd = Command::switch(action, None);
    let payload = serde_json::to_vec(&cmd).expect("serializable");
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let confirmed = async {
        client
            .publish(topics.command(target), QoS::AtLeastOnce, false, payload)
            .await
            .ok()?;
        loop {
            let p = rx.recv().await?;
            if let Ok(Some(WatchEvent::Output { state, .. })) = decode(topics, &p.topic, &p.payload)
            {
                if state.cmd.as_ref() == Some(&cmd.id) {
                    return Some(());
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, confirmed).await {
        Ok(Some(())) => Some(started.elapsed().as_secs_f64() * 1e3),
        _ => None,
    }
}

/// A legitimate login every two seconds while the floods run: controller `probe` over TLS.
async fn probe(net: Arc<Net>, secret: String, phase: Arc<AtomicU8>, record: Arc<Mutex<Record>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match phase.load(Ordering::Relaxed) {
            DONE => return,
            BASELINE => continue,
            _ => {}
        }
        let started = Instant::now();
        let c = connect_packet("probe", Some(("probe", &secret)), true, 30);
        let outcome = raw::connect(&net, Port::Mqtts, Src::CANARY, c, LOGIN_WAIT).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Outcome::Accepted(c, _) => {
                record.lock().unwrap().probe_ms.push(ms);
                c.disconnect().await;
            }
            other => record.lock().unwrap().probe_failed.push(describe(&other)),
        }
    }
}
