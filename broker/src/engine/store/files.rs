//! The state directory on disk: its lock, reading every file back ([`load`]) and writing the
//! two kinds of file, snapshots and log segments (layout in docs/broker.md).
//!
//! - `lock`: held with `flock` for the broker's lifetime (it holds the broker's PID, for the
//!   error another broker prints);
//! - `snapshot`: the whole state at the start of generation G (written to `snapshot.tmp`,
//!   fsynced, renamed over the old one);
//! - `log.G`, `log.G+1`, …: the changes since, one segment per generation.
//!
//! Recovery reads the snapshot, then every segment of its generation or later, in order. Each
//! file contributes its intact prefix; a damaged file is reported in one line and copied to
//! `<name>.damaged` before the next snapshot replaces it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::record::{read_frames, Damage, FileKind, Record, Walk, Why};
use super::recover::Recovered;

pub const SNAPSHOT: &str = "snapshot";
const LOCK: &str = "lock";
const LOG_PREFIX: &str = "log.";

/// A state directory this process holds the lock of.
#[derive(Debug)]
pub struct StateDir {
    pub path: PathBuf,
    _lock: File,
}

/// Why a state directory could not be used.
#[derive(Debug)]
pub enum Unusable {
    /// Another process holds its lock (its PID, if it wrote one).
    Locked(Option<u32>),
    Io(io::Error),
}

