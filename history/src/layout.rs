//! Where files live: `DATA_DIR/<device>/<YYYY-MM-DD>.csv`, one file per device per UTC day.
//!
//! One directory per device so that `ls` answers "which devices", `rm -r DATA_DIR/kitchen`
//! forgets one, and retention is a file deletion rather than a rewrite. Device names are
//! [`Name`]s (ASCII letters, digits, `-`, `_`, `.`, never starting with `.` or `-`), so a
//! device directory is always one plain path component inside `DATA_DIR`: never `..`, never
//! absolute, never hidden.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use pifleet_proto::Name;

use crate::time::Day;

/// The history of a recorder run by systemd with `StateDirectory=pifleet` (the README's
/// units), which is where `pifleet history` also looks when the user's own default is absent.
pub const SYSTEM_DIR: &str = "/var/lib/pifleet/history";

/// The old name of [`SYSTEM_DIR`], from before the default became [`default_dir`].
#[deprecated(note = "use default_dir() (where a recorder writes) or SYSTEM_DIR")]
pub const DEFAULT_DIR: &str = SYSTEM_DIR;

/// Overrides the default directory for the CLI (`pifleet history`, `pifleet record`).
pub const DIR_ENV: &str = "PIFLEET_HISTORY_DIR";

/// Where a recorder writes when no directory is configured: the state directory of the
/// program, the same rule the agent uses for its state file, plus `history`:
/// 1. `$STATE_DIRECTORY/history` (set by systemd for a unit with `StateDirectory=`; the first
///    entry if it lists several);
/// 2. `$XDG_STATE_HOME/pifleet/history`;
/// 3. `$HOME/.local/state/pifleet/history`;
/// 4. [`SYSTEM_DIR`] when none of them is set (relative paths are ignored, as the XDG
///    specification asks).
pub fn default_dir() -> PathBuf {
    default_dir_in(&|k| std::env::var_os(k))
}

/// [`default_dir`] with the environment passed in, for tests.
pub fn default_dir_in(env: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state = env("STATE_DIRECTORY").and_then(|v| {
        let first = v
            .to_str()
            .map_or(v.clone(), |s| s.split(':').next().unwrap_or("").into());
        absolute(Some(first))
    });
    if let Some(d) = state {
        return d.join("history");
    }
    if let Some(d) = absolute(env("XDG_STATE_HOME")) {
        return d.join("pifleet").join("history");
    }
    if let Some(h) = absolute(env("HOME")) {
        return h.join(".local/state/pifleet/history");
    }
    PathBuf::from(SYSTEM_DIR)
}

/// Where a reader run on the broker's machine looks when no directory is given, in order:
/// [`default_dir`] (a broker run by this user, or in this unit), then [`SYSTEM_DIR`] (a
/// broker run by systemd, whose `STATE_DIRECTORY` a login shell does not have).
pub fn search_dirs() -> Vec<PathBuf> {
    search_dirs_in(&|k| std::env::var_os(k))
}

/// [`search_dirs`] with the environment passed in, for tests.
pub fn search_dirs_in(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let mut dirs = vec![default_dir_in(env)];
    if dirs[0] != Path::new(SYSTEM_DIR) {
        dirs.push(PathBuf::from(SYSTEM_DIR));
    }
    dirs
}

/// The first of [`search_dirs`] that is a directory, or the first of them if none is.
pub fn find_dir() -> PathBuf {
    let dirs = search_dirs();
    dirs.iter().find(|d| d.is_dir()).unwrap_or(&dirs[0]).clone()
}

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

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_default_directory_is_the_state_directory_of_the_service_or_the_user() {
        let home = [("HOME", "/home/pi")];
        assert_eq!(
            default_dir_in(&env(&home)),
            Path::new("/home/pi/.local/state/pifleet/history")
        );
        let xdg = [("HOME", "/home/pi"), ("XDG_STATE_HOME", "/st")];
        assert_eq!(default_dir_in(&env(&xdg)), Path::new("/st/pifleet/history"));
        let unit = [
            ("HOME", "/home/pi"),
            ("XDG_STATE_HOME", "/st"),
            ("STATE_DIRECTORY", "/var/lib/pifleet:/var/lib/other"),
        ];
        assert_eq!(
            default_dir_in(&env(&unit)),
            Path::new("/var/lib/pifleet/history")
        );
        let relative = [("XDG_STATE_HOME", "state"), ("HOME", "")];
        assert_eq!(default_dir_in(&env(&relative)), Path::new(SYSTEM_DIR));
        assert_eq!(default_dir_in(&env(&[])), Path::new(SYSTEM_DIR));
    }

    #[test]
    fn readers_also_look_where_a_systemd_broker_writes() {
        assert_eq!(
            search_dirs_in(&env(&[("HOME", "/root")])),
            [
                PathBuf::from("/root/.local/state/pifleet/history"),
                PathBuf::from(SYSTEM_DIR)
            ]
        );
        assert_eq!(search_dirs_in(&env(&[])), [PathBuf::from(SYSTEM_DIR)]);
    }
}
