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
}
