//! The compatibility shim for pifleet's predecessors: hobbyist TCP servers that switched an LED
//! with `on`/`off`/`q` over a length-prefixed framing and read a button with `go` over tcpcom's
//! NUL-terminated framing (`docs/legacy.md` has the byte-level spec).
//!
//! One codec and one command parser, served by one TCP server, with two handlers: the agent's
//! (switch the local GPIO) and the broker's (relay over MQTT and wait for the device's
//! confirmation).
//!
//! Layout:
//! - [`codec`]: framing, decode and encode, with auto-detection per frame.
//! - [`command`]: the commands and their exact reply texts.
//! - [`config`]: a listener's configuration, shared by agent and broker.
//! - [`server`]: the bounded, concurrent TCP server and the [`server::Handler`] seam.

pub mod codec;
pub mod command;
pub mod server;

pub use codec::{Framing, FramingMode};
pub use command::{Addressee, Request, Verb};
pub use server::{serve, Handler, ServerLimits};
pub mod config;
pub use config::ListenerConfig;
