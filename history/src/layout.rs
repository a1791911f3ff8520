//! Where files live: `DATA_DIR/<device>/<YYYY-MM-DD>.csv`, one file per device per UTC day.
//!
//! One directory per device so that `ls` answers "which devices", `rm -r DATA_DIR/kitchen`
//! forgets one, and retention is a file deletion rather than a rewrite. Device names are
//! [`Name`]s (ASCII letters, digits, `-`, `_`, `.`, never starting with `.` or `-`), so a
//! device directory is always one plain path component inside `DATA_DIR`: never `..`, never
//! absolute, never hidden.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use pifleet_proto::Name;

use crate::time::Day;

/// Where the recorder writes and `pifleet history` reads when no directory is given: the
/// broker machine's state directory (systemd's `StateDirectory=pifleet`).
pub const DEFAULT_DIR: &str = "/var/lib/pifleet/history";

/// Overrides [`DEFAULT_DIR`] for the CLI (and, later, the recorder service).
pub const DIR_ENV: &str = "PIFLEET_HISTORY_DIR";

/// The directory of one device's files.
pub fn device_dir(dir: &Path, device: &Name) -> PathBuf {
    dir.join(device.as_str())
}

/// `DATA_DIR/<device>/<YYYY-MM-DD>.csv`.
pub fn day_file(dir: &Path, device: &Name, day: Day) -> PathBuf {
    device_dir(dir, device).join(format!("{day}.csv"))
}

/// The day of a history file's name (`2026-11-22.csv`); `None` for anything else, which the
/// recorder and the reader leave alone.
pub fn parse_day_file(file_name: &OsStr) -> Option<Day> {
    file_name.to_str()?.strip_suffix(".csv")?.parse().ok()
}

/// A file's path relative to `DATA_DIR`, as reports show it (`kitchen/2026-11-22.csv`).
pub fn relative(device: &Name, day: Day) -> String {
    format!("{device}/{day}.csv")
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn files_are_one_per_device_per_day_inside_the_directory() {
        let d = Name::new("kitchen").unwrap();
        let day: Day = "2026-11-22".parse().unwrap();
        assert_eq!(
            day_file(Path::new("/data"), &d, day),
            Path::new("/data/kitchen/2026-11-22.csv")
        );
        assert_eq!(parse_day_file(OsStr::new("2026-11-22.csv")), Some(day));
        for other in [
            "2026-11-22.csv.bak",
            "notes.csv",
            "2026-11-22",
            "2026-02-30.csv",
        ] {
            assert_eq!(parse_day_file(OsStr::new(other)), None, "{other}");
        }
        assert_eq!(relative(&d, day), "kitchen/2026-11-22.csv");
    }
}
