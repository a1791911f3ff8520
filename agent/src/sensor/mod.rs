//! Sensors: each configured `[[sensor]]` is read on its own interval, off the async runtime (a
//! DS18B20 read blocks for ~750 ms while the probe converts, a BME280 for ~10 ms), and a failed
//! read is reported, never fatal.
//!
//! - [`temperature`]: `cpu_temp`, `ds18b20` and the simulated `sim`.
//! - [`health`]: the Pi's own health from /proc, /sys and `vcgencmd`: `cpu_usage`,
//!   `load_average`, `memory_used`, `disk_used`, `uptime`, `wifi_signal`, `undervoltage`,
//!   `throttled`. A source this machine does not have (no Wi-Fi, not a Pi) is an error whose
//!   reason starts with `unavailable:`, and the core reports it once, not once per interval.
//! - [`i2c`]: the bus chip drivers talk to, as embedded-hal 1.0's `I2c`: rppal's on a Pi, a
//!   simulated bus with simulated chips on the simulator backend.
//! - [`bme280`]: a BME280 (temperature, humidity, pressure) through the bme280-rs driver, and
//!   its simulated chip. It is the pattern for more I2C chips: a driver crate written against
//!   embedded-hal, a [`Sensor`] that opens it lazily and reopens it after an error, a register
//!   model of the chip for the simulator.
//!
//! A sensor measuring several quantities returns one [`Reading`] per quantity, in the order of
//! [`SensorKind::quantities`]; [`poll`] hands each to its own slot of the core, so each becomes
//! an ordinary reading on its own topic (`env_temperature`, `env_humidity`, …) and nothing
//! downstream needs a special case. A failure is one failure of the whole sensor: it is
//! reported on its first slot only, so a missing chip is one event, not one per quantity.

pub mod bme280;
pub mod health;
pub mod i2c;
pub mod temperature;

use std::ops::Range;
use std::time::Duration;

use crate::config::{SensorConfig, SensorKind};

pub use temperature::{parse_w1_slave, CpuTemp, Ds18b20, SimTemp};

/// One successful reading of one quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub value: f64,
    pub unit: &'static str,
    /// Which of the sensor's [`SensorKind::quantities`] this is; `None` for a sensor that
    /// measures one thing.
    pub quantity: Option<&'static str>,
}

impl Reading {
    /// The reading of a sensor that measures one thing.
    pub fn new(value: f64, unit: &'static str) -> Reading {
        Reading {
            value,
            unit,
            quantity: None,
        }
    }

    /// One of the readings of a sensor that measures several quantities.
    pub fn of(quantity: &'static str, value: f64, unit: &'static str) -> Reading {
        Reading {
            value,
            unit,
            quantity: Some(quantity),
        }
    }
}

/// Something that can be read, blocking.
pub trait Sensor: Send + 'static {
    /// The `kind` string published with every reading.
    fn kind(&self) -> &'static str;
    /// One reading per quantity, in the order of [`SensorKind::quantities`] (one reading for a
    /// sensor that measures one thing), or why not.
    fn read(&mut self) -> Result<Vec<Reading>, String>;
}

/// Where chips on a bus (I2C) are: the real bus of a Raspberry Pi, or simulated chips. It
/// follows the GPIO backend: the simulator simulates the board's chips too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardware {
    Rppal,
    Sim,
}

