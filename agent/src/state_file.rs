//! The local state file behind `initial = "restore"`: the last on/off of every output, so a Pi
//! that reboots brings its LED back without anyone keeping a retained command on the broker.
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the directory): a power cut in the
//! middle of a write leaves the previous file, never a truncated one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Output name to on/off.
pub type Saved = BTreeMap<String, bool>;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({message}); starting from the configured defaults")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Loads the saved states. A missing file is a first start (empty); a corrupt or unreadable one is
/// an error the caller reports before carrying on with defaults.
pub fn load(path: &Path) -> Result<Saved, StateFileError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateFileError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::new()),
        Err(source) => Err(StateFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces the file with `saved`, atomically.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateFileError> {
    let err = |source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(saved).expect("a map of bools serializes");
    json.push(b'\n');
    pifleet_client::files::write_atomic(path, &json, 0o644).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = std::env::temp_dir().join(format!("pifleet-state-{}", std::process::id()));
        let path = dir.join("sub/kitchen.json");
        assert_eq!(load(&path).unwrap(), Saved::new());
        let mut s = Saved::new();
        s.insert("led".into(), true);
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
