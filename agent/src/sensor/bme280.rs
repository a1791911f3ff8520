//! A Bosch BME280 on I2C: temperature, relative humidity and pressure, three quantities
//! published as `<name>_temperature` (°C), `<name>_humidity` (%) and `<name>_pressure` (hPa).
//!
//! The chip is driven by the bme280-rs crate (embedded-hal 1.0, blocking API) over a
//! [`Bus`]: rppal's /dev/i2c-N on a Pi, or [`SimBme280`], a register model of the chip, on the
//! simulator. The pattern for another I2C chip is the same three pieces: a driver crate
//! written against embedded-hal, a [`Sensor`] that starts the driver lazily (so a missing
//! chip is a reported error, not a failed start) and starts it again after any bus error (a
//! chip that was unplugged and plugged back in is reset and reconfigured), and a register
//! model for the simulator that the driver cannot tell from the real chip.
//!
//! Measurements are in forced mode with 1× oversampling and no filter, the datasheet's
//! "weather monitoring" setting (BST-BME280-DS002 §3.5.1): one conversion per read, so the
//! chip sleeps between readings and does not warm itself.

use std::time::{Duration, Instant};

use bme280_rs::{Bme280, Configuration, Filter, Oversampling, SensorMode};

use super::i2c::{Bus, SimBus, SimChip, ThreadDelay};
use super::{round2, Hardware, Reading, Sensor};

/// The address with SDO wired to ground, as on most breakout boards; 0x77 with SDO high.
pub const DEFAULT_ADDRESS: u8 = 0x76;

/// What one read publishes, in this order.
pub const QUANTITIES: [&str; 3] = ["temperature", "humidity", "pressure"];

/// The id register (0xD0) of a BME280; a BMP280 (no humidity) answers 0x56–0x58.
const CHIP_ID: u8 = bme280_rs::CHIP_ID;

/// How long to wait for a forced measurement: DS002 §9.1 gives t_measure,max = 1.25 + 2.3·1 +
/// (2.3·1 + 0.575) + (2.3·1 + 0.575) = 9.3 ms at 1× oversampling of all three. The wait is
/// ours: bme280-rs 0.4 polls the status register for the `measuring` flag in bit 2, but the
/// datasheet (§5.4.4) has it in bit 3, so the driver's own wait returns at once and would read
/// the previous measurement (or, first of all, the reset values).
const MEASUREMENT_WAIT: Duration = Duration::from_millis(10);

type Driver = Bme280<Bus, ThreadDelay>;

/// A BME280 at `address` on a bus, started on the first read.
pub struct Bme280Sensor {
    address: u8,
    /// Where the chip is, for messages: `/dev/i2c-1`.
    bus_name: String,
    open_bus: Box<dyn FnMut() -> Result<Bus, String> + Send>,
    driver: Option<Driver>,
}

impl Bme280Sensor {
    /// The chip at `address` on /dev/i2c-`bus`; on the simulator, a simulated chip there.
    pub fn new(bus: u8, address: u8, hardware: Hardware) -> Bme280Sensor {
        match hardware {
            Hardware::Rppal => Bme280Sensor {
                address,
                bus_name: format!("/dev/i2c-{bus}"),
                open_bus: Box::new(move || Bus::open(bus, Hardware::Rppal)),
                driver: None,
            },
            Hardware::Sim => {
                let sim = SimBus::new();
                sim.attach(address, SimBme280::new());
                Bme280Sensor::on_sim_bus(sim, address, format!("simulated /dev/i2c-{bus}"))
            }
        }
    }

    /// The chip at `address` on a simulated bus the caller keeps a handle on (to detach the
    /// chip, or to put a different one there).
    pub fn on_sim_bus(sim: SimBus, address: u8, bus_name: String) -> Bme280Sensor {
        Bme280Sensor {
            address,
            bus_name,
            open_bus: Box::new(move || Ok(Bus::Sim(sim.clone()))),
            driver: None,
        }
    }

