//! GPIO behind a small seam. A [`Backend`] hands out raw pins that speak electrical levels; the
//! domain types [`Switch`] and [`Button`] turn levels into on/off and pressed/released, so
//! active-low wiring is handled here, once, for every backend.
//!
//! Two backends, chosen at run time: [`rpi`] drives a real Raspberry Pi through rppal, [`sim`]
//! keeps levels in memory for machines without a Pi (tests, newcomers, benchmarks).

pub mod rpi;
pub mod sim;

use std::time::Duration;

use crate::config::{GpioChoice, Pull};

/// A GPIO failure, with the pin it concerns.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("cannot open the GPIO controller: {0}")]
    Open(String),
    #[error("BCM pin {pin}: {message}")]
    Pin { pin: u8, message: String },
}

/// Called from the backend's own thread with the new electrical level (true = high) after
/// debouncing. It must not block.
pub type EdgeCallback = Box<dyn FnMut(bool) + Send + 'static>;

/// A source of pins.
pub trait Backend: Send {
    /// `"rppal"` or `"sim"`, for logs and presence.
    fn name(&self) -> &'static str;
    /// Claims `pin` as an output driven to `high` from the first instant, so an LED configured
    /// off never flashes on at start.
    fn output(&mut self, pin: u8, high: bool) -> Result<Box<dyn RawOutput>, GpioError>;
    /// Claims `pin` as a PWM output at `frequency_hz`, starting at `duty` (0.0–1.0 of each
    /// period high).
    fn pwm(&mut self, pin: u8, frequency_hz: f64, duty: f64) -> Result<Box<dyn RawPwm>, GpioError>;
    /// Claims `pin` as an input and reports every debounced level change to `on_edge`.
    fn input(
        &mut self,
        pin: u8,
        pull: Pull,
        debounce: Duration,
        on_edge: EdgeCallback,
    ) -> Result<Box<dyn RawInput>, GpioError>;
}

pub trait RawOutput: Send {
    fn write(&mut self, high: bool) -> Result<(), GpioError>;
}

pub trait RawPwm: Send {
    /// The fraction of each period the pin is high, 0.0–1.0.
    fn set_duty(&mut self, duty: f64) -> Result<(), GpioError>;
}

pub trait RawInput: Send {
    fn read(&self) -> bool;
}

/// An output as the fleet sees it: on or off, whatever the wiring.
pub struct Switch {
    raw: Box<dyn RawOutput>,
    active_low: bool,
    on: bool,
}

impl Switch {
    /// Claims the pin already switched to `on`.
    pub fn new(
        backend: &mut dyn Backend,
        pin: u8,
        active_low: bool,
        on: bool,
    ) -> Result<Self, GpioError> {
        let raw = backend.output(pin, on != active_low)?;
        Ok(Switch {
            raw,
            active_low,
            on,
        })
    }