impl StateDir {
    /// Creates `path` if needed (mode 0700) and takes its lock without waiting.
    pub fn lock(path: &Path) -> Result<StateDir, Unusable> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(path).map_err(Unusable::Io)?;
        let lock_path = path.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(Unusable::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Unusable::Locked(text.trim().parse().ok()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(Unusable::Io(e)),
        }
        file.set_len(0).map_err(Unusable::Io)?;
        let _ = writeln!(file, "{}", std::process::id());
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: file,
        })
    }

    fn log_path(&self, generation: u64) -> PathBuf {
        self.path.join(format!("{LOG_PREFIX}{generation}"))
    }

    /// Makes renames and new files in the directory durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    /// Starts log segment `generation`: its header is written and fsynced under a temporary
    /// name and renamed, so a segment never exists without its header.
    pub fn create_log(&self, generation: u64) -> io::Result<LogFile> {
        let path = self.log_path(generation);
        let tmp = path.with_extension(format!("{generation}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut header = Vec::new();
        Record::Header {
            kind: FileKind::Log,
            generation,
        }
        .encode(&mut header);
        file.write_all(&header)?;
        file.sync_data()?;
        fs::rename(&tmp, &path)?;
        self.sync_dir()?;
        Ok(LogFile {
            file,
            bytes: header.len() as u64,
        })
    }

    /// Writes the snapshot of `generation`: `write` appends its records (after the header)
    /// and returns how many; the end record follows. Durable when this returns, and only then
    /// does it replace the previous snapshot. Returns the file's size.
    pub fn write_snapshot(
        &self,
        generation: u64,
        write: impl FnOnce(&mut dyn FnMut(&Record<'_>) -> io::Result<()>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let path = self.path.join(SNAPSHOT);
        let tmp = self.path.join("snapshot.tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        let mut records = 0u64;
        let mut bytes = 0u64;
        let mut put = |r: &Record<'_>| -> io::Result<()> {
            buf.clear();
            r.encode(&mut buf);
            records += 1;
            bytes += buf.len() as u64;
            out.write_all(&buf)
        };
        put(&Record::Header {
            kind: FileKind::Snapshot,
            generation,
        })?;
        write(&mut put)?;
        buf.clear();
        Record::End { records }.encode(&mut buf);
        bytes += buf.len() as u64;
        out.write_all(&buf)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        self.sync_dir()?;
        Ok(bytes)
    }

    /// Deletes the log segments older than `generation` (a snapshot of it is durable).
    pub fn remove_logs_before(&self, generation: u64) -> io::Result<()> {
        for (g, path) in self.logs()? {
            if g < generation {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    /// The log segments present, oldest first.
    fn logs(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut logs = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(g) = name
                .strip_prefix(LOG_PREFIX)
                .and_then(|g| g.parse::<u64>().ok())
            {
                logs.push((g, entry.path()));
            }
        }
        logs.sort();
        Ok(logs)
    }
}

/// The log segment being appended to.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    /// Its size so far.
    pub bytes: u64,
}

impl LogFile {
    /// Appends `records` (whole frames) and waits until they are on disk.
    pub fn commit(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.file.sync_data()?;
        self.bytes += records.len() as u64;
        Ok(())
    }
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub recovered: Recovered,
    /// The newest generation seen (0 for an empty directory): the next one is this + 1.
    pub generation: u64,
    /// Files read and bytes of intact records in them.
    pub files: usize,
    pub bytes: u64,
    /// Files that were damaged (reported, copied aside).
    pub damaged: usize,
}

/// Reads the snapshot and the log segments that follow it. Damage is reported, never an error;
/// only a directory that cannot be listed is.
pub fn load(dir: &StateDir) -> io::Result<Loaded> {
    let mut loaded = Loaded::default();
    for entry in fs::read_dir(&dir.path)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".tmp"))
        {
            // Left by a crash while it was written: never part of the state.
            let _ = fs::remove_file(entry.path());
        }
    }
    let snapshot = dir.path.join(SNAPSHOT);
    let mut since = 0;
    if snapshot.exists() {
        let mut generation = None;
        let walk = read_file(&snapshot, &mut loaded, |r| {
            if let Record::Header {
                kind: FileKind::Snapshot,
                generation: g,
            } = r
            {
                generation = Some(*g);
                Ok(())
            } else {
                Err(format!("{r:?} is not a snapshot header"))
            }
        });
        if let Some(mut walk) = walk {
            if walk.damage.is_none() && !loaded.recovered.ended {
                walk.damage = Some(Damage {
                    offset: walk.intact,
                    why: Why::NoEnd,
                });
            }
            report(&snapshot, &walk, &mut loaded);
        }
        // A snapshot whose header is lost: every segment present is newer than nothing.
        since = generation.unwrap_or(0);
        loaded.generation = since;
    }
    for (g, path) in dir.logs()? {
        if g < since {
            // Replaced by the snapshot; a crash came before it could be deleted.
            continue;
        }
        let walk = read_file(&path, &mut loaded, |r| match r {
            Record::Header {
                kind: FileKind::Log,
                generation,
            } if *generation == g => Ok(()),
            other => Err(format!("{other:?} is not the header of segment {g}")),
        });
        if let Some(walk) = walk {
            report(&path, &walk, &mut loaded);
        }
        loaded.generation = loaded.generation.max(g);
    }
    Ok(loaded)
}

/// Applies one file's intact records; `header` checks its first. `None` if it cannot be opened
/// (reported here).
fn read_file(
    path: &Path,
    loaded: &mut Loaded,
    mut header: impl FnMut(&Record<'_>) -> Result<(), String>,
) -> Option<Walk> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "state file {} cannot be read ({e}): skipped",
                path.display()
            );
            return None;
        }
    };
    let mut bad_header = None;
    let mut first = true;
    let recovered = &mut loaded.recovered;
    let walked = read_frames(&mut BufReader::new(file), |r| {
        if std::mem::take(&mut first) {
            if let Err(why) = header(&r) {
                bad_header = Some(why);
            }
            return;
        }
        if bad_header.is_none() {
            recovered.apply(r);
        }
    });
    let mut walk = match walked {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(
                "state file {} cannot be read ({e}): skipped",
                path.display()
            );
            return None;
        }
    };
    if let Some(why) = bad_header {
        walk = Walk {
            records: 0,
            intact: 0,
            damage: Some(Damage {
                offset: 0,
                why: Why::Header(why),
            }),
        };
    } else if walk.records == 0 && walk.damage.is_none() {
        walk.damage = Some(Damage {
            offset: 0,
            why: Why::Header("the file is empty".into()),
        });
    }
    loaded.files += 1;
    loaded.bytes += walk.intact;
    Some(walk)
}

/// The one line a damaged file gets, and a copy of it set aside for inspection.
fn report(path: &Path, walk: &Walk, loaded: &mut Loaded) {
    let Some(damage) = &walk.damage else { return };
    loaded.damaged += 1;
    let size = fs::metadata(path).map_or(0, |m| m.len());
    let aside = PathBuf::from(format!("{}.damaged", path.display()));
    let kept = match fs::copy(path, &aside) {
        Ok(_) => format!("a copy is kept as {}", aside.display()),
        Err(e) => format!("could not keep a copy ({e})"),
    };
    tracing::warn!(
        "state file {} is damaged at byte offset {} of {size} ({}): kept the intact records \
         before it ({}), dropped the remaining {} bytes; {kept}",
        path.display(),
        damage.offset,
        damage.why,
        walk.records.saturating_sub(1),
        size.saturating_sub(damage.offset),
    );
}
