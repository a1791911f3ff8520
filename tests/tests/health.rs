//! Device health end to end: a real broker, a real `pifleet-agent` (simulator backend) with the
//! README's "Device health" sensors, read back through `pifleet watch --json` and
//! `pifleet status --json` with the documented types. On this machine each health sensor
//! either publishes a plausible value, or (no Wi-Fi, not a Pi) says so once, as one
//! `sensor_error` event whose message says `unavailable`. The firmware flags and the Wi-Fi
//! signal, which a test machine lacks, travel the same path from fixture files (`path`).

use std::path::Path;
use std::time::Duration;

use pifleet_history::HistoryRows;
use pifleet_proto::payload::{EventKind, SensorReading};
use pifleet_proto::report::WatchEvent;
use pifleet_tests::*;

const DEVICE_WAIT: Duration = Duration::from_secs(20);

/// The README's "Device health" config, every sensor read every 0.3 s.
fn readme_health_config() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("<!-- device-health:start -->")
        .expect("README.md lacks the device-health marker");
    let end = readme[start..].find("<!-- device-health:end -->").unwrap() + start;
    let block = &readme[start..end];
    let toml = block
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a toml block between the markers")
        .0;
    let mut out = String::new();
    for line in toml.lines() {
        if line.trim_start().starts_with("interval_secs") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("kind =") {
            out.push_str("interval_secs = 0.3\n");
        }
    }
    out
}

/// Every `watch --json` line so far, decoded.
fn seen(watch: &Proc) -> Vec<WatchEvent> {
    watch
        .stdout
        .since(0)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The `sensor_error` messages `device` published about sensor `name`.
fn errors_about(events: &[WatchEvent], device: &str, name: &str) -> Vec<String> {
    let prefix = format!("sensor {name}: ");
    events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Event { device: d, event }
                if d.as_str() == device
                    && event.kind == EventKind::SensorError
                    && event.message.starts_with(&prefix) =>
            {
                Some(event.message.clone())
            }
            _ => None,
        })
        .collect()
}

fn readings_of(events: &[WatchEvent], device: &str, name: &str) -> Vec<SensorReading> {
    events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Sensor {
                device: d,
                sensor,
                reading,
            } if d.as_str() == device && sensor.as_str() == name => Some(reading.clone()),
            _ => None,
        })
        .collect()
}

/// Waits until `name` has published `more` readings after the `already` seen so far: the
/// agent has gone through that many intervals.
fn wait_for_readings(watch: &Proc, device: &str, name: &str, already: usize, more: usize) {
    wait_until(
        &format!("{more} more readings of {name}"),
        DEVICE_WAIT,
        || readings_of(&seen(watch), device, name).len() >= already + more,
    );
}

fn has_wifi() -> bool {
    std::fs::read_to_string("/proc/net/wireless").is_ok_and(|t| {
        t.lines().skip(2).any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|v| v.starts_with('-'))
        })
    })
}

fn has_rpi_volt() -> bool {
    std::fs::read_dir("/sys/class/hwmon").is_ok_and(|d| {
        d.filter_map(|e| e.ok()).any(|e| {
            std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == "rpi_volt")
        })
    })
}