    pub fn set(&mut self, on: bool) -> Result<(), GpioError> {
        self.raw.write(on != self.active_low)?;
        self.on = on;
        Ok(())
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// A dimmable output as the fleet sees it: a level in percent, whatever the wiring (active low
/// inverts the duty cycle, so 100 % is fully lit either way).
pub struct Dimmer {
    raw: Box<dyn RawPwm>,
    active_low: bool,
    level: f64,
}

impl Dimmer {
    /// Claims the pin already at `level` percent.
    pub fn new(
        backend: &mut dyn Backend,
        pin: u8,
        active_low: bool,
        frequency_hz: f64,
        level: f64,
    ) -> Result<Self, GpioError> {
        let raw = backend.pwm(pin, frequency_hz, duty(level, active_low))?;
        Ok(Dimmer {
            raw,
            active_low,
            level,
        })
    }

    pub fn set(&mut self, level: f64) -> Result<(), GpioError> {
        self.raw.set_duty(duty(level, self.active_low))?;
        self.level = level;
        Ok(())
    }

    pub fn level(&self) -> f64 {
        self.level
    }
}

fn duty(level: f64, active_low: bool) -> f64 {
    let d = (level / 100.0).clamp(0.0, 1.0);
    if active_low {
        1.0 - d
    } else {
        d
    }
}

/// One configured output's pin: on/off, or dimmable.
pub enum OutputPin {
    Switch(Switch),
    Dimmer(Dimmer),
}

impl OutputPin {
    /// Drives the pin to `on` (a switch) or `level` percent (a dimmer; `level` is what the core
    /// decided, `on` follows from it).
    pub fn set(&mut self, on: bool, level: Option<f64>) -> Result<(), GpioError> {
        match self {
            OutputPin::Switch(s) => s.set(on),
            OutputPin::Dimmer(d) => d.set(level.unwrap_or(if on { 100.0 } else { 0.0 })),
        }
    }
}

/// An input as the fleet sees it: active (pressed) or not, whatever the wiring.
pub struct Button {
    raw: Box<dyn RawInput>,
    active_low: bool,
}

impl Button {
    /// Claims the pin; `on_change` receives the logical state (true = active) on every edge.
    pub fn new(
        backend: &mut dyn Backend,
        pin: u8,
        pull: Pull,
        active_low: bool,
        debounce: Duration,
        mut on_change: impl FnMut(bool) + Send + 'static,
    ) -> Result<Self, GpioError> {
        let raw = backend.input(
            pin,
            pull,
            debounce,
            Box::new(move |high| on_change(high != active_low)),
        )?;
        Ok(Button { raw, active_low })
    }

    pub fn is_active(&self) -> bool {
        self.raw.read() != self.active_low
    }
}

/// Opens the backend the config asks for. `Auto` picks rppal on a Raspberry Pi and the simulator
/// elsewhere; an explicit `rppal` on a machine without GPIO is an error, not a silent fallback.
pub fn open(choice: GpioChoice) -> Result<(Box<dyn Backend>, Option<sim::SimBoard>), GpioError> {
    let use_rppal = match choice {
        GpioChoice::Rppal => true,
        GpioChoice::Sim => false,
        GpioChoice::Auto => rpi::looks_like_a_pi(),
    };
    if use_rppal {
        Ok((Box::new(rpi::RppalBackend::open()?), None))
    } else {
        let board = sim::SimBoard::new();
        Ok((Box::new(board.clone()), Some(board)))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn active_low_is_handled_once_for_outputs_and_inputs() {
        let board = sim::SimBoard::new();
        let mut backend: Box<dyn Backend> = Box::new(board.clone());
        let mut sw = Switch::new(backend.as_mut(), 17, true, false).unwrap();
        assert_eq!(
            board.level(17),
            Some(true),
            "active-low off drives the pin high"
        );
        sw.set(true).unwrap();
        assert_eq!(board.level(17), Some(false));
        assert!(sw.is_on());

        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let button = Button::new(
            backend.as_mut(),
            27,
            Pull::Up,
            true,
            Duration::ZERO,
            move |a| s.lock().unwrap().push(a),
        )
        .unwrap();
        assert!(!button.is_active(), "pull-up idles high: released");
        board.drive_input(27, false).unwrap();
        assert!(button.is_active());
        board.drive_input(27, false).unwrap(); // no edge, no event
        board.drive_input(27, true).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn a_dimmer_sets_the_duty_cycle_and_active_low_inverts_it() {
        let board = sim::SimBoard::new();
        let mut backend: Box<dyn Backend> = Box::new(board.clone());
        let mut lamp = Dimmer::new(backend.as_mut(), 18, false, 200.0, 0.0).unwrap();
        assert_eq!(board.pwm(18), Some((200.0, 0.0)));
        lamp.set(40.0).unwrap();
        assert_eq!(board.pwm(18), Some((200.0, 0.4)));
        assert_eq!(lamp.level(), 40.0);
        let mut fan = Dimmer::new(backend.as_mut(), 12, true, 25_000.0, 100.0).unwrap();
        assert_eq!(
            board.pwm(12),
            Some((25_000.0, 0.0)),
            "active low: 100 % drives low"
        );
        fan.set(25.0).unwrap();
        assert_eq!(board.pwm(12), Some((25_000.0, 0.75)));
        assert!(
            Dimmer::new(backend.as_mut(), 18, false, 200.0, 0.0).is_err(),
            "pin in use"
        );
    }
}
