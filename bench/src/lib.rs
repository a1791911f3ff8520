//! The benchmarks' shared pieces; each benchmark is a binary of this crate.
//!
//! - [`fleet`]: simulated devices (real agents with the simulated GPIO backend, in this
//!   process) and a controller-side MQTT client.
//! - [`procfs`]: a process's memory, CPU time and descendants, from `/proc`.
//!
//! Binaries: `pifleet-bench` (src/main.rs, MQTT engines side by side), `pifleet-history-bench`
//! (the recorder and its queries), `pifleet-dashboard-bench` (the dashboard at 1,000 devices),
//! `pifleet-soak` (one broker under attack).

pub mod fleet;
pub mod procfs;

/// The `p` quantile (0 to 1) of an ascending slice; NaN when empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Where the workspace's binaries are: `given`, else this benchmark binary's directory.
pub fn bin_dir(given: Option<&std::path::Path>) -> std::path::PathBuf {
    given.map(|p| p.to_path_buf()).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("this binary's path");
        exe.parent().expect("a directory").to_path_buf()
    })
}

/// Named figures of one target, printed as they are measured.
#[derive(Default)]
pub struct Results {
    pub rows: Vec<(String, String)>,
}

impl Results {
    pub fn add(&mut self, k: impl Into<String>, v: impl Into<String>) {
        let (k, v) = (k.into(), v.into());
        println!("  {k}: {v}");
        self.rows.push((k, v));
    }
}

/// Prints one Markdown table with a column per target (`names[i]` over `all[i]`), rows in the
/// first target's order.
pub fn print_side_by_side(names: &[&str], all: &[Results]) {
    let mut header = format!("| {:<52} |", "measure");
    for n in names {
        header.push_str(&format!(" {n:<32} |"));
    }
    println!("{header}");
    println!(
        "|{}|{}",
        "-".repeat(54),
        format!("{}|", "-".repeat(34)).repeat(names.len())
    );
    let Some(first) = all.first() else { return };
    for (i, (k, _)) in first.rows.iter().enumerate() {
        let mut line = format!("| {k:<52} |");
        for r in all {
            line.push_str(&format!(
                " {:<32} |",
                r.rows.get(i).map(|x| x.1.as_str()).unwrap_or("-")
            ));
        }
        println!("{line}");
    }
}

/// `1234567` as `1,234,567`, as docs/performance.md writes numbers.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(pct(&v, 0.5), 3.0);
        assert_eq!(pct(&v, 1.0), 5.0);
        assert!(pct(&[], 0.5).is_nan());
    }

    #[test]
    fn thousands_are_grouped_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
