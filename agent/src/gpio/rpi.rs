//! The real Raspberry Pi backend, through rppal (`/dev/gpiomem` and the GPIO character device).
//! It builds on any Linux machine; whether it is used is decided at run time.
//!
//! Pins are claimed with `reset_on_drop(false)`: when the agent stops, an LED that was on stays
//! on (rppal's default would hand the pin back in its previous mode, which for an LED usually
//! means switching it off behind the user's back).

use std::time::Duration;

use rppal::gpio::{Gpio, InputPin, Level, OutputPin, Trigger};

use super::{Backend, EdgeCallback, GpioError, RawInput, RawOutput};
use crate::config::Pull;

/// True when the device tree names a Raspberry Pi.
pub fn looks_like_a_pi() -> bool {
    std::fs::read_to_string("/proc/device-tree/model")
        .map(|m| m.contains("Raspberry Pi"))
        .unwrap_or(false)
}

pub struct RppalBackend {
    gpio: Gpio,
}

impl RppalBackend {
    pub fn open() -> Result<Self, GpioError> {
        let gpio = Gpio::new().map_err(|e| {
            GpioError::Open(format!(
                "{e} (is this a Raspberry Pi, and is the user in the 'gpio' group? \
                 Use --gpio sim to run without hardware)"
            ))
        })?;
        Ok(RppalBackend { gpio })
    }
}

fn pin_err(pin: u8) -> impl Fn(rppal::gpio::Error) -> GpioError {
    move |e| GpioError::Pin {
        pin,
        message: e.to_string(),
    }
}

impl Backend for RppalBackend {
    fn name(&self) -> &'static str {
        "rppal"
    }

    fn output(&mut self, pin: u8, high: bool) -> Result<Box<dyn RawOutput>, GpioError> {
        let p = self.gpio.get(pin).map_err(pin_err(pin))?;
        let mut out = if high {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        out.set_reset_on_drop(false);
        Ok(Box::new(RppalOutput(out)))
    }

    fn input(
        &mut self,
        pin: u8,
        pull: Pull,
        debounce: Duration,
        mut on_edge: EdgeCallback,
    ) -> Result<Box<dyn RawInput>, GpioError> {
        let p = self.gpio.get(pin).map_err(pin_err(pin))?;
        let mut input = match pull {
            Pull::Up => p.into_input_pullup(),
            Pull::Down => p.into_input_pulldown(),
            Pull::None => p.into_input(),
        };
        input.set_reset_on_drop(false);
        let debounce = (!debounce.is_zero()).then_some(debounce);
        input
            .set_async_interrupt(Trigger::Both, debounce, move |event| {
                on_edge(event.trigger == Trigger::RisingEdge)
            })
            .map_err(pin_err(pin))?;
        Ok(Box::new(RppalInput(input)))
    }
}

struct RppalOutput(OutputPin);

impl RawOutput for RppalOutput {
    fn write(&mut self, high: bool) -> Result<(), GpioError> {
        self.0.write(if high { Level::High } else { Level::Low });
        Ok(())
    }
}

struct RppalInput(InputPin);

impl RawInput for RppalInput {
    fn read(&self) -> bool {
        self.0.is_high()
    }
}