/// Opens the sensor `config` describes. Nothing is touched yet: a missing file, bus or chip
/// shows up as the first read's error.
pub fn open(config: &SensorConfig, hardware: Hardware) -> Box<dyn Sensor> {
    let path = config.path.clone();
    match config.kind {
        SensorKind::CpuTemp => Box::new(CpuTemp::new(path)),
        SensorKind::Ds18b20 => Box::new(Ds18b20::new(path, config.id.clone())),
        SensorKind::Sim => Box::new(SimTemp::new()),
        SensorKind::CpuUsage => Box::new(health::CpuUsage::new(path)),
        SensorKind::LoadAverage => Box::new(health::ProcValue::load_average(path)),
        SensorKind::MemoryUsed => Box::new(health::ProcValue::memory_used(path)),
        SensorKind::DiskUsed => Box::new(health::DiskUsed::new(path)),
        SensorKind::Uptime => Box::new(health::ProcValue::uptime(path)),
        SensorKind::WifiSignal => Box::new(health::WifiSignal::new(path, config.interface.clone())),
        SensorKind::Undervoltage => Box::new(health::Undervoltage::new(path)),
        SensorKind::Throttled => Box::new(health::Throttled::new(path)),
        SensorKind::Bme280 => Box::new(bme280::Bme280Sensor::new(
            config.bus.unwrap_or(1),
            config.address.unwrap_or(bme280::DEFAULT_ADDRESS),
            hardware,
        )),
    }
}

/// A reading with the sensor's kind, or why it failed.
pub type ReadResult = Result<(Reading, &'static str), String>;

/// Reads `sensor` now and then every `interval`, off the runtime, sending `(slot, result)`
/// until the receiver is gone. `slots` are the core's sensor slots of this sensor, one per
/// quantity: reading `i` goes to slot `slots.start + i`, a failure to the first slot only.
pub async fn poll(
    slots: Range<usize>,
    sensor: Box<dyn Sensor>,
    interval: Duration,
    tx: tokio::sync::mpsc::Sender<(usize, ReadResult)>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sensor = Some(sensor);
    loop {
        ticker.tick().await;
        let mut s = sensor.take().expect("returned after every read");
        let (s, result) = match tokio::task::spawn_blocking(move || {
            let r = s.read();
            (s, r)
        })
        .await
        {
            Ok(done) => done,
            Err(_) => return, // the read panicked: stop this sensor, keep the agent
        };
        let kind = s.kind();
        sensor = Some(s);
        for message in dispatch(slots.clone(), kind, result) {
            if tx.send(message).await.is_err() {
                return;
            }
        }
    }
}

/// What one read of a sensor owning `slots` comes to, slot by slot.
fn dispatch(
    slots: Range<usize>,
    kind: &'static str,
    result: Result<Vec<Reading>, String>,
) -> Vec<(usize, ReadResult)> {
    match result {
        Ok(readings) if readings.len() == slots.len() => slots
            .zip(readings)
            .map(|(slot, r)| (slot, Ok((r, kind))))
            .collect(),
        Ok(readings) => vec![(
            slots.start,
            Err(format!(
                "{kind} returned {} readings for {} quantities (a bug in pifleet-agent)",
                readings.len(),
                slots.len()
            )),
        )],
        Err(why) => vec![(slots.start, Err(why))],
    }
}

pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn each_quantity_goes_to_its_own_slot_and_a_failure_to_the_first_only() {
        let readings = vec![
            Reading::of("temperature", 25.08, "°C"),
            Reading::of("humidity", 45.0, "%"),
            Reading::of("pressure", 1006.53, "hPa"),
        ];
        let out = dispatch(3..6, "bme280", Ok(readings.clone()));
        assert_eq!(
            out,
            vec![
                (3, Ok((readings[0].clone(), "bme280"))),
                (4, Ok((readings[1].clone(), "bme280"))),
                (5, Ok((readings[2].clone(), "bme280"))),
            ]
        );
        assert_eq!(
            dispatch(3..6, "bme280", Err("no chip".into())),
            vec![(3, Err("no chip".into()))]
        );
        let short = dispatch(3..6, "bme280", Ok(readings[..1].to_vec()));
        assert_eq!(short.len(), 1);
        assert!(short[0]
            .1
            .as_ref()
            .unwrap_err()
            .contains("1 readings for 3"));
        assert_eq!(
            dispatch(0..1, "sim", Ok(vec![Reading::new(21.0, "°C")])),
            vec![(0, Ok((Reading::new(21.0, "°C"), "sim")))]
        );
    }
}
