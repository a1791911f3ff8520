//! [`AgentHandle`]: a cloneable way for other tasks (the simulator console, the legacy shim, the
//! broker's demo fleet, benchmarks, tests) to talk to a running agent. Each call is a
//! [`Request`] sent to the agent's task and answered on a oneshot channel, so that task stays the
//! only owner of the pins and a request is ordered with everything else the agent does.

use pifleet_proto::payload::StateSource;
use pifleet_proto::{Action, Name};
use tokio::sync::{mpsc, oneshot};

/// Answers to local requests that the agent refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no output named {0:?}")]
    UnknownOutput(String),
    #[error("this device has no outputs")]
    NoOutputs,
    #[error("no input named {0:?}")]
    UnknownInput(String),
    #[error("this device has no inputs")]
    NoInputs,
    #[error("inputs can only be driven on the simulated GPIO backend")]
    NotSimulated,
    #[error("{0}")]
    Gpio(String),
    /// A value or pulse the output cannot take (a level for an on/off output, 140 %, an
    /// `on_time` with `off`): refused, never clamped.
    #[error("{0}")]
    BadValue(String),
    #[error("the agent has stopped")]
    Stopped,
}

/// A point-in-time view of the pins, for the simulator console's `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub outputs: Vec<(Name, bool)>,
    pub inputs: Vec<(Name, bool)>,
    pub connected: bool,
}

/// What an [`AgentHandle`] asks of the agent's task.
pub(crate) enum Request {
    Switch {
        output: Option<Name>,
        action: Action,
        source: StateSource,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
    ReadInput {
        input: Option<Name>,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
    DriveInput {
        input: Name,
        active: bool,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
}

/// How many requests may wait for the agent's task before callers wait too.
const WAITING_REQUESTS: usize = 64;

/// A cloneable way to talk to a running agent from other tasks.
#[derive(Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Request>,
}

impl AgentHandle {
    /// A handle and the receiving end the agent's task serves.
    pub(crate) fn new() -> (AgentHandle, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(WAITING_REQUESTS);
        (AgentHandle { tx }, rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Switches an output (`None`: the first one) and returns its new state once the pin is set
    /// and the new state is queued for publishing.
    pub async fn switch(
        &self,
        output: Option<Name>,
        action: Action,
        source: StateSource,
    ) -> Result<bool, RequestError> {
        self.ask(|reply| Request::Switch {
            output,
            action,
            source,
            reply,
        })
        .await
        .unwrap_or(Err(RequestError::Stopped))
    }

    /// Reads an input (`None`: the first one): true when active (pressed).
    pub async fn read_input(&self, input: Option<Name>) -> Result<bool, RequestError> {
        self.ask(|reply| Request::ReadInput { input, reply })
            .await
            .unwrap_or(Err(RequestError::Stopped))
    }

    /// Presses (`true`) or releases a simulated input.
    pub async fn drive_input(&self, input: Name, active: bool) -> Result<(), RequestError> {
        self.ask(|reply| Request::DriveInput {
            input,
            active,
            reply,
        })
        .await
        .unwrap_or(Err(RequestError::Stopped))
    }

    pub async fn snapshot(&self) -> Option<Snapshot> {
        self.ask(|reply| Request::Snapshot { reply }).await
    }
}
