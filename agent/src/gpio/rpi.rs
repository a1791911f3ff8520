//! The real Raspberry Pi backend, through rppal (`/dev/gpiomem` and the GPIO character device).
//! It builds on any Linux machine; whether it is used is decided at run time.
//!
//! Pins are claimed with `reset_on_drop(false)`: when the agent stops, an LED that was on stays
//! on (rppal's default would hand the pin back in its previous mode, which for an LED usually
//! means switching it off behind the user's back).

use std::time::Duration;

use rppal::gpio::{Gpio, InputPin, Level, OutputPin, Trigger};
use rppal::pwm::{Channel, Polarity, Pwm};

use super::{Backend, EdgeCallback, GpioError, RawInput, RawOutput, RawPwm};
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

    /// Hardware PWM on the pins the `pwm`/`pwm-2chan` overlays route to the two channels
    /// (BCM 12 or 18: channel 0, 13 or 19: channel 1); where that channel is not enabled, and
    /// on every other pin, rppal's software PWM (a thread toggling the pin; some jitter, fine
    /// for LEDs, not for servos).
    fn pwm(&mut self, pin: u8, frequency_hz: f64, duty: f64) -> Result<Box<dyn RawPwm>, GpioError> {
        let channel = match pin {
            12 | 18 => Some(Channel::Pwm0),
            13 | 19 => Some(Channel::Pwm1),
            _ => None,
        };
        if let Some(channel) = channel {
            match Pwm::with_frequency(channel, frequency_hz, duty, Polarity::Normal, true) {
                Ok(pwm) => {
                    tracing::info!("BCM {pin}: hardware PWM ({channel}) at {frequency_hz} Hz");
                    return Ok(Box::new(HardwarePwm { pwm, pin }));
                }
                Err(e) => tracing::warn!(
                    "BCM {pin}: hardware PWM {channel} unavailable ({e}; enable it with \
                     dtoverlay=pwm-2chan); using software PWM"
                ),
            }
        }
        let p = self.gpio.get(pin).map_err(pin_err(pin))?;
        let mut out = p.into_output_low();
        out.set_reset_on_drop(false);
        let mut soft = SoftwarePwm {
            out,
            frequency_hz,
            pin,
        };
        soft.set_duty(duty)?;
        Ok(Box::new(soft))
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

struct HardwarePwm {
    pwm: Pwm,
    pin: u8,
}

impl RawPwm for HardwarePwm {
    fn set_duty(&mut self, duty: f64) -> Result<(), GpioError> {
        self.pwm.set_duty_cycle(duty).map_err(|e| GpioError::Pin {
            pin: self.pin,
            message: e.to_string(),
        })
    }
}

struct SoftwarePwm {
    out: OutputPin,
    frequency_hz: f64,
    pin: u8,
}

impl RawPwm for SoftwarePwm {
    fn set_duty(&mut self, duty: f64) -> Result<(), GpioError> {
        // 0 and 100 % as plain levels: no thread toggling a pin that never changes.
        let result = if duty <= 0.0 {
            self.out.clear_pwm().map(|()| self.out.set_low())
        } else if duty >= 1.0 {
            self.out.clear_pwm().map(|()| self.out.set_high())
        } else {
            self.out.set_pwm_frequency(self.frequency_hz, duty)
        };
        result.map_err(pin_err(self.pin))
    }
}

struct RppalInput(InputPin);

impl RawInput for RppalInput {
    fn read(&self) -> bool {
        self.0.is_high()
    }
}
