//! The legacy shim on the Pi: a drop-in replacement for the old hand-written LED/button server,
//! on the same port, so old clients keep working unchanged. `on`/`off` switch the configured
//! output and reply once the pin is set; the change is published over MQTT like any command
//! (source `legacy`), so the rest of the fleet sees it. `go` reads the configured input.
//! [`start`] binds the listener when the agent starts.

use std::future::Future;
use std::pin::Pin;

use pifleet_legacy::command::{button_reply, led_reply, UNRECOGNIZED};
use pifleet_legacy::{Addressee, Handler, Request, Verb};
use pifleet_proto::{Action, Name, StateSource};

use crate::agent::AgentError;
use crate::handle::AgentHandle;

pub struct AgentShim {
    pub handle: AgentHandle,
    pub device: Name,
    pub output: Option<Name>,
    pub input: Option<Name>,
}

impl Handler for AgentShim {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move {
            // The agent is one device: a target, if any, must be this device.
            match &request.who {
                Addressee::Default => {}
                Addressee::Device(d) if *d == self.device => {}
                _ => return UNRECOGNIZED.to_string(),
            }
            let action = match request.verb {
                Verb::On => Action::On,
                Verb::Off => Action::Off,
                Verb::Go => {
                    return match self.handle.read_input(self.input.clone()).await {
                        Ok(pressed) => button_reply(pressed).to_string(),
                        Err(e) => format!("Error: {e}."),
                    }
                }
                Verb::Quit => unreachable!("the server answers q itself"),
            };
            match self
                .handle
                .switch(self.output.clone(), action, StateSource::Legacy)
                .await
            {
                Ok(on) => led_reply(on).to_string(),
                Err(e) => format!("Error: {e}."),
            }
        })
    }
}

/// Binds the legacy listener (a bind failure is fatal: the user asked for that port) and
/// serves it in the background.
pub(crate) async fn start(
    l: pifleet_legacy::ListenerConfig,
    handle: AgentHandle,
    device: Name,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(l.listen)
        .await
        .map_err(|source| AgentError::Legacy {
            addr: l.listen,
            source,
        })?;
    let addr = listener.local_addr().expect("bound");
    tracing::info!("legacy shim listening on {addr}");
    let shim = AgentShim {
        handle,
        device,
        output: l.output.clone(),
        input: l.input.clone(),
    };
    Ok(tokio::spawn(pifleet_legacy::serve(
        listener,
        std::sync::Arc::new(shim),
        l.limits(),
        std::future::pending(),
    )))
}