    /// Opens the bus, checks that a BME280 answers, resets and configures it.
    fn start(&mut self) -> Result<Driver, String> {
        let bus = (self.open_bus)()?;
        let mut driver = Bme280::new_with_address(bus, self.address, ThreadDelay);
        let id = driver.chip_id().map_err(|e| e.to_string())?;
        if id != CHIP_ID {
            return Err(match id {
                0x56..=0x58 => format!(
                    "the chip there is a BMP280 (chip id {id:#04x}), which measures no humidity"
                ),
                _ => format!("the chip there is not a BME280 (chip id {id:#04x}, not 0x60)"),
            });
        }
        driver.init().map_err(|e| e.to_string())?;
        driver
            .set_sampling_configuration(sampling())
            .map_err(|e| e.to_string())?;
        Ok(driver)
    }
}

/// Forced mode, 1× oversampling of all three, no filter: DS002 §3.5.1, weather monitoring.
fn sampling() -> Configuration {
    Configuration::default()
        .with_temperature_oversampling(Oversampling::Oversample1)
        .with_pressure_oversampling(Oversampling::Oversample1)
        .with_humidity_oversampling(Oversampling::Oversample1)
        .with_filter(Filter::Off)
        .with_sensor_mode(SensorMode::Forced)
}

/// One forced measurement, as the three readings.
fn measure(driver: &mut Driver) -> Result<Vec<Reading>, String> {
    driver
        .take_forced_measurement()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(MEASUREMENT_WAIT);
    let sample = driver.read_sample().map_err(|e| e.to_string())?;
    let (Some(t), Some(h), Some(p)) = (sample.temperature, sample.humidity, sample.pressure) else {
        return Err("the chip returned no measurement (its outputs read as skipped)".into());
    };
    Ok(vec![
        Reading::of(QUANTITIES[0], round2(f64::from(t)), "°C"),
        Reading::of(QUANTITIES[1], round2(f64::from(h)), "%"),
        Reading::of(QUANTITIES[2], round2(f64::from(p) / 100.0), "hPa"),
    ])
}

impl Sensor for Bme280Sensor {
    fn kind(&self) -> &'static str {
        "bme280"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let at = format!("BME280 at {:#04x} on {}", self.address, self.bus_name);
        let mut driver = match self.driver.take() {
            Some(d) => d,
            None => self.start().map_err(|e| format!("{at}: {e}"))?,
        };
        let readings = measure(&mut driver).map_err(|e| format!("{at}: {e}"))?;
        // Kept only after a good measurement: any error starts the chip afresh next time.
        self.driver = Some(driver);
        Ok(readings)
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated chip

/// A BME280's trimming parameters, the `dig_*` words of DS002 §4.2.2, Table 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    pub t: [i32; 3],
    pub p: [i32; 9],
    pub h1: u8,
    pub h2: i16,
    pub h3: u8,
    pub h4: i16,
    pub h5: i16,
    pub h6: i8,
}

/// The example of the compensation formulas in Bosch's BMP280 data sheet (BST-BMP280-DS001,
/// §3.12: dig_T1…dig_P9, adc_T, adc_P), whose temperature and pressure formulas and registers
/// the BME280 shares (DS002 §4.2.3, §5.2). DS002 has no worked humidity example; the humidity
/// words here are those of a real chip.
pub const DATASHEET_CALIBRATION: Calibration = Calibration {
    t: [27504, 26435, -1000],
    p: [36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000],
    h1: 75,
    h2: 375,
    h3: 0,
    h4: 288,
    h5: 50,
    h6: 30,
};

/// Raw ADC outputs of one measurement (20, 20 and 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    pub adc_t: u32,
    pub adc_p: u32,
    pub adc_h: u16,
}

/// The example's raw temperature and pressure (25.08 °C, 100653.27 Pa), and a raw humidity
/// of about 45 %RH at that temperature with [`DATASHEET_CALIBRATION`].
pub const DATASHEET_RAW: Raw = Raw {
    adc_t: 519_888,
    adc_p: 415_148,
    adc_h: 26_335,
};

