//! The Pi's own health, each an ordinary sensor: CPU usage, load average, memory and disk use,
//! uptime, Wi-Fi signal, and the firmware's under-voltage and throttling flags.
//!
//! Everything comes from the kernel (/proc, /sys, statvfs(3)), except the full throttling
//! flags, which only the firmware knows and only `vcgencmd get_throttled` asks for (the old
//! `get_throttled` sysfs file is deprecated and makes newer kernels log a warning with a stack
//! trace). Each source's parser is a pure function, tested on literal fixtures.
//!
//! A source this machine lacks (no wireless interface, not a Raspberry Pi) is an error whose
//! reason starts with `unavailable:` and stays the same from one read to the next, so the core
//! reports it once (`sensor_error`), and once more only if the reason changes.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{round1, round2, Reading, Sensor};

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("unavailable: {} does not exist", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })
}

fn path_or(path: Option<PathBuf>, default: &str) -> PathBuf {
    path.unwrap_or_else(|| PathBuf::from(default))
}

/// A health value that one /proc file holds, parsed afresh at each read: `load_average`,
/// `memory_used`, `uptime`.
pub struct ProcValue {
    kind: &'static str,
    unit: &'static str,
    path: PathBuf,
    /// The file's text to the published value (already rounded).
    parse: fn(&str) -> Result<f64, String>,
}

impl ProcValue {
    /// The one-minute load average (runnable and uninterruptible tasks; no unit). Compare it
    /// with the number of cores: 4.0 keeps a Raspberry Pi 4 fully busy.
    pub fn load_average(path: Option<PathBuf>) -> ProcValue {
        ProcValue {
            kind: "load_average",
            unit: "",
            path: path_or(path, "/proc/loadavg"),
            parse: |text| parse_loadavg(text).map(round2),
        }
    }

    /// Memory in use, 0–100 %.
    pub fn memory_used(path: Option<PathBuf>) -> ProcValue {
        ProcValue {
            kind: "memory_used",
            unit: "%",
            path: path_or(path, "/proc/meminfo"),
            parse: |text| parse_meminfo(text).map(round1),
        }
    }

    /// Seconds since boot, whole seconds: a drop means the Pi rebooted.
    pub fn uptime(path: Option<PathBuf>) -> ProcValue {
        ProcValue {
            kind: "uptime",
            unit: "s",
            path: path_or(path, "/proc/uptime"),
            parse: |text| parse_uptime(text).map(f64::floor),
        }
    }
}

impl Sensor for ProcValue {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let value = (self.parse)(&read_file(&self.path)?)
            .map_err(|why| format!("{}: {why}", self.path.display()))?;
        Ok(vec![Reading::new(value, self.unit)])
    }
}

// ---------------------------------------------------------------------------------------------
// cpu_usage