fn vcgencmd_works() -> bool {
    std::process::Command::new("vcgencmd")
        .arg("get_throttled")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A source this machine has publishes a reading; one it lacks is exactly one `unavailable`
/// event, however many intervals go by, and one warning in the agent's log.
fn check_present_or_unavailable_once(
    watch: &Proc,
    agent: &Agent,
    name: &str,
    present: bool,
    plausible: impl Fn(&SensorReading) -> bool,
) {
    let device = agent.device.as_str();
    if present {
        wait_until(&format!("a reading of {name}"), DEVICE_WAIT, || {
            !readings_of(&seen(watch), device, name).is_empty()
        });
        let r = &readings_of(&seen(watch), device, name)[0];
        assert!(plausible(r), "{name}: {r:?}");
        return;
    }
    wait_until(
        &format!("the unavailable event of {name}"),
        DEVICE_WAIT,
        || !errors_about(&seen(watch), device, name).is_empty(),
    );
    // Several more intervals of another sensor: the agent kept reading everything.
    let already = readings_of(&seen(watch), device, "uptime").len();
    wait_for_readings(watch, device, "uptime", already, 5);
    let errors = errors_about(&seen(watch), device, name);
    assert_eq!(
        errors.len(),
        1,
        "one event, not one per interval: {errors:?}"
    );
    assert!(errors[0].contains("unavailable"), "{}", errors[0]);
    assert!(
        readings_of(&seen(watch), device, name).is_empty(),
        "no reading of a missing source"
    );
    let logged = agent
        .proc
        .stderr
        .since(0)
        .iter()
        .chain(agent.proc.stdout.since(0).iter())
        .filter(|l| l.contains(&format!("sensor {name}: ")))
        .count();
    assert_eq!(logged, 1, "one log line, not one per interval");
}

#[test]
fn each_health_sensor_of_the_readme_publishes_a_plausible_value_or_one_unavailable_event() {
    let broker = Broker::start_recording(&[]);
    let url = broker.url();
    // Events are not retained: the watcher listens before the agent starts.
    let watch = watch(&url, &[]);
    let agent = Agent::start(&url, "hale", &readme_health_config());
    let device = "hale";

    // The health sensors every Linux machine has, read from its own /proc and file system.
    let status = || device_status(&url, device).unwrap_or_else(|| panic!("{device} is known"));
    let ordinary = [
        "cpu_usage",
        "load",
        "memory",
        "disk",
        "uptime",
        "env_temperature",
        "env_humidity",
        "env_pressure",
    ];
    wait_until("every ordinary sensor has a reading", DEVICE_WAIT, || {
        device_status(&url, device)
            .is_some_and(|d| ordinary.iter().all(|s| d.sensors.contains_key(*s)))
    });
    let d = status();
    let r = |name: &str| d.sensors[name].clone();
    let kind = |name: &str| r(name).kind.unwrap_or_default();

    let cpu = r("cpu_usage");
    assert!((0.0..=100.0).contains(&cpu.value), "{cpu:?}");
    assert_eq!(
        (cpu.unit.as_str(), kind("cpu_usage").as_str()),
        ("%", "cpu_usage")
    );

    let load = r("load");
    assert!(load.value >= 0.0 && load.value < 1000.0, "{load:?}");
    assert_eq!(
        (load.unit.as_str(), kind("load").as_str()),
        ("", "load_average")
    );

    let memory = r("memory");
    assert!(memory.value > 0.0 && memory.value < 100.0, "{memory:?}");
    assert_eq!(memory.unit, "%");

    let disk = r("disk");
    assert!((0.0..=100.0).contains(&disk.value), "{disk:?}");
    assert_eq!(
        (disk.unit.as_str(), kind("disk").as_str()),
        ("%", "disk_used")
    );

    // Whole seconds since boot, no more than this machine's own uptime now.
    let uptime = r("uptime");
    let now: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uptime.value > 0.0 && uptime.value <= now && uptime.value.fract() == 0.0,
        "{uptime:?} vs {now}"
    );
    assert_eq!(uptime.unit, "s");

    // The BME280, simulated on the simulator's bus, through its real driver: three ordinary
    // sensors, each with its quantity.
    for (name, quantity, unit, range) in [
        ("env_temperature", "temperature", "°C", 24.0..26.5),
        ("env_humidity", "humidity", "%", 40.0..50.0),
        ("env_pressure", "pressure", "hPa", 1000.0..1013.0),
    ] {
        let reading = r(name);
        assert_eq!(
            (
                reading.kind.as_deref(),
                reading.quantity.as_deref(),
                reading.unit.as_str()
            ),
            (Some("bme280"), Some(quantity), unit),
            "{name}"
        );
        assert!(range.contains(&reading.value), "{name}: {reading:?}");
    }

    // Presence lists the published names, so any controller knows them.
    let presence = seen(&watch)
        .into_iter()
        .find_map(|e| match e {
            WatchEvent::Presence {
                device: d,
                presence,
            } if d.as_str() == device => Some(presence),
            _ => None,
        })
        .expect("presence was watched");
    let listed: Vec<&str> = presence.sensors.iter().map(|n| n.as_str()).collect();
    for name in ordinary.iter().chain(&[
        "wifi",
        "undervoltage",
        "power_undervoltage",
        "power_throttled_occurred",
    ]) {
        assert!(listed.contains(name), "{name} in {listed:?}");
    }

    // The human status line needs no special case either.
    let human = String::from_utf8(cli(&url, &["status"]).stdout).unwrap();
    assert!(
        human.contains("env_pressure=") && human.contains("hPa"),
        "{human}"
    );

    // The recorder keeps each quantity as a sensor of its own too.
    let dir = broker.history_dir();
    let dir = dir.to_str().unwrap();
    wait_until("env_pressure in the history", DEVICE_WAIT, || {
        let out = cli(
            &url,
            &["history", device, "env_pressure", "--json", "--dir", dir],
        );
        serde_json::from_slice::<HistoryRows>(&out.stdout).is_ok_and(|h| {
            h.rows.iter().any(|row| {
                row.name == "env_pressure"
                    && row.unit.as_deref() == Some("hPa")
                    && row.source.as_deref() == Some("bme280")
                    && row.value.is_some_and(|v| (1000.0..1013.0).contains(&v))
            })
        })
    });

    // What a Pi has and this machine may not: a reading here if it has it, else one event.
    check_present_or_unavailable_once(&watch, &agent, "wifi", has_wifi(), |r| {
        r.unit == "dBm" && (-110.0..0.0).contains(&r.value)
    });
    check_present_or_unavailable_once(&watch, &agent, "undervoltage", has_rpi_volt(), |r| {
        r.value == 0.0 || r.value == 1.0
    });
    // The four flags of one vcgencmd call: a failure is one event, on the first of them.
    check_present_or_unavailable_once(
        &watch,
        &agent,
        "power_undervoltage",
        vcgencmd_works(),
        |r| r.quantity.as_deref() == Some("undervoltage") && (r.value == 0.0 || r.value == 1.0),
    );
    assert!(errors_about(&seen(&watch), device, "power_throttled").is_empty());
}

