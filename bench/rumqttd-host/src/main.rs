//! rumqttd 0.20 with the default configuration it ships (`rumqttd.toml` of that release, as
//! embedded below), listening on one loopback address: `rumqttd-host 127.0.0.1:PORT`.
//!
//! Only the plain MQTT 3.1.1 listener is kept: the benchmark measures what pifleet's fleet
//! uses, and the MQTT 5, WebSocket, console and Prometheus listeners of the stock file would
//! only take ports. Every router and connection setting is the stock one.

use std::net::SocketAddr;

/// The router and v4 listener sections of rumqttd 0.20's `rumqttd.toml`, unchanged except
/// for the listen address.
const STOCK: &str = r#"
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "LISTEN"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
"#;

fn main() {
    let listen: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(a)) => a,
        _ => {
            eprintln!("usage: rumqttd-host 127.0.0.1:PORT");
            std::process::exit(2);
        }
    };
    let config: rumqttd::Config = toml::from_str(&STOCK.replace("LISTEN", &listen.to_string()))
        .expect("the stock configuration parses");
    let mut broker = rumqttd::Broker::new(config);
    if let Err(e) = broker.start() {
        eprintln!("rumqttd stopped: {e}");
        std::process::exit(1);
    }
}