/// The CPU time counters of /proc/stat's first (`cpu`, all CPUs) line, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: idle is idle plus
/// iowait; guest time is already counted in user and nice.
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("no `cpu` line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unexpected `cpu` line {line:?}"))?;
    if fields.len() < 4 {
        return Err(format!("`cpu` line {line:?} has fewer than 4 counters"));
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// The share of CPU time spent busy between two samples, in percent.
pub fn cpu_usage(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    let busy = after.busy.saturating_sub(before.busy);
    if total == 0 {
        return 0.0;
    }
    (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

/// CPU usage over the last interval (all cores together, 0–100 %). Usage is a difference of
/// two samples of /proc/stat, so the sensor keeps the previous one; the very first read takes
/// two, a quarter of a second apart.
pub struct CpuUsage {
    path: PathBuf,
    last: Option<CpuTimes>,
}

/// The window of the first reading, which has no previous sample to compare with.
const FIRST_WINDOW: Duration = Duration::from_millis(250);

impl CpuUsage {
    pub fn new(path: Option<PathBuf>) -> CpuUsage {
        CpuUsage {
            path: path_or(path, "/proc/stat"),
            last: None,
        }
    }

    fn sample(&self) -> Result<CpuTimes, String> {
        parse_proc_stat(&read_file(&self.path)?)
            .map_err(|why| format!("{}: {why}", self.path.display()))
    }
}

impl Sensor for CpuUsage {
    fn kind(&self) -> &'static str {
        "cpu_usage"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let before = match self.last {
            Some(before) => before,
            None => {
                let first = self.sample()?;
                std::thread::sleep(FIRST_WINDOW);
                first
            }
        };
        let now = self.sample()?;
        self.last = Some(now);
        Ok(vec![Reading::new(round1(cpu_usage(before, now)), "%")])
    }
}

// ---------------------------------------------------------------------------------------------
// load_average

/// `0.52 0.58 0.59 1/467 12345`: the first field, the one-minute load average.
pub fn parse_loadavg(text: &str) -> Result<f64, String> {
    let first = text.split_whitespace().next().ok_or("empty")?;
    first
        .parse::<f64>()
        .map_err(|_| format!("{first:?} is not a number"))
}

// ---------------------------------------------------------------------------------------------
// memory_used

/// Memory in use, in percent: what `MemAvailable` (the kernel's estimate of what can be had
/// without swapping) leaves of `MemTotal`. Kernels before 3.14 lack `MemAvailable`; there
/// free + buffers + page cache stands in.
pub fn parse_meminfo(text: &str) -> Result<f64, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total = field("MemTotal").filter(|t| *t > 0).ok_or("no MemTotal")?;
    let available = match field("MemAvailable") {
        Some(a) => a,
        None => {
            field("MemFree").ok_or("neither MemAvailable nor MemFree")?
                + field("Buffers").unwrap_or(0)
                + field("Cached").unwrap_or(0)
        }
    };
    let used = total.saturating_sub(available);
    Ok(used as f64 * 100.0 / total as f64)
}

// ---------------------------------------------------------------------------------------------
// disk_used

/// Blocks of a file system, as statvfs(3) counts them (in fragments of one size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskBlocks {
    pub total: u64,
    pub free: u64,
    /// Free for unprivileged users (the root reserve excluded).
    pub available: u64,
}

/// Used space in percent, the way `df` computes `Use%`: used over what users can have (used
/// plus available), so a disk whose root reserve is all that is left reads 100 %.
pub fn disk_used(b: DiskBlocks) -> Result<f64, String> {
    let used = b.total.saturating_sub(b.free);
    let usable = used + b.available;
    if usable == 0 {
        return Err("the file system reports no blocks (a pseudo file system?)".into());
    }
    Ok(used as f64 * 100.0 / usable as f64)
}

fn statvfs(path: &Path) -> Result<DiskBlocks, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the struct's size, which statvfs fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("unavailable: {} does not exist", path.display())
            }
            _ => format!("cannot stat the file system of {}: {e}", path.display()),
        });
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t is 64 bits here, but 32 on 32-bit targets such as armv7 Raspberry Pi OS.
    #[allow(clippy::unnecessary_cast)]
    Ok(DiskBlocks {
        total: st.f_blocks as u64,
        free: st.f_bfree as u64,
        available: st.f_bavail as u64,
    })
}

/// Disk space in use on the file system holding `path` (default `/`), 0–100 %.
pub struct DiskUsed {
    path: PathBuf,
}

impl DiskUsed {
    pub fn new(path: Option<PathBuf>) -> DiskUsed {
        DiskUsed {
            path: path_or(path, "/"),
        }
    }
}

impl Sensor for DiskUsed {
    fn kind(&self) -> &'static str {
        "disk_used"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let used = disk_used(statvfs(&self.path)?)
            .map_err(|why| format!("{}: {why}", self.path.display()))?;
        Ok(vec![Reading::new(round1(used), "%")])
    }
}

// ---------------------------------------------------------------------------------------------
// uptime