/// What a skipped output reads (and every output after reset): DS002 §5.4.7–5.4.9.
const SKIPPED_20: u32 = 0x8_0000;
const SKIPPED_16: u16 = 0x8000;

/// A BME280 as its registers show it (DS002 §5.3, memory map): chip id, calibration words,
/// soft reset, the control registers, forced conversions that take the datasheet's time with
/// the `measuring` flag (status bit 3) set meanwhile, and outputs that read as skipped until
/// a conversion completes. Writes are register/value pairs; reads auto-increment.
pub struct SimBme280 {
    regs: [u8; 256],
    pointer: u8,
    calibration: Calibration,
    /// A conversion under way: its result lands in the data registers at the instant.
    converting: Option<(Instant, Raw)>,
    conversions: u32,
    /// The same raw values every time, or a gentle wander around them.
    drift: bool,
    base: Raw,
}

impl SimBme280 {
    /// A chip whose readings wander gently around 25 °C, 45 %RH and 1006 hPa.
    pub fn new() -> SimBme280 {
        SimBme280::with(DATASHEET_CALIBRATION, DATASHEET_RAW, true)
    }

    /// A chip that measures `raw` every time.
    pub fn fixed(calibration: Calibration, raw: Raw) -> SimBme280 {
        SimBme280::with(calibration, raw, false)
    }

    fn with(calibration: Calibration, base: Raw, drift: bool) -> SimBme280 {
        let mut chip = SimBme280 {
            regs: [0; 256],
            pointer: 0,
            calibration,
            converting: None,
            conversions: 0,
            drift,
            base,
        };
        chip.reset();
        chip
    }

    /// The power-on state: DS002 §5.3's reset values.
    fn reset(&mut self) {
        self.regs = [0; 256];
        self.converting = None;
        self.regs[0xd0] = CHIP_ID;
        let c = self.calibration;
        let words = c.t.iter().chain(c.p.iter());
        for (i, w) in words.enumerate() {
            // dig_T1 and dig_P1 are unsigned, the rest signed: both are the low 16 bits.
            let [lo, hi] = (*w as u16).to_le_bytes();
            self.regs[0x88 + 2 * i] = lo;
            self.regs[0x89 + 2 * i] = hi;
        }
        self.regs[0xa1] = c.h1;
        let [lo, hi] = c.h2.to_le_bytes();
        self.regs[0xe1] = lo;
        self.regs[0xe2] = hi;
        self.regs[0xe3] = c.h3;
        self.regs[0xe4] = (c.h4 >> 4) as u8;
        self.regs[0xe5] = (c.h4 & 0x0f) as u8 | (((c.h5 & 0x0f) as u8) << 4);
        self.regs[0xe6] = (c.h5 >> 4) as u8;
        self.regs[0xe7] = c.h6 as u8;
        self.store(Raw {
            adc_t: SKIPPED_20,
            adc_p: SKIPPED_20,
            adc_h: SKIPPED_16,
        });
    }

    fn store(&mut self, raw: Raw) {
        let three = |v: u32| [(v >> 12) as u8, (v >> 4) as u8, ((v & 0x0f) << 4) as u8];
        self.regs[0xf7..0xfa].copy_from_slice(&three(raw.adc_p));
        self.regs[0xfa..0xfd].copy_from_slice(&three(raw.adc_t));
        self.regs[0xfd..0xff].copy_from_slice(&raw.adc_h.to_be_bytes());
    }

    /// The next conversion's raw values: the base ones, or wandering about ±0.5 °C, ±2 %RH
    /// and ±0.5 hPa around them over a few minutes of readings.
    fn next_raw(&mut self) -> Raw {
        let n = f64::from(self.conversions);
        self.conversions = self.conversions.wrapping_add(1);
        if !self.drift {
            return self.base;
        }
        let wave = |base: u32, amplitude: f64, rate: f64| {
            (f64::from(base) + amplitude * (n * rate).sin()).round() as u32
        };
        Raw {
            adc_t: wave(self.base.adc_t, 1600.0, 0.05),
            adc_p: wave(self.base.adc_p, 250.0, 0.03),
            adc_h: wave(u32::from(self.base.adc_h), 350.0, 0.04) as u16,
        }
    }

