//! Temperatures: the SoC's own (`cpu_temp`), a DS18B20 probe on the 1-wire bus (`ds18b20`),
//! and a simulated one for machines without sensors (`sim`).

use std::path::PathBuf;

use super::{round2, Reading, Sensor};

/// The SoC temperature the kernel exposes in millidegrees Celsius.
pub struct CpuTemp {
    path: PathBuf,
}

impl CpuTemp {
    pub fn new(path: Option<PathBuf>) -> CpuTemp {
        CpuTemp {
            path: path.unwrap_or_else(|| PathBuf::from("/sys/class/thermal/thermal_zone0/temp")),
        }
    }
}

impl Sensor for CpuTemp {
    fn kind(&self) -> &'static str {
        "cpu_temp"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let milli: f64 = text.trim().parse().map_err(|_| {
            format!(
                "{} holds {:?}, not a number",
                self.path.display(),
                text.trim()
            )
        })?;
        Ok(vec![Reading::new(round2(milli / 1000.0), "°C")])
    }
}

/// A DS18B20 on the 1-wire bus (`dtoverlay=w1-gpio`). Its `w1_slave` file reads
/// `… crc=xx YES` then `… t=23125`; a `NO` means the CRC failed and the value is garbage.
pub struct Ds18b20 {
    dir: PathBuf,
    id: Option<String>,
}

impl Ds18b20 {
    pub fn new(dir: Option<PathBuf>, id: Option<String>) -> Ds18b20 {
        Ds18b20 {
            dir: dir.unwrap_or_else(|| PathBuf::from("/sys/bus/w1/devices")),
            id,
        }
    }

    fn probe(&self) -> Result<PathBuf, String> {
        if let Some(id) = &self.id {
            return Ok(self.dir.join(id));
        }
        let mut ids: Vec<_> = std::fs::read_dir(&self.dir)
            .map_err(|e| {
                format!(
                    "cannot list {} (is 1-wire enabled?): {e}",
                    self.dir.display()
                )
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("28-"))
            .collect();
        ids.sort();
        ids.first()
            .map(|id| self.dir.join(id))
            .ok_or_else(|| format!("no DS18B20 probe (28-*) in {}", self.dir.display()))
    }
}

impl Sensor for Ds18b20 {
    fn kind(&self) -> &'static str {
        "ds18b20"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let file = self.probe()?.join("w1_slave");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        parse_w1_slave(&text)
            .map(|c| vec![Reading::new(round2(c), "°C")])
            .map_err(|why| format!("{}: {why}", file.display()))
    }
}

/// Parses the two-line `w1_slave` format into degrees Celsius.
pub fn parse_w1_slave(text: &str) -> Result<f64, String> {
    let mut lines = text.lines();
    let crc = lines.next().ok_or("empty reading")?;
    if !crc.trim_end().ends_with("YES") {
        return Err("CRC check failed".into());
    }
    let t = lines
        .next()
        .and_then(|l| l.rsplit_once("t="))
        .ok_or("no t= value")?
        .1
        .trim();
    let milli: f64 = t.parse().map_err(|_| format!("bad t= value {t:?}"))?;
    // 85000 is the power-on reset value: the probe never converted.
    if milli == 85_000.0 {
        return Err("probe returned its power-on value 85 °C (check wiring and power)".into());
    }
    Ok(milli / 1000.0)
}

/// A temperature that wanders gently around 21 °C, for machines without sensors.
pub struct SimTemp {
    value: f64,
    state: u64,
}

impl SimTemp {
    pub fn new() -> Self {
        SimTemp {
            value: 21.0,
            state: pifleet_proto::time::now_ms() | 1,
        }
    }
}

impl Default for SimTemp {
    fn default() -> Self {
        Self::new()
    }
}

impl Sensor for SimTemp {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let step = (self.state % 1000) as f64 / 1000.0 - 0.5; // [-0.5, 0.5)
                                                              // Drift toward 21 °C so the walk stays plausible for days.
        self.value = (self.value + step * 0.4 + (21.0 - self.value) * 0.05).clamp(5.0, 40.0);
        Ok(vec![Reading::new(round2(self.value), "°C")])
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn w1_slave_fixtures() {
        let ok = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert_eq!(parse_w1_slave(ok), Ok(23.125));
        let neg = "5e ff 4b 46 7f ff 02 10 58 : crc=58 YES\n5e ff 4b 46 7f ff 02 10 58 t=-10125\n";
        assert_eq!(parse_w1_slave(neg), Ok(-10.125));
        let bad_crc =
            "72 01 4b 46 7f ff 0e 10 57 : crc=00 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert!(parse_w1_slave(bad_crc).unwrap_err().contains("CRC"));
        let reset = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n";
        assert!(parse_w1_slave(reset).unwrap_err().contains("85"));
        assert!(parse_w1_slave("").is_err());
    }

    #[test]
    fn cpu_temp_reads_a_real_file_and_explains_failures() {
        let dir = std::env::temp_dir().join(format!("pifleet-cpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("temp");
        std::fs::write(&path, "48312\n").unwrap();
        let mut s = CpuTemp { path: path.clone() };
        assert_eq!(s.read().unwrap(), vec![Reading::new(48.31, "°C")]);
        std::fs::write(&path, "garbage").unwrap();
        assert!(s.read().unwrap_err().contains("not a number"));
        std::fs::remove_file(&path).unwrap();
        assert!(s.read().unwrap_err().contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ds18b20_finds_the_first_probe() {
        let dir = std::env::temp_dir().join(format!("pifleet-w1-{}", std::process::id()));
        let probe = dir.join("28-000005e2fdc3");
        std::fs::create_dir_all(&probe).unwrap();
        std::fs::create_dir_all(dir.join("w1_bus_master1")).unwrap();
        std::fs::write(
            probe.join("w1_slave"),
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        )
        .unwrap();
        let mut s = Ds18b20 {
            dir: dir.clone(),
            id: None,
        };
        assert_eq!(s.read().unwrap()[0].value, 23.13);
        let mut missing = Ds18b20 {
            dir: dir.clone(),
            id: Some("28-nope".into()),
        };
        assert!(missing.read().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sim_stays_plausible() {
        let mut s = SimTemp::new();
        for _ in 0..10_000 {
            let r = s.read().unwrap();
            assert!((5.0..=40.0).contains(&r[0].value));
        }
    }
}
