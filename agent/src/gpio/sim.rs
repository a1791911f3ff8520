//! The simulated board: pin levels in memory. Inputs are driven by [`SimBoard::drive_input`]
//! (the agent's `press`/`release` console commands call it), outputs are readable with
//! [`SimBoard::level`]. Edges are delivered synchronously, like a perfectly clean switch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, EdgeCallback, GpioError, RawInput, RawOutput, RawPwm};
use crate::config::Pull;

enum SimPin {
    Output { high: bool },
    Pwm { frequency_hz: f64, duty: f64 },
    Input { high: bool, on_edge: EdgeCallback },
}

/// A cloneable handle to one simulated board.
#[derive(Clone, Default)]
pub struct SimBoard {
    pins: Arc<Mutex<HashMap<u8, SimPin>>>,
}

impl SimBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// The level of a claimed pin (a PWM pin: high if its duty cycle is above 0).
    pub fn level(&self, pin: u8) -> Option<bool> {
        match self.pins.lock().unwrap().get(&pin)? {
            SimPin::Output { high } | SimPin::Input { high, .. } => Some(*high),
            SimPin::Pwm { duty, .. } => Some(*duty > 0.0),
        }
    }

    /// A PWM pin's frequency and duty cycle (0.0–1.0).
    pub fn pwm(&self, pin: u8) -> Option<(f64, f64)> {
        match self.pins.lock().unwrap().get(&pin)? {
            SimPin::Pwm { frequency_hz, duty } => Some((*frequency_hz, *duty)),
            _ => None,
        }
    }

    /// Drives an input pin as external wiring would; fires the edge callback on a change.
    pub fn drive_input(&self, pin: u8, high: bool) -> Result<(), GpioError> {
        let mut pins = self.pins.lock().unwrap();
        match pins.get_mut(&pin) {
            Some(SimPin::Input {
                high: level,
                on_edge,
            }) => {
                if *level != high {
                    *level = high;
                    on_edge(high);
                }
                Ok(())
            }
            _ => Err(GpioError::Pin {
                pin,
                message: "is not a simulated input".into(),
            }),
        }
    }

    fn claim(&self, pin: u8, p: SimPin) -> Result<(), GpioError> {
        let mut pins = self.pins.lock().unwrap();
        if pins.contains_key(&pin) {
            return Err(GpioError::Pin {
                pin,
                message: "is already in use".into(),
            });
        }
        pins.insert(pin, p);
        Ok(())
    }
}

impl Backend for SimBoard {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn output(&mut self, pin: u8, high: bool) -> Result<Box<dyn RawOutput>, GpioError> {
        self.claim(pin, SimPin::Output { high })?;
        Ok(Box::new(SimPinHandle {
            board: self.clone(),
            pin,
        }))
    }

    fn pwm(&mut self, pin: u8, frequency_hz: f64, duty: f64) -> Result<Box<dyn RawPwm>, GpioError> {
        self.claim(pin, SimPin::Pwm { frequency_hz, duty })?;
        Ok(Box::new(SimPinHandle {
            board: self.clone(),
            pin,
        }))
    }

    fn input(
        &mut self,
        pin: u8,
        pull: Pull,
        _debounce: Duration,
        on_edge: EdgeCallback,
    ) -> Result<Box<dyn RawInput>, GpioError> {
        // A floating input reads low in the simulator; pull-up idles high.
        let high = pull == Pull::Up;
        self.claim(pin, SimPin::Input { high, on_edge })?;
        Ok(Box::new(SimPinHandle {
            board: self.clone(),
            pin,
        }))
    }
}

struct SimPinHandle {
    board: SimBoard,
    pin: u8,
}

impl RawOutput for SimPinHandle {
    fn write(&mut self, high: bool) -> Result<(), GpioError> {
        if let Some(SimPin::Output { high: level }) =
            self.board.pins.lock().unwrap().get_mut(&self.pin)
        {
            *level = high;
        }
        Ok(())
    }
}

impl RawPwm for SimPinHandle {
    fn set_duty(&mut self, duty: f64) -> Result<(), GpioError> {
        if let Some(SimPin::Pwm { duty: d, .. }) =
            self.board.pins.lock().unwrap().get_mut(&self.pin)
        {
            *d = duty;
        }
        Ok(())
    }
}

impl RawInput for SimPinHandle {
    fn read(&self) -> bool {
        self.board.level(self.pin).unwrap_or(false)
    }
}