    /// `ctrl_meas` was written: forced mode (01 or 10) starts one conversion with the
    /// oversampling of `ctrl_meas` and of `ctrl_hum` (which takes effect only now, §5.4.3).
    fn start_conversion(&mut self) {
        let ctrl_meas = self.regs[0xf4];
        if ctrl_meas & 0b11 == 0 {
            return;
        }
        let factor = |osrs: u8| match osrs & 0b111 {
            0 => 0.0,
            o => f64::from(1u32 << (o.min(5) - 1)),
        };
        let (t, p, h) = (
            factor(ctrl_meas >> 5),
            factor(ctrl_meas >> 2),
            factor(self.regs[0xf2]),
        );
        // DS002 §9.1, the maximum measurement time.
        let mut ms = 1.25 + 2.3 * t;
        if p > 0.0 {
            ms += 2.3 * p + 0.575;
        }
        if h > 0.0 {
            ms += 2.3 * h + 0.575;
        }
        let mut raw = self.next_raw();
        if t == 0.0 {
            raw.adc_t = SKIPPED_20;
        }
        if p == 0.0 {
            raw.adc_p = SKIPPED_20;
        }
        if h == 0.0 {
            raw.adc_h = SKIPPED_16;
        }
        let done = Instant::now() + Duration::from_secs_f64(ms / 1000.0);
        self.converting = Some((done, raw));
    }

    /// Lands a finished conversion: data registers updated, back to sleep mode.
    fn settle(&mut self) {
        if let Some((done, raw)) = self.converting {
            if Instant::now() >= done {
                self.converting = None;
                self.store(raw);
                self.regs[0xf4] &= !0b11;
            }
        }
    }

    fn write_register(&mut self, register: u8, value: u8) {
        match register {
            0xe0 if value == 0xb6 => self.reset(),
            0xf2 | 0xf5 => self.regs[usize::from(register)] = value,
            0xf4 => {
                self.regs[0xf4] = value;
                self.start_conversion();
            }
            _ => {} // read-only or reserved
        }
    }
}

impl Default for SimBme280 {
    fn default() -> Self {
        Self::new()
    }
}

impl SimChip for SimBme280 {
    fn write(&mut self, bytes: &[u8]) {
        self.settle();
        let Some((&first, rest)) = bytes.split_first() else {
            return;
        };
        self.pointer = first;
        // Register address, value, register address, value, … (§6.2.1: no auto-increment).
        let mut register = first;
        for (i, &b) in rest.iter().enumerate() {
            if i % 2 == 0 {
                self.write_register(register, b);
            } else {
                register = b;
                self.pointer = b;
            }
        }
    }