/// `12345.67 23456.78`: seconds since boot, then idle seconds summed over the cores.
pub fn parse_uptime(text: &str) -> Result<f64, String> {
    let first = text.split_whitespace().next().ok_or("empty")?;
    first
        .parse::<f64>()
        .map_err(|_| format!("{first:?} is not a number"))
}

// ---------------------------------------------------------------------------------------------
// wifi_signal

/// The signal level of `interface` (the first listed when `None`), in dBm, from
/// /proc/net/wireless:
///
/// ```text
/// Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE
///  face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22
///  wlan0: 0000   70.  -40.  -256        0      0      0      0      0        0
/// ```
pub fn parse_wireless(text: &str, interface: Option<&str>) -> Result<f64, String> {
    let rows: Vec<(&str, &str)> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, rest)| (name.trim(), rest))
        .collect();
    let (name, rest) = match interface {
        Some(want) => rows.iter().find(|(name, _)| *name == want).ok_or_else(|| {
            format!("unavailable: no wireless interface {want} in /proc/net/wireless")
        })?,
        None => rows
            .first()
            .ok_or("unavailable: no wireless interface (none in /proc/net/wireless)")?,
    };
    // status, link quality, level, noise, …; values end in '.' when updated since last read.
    let level = rest
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| format!("{name}: no signal level"))?;
    let level: f64 = level
        .trim_end_matches('.')
        .parse()
        .map_err(|_| format!("{name}: signal level {level:?} is not a number"))?;
    if level >= 0.0 {
        // cfg80211 drivers report dBm, always negative; 0 means no signal measured.
        return Err(format!(
            "{name} reports no signal (not connected to an access point?)"
        ));
    }
    Ok(level)
}

/// The Wi-Fi signal level in dBm (-30 excellent, -67 good, -80 barely usable).
pub struct WifiSignal {
    path: PathBuf,
    interface: Option<String>,
}

impl WifiSignal {
    pub fn new(path: Option<PathBuf>, interface: Option<String>) -> WifiSignal {
        WifiSignal {
            path: path_or(path, "/proc/net/wireless"),
            interface,
        }
    }
}

impl Sensor for WifiSignal {
    fn kind(&self) -> &'static str {
        "wifi_signal"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let text = read_file(&self.path).map_err(|why| {
            if why.starts_with("unavailable:") {
                format!("{why} (a kernel without wireless extensions, or no Wi-Fi)")
            } else {
                why
            }
        })?;
        let dbm = parse_wireless(&text, self.interface.as_deref())?;
        Ok(vec![Reading::new(dbm, "dBm")])
    }
}

// ---------------------------------------------------------------------------------------------
// undervoltage

/// The hwmon directory of the Raspberry Pi's voltage monitor (the `raspberrypi-hwmon` driver,
/// named `rpi_volt`), if there is one.
fn find_rpi_volt(hwmon: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(hwmon)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .find(|d| std::fs::read_to_string(d.join("name")).is_ok_and(|n| n.trim() == "rpi_volt"))
}

/// 1 while the supply is below the Pi's minimum (about 4.63 V), else 0: the kernel's
/// `rpi_volt` hwmon `in0_lcrit_alarm`, which the firmware updates every couple of seconds.
pub struct Undervoltage {
    /// The alarm file, when configured; otherwise found under /sys/class/hwmon at each read
    /// (hwmon numbers change from boot to boot).
    path: Option<PathBuf>,
}

impl Undervoltage {
    pub fn new(path: Option<PathBuf>) -> Undervoltage {
        Undervoltage { path }
    }
}

