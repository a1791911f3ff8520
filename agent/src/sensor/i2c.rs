//! The I2C bus a chip driver talks to, as embedded-hal 1.0's [`I2c`]: rppal's /dev/i2c-N on a
//! Raspberry Pi, or a simulated bus whose devices are register models of real chips
//! ([`SimChip`]), so a driver crate runs unchanged, byte for byte, on a machine without a Pi.
//!
//! Drivers are generic over `I2c`; [`Bus`] is the one concrete type they are instantiated
//! with, so adding a chip needs no new bus code.

use std::sync::{Arc, Mutex};

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use super::Hardware;

/// Why a transfer failed, in words (rppal's I/O errors keep their OS message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl embedded_hal::i2c::Error for BusError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<rppal::i2c::Error> for BusError {
    fn from(e: rppal::i2c::Error) -> BusError {
        let kind = embedded_hal::i2c::Error::kind(&e);
        let message = match &e {
            // ENXIO/EREMOTEIO: nothing acknowledged the address.
            rppal::i2c::Error::Io(io) if matches!(io.raw_os_error(), Some(6) | Some(121)) => {
                format!("no device answers ({io}); check the wiring and the address")
            }
            _ => e.to_string(),
        };
        BusError { kind, message }
    }
}

/// A chip on the simulated bus: what the controller writes, and what it reads back.
pub trait SimChip: Send {
    /// One write transfer (for a register chip: the register address, then data).
    fn write(&mut self, bytes: &[u8]);
    /// One read transfer (for a register chip: from the current register on).
    fn read(&mut self, buffer: &mut [u8]);
}

/// The chips on a simulated bus, by address.
type Devices = Vec<(u8, Box<dyn SimChip>)>;

/// A simulated I2C bus: devices at addresses; a transfer to an empty address is not
/// acknowledged, as on a real bus.
#[derive(Clone, Default)]
pub struct SimBus {
    devices: Arc<Mutex<Devices>>,
}

impl SimBus {
    pub fn new() -> SimBus {
        SimBus::default()
    }

    /// Puts `chip` on the bus at `address`.
    pub fn attach(&self, address: u8, chip: impl SimChip + 'static) {
        let mut devices = self.devices.lock().expect("sim bus poisoned");
        devices.retain(|(a, _)| *a != address);
        devices.push((address, Box::new(chip)));
    }

    /// Takes the chip at `address` off the bus (a loose wire).
    pub fn detach(&self, address: u8) {
        let mut devices = self.devices.lock().expect("sim bus poisoned");
        devices.retain(|(a, _)| *a != address);
    }
}

impl ErrorType for SimBus {
    type Error = BusError;
}

impl I2c for SimBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), BusError> {
        let mut devices = self.devices.lock().expect("sim bus poisoned");
        let Some((_, chip)) = devices.iter_mut().find(|(a, _)| *a == address) else {
            return Err(BusError {
                kind: ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
                message: format!(
                    "no device answers at {address:#04x}; check the wiring and the address"
                ),
            });
        };
        for op in operations {
            match op {
                Operation::Write(bytes) => chip.write(bytes),
                Operation::Read(buffer) => chip.read(buffer),
            }
        }
        Ok(())
    }
}

/// The bus drivers are instantiated with.
pub enum Bus {
    Rppal(rppal::i2c::I2c),
    Sim(SimBus),
}

impl Bus {
    /// Opens /dev/i2c-`bus` (on the simulator: an empty simulated bus; attach chips to it).
    pub fn open(bus: u8, hardware: Hardware) -> Result<Bus, String> {
        match hardware {
            Hardware::Sim => Ok(Bus::Sim(SimBus::new())),
            Hardware::Rppal => rppal::i2c::I2c::with_bus(bus).map(Bus::Rppal).map_err(|e| {
                let io_kind = match &e {
                    rppal::i2c::Error::Io(io) => Some(io.kind()),
                    _ => None,
                };
                match io_kind {
                    Some(std::io::ErrorKind::NotFound) => format!(
                        "unavailable: /dev/i2c-{bus} does not exist (enable I2C with raspi-config, \
                         or dtparam=i2c_arm=on in config.txt)"
                    ),
                    Some(std::io::ErrorKind::PermissionDenied) => format!(
                        "cannot open /dev/i2c-{bus}: {e} (the agent's user needs the i2c group)"
                    ),
                    _ => format!("cannot open /dev/i2c-{bus}: {e}"),
                }
            }),
        }
    }
}

impl ErrorType for Bus {
    type Error = BusError;
}

impl I2c for Bus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), BusError> {
        match self {
            Bus::Rppal(i2c) => i2c.transaction(address, operations).map_err(BusError::from),
            Bus::Sim(sim) => sim.transaction(address, operations),
        }
    }
}

/// embedded-hal's delay, as a sleep of the calling thread (sensors are read on blocking
/// threads, never on the async runtime).
pub struct ThreadDelay;

impl embedded_hal::delay::DelayNs for ThreadDelay {
    fn delay_ns(&mut self, ns: u32) {
        std::thread::sleep(std::time::Duration::from_nanos(u64::from(ns)));
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A chip that remembers what it was sent and answers with a counter.
    struct Echo(Arc<Mutex<Vec<u8>>>, u8);

    impl SimChip for Echo {
        fn write(&mut self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
        fn read(&mut self, buffer: &mut [u8]) {
            for b in buffer {
                self.1 += 1;
                *b = self.1;
            }
        }
    }

    #[test]
    fn the_sim_bus_routes_by_address_and_refuses_an_empty_one() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sim = SimBus::new();
        sim.attach(0x40, Echo(seen.clone(), 0));
        let mut bus = Bus::Sim(sim.clone());
        let mut buf = [0u8; 3];
        bus.write_read(0x40, &[0xd0], &mut buf).unwrap();
        assert_eq!((seen.lock().unwrap().clone(), buf), (vec![0xd0], [1, 2, 3]));
        let e = bus.write(0x41, &[1]).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
        );
        assert!(e.message.contains("0x41"), "{e}");
        sim.detach(0x40);
        assert!(bus.read(0x40, &mut buf).is_err());
    }
}