    fn read(&mut self, buffer: &mut [u8]) {
        self.settle();
        for (i, b) in buffer.iter_mut().enumerate() {
            let register = self.pointer.wrapping_add(i as u8);
            *b = match register {
                0xf3 => {
                    if self.converting.is_some() {
                        0b1000 // measuring
                    } else {
                        0
                    }
                }
                0xe0 => 0, // reset always reads 0
                r => self.regs[usize::from(r)],
            };
        }
        self.pointer = self.pointer.wrapping_add(buffer.len() as u8);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use bme280_rs::Sample;

    /// The datasheet's double-precision humidity compensation (DS002 §8.1,
    /// `BME280_compensate_H_double`), written from the datasheet independently of the driver,
    /// as the reference for its 32-bit integer result.
    fn humidity_double(c: &Calibration, adc_h: f64, t_fine: f64) -> f64 {
        let (h1, h2, h3, h4, h5, h6) = (
            f64::from(c.h1),
            f64::from(c.h2),
            f64::from(c.h3),
            f64::from(c.h4),
            f64::from(c.h5),
            f64::from(c.h6),
        );
        let var_h = t_fine - 76800.0;
        let var_h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * var_h))
            * (h2 / 65536.0 * (1.0 + h6 / 67108864.0 * var_h * (1.0 + h3 / 67108864.0 * var_h)));
        let var_h = var_h * (1.0 - h1 * var_h / 524288.0);
        var_h.clamp(0.0, 100.0)
    }

    fn sim_with(chip: SimBme280) -> SimBus {
        let sim = SimBus::new();
        sim.attach(DEFAULT_ADDRESS, chip);
        sim
    }

    /// One forced measurement straight through the driver, as [`Bme280Sensor`] takes it.
    fn driver_sample(sim: &SimBus) -> Sample {
        let mut driver = Bme280::new_with_address(Bus::Sim(sim.clone()), 0x76, ThreadDelay);
        assert_eq!(driver.chip_id().unwrap(), 0x60);
        driver.init().unwrap();
        driver.set_sampling_configuration(sampling()).unwrap();
        driver.take_forced_measurement().unwrap();
        std::thread::sleep(MEASUREMENT_WAIT);
        driver.read_sample().unwrap()
    }

    #[test]
    fn the_driver_compensates_the_datasheet_example_to_its_values() {
        // BST-BMP280-DS001 §3.12, the example of the compensation formulas (the BME280 has the
        // same temperature and pressure formulas, DS002 §4.2.3): adc_T = 519888 and
        // adc_P = 415148 with dig_T1…dig_P9 as in DATASHEET_CALIBRATION give t_fine = 128422,
        // T = 25.08 °C and p = 100653.27 Pa.
        let sim = sim_with(SimBme280::fixed(DATASHEET_CALIBRATION, DATASHEET_RAW));
        let s = driver_sample(&sim);
        assert_eq!(s.temperature, Some(25.08));
        // The driver uses the 64-bit integer formula (Q24.8: 25767233 / 256 = 100653.254 Pa);
        // the example's 100653.27 Pa is the double-precision one. They agree within 0.02 Pa.
        let p = f64::from(s.pressure.unwrap());
        assert!((p - 100_653.27).abs() < 0.03, "{p}");
        assert_eq!(s.pressure, Some(25_767_233.0 / 256.0));
        // Humidity has no worked example: the driver's 32-bit integer result agrees with the
        // datasheet's double-precision formula at the example's t_fine, within its 1/1024 %RH
        // resolution.
        let h = f64::from(s.humidity.unwrap());
        let reference = humidity_double(&DATASHEET_CALIBRATION, 26_335.0, 128_422.0);
        assert!((h - reference).abs() < 0.01, "{h} vs {reference}");
        assert!((44.0..46.0).contains(&h), "{h}");
    }

    #[test]
    fn humidity_follows_the_datasheet_over_its_range_and_is_clamped() {
        for adc_h in [20_000u16, 24_000, 28_000, 32_000, 35_000, 36_000, 40_000] {
            let raw = Raw {
                adc_h,
                ..DATASHEET_RAW
            };
            let sim = sim_with(SimBme280::fixed(DATASHEET_CALIBRATION, raw));
            let h = f64::from(driver_sample(&sim).humidity.unwrap());
            let reference = humidity_double(&DATASHEET_CALIBRATION, f64::from(adc_h), 128_422.0);
            assert!(
                (h - reference).abs() < 0.01,
                "adc_H {adc_h}: {h} vs {reference}"
            );
            assert!((0.0..=100.0).contains(&h));
        }
    }

    #[test]
    fn the_sensor_publishes_three_rounded_quantities_in_the_documented_units() {
        let sim = sim_with(SimBme280::fixed(DATASHEET_CALIBRATION, DATASHEET_RAW));
        let mut s = Bme280Sensor::on_sim_bus(sim, DEFAULT_ADDRESS, "test bus".into());
        let r = s.read().unwrap();
        assert_eq!(r[0], Reading::of("temperature", 25.08, "°C"));
        assert_eq!(r[2], Reading::of("pressure", 1006.53, "hPa"));
        // docs/protocol.md's example readings are exactly these.
        assert_eq!(r[1], Reading::of("humidity", 45.05, "%"));
        assert_eq!(
            r.iter().map(|r| r.quantity.unwrap()).collect::<Vec<_>>(),
            crate::config::SensorKind::Bme280.quantities()
        );
        // The second read reuses the started driver and measures again.
        assert_eq!(s.read().unwrap(), r);
    }

    #[test]
    fn a_conversion_takes_the_datasheet_time_and_flags_measuring_meanwhile() {
        let mut chip = SimBme280::fixed(DATASHEET_CALIBRATION, DATASHEET_RAW);
        let mut status = [0u8];
        chip.write(&[0xf2, 0b001, 0xf4, 0b0010_0101]); // ctrl_hum ×1; ctrl_meas T×1 P×1 forced
        chip.write(&[0xf3]);
        chip.read(&mut status);
        assert_eq!(status[0] & 0b1000, 0b1000, "measuring (bit 3)");
        let mut data = [0u8; 8];
        chip.write(&[0xf7]);
        chip.read(&mut data);
        assert_eq!(data[..3], [0x80, 0, 0], "still the reset value");
        std::thread::sleep(MEASUREMENT_WAIT);
        chip.write(&[0xf3]);
        chip.read(&mut status);
        assert_eq!(status[0], 0, "done");
        chip.write(&[0xf7]);
        chip.read(&mut data);
        let adc_p =
            (u32::from(data[0]) << 12) | (u32::from(data[1]) << 4) | (u32::from(data[2]) >> 4);
        let adc_t =
            (u32::from(data[3]) << 12) | (u32::from(data[4]) << 4) | (u32::from(data[5]) >> 4);
        let adc_h = u16::from_be_bytes([data[6], data[7]]);
        assert_eq!(
            Raw {
                adc_t,
                adc_p,
                adc_h
            },
            DATASHEET_RAW
        );
        let mut ctrl = [0u8];
        chip.write(&[0xf4]);
        chip.read(&mut ctrl);
        assert_eq!(ctrl[0] & 0b11, 0, "back to sleep after a forced conversion");
    }

    #[test]
    fn a_missing_or_wrong_chip_is_a_clear_error_and_a_returning_one_is_started_again() {
        let sim = SimBus::new();
        let mut s = Bme280Sensor::on_sim_bus(sim.clone(), 0x77, "/dev/i2c-1".into());
        let e = s.read().unwrap_err();
        assert!(
            e.starts_with("BME280 at 0x77 on /dev/i2c-1: no device answers at 0x77"),
            "{e}"
        );
        assert_eq!(
            s.read().unwrap_err(),
            e,
            "the same reason every time: reported once"
        );

        let mut bmp280 = SimBme280::new();
        bmp280.regs[0xd0] = 0x58;
        sim.attach(0x77, bmp280);
        assert!(s.read().unwrap_err().contains("a BMP280 (chip id 0x58)"));

        sim.attach(0x77, SimBme280::new());
        assert_eq!(s.read().unwrap().len(), 3);
        sim.detach(0x77);
        assert!(s.read().unwrap_err().contains("no device answers"));
        // Plugged back in (reset, as after a power cycle): started and configured again.
        sim.attach(0x77, SimBme280::new());
        let r = s.read().unwrap();
        assert!((24.0..26.5).contains(&r[0].value), "{r:?}");
    }

    #[test]
    fn the_simulated_chip_wanders_plausibly() {
        let mut s = Bme280Sensor::new(1, DEFAULT_ADDRESS, Hardware::Sim);
        let mut temperatures = Vec::new();
        for _ in 0..40 {
            let r = s.read().unwrap();
            assert!((24.0..26.5).contains(&r[0].value), "{r:?}");
            assert!((40.0..50.0).contains(&r[1].value), "{r:?}");
            assert!((1000.0..1013.0).contains(&r[2].value), "{r:?}");
            temperatures.push(r[0].value);
        }
        assert!(
            temperatures.windows(2).any(|w| w[0] != w[1]),
            "{temperatures:?}"
        );
    }
}
