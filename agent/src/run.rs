//! The agent's async shell: the one task that owns the MQTT client, the pins, the sensor tasks
//! and the timers. It turns what happens (connection events, PUBLISHes, input edges, sensor
//! readings, [`AgentHandle`] requests, timer ticks) into inputs for [`AgentState`], and carries
//! out what the core returns: messages through the [`Backlog`] to the client, pin writes, the
//! state file. Every decision is the core's.
//!
//! Owning everything in one task means no locks around pins and a single order of events: a
//! command's GPIO write, its state-file write and its acknowledgement happen in that order.

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use pifleet_client::mqtt::{Account, Backoff, Security};
use pifleet_proto::payload::Presence;
use rumqttc::{AsyncClient, ClientError, LastWill, Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::agent::AgentError;
use crate::backlog::Backlog;
use crate::config::{Config, ConfigError};
use crate::connection::{self, NetEvent};
use crate::gpio::{sim::SimBoard, Button, OutputPin};
use crate::handle::{AgentHandle, Request, RequestError, Snapshot};
use crate::message::Message;
use crate::sensor::{self, ReadResult, Sensor};
use crate::state::{AgentState, Incoming, SwitchOrder};
use crate::state_file::{self, Saved};

/// The two calls the shell makes on rumqttc's [`AsyncClient`], neither of which waits (a slow
/// broker must never stall the agent); a trait so the loop can be tested without a broker.
pub(crate) trait Client {
    fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ClientError>;
    fn try_subscribe_many(&self, filters: Vec<SubscribeFilter>) -> Result<(), ClientError>;
}

impl Client for AsyncClient {
    fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        AsyncClient::try_publish(self, topic, qos, retain, payload)
    }

    fn try_subscribe_many(&self, filters: Vec<SubscribeFilter>) -> Result<(), ClientError> {
        AsyncClient::try_subscribe_many(self, filters)
    }
}

/// An input pin with the wiring needed to drive it on the simulator.
pub(crate) struct InputPin {
    pub button: Button,
    pub pin: u8,
    pub active_low: bool,
}

/// The shell's state, built by [`crate::Agent::new`].
pub(crate) struct Shell {
    pub config: Config,
    /// Resolved once in [`crate::Agent::new`], so a bad password or CA file stops the agent
    /// before it touches a pin.
    pub security: Security,
    pub backend: &'static str,
    pub core: AgentState,
    pub backlog: Backlog,
    /// Indexed like the core's outputs and inputs.
    pub switches: Vec<OutputPin>,
    /// Running pulses: when each output's pulse ends (indexed like the outputs). The timers
    /// live here, in the agent's own loop, so a pulse ends on time whatever the network does.
    pub pulses: Vec<Option<tokio::time::Instant>>,
    pub buttons: Vec<InputPin>,
    pub sim: Option<SimBoard>,
    /// Each with its slots in the core's sensors (one per quantity); taken by the polling
    /// tasks when the agent runs.
    pub sensors: Vec<(Range<usize>, Box<dyn Sensor>, Duration)>,
    pub edges: mpsc::UnboundedReceiver<(usize, bool)>,
    pub requests: mpsc::Receiver<Request>,
    pub state_path: Option<PathBuf>,
    /// A handle on ourselves, for the legacy shim.
    pub handle: AgentHandle,
}

/// Waits for the earliest running pulse to end and returns its output; never, without one.
async fn next_pulse_end(pulses: &[Option<tokio::time::Instant>]) -> usize {
    let next = pulses
        .iter()
        .enumerate()
        .filter_map(|(i, at)| Some((i, (*at)?)))
        .min_by_key(|(_, at)| *at);
    match next {
        Some((index, at)) => {
            tokio::time::sleep_until(at).await;
            index
        }
        None => std::future::pending().await,
    }
}

