//! The crate's errors. Reading returns them; writing never does (the recorder logs, counts and
//! retries instead, because a recorder that stops on a full disk records nothing afterwards).

use std::path::PathBuf;

use crate::time::TimeError;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The history directory itself is missing: most likely the wrong `--dir`, or this is not
    /// the machine the recorder runs on.
    #[error("history directory {} does not exist", .0.display())]
    NoDir(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotDir(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the time range is empty: since {since} is not before until {until}")]
    EmptyRange { since: String, until: String },
    #[error("the number of buckets must be between 1 and {max}, not {0}", max = crate::downsample::MAX_BUCKETS)]
    Buckets(usize),
    #[error("invalid recorder configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Time(#[from] TimeError),
}
