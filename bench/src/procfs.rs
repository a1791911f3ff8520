//! A process as `/proc` shows it: resident memory now (VmRSS) and at its peak (VmHWM, which the
//! kernel keeps, so no spike between two samples is missed), CPU time and whether it is still
//! alive (its descendants: `pifleet_tests::descendants`). The soak's sampler thread reads the
//! broker's memory four times a second and pulls the emergency brake when it passes the abort
//! threshold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One line of `/proc/<pid>/status`, in MB (the file gives kB).
fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resident set size now.
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

/// The peak resident set size since the process started.
pub fn hwm_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

/// User + system CPU time in seconds (USER_HZ = 100 on Linux).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The machine's 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them (the machine
/// may be shared: this says how busy it was).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Whether `pid` is alive (a zombie, exited but not yet reaped, is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.get(s.rfind(')')? + 2..)?;
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// What the sampler saw.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// (seconds since the sampler started, VmRSS MB).
    pub rss: Vec<(f64, f64)>,
    /// When VmRSS passed the abort threshold, if it did.
    pub aborted_at: Option<(f64, f64)>,
    /// When the broker was first seen dead, if it was.
    pub died_at: Option<f64>,
}

impl Samples {
    /// The highest sampled VmRSS and when.
    pub fn max(&self) -> Option<(f64, f64)> {
        self.rss.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The highest sample in each window of `every` seconds.
    pub fn per_window(&self, every: f64) -> Vec<f64> {
        let mut out: Vec<f64> = Vec::new();
        for &(t, mb) in &self.rss {
            let i = (t / every) as usize;
            if out.len() <= i {
                out.resize(i + 1, f64::NAN);
            }
            if out[i].is_nan() || mb > out[i] {
                out[i] = mb;
            }
        }
        out
    }
}

/// Samples the broker's VmRSS every 250 ms on a thread of its own (so a busy runtime cannot
/// delay it) until `stop` is set. Sets `abort` once VmRSS passes `abort_mb`, or the broker is
/// gone.
pub fn sampler(
    pid: u32,
    abort_mb: f64,
    started: Instant,
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
) -> (Arc<Mutex<Samples>>, std::thread::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let out = samples.clone();
    let handle = std::thread::Builder::new()
        .name("rss-sampler".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = started.elapsed().as_secs_f64();
                let mut s = out.lock().unwrap();
                match rss_mb(pid) {
                    Some(mb) if alive(pid) => {
                        s.rss.push((t, mb));
                        if mb > abort_mb && s.aborted_at.is_none() {
                            s.aborted_at = Some((t, mb));
                            abort.store(true, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        if s.died_at.is_none() {
                            s.died_at = Some(t);
                        }
                        abort.store(true, Ordering::Relaxed);
                    }
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
        .expect("spawn the sampler thread");
    (samples, handle)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn this_process_is_alive_and_has_memory() {
        let me = std::process::id();
        assert!(alive(me));
        let (rss, hwm) = (rss_mb(me).unwrap(), hwm_mb(me).unwrap());
        assert!(rss > 0.0 && hwm >= rss);
        assert!(cpu_secs(me).is_some());
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn windows_keep_their_highest_sample() {
        let s = Samples {
            rss: vec![(0.1, 5.0), (0.9, 7.0), (1.2, 6.0), (3.5, 9.0)],
            ..Samples::default()
        };
        let w = s.per_window(1.0);
        assert_eq!(w[..2], [7.0, 6.0]);
        assert!(w[2].is_nan());
        assert_eq!(w[3], 9.0);
        assert_eq!(s.max(), Some((3.5, 9.0)));
    }
}