impl Sensor for Undervoltage {
    fn kind(&self) -> &'static str {
        "undervoltage"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let file = match &self.path {
            Some(p) => p.clone(),
            None => find_rpi_volt(Path::new("/sys/class/hwmon"))
                .ok_or(
                    "unavailable: no Raspberry Pi voltage monitor \
                     (no hwmon named rpi_volt in /sys/class/hwmon)",
                )?
                .join("in0_lcrit_alarm"),
        };
        let text = read_file(&file)?;
        match text.trim() {
            "0" => Ok(vec![Reading::new(0.0, "")]),
            "1" => Ok(vec![Reading::new(1.0, "")]),
            other => Err(format!("{} holds {other:?}, not 0 or 1", file.display())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// throttled

/// The firmware's throttling word: `throttled=0x50005` (vcgencmd), or the bare hex digits the
/// old sysfs file holds (`50005`).
pub fn parse_throttled(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let t = t.strip_prefix("throttled=").unwrap_or(t);
    let hex = t.strip_prefix("0x").unwrap_or(t);
    u32::from_str_radix(hex, 16).map_err(|_| format!("{t:?} is not a hexadecimal number"))
}

/// The four published flags of the throttling word, in [`Throttled`]'s quantity order:
/// under-voltage now (bit 0), throttled now (bits 1-3: frequency capped, throttled, soft
/// temperature limit), and the same two since boot (bit 16; bits 17-19).
pub fn throttled_flags(word: u32) -> [bool; 4] {
    [
        word & 0x1 != 0,
        word & 0xe != 0,
        word & 0x1_0000 != 0,
        word & 0xe_0000 != 0,
    ]
}

/// How long `vcgencmd` may take before it is given up on (it answers in milliseconds).
const VCGENCMD_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `vcgencmd get_throttled`, with a deadline so a wedged firmware interface cannot stall
/// the sensor forever.
fn vcgencmd_get_throttled() -> Result<String, String> {
    let mut child = Command::new("vcgencmd")
        .arg("get_throttled")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "unavailable: vcgencmd is not installed (it comes \
                 with Raspberry Pi OS; elsewhere install raspi-utils or libraspberrypi-bin)"
                .to_string(),
            _ => format!("cannot run vcgencmd: {e}"),
        })?;
    let deadline = Instant::now() + VCGENCMD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "vcgencmd get_throttled did not answer within {VCGENCMD_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("cannot wait for vcgencmd: {e}")),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    if !status.success() {
        let said = err
            .lines()
            .chain(out.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        return Err(format!(
            "unavailable: vcgencmd get_throttled failed ({status}): {said}"
        ));
    }
    Ok(out)
}

/// The firmware's under-voltage and throttling flags, four 0/1 quantities (see
/// [`throttled_flags`]). Read with `vcgencmd get_throttled`, or from `path` when configured (a
/// file holding the word in hex, such as the deprecated
/// /sys/devices/platform/soc/soc:firmware/get_throttled).
pub struct Throttled {
    path: Option<PathBuf>,
}

impl Throttled {
    pub const QUANTITIES: [&'static str; 4] = [
        "undervoltage",
        "throttled",
        "undervoltage_occurred",
        "throttled_occurred",
    ];

    pub fn new(path: Option<PathBuf>) -> Throttled {
        Throttled { path }
    }
}

impl Sensor for Throttled {
    fn kind(&self) -> &'static str {
        "throttled"
    }