impl Shell {
    /// Connects and serves until `shutdown` resolves, then says goodbye: offline presence, a
    /// clean DISCONNECT (so the broker discards the last will), outputs left as they are.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let device = self.config.device.clone();
        let url = self.config.broker.clone();
        let will = serde_json::to_vec(&Presence::will()).expect("serializable");
        let status_topic = self.core.wire().topics().status(&device);
        // The client id stays the device name whatever the user name: a pifleet broker with
        // authentication requires a device's client id to equal its name.
        let (client, eventloop) = pifleet_client::mqtt::client(
            &url,
            device.as_str(),
            &self.security,
            Duration::from_secs(self.config.keep_alive_secs),
            Duration::from_secs(5),
            |o| {
                o.set_last_will(LastWill::new(
                    status_topic.clone(),
                    will,
                    QoS::AtLeastOnce,
                    true,
                ));
            },
        )
        .map_err(|e| AgentError::Config(ConfigError::Invalid(e.to_string())))?;
        let legacy = match self.config.legacy.clone() {
            Some(l) => Some(crate::legacy::start(l, self.handle.clone(), device.clone()).await?),
            None => None,
        };
        let backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs_f64(self.config.reconnect_max_secs),
        );
        let who = Account::new("device", &self.security);
        let (net_tx, mut net) = mpsc::unbounded_channel();
        let mut conn = tokio::spawn(connection::drive(
            eventloop,
            url.clone(),
            who,
            backoff,
            net_tx,
        ));

        let (reading_tx, mut readings) = mpsc::channel(16);
        let mut sensor_tasks = JoinSet::new();
        for (slots, sensor, interval) in std::mem::take(&mut self.sensors) {
            sensor_tasks.spawn(sensor::poll(slots, sensor, interval, reading_tx.clone()));
        }
        drop(reading_tx);

        let login = match self.security.user() {
            Some(user) => format!(" as user {user:?}"),
            None => String::new(),
        };
        tracing::info!(
            "device {device} connecting to {url}{login} (GPIO backend: {})",
            self.backend
        );
        self.serve(&client, &mut net, &mut readings, shutdown).await;

        sensor_tasks.abort_all();
        if let Some(l) = legacy {
            l.abort();
        }
        if self.core.is_connected() {
            let goodbye = self.core.goodbye();
            let bye = async {
                let _ = client
                    .publish(goodbye.topic, goodbye.qos, goodbye.retain, goodbye.payload)
                    .await;
                let _ = client.disconnect().await;
                let _ = (&mut conn).await;
            };
            if tokio::time::timeout(Duration::from_secs(3), bye)
                .await
                .is_err()
            {
                tracing::warn!("the broker did not take the goodbye in time");
            }
        }
        conn.abort();
        tracing::info!("device {device} stopped");
        Ok(())
    }

    /// The event loop: one input at a time, until `shutdown` resolves or the connection task is
    /// gone.
    async fn serve(
        &mut self,
        client: &impl Client,
        net: &mut mpsc::UnboundedReceiver<NetEvent>,
        readings: &mut mpsc::Receiver<(usize, ReadResult)>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut retry = tokio::time::interval(Duration::from_millis(50));
        let heartbeat_every = Duration::from_secs(self.config.heartbeat_secs);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                ev = net.recv() => match ev {
                    Some(NetEvent::Connected) => self.on_connected(client),
                    Some(NetEvent::Disconnected { why, retry_in, refused }) => {
                        self.core.handle_disconnected(&why, retry_in, refused);
                    }
                    Some(NetEvent::Message(p)) => self.on_message(client, p).await,
                    Some(NetEvent::SubAck(ack)) => {
                        let out = self.core.handle_suback(&ack.return_codes);
                        self.send(client, out);
                    }
                    None => break,
                },
                Some((index, active)) = self.edges.recv() => {
                    let out = self.core.handle_input_edge(index, active);
                    self.send(client, out);
                }
                Some(req) = self.requests.recv() => self.on_request(client, req).await,
                Some((index, result)) = readings.recv() => {
                    let out = self.core.handle_sensor_reading(index, result);
                    self.send(client, out);
                }
                _ = retry.tick(), if !self.backlog.is_empty() && self.core.is_connected() => {
                    self.flush(client);
                }
                _ = heartbeat.tick(), if self.core.is_connected() => {
                    let out = self.core.handle_heartbeat();
                    self.send(client, out);
                }
                index = next_pulse_end(&self.pulses) => {
                    self.pulses[index] = None;
                    if let Some(order) = self.core.handle_pulse_end(index) {
                        let _ = self.switch(client, order).await;
                    }
                }
            }
        }
    }

    /// Subscribe first, then announce: whoever sees us online can already reach us.
    fn on_connected(&mut self, client: &impl Client) {
        tracing::info!("connected to {}", self.config.broker);
        let connect = self.core.handle_connected();
        if let Err(e) = client.try_subscribe_many(connect.subscribe) {
            tracing::warn!("cannot queue the subscription: {e}");
            self.core.handle_subscribe_unsent();
        }
        self.backlog.reconnect(connect.republish);
        self.flush(client);
    }

    async fn on_message(&mut self, client: &impl Client, p: Publish) {
        match self.core.handle_incoming_publish(&p) {
            Incoming::Nothing => {}
            Incoming::Publish(out) => self.send(client, out),
            Incoming::Switch(order) => {
                // A refusal is the core's event, already sent; nobody waits for the result here.
                let _ = self.switch(client, order).await;
            }
        }
    }

    /// Sets the pin, persists restorable outputs, then publishes what the core made of it.
    async fn switch(
        &mut self,
        client: &impl Client,
        order: SwitchOrder,
    ) -> Result<bool, RequestError> {
        let index = order.index;
        let pulse = order.pulse_secs;
        let pin = self.switches[index].set(order.on, order.level);
        let ok = pin.is_ok();
        let done = self.core.handle_switched(order, pin);
        if ok {
            // Any switch ends a running pulse; one with a pulse of its own starts a new one.
            self.pulses[index] =
                pulse.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
        }
        if let Some(saved) = done.persist {
            self.persist(client, saved).await;
        }
        self.send(client, done.publish);
        done.result
    }

    async fn persist(&mut self, client: &impl Client, saved: Saved) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || state_file::save(&path, &saved)).await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        let event = self.core.state_file_failed(error);
        self.send(client, vec![event]);
    }

    async fn on_request(&mut self, client: &impl Client, req: Request) {
        match req {
            Request::Switch {
                output,
                action,
                source,
                reply,
            } => {
                let result = match self
                    .core
                    .switch_order(output.as_ref(), action, source, None)
                {
                    Ok(order) => self.switch(client, order).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Request::ReadInput { input, reply } => {
                let result = self
                    .core
                    .input_index(input.as_ref())
                    .map(|i| self.buttons[i].button.is_active());
                let _ = reply.send(result);
            }
            Request::DriveInput {
                input,
                active,
                reply,
            } => {
                let result = match (&self.sim, self.core.input_index(Some(&input))) {
                    (None, _) => Err(RequestError::NotSimulated),
                    (_, Err(e)) => Err(e),
                    (Some(board), Ok(i)) => {
                        let pin = &self.buttons[i];
                        board
                            .drive_input(pin.pin, active != pin.active_low)
                            .map_err(|e| RequestError::Gpio(e.to_string()))
                    }
                };
                let _ = reply.send(result);
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(Snapshot {
                    outputs: self
                        .core
                        .outputs()
                        .iter()
                        .map(|o| (o.name.clone(), o.state.on))
                        .collect(),
                    inputs: self
                        .core
                        .inputs()
                        .iter()
                        .zip(&self.buttons)
                        .map(|(i, pin)| (i.name.clone(), pin.button.is_active()))
                        .collect(),
                    connected: self.core.is_connected(),
                });
            }
        }
    }

    /// Queues messages for the broker, handing each to the client at once if it can.
    fn send(&mut self, client: &impl Client, messages: Vec<Message>) {
        for m in messages {
            self.backlog.push(m, self.core.is_connected());
            self.flush(client);
        }
    }

    /// Hands queued messages to rumqttc without ever waiting on it.
    fn flush(&mut self, client: &impl Client) {
        if !self.core.is_connected() {
            return;
        }
        while let Some(m) = self.backlog.pop() {
            match client.try_publish(m.topic, m.qos, m.retain, m.payload) {
                Ok(()) => {}
                Err(ClientError::TryRequest(rumqttc::Request::Publish(back))) => {
                    self.backlog.put_back(Message {
                        topic: back.topic,
                        payload: back.payload.to_vec(),
                        qos: back.qos,
                        retain: back.retain,
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!("cannot publish: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod test {
    use std::cell::{Cell, RefCell};
    use std::path::Path;

    use pifleet_proto::payload::StateSource;
    use pifleet_proto::{Action, Name};
    use tokio::sync::oneshot;

    use super::*;
    use crate::Agent;

    /// What the shell handed to the client, with the LED pin's level at that moment.
    #[derive(Debug, Clone, PartialEq)]
    enum Sent {
        Subscribe(Vec<String>),
        Publish {
            topic: String,
            payload: String,
            led_high: bool,
        },
    }

    /// A client whose request channel takes `room` more publishes, then is full.
    struct Recorder {
        board: SimBoard,
        room: Cell<usize>,
        sent: RefCell<Vec<Sent>>,
    }

    impl Client for Recorder {
        fn try_publish(
            &self,
            topic: String,
            qos: QoS,
            retain: bool,
            payload: Vec<u8>,
        ) -> Result<(), ClientError> {
            if self.room.get() == 0 {
                let mut back = Publish::new(topic, qos, payload);
                back.retain = retain;
                return Err(ClientError::TryRequest(rumqttc::Request::Publish(back)));
            }
            self.room.set(self.room.get() - 1);
            self.sent.borrow_mut().push(Sent::Publish {
                topic,
                payload: String::from_utf8(payload).unwrap(),
                led_high: self.board.level(17) == Some(true),
            });
            Ok(())
        }

        fn try_subscribe_many(&self, filters: Vec<SubscribeFilter>) -> Result<(), ClientError> {
            let paths = filters.into_iter().map(|f| f.path).collect();
            self.sent.borrow_mut().push(Sent::Subscribe(paths));
            Ok(())
        }
    }

    impl Recorder {
        fn topics(&self) -> Vec<String> {
            self.sent
                .borrow()
                .iter()
                .map(|s| match s {
                    Sent::Subscribe(_) => "SUBSCRIBE".to_string(),
                    Sent::Publish { topic, .. } => topic.clone(),
                })
                .collect()
        }

        fn last(&self) -> Sent {
            self.sent
                .borrow()
                .last()
                .cloned()
                .expect("something was sent")
        }
    }

    /// What a test script can reach while the shell serves.
    struct Ctx {
        client: Recorder,
        net: mpsc::UnboundedSender<NetEvent>,
        readings: mpsc::Sender<(usize, ReadResult)>,
        handle: AgentHandle,
    }

    /// Device `k`: an LED on BCM 17, a pulled-up button on BCM 27, a sensor (whose readings
    /// the test sends), a heartbeat every second.
    const CONFIG: &str = r#"
        device = "k"
        heartbeat_secs = 1
        [[output]]
        name = "led"
        pin = 17
        [[input]]
        name = "button"
        pin = 27
        pull = "up"
        active_low = true
        [[sensor]]
        name = "probe"
        kind = "sim"
    "#;

    /// Serves a simulated agent, with `room` free slots in its client's channel, until
    /// `script` is done.
    async fn with_agent(room: usize, script: impl AsyncFnOnce(&Ctx)) {
        let config = Config::from_toml_str(CONFIG, Path::new("test.toml")).unwrap();
        let board = SimBoard::new();
        let (agent, handle) = Agent::new(config, &mut board.clone(), Some(board.clone())).unwrap();
        let mut shell = agent.shell;
        let (net, mut net_rx) = mpsc::unbounded_channel();
        let (readings, mut readings_rx) = mpsc::channel(1);
        let ctx = Ctx {
            client: Recorder {
                board,
                room: Cell::new(room),
                sent: RefCell::new(Vec::new()),
            },
            net,
            readings,
            handle,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        tokio::join!(
            shell.serve(&ctx.client, &mut net_rx, &mut readings_rx, stopped),
            async {
                script(&ctx).await;
                let _ = stop.send(());
            }
        );
    }

    /// Lets the shell take in everything sent to it, without moving the (paused) clock.
    async fn settle() {
        for _ in 0..32 {
            tokio::task::yield_now().await;
        }
    }

    async fn connect(ctx: &Ctx) {
        ctx.net.send(NetEvent::Connected).unwrap();
        settle().await;
    }

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_connack_the_subscribe_goes_before_the_republish() {
        with_agent(usize::MAX, async |ctx| {
            connect(ctx).await;
            let sent = ctx.client.sent.borrow();
            assert_eq!(
                sent[0],
                Sent::Subscribe(vec![
                    "pifleet/dev/k/cmnd".into(),
                    "pifleet/all/cmnd".into(),
                    "pifleet/dev/k/cmnd/+".into(),
                    "pifleet/dev/k/cmnd/+/level".into(),
                    "pifleet/dev/k/status".into(),
                ])
            );
            drop(sent);
            assert_eq!(
                ctx.client.topics()[1..],
                [
                    "pifleet/dev/k/status",
                    "pifleet/dev/k/out/led",
                    "pifleet/dev/k/in/button"
                ]
            );
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_sets_the_pin_before_its_acknowledgement_is_handed_to_the_client() {
        with_agent(usize::MAX, async |ctx| {
            connect(ctx).await;
            let cmd = Publish::new(
                "pifleet/dev/k/cmnd",
                QoS::AtLeastOnce,
                r#"{"id":"c1","action":"on"}"#,
            );
            ctx.net.send(NetEvent::Message(cmd)).unwrap();
            settle().await;
            match ctx.client.last() {
                Sent::Publish {
                    topic,
                    payload,
                    led_high,
                } => {
                    assert_eq!(topic, "pifleet/dev/k/out/led");
                    assert!(payload.contains(r#""cmd":"c1""#), "{payload}");
                    assert!(led_high, "the pin was set when the acknowledgement left");
                }
                other => panic!("expected the acknowledgement, got {other:?}"),
            }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_request_channel_keeps_the_rest_in_order_for_the_retry_tick() {
        with_agent(1, async |ctx| {
            let reading = Ok((sensor::Reading::new(21.5, "°C"), "sim"));
            ctx.readings.send((0, reading)).await.unwrap();
            settle().await;
            connect(ctx).await;
            // Room for presence only; the LED, the button and the sensor wait.
            assert_eq!(ctx.client.topics(), ["SUBSCRIBE", "pifleet/dev/k/status"]);
            ctx.client.room.set(usize::MAX);
            settle().await;
            tokio::time::advance(Duration::from_millis(49)).await;
            settle().await;
            assert_eq!(
                ctx.client.topics().len(),
                2,
                "nothing before the retry tick"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
            assert_eq!(
                ctx.client.topics()[2..],
                [
                    "pifleet/dev/k/out/led",
                    "pifleet/dev/k/in/button",
                    "pifleet/dev/k/sensor/probe"
                ]
            );
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_republishes_presence_every_heartbeat_secs_while_connected() {
        with_agent(usize::MAX, async |ctx| {
            let presences = || {
                ctx.client
                    .topics()
                    .iter()
                    .filter(|t| *t == "pifleet/dev/k/status")
                    .count()
            };
            connect(ctx).await;
            assert_eq!(presences(), 1, "the CONNACK's announcement");
            tokio::time::advance(Duration::from_millis(999)).await;
            settle().await;
            assert_eq!(presences(), 1);
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
            assert_eq!(presences(), 2);
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
            assert_eq!(presences(), 3);
            ctx.net
                .send(NetEvent::Disconnected {
                    why: "the broker went away".into(),
                    retry_in: Duration::from_secs(1),
                    refused: false,
                })
                .unwrap();
            settle().await;
            tokio::time::advance(Duration::from_secs(3)).await;
            settle().await;
            assert_eq!(presences(), 3, "no heartbeat while disconnected");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_button_press_is_published_and_read_back() {
        with_agent(usize::MAX, async |ctx| {
            connect(ctx).await;
            ctx.handle.drive_input(n("button"), true).await.unwrap();
            settle().await;
            match ctx.client.last() {
                Sent::Publish { topic, payload, .. } => {
                    assert_eq!(topic, "pifleet/dev/k/in/button");
                    assert!(payload.starts_with(r#"{"active":true,"ts":"#), "{payload}");
                }
                other => panic!("expected the input state, got {other:?}"),
            }
            assert_eq!(ctx.handle.read_input(None).await, Ok(true));
            assert_eq!(
                ctx.handle.snapshot().await,
                Some(Snapshot {
                    outputs: vec![(n("led"), false)],
                    inputs: vec![(n("button"), true)],
                    connected: true,
                })
            );
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn offline_only_events_wait_and_the_next_connack_sends_the_current_state_first() {
        with_agent(usize::MAX, async |ctx| {
            let on = ctx
                .handle
                .switch(None, Action::On, StateSource::Legacy)
                .await;
            assert_eq!(on, Ok(true));
            let failed = Err("no probe".to_string());
            ctx.readings.send((0, failed)).await.unwrap();
            settle().await;
            assert!(ctx.client.sent.borrow().is_empty(), "nothing sent offline");
            connect(ctx).await;
            assert_eq!(
                ctx.client.topics(),
                [
                    "SUBSCRIBE",
                    "pifleet/dev/k/status",
                    "pifleet/dev/k/out/led",
                    "pifleet/dev/k/in/button",
                    "pifleet/dev/k/event",
                ]
            );
            let sent = ctx.client.sent.borrow();
            let Sent::Publish {
                payload, led_high, ..
            } = &sent[2]
            else {
                panic!("expected the LED's state, got {:?}", sent[2]);
            };
            assert!(
                payload.starts_with(r#"{"on":true,"source":"legacy","#),
                "{payload}"
            );
            assert!(led_high);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pulse_ends_on_the_agents_own_timer_while_the_broker_is_gone() {
        with_agent(usize::MAX, async |ctx| {
            connect(ctx).await;
            let cmd = Publish::new(
                "pifleet/dev/k/cmnd",
                QoS::AtLeastOnce,
                r#"{"id":"p1","action":"on","on_time":2.5}"#,
            );
            ctx.net.send(NetEvent::Message(cmd)).unwrap();
            settle().await;
            assert_eq!(ctx.client.board.level(17), Some(true));
            ctx.net
                .send(NetEvent::Disconnected {
                    why: "the broker went away".into(),
                    retry_in: Duration::from_secs(60),
                    refused: false,
                })
                .unwrap();
            settle().await;
            tokio::time::sleep(Duration::from_millis(2_400)).await;
            settle().await;
            assert_eq!(ctx.client.board.level(17), Some(true), "not before 2.5 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
            settle().await;
            assert_eq!(
                ctx.client.board.level(17),
                Some(false),
                "off on time with no broker and no second command"
            );
            // Back online, the turn-off is published with its own source.
            let before = ctx.client.sent.borrow().len();
            connect(ctx).await;
            let sent = ctx.client.sent.borrow();
            let off = sent[before..]
                .iter()
                .find_map(|s| match s {
                    Sent::Publish { topic, payload, .. } if topic == "pifleet/dev/k/out/led" => {
                        Some(payload.clone())
                    }
                    _ => None,
                })
                .expect("the output state after the reconnect");
            assert!(
                off.contains(r#""on":false"#) && off.contains(r#""source":"pulse""#),
                "{off}"
            );
        })
        .await;
    }
}