#[test]
fn firmware_flags_and_wifi_signal_travel_the_whole_path_from_their_sources() {
    let broker = Broker::start();
    let url = broker.url();
    let dir = temp_dir("health-sources");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // What a Pi 4 with a weak supply shows: under-voltage and throttling since boot, not now.
    let flags = file("get_throttled", "50000\n");
    let alarm = file("in0_lcrit_alarm", "0\n");
    let wireless = file(
        "wireless",
        "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
         face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n \
         wlan0: 0000   58.  -52.  -256        0      0      0      0      0        0\n",
    );
    let config = format!(
        "[[sensor]]\nname = \"power\"\nkind = \"throttled\"\npath = {flags:?}\ninterval_secs = 0.2\n\
         [[sensor]]\nname = \"undervoltage\"\nkind = \"undervoltage\"\npath = {alarm:?}\ninterval_secs = 0.2\n\
         [[sensor]]\nname = \"wifi\"\nkind = \"wifi_signal\"\ninterface = \"wlan0\"\npath = {wireless:?}\ninterval_secs = 0.2\n"
    );
    let watch = watch(&url, &[]);
    let agent = Agent::start(&url, "flagged", &config);
    let device = agent.device.as_str();

    let value = |name: &str| device_status(&url, device).and_then(|d| d.sensors.get(name).cloned());
    let flags_are = |want: [f64; 4]| {
        [
            "power_undervoltage",
            "power_throttled",
            "power_undervoltage_occurred",
            "power_throttled_occurred",
        ]
        .iter()
        .zip(want)
        .all(|(n, w)| value(n).is_some_and(|r| r.value == w))
    };
    wait_until("the flags since boot", DEVICE_WAIT, || {
        flags_are([0.0, 0.0, 1.0, 1.0])
    });
    let r = value("power_throttled_occurred").unwrap();
    assert_eq!(
        (r.kind.as_deref(), r.quantity.as_deref(), r.unit.as_str()),
        (Some("throttled"), Some("throttled_occurred"), "")
    );
    wait_until("the Wi-Fi signal", DEVICE_WAIT, || {
        value("wifi").is_some_and(|r| r.value == -52.0 && r.unit == "dBm")
    });
    assert_eq!(value("undervoltage").unwrap().value, 0.0);

    // The supply sags now: the next readings say so.
    std::fs::write(&flags, "50005\n").unwrap();
    std::fs::write(&alarm, "1\n").unwrap();
    wait_until("the flags of now", DEVICE_WAIT, || {
        flags_are([1.0, 1.0, 1.0, 1.0])
    });
    wait_until("the under-voltage alarm", DEVICE_WAIT, || {
        value("undervoltage").is_some_and(|r| r.value == 1.0)
    });

    // The interface goes away: one unavailable event; it comes back: recovered, and read again.
    std::fs::write(
        &wireless,
        "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
         face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n",
    )
    .unwrap();
    wait_until("the Wi-Fi unavailable event", DEVICE_WAIT, || {
        !errors_about(&seen(&watch), device, "wifi").is_empty()
    });
    let already = readings_of(&seen(&watch), device, "undervoltage").len();
    wait_for_readings(&watch, device, "undervoltage", already, 5);
    let errors = errors_about(&seen(&watch), device, "wifi");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("unavailable: no wireless interface wlan0"),
        "{}",
        errors[0]
    );
    let wifi_readings = readings_of(&seen(&watch), device, "wifi").len();
    std::fs::write(
        &wireless,
        "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
         face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n \
         wlan0: 0000   40.  -71.  -256        0      0      0      0      0        0\n",
    )
    .unwrap();
    wait_until("the Wi-Fi recovery", DEVICE_WAIT, || {
        seen(&watch).iter().any(|e| {
            matches!(e, WatchEvent::Event { device: d, event }
                if d.as_str() == device
                    && event.kind == EventKind::SensorRecovered
                    && event.message.contains("wifi"))
        })
    });
    wait_for_readings(&watch, device, "wifi", wifi_readings, 1);
    let last = readings_of(&seen(&watch), device, "wifi").pop().unwrap();
    assert_eq!(last.value, -71.0);
    assert!(Path::new(&wireless).exists());
}
