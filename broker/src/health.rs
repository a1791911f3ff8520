//! `pifleet-broker health`: whether a broker answers MQTT at an address, for container health
//! checks, which must not need a secret and run every few seconds.
//!
//! The probe sends the CONNECT of MQTT 3.1 (protocol name `MQIsdp`, level 3). A 3.1.1 broker
//! answers it with CONNACK 1 (unacceptable protocol version, MQTT 3.1.1 §3.1.2.2), a 3.1 broker
//! with some CONNACK too; pifleet-broker does so before any login check and without a log line.
//! A CONNECT without credentials would be refused as well, but logged as a refused login every
//! time, and a login would need a secret in the container's health check. Any CONNACK proves
//! that the listener accepts, the connection task runs and the CONNECT was decoded.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} does not resolve to an address")]
    NoAddress(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the answer is not a CONNACK (first byte {0:#04x})")]
    NotConnack(u8),
}

/// The MQTT 3.1 CONNECT the probe sends: clean session, keep-alive 0, client id `health`.
const CONNECT_V31: &[u8] = &[
    0x10, 20, // CONNECT, remaining length
    0, 6, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name
    3,    // protocol level: MQTT 3.1
    0x02, // clean session
    0, 0, // keep-alive
    0, 6, b'h', b'e', b'a', b'l', b't', b'h', // client id
];

/// Connects to `addr`, sends [`CONNECT_V31`] and waits for a CONNACK, all within `timeout`.
/// Returns the CONNACK's return code.
pub fn probe(addr: &str, timeout: Duration) -> Result<u8, ProbeError> {
    let deadline = Instant::now() + timeout;
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| ProbeError::NoAddress(addr.to_string()))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&target, left())?;
    stream.set_write_timeout(Some(left()))?;
    stream.write_all(CONNECT_V31)?;
    stream.set_read_timeout(Some(left()))?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[1] != 2 {
        return Err(ProbeError::NotConnack(ack[0]));
    }
    Ok(ack[3])
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_probe_is_a_well_formed_mqtt_3_1_connect() {
        assert_eq!(CONNECT_V31[1] as usize, CONNECT_V31.len() - 2);
    }

    #[tokio::test]
    async fn a_running_engine_answers_the_probe_without_a_login() {
        let mut config = crate::Config::default();
        config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        config.websocket.enabled = false;
        config.state.enabled = false;
        let running = crate::start(&config).await.unwrap();
        let addr = running.mqtt.to_string();
        let code = tokio::task::spawn_blocking(move || probe(&addr, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 1, "unacceptable protocol version");
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(probe(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).is_err());
    }
}