    fn read(&mut self) -> Result<Vec<Reading>, String> {
        let (text, from) = match &self.path {
            Some(p) => (read_file(p)?, p.display().to_string()),
            None => (
                vcgencmd_get_throttled()?,
                "vcgencmd get_throttled".to_string(),
            ),
        };
        let word = parse_throttled(&text).map_err(|why| format!("{from}: {why}"))?;
        Ok(Self::QUANTITIES
            .iter()
            .zip(throttled_flags(word))
            .map(|(q, on)| Reading::of(q, if on { 1.0 } else { 0.0 }, ""))
            .collect())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn temp_file(label: &str, content: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "pifleet-health-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("source");
        std::fs::write(&file, content).unwrap();
        (dir, file)
    }

    #[test]
    fn cpu_usage_is_the_busy_share_of_the_ticks_between_two_samples() {
        let a = parse_proc_stat(
            "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\nintr 1\n",
        )
        .unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        // 100 more ticks, 30 of them busy (user 20, system 10), 70 idle or waiting on I/O.
        let b = parse_proc_stat("cpu  120 0 60 860 60 0 0 0 0 0\n").unwrap();
        assert_eq!(cpu_usage(a, b), 30.0);
        assert_eq!(cpu_usage(b, b), 0.0, "no ticks, no usage");
        assert_eq!(
            cpu_usage(b, a),
            0.0,
            "counters that went back (CPU hot-unplug)"
        );
        assert!(parse_proc_stat("intr 1\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 x\n").is_err());
    }

    #[test]
    fn cpu_usage_keeps_its_previous_sample_between_reads() {
        let (dir, file) = temp_file("stat", "cpu  100 0 50 800 50 0 0 0 0 0\n");
        let mut s = CpuUsage::new(Some(file.clone()));
        let started = Instant::now();
        assert_eq!(s.read().unwrap(), vec![Reading::new(0.0, "%")]);
        assert!(
            started.elapsed() >= FIRST_WINDOW,
            "the first read takes two samples"
        );
        std::fs::write(&file, "cpu  190 0 50 810 50 0 0 0 0 0\n").unwrap();
        let started = Instant::now();
        assert_eq!(s.read().unwrap(), vec![Reading::new(90.0, "%")]);
        assert!(started.elapsed() < FIRST_WINDOW, "later reads take one");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(s.read().unwrap_err().starts_with("unavailable:"));
    }

    #[test]
    fn load_memory_and_uptime_fixtures() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Ok(0.52));
        assert!(parse_loadavg("").is_err());
        let meminfo = "MemTotal:        3884508 kB\nMemFree:          269600 kB\n\
                       MemAvailable:    2913381 kB\nBuffers:          105160 kB\n\
                       Cached:          2446448 kB\n";
        assert_eq!(round1(parse_meminfo(meminfo).unwrap()), 25.0);
        // An old kernel without MemAvailable: free + buffers + cache.
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 100 kB\nCached: 200 kB\n";
        assert_eq!(parse_meminfo(old), Ok(60.0));
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Ok(350735.47));
        assert!(parse_uptime("up").is_err());
    }

    #[test]
    fn disk_used_counts_like_df() {
        // 1000 blocks, 400 free of which 50 reserved for root: 600 used of 950 usable.
        let b = DiskBlocks {
            total: 1000,
            free: 400,
            available: 350,
        };
        assert_eq!(round1(disk_used(b).unwrap()), 63.2);
        let full = DiskBlocks {
            total: 1000,
            free: 50,
            available: 0,
        };
        assert_eq!(disk_used(full), Ok(100.0), "only the root reserve left");
        assert!(disk_used(DiskBlocks {
            total: 0,
            free: 0,
            available: 0
        })
        .is_err());
        let root = statvfs(Path::new("/")).unwrap();
        assert!(root.total > 0 && root.free <= root.total);
        let e = DiskUsed::new(Some("/nonexistent/pifleet".into()))
            .read()
            .unwrap_err();
        assert!(e.starts_with("unavailable: /nonexistent/pifleet"), "{e}");
    }

    #[test]
    fn wifi_signal_reads_dbm_of_the_first_or_the_named_interface() {
        let text = "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
                    face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n \
                    wlan0: 0000   70.  -40.  -256        0      0      0      0      0        0\n \
                    wlan1: 0000   30   -81   -256        0      0      0      0      0        0\n";
        assert_eq!(parse_wireless(text, None), Ok(-40.0));
        assert_eq!(parse_wireless(text, Some("wlan1")), Ok(-81.0));
        let e = parse_wireless(text, Some("wlan7")).unwrap_err();
        assert!(
            e.starts_with("unavailable: no wireless interface wlan7"),
            "{e}"
        );
        let headers_only: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        let e = parse_wireless(&headers_only, None).unwrap_err();
        assert!(e.starts_with("unavailable: no wireless interface"), "{e}");
        let idle = format!("{headers_only} wlan0: 0000    0     0     0        0      0      0      0      0        0\n");
        assert!(parse_wireless(&idle, None)
            .unwrap_err()
            .contains("no signal"));
    }

    #[test]
    fn a_missing_source_is_the_same_unavailable_reason_at_every_read() {
        let mut wifi = WifiSignal::new(Some("/nonexistent/wireless".into()), None);
        let first = wifi.read().unwrap_err();
        assert!(
            first.starts_with("unavailable: /nonexistent/wireless does not exist"),
            "{first}"
        );
        assert_eq!(wifi.read().unwrap_err(), first, "stable, so reported once");
        let mut volt = Undervoltage::new(Some("/nonexistent/in0_lcrit_alarm".into()));
        assert!(volt.read().unwrap_err().starts_with("unavailable:"));
        let mut throttled = Throttled::new(Some("/nonexistent/get_throttled".into()));
        assert!(throttled.read().unwrap_err().starts_with("unavailable:"));
    }

    #[test]
    fn undervoltage_reads_the_alarm_file_and_finds_rpi_volt_among_hwmons() {
        let (dir, file) = temp_file("volt", "1\n");
        assert_eq!(
            Undervoltage::new(Some(file.clone())).read().unwrap(),
            vec![Reading::new(1.0, "")]
        );
        std::fs::write(&file, "0\n").unwrap();
        assert_eq!(
            Undervoltage::new(Some(file.clone())).read().unwrap()[0].value,
            0.0
        );
        std::fs::write(&file, "maybe").unwrap();
        assert!(Undervoltage::new(Some(file)).read().is_err());
        for (n, name) in [(0, "cpu_thermal"), (1, "rpi_volt")] {
            let d = dir.join(format!("hwmon{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_rpi_volt(&dir), Some(dir.join("hwmon1")));
        assert_eq!(find_rpi_volt(&dir.join("hwmon0")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn throttled_splits_the_firmware_word_into_four_flags() {
        assert_eq!(parse_throttled("throttled=0x50005\n"), Ok(0x50005));
        assert_eq!(parse_throttled("50005\n"), Ok(0x50005));
        assert_eq!(parse_throttled("throttled=0x0\n"), Ok(0));
        assert!(parse_throttled("VCHI initialization failed").is_err());
        // Under-voltage and throttling now, and both since boot.
        assert_eq!(throttled_flags(0x50005), [true, true, true, true]);
        // Both happened since boot, neither now.
        assert_eq!(throttled_flags(0x50000), [false, false, true, true]);
        // Soft temperature limit now only.
        assert_eq!(throttled_flags(0x8), [false, true, false, false]);
        assert_eq!(throttled_flags(0), [false; 4]);

        let (dir, file) = temp_file("throttled", "10000\n");
        let readings = Throttled::new(Some(file)).read().unwrap();
        assert_eq!(
            readings,
            vec![
                Reading::of("undervoltage", 0.0, ""),
                Reading::of("throttled", 0.0, ""),
                Reading::of("undervoltage_occurred", 1.0, ""),
                Reading::of("throttled_occurred", 0.0, ""),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_machines_own_sources_read_plausibly() {
        // The machine running the tests is Linux: /proc is there.
        let usage = CpuUsage::new(None).read().unwrap()[0].value;
        assert!((0.0..=100.0).contains(&usage), "{usage}");
        let load = ProcValue::load_average(None).read().unwrap()[0].value;
        assert!(load >= 0.0, "{load}");
        let mem = ProcValue::memory_used(None).read().unwrap()[0].value;
        assert!(mem > 0.0 && mem < 100.0, "{mem}");
        let disk = DiskUsed::new(None).read().unwrap()[0].value;
        assert!((0.0..=100.0).contains(&disk), "{disk}");
        let up = ProcValue::uptime(None).read().unwrap()[0].value;
        assert!(up > 0.0, "{up}");
    }
}
