//! How llm-cxr writes what it makes, so that a crash or a second run never leaves a reader with
//! a torn or mixed output:
//! - [`write_atomic`]: one file, written under a unique temporary name beside it, synced, renamed
//!   over the target, and the folder synced;
//! - [`replace_dir_atomic`]: a whole folder (a model export, a set of shards) written into a
//!   unique temporary sibling, every file synced, then swapped into place in one rename, so the
//!   target is the old folder or the new one, never a mix;
//! - [`OutputLock`]: an advisory lock on an output folder, so a second run writing to the same
//!   folder fails at once, naming the folder and the other process.
//!
//! Temporary names come from `tempfile` (random suffixes), so two runs on one folder never write
//! to each other's temporaries.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a locked folder.
pub const LOCK_FILE: &str = ".llm-cxr.lock";

/// Syncs a folder's entry list (after a rename into it). Not all platforms can open folders;
/// where they cannot, the rename itself is what there is.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A hidden prefix for temporaries beside `path`: `.<name>.`.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// Writes `bytes` to `path` atomically: a uniquely named temporary file in the same folder,
/// synced, then renamed over the target, and the folder synced, so a reader (or a resumed run)
/// never sees a half-written file. The one file writer of llm-cxr.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Syncs every file below `dir`, and every folder, bottom up.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Swaps two existing paths in one step (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Writes a whole folder atomically: `write` fills a fresh temporary sibling of `dir`; every file
/// in it is then synced and the folder takes `dir`'s place in one rename (an exchange with the
/// old folder on Linux, which is then removed), and the parent is synced. A crash at any point
/// leaves `dir` as it was or as `write` made it, never a mix; an error from `write` leaves `dir`
/// untouched. The folder is the export: an old `dir` is replaced whole, so one that holds files
/// no export wrote (a user's `models/`, say) is refused rather than emptied.
pub fn replace_dir_atomic<E: From<std::io::Error>>(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent_of(dir);
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(&temp_prefix(dir))
        .suffix(".tmp")
        .tempdir_in(parent)?;
    write(staging.path())?;
    std::fs::write(staging.path().join(EXPORT_MARKER), b"")?;
    check_replaceable(dir, staging.path())?;
    sync_tree(staging.path())?;
    let staged = staging.keep();
    let swapped = match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => match exchange(&staged, dir) {
            Ok(()) => true,
            // No exchange here: move the old folder aside first (a crash between the two
            // renames leaves the old folder under its temporary name, and the new one too).
            Err(_) => {
                let old = tempfile::Builder::new()
                    .prefix(&temp_prefix(dir))
                    .suffix(".old")
                    .tempdir_in(parent)?
                    .keep();
                std::fs::remove_dir(&old)?;
                std::fs::rename(dir, &old)?;
                std::fs::rename(&staged, dir)?;
                sync_dir(parent)?;
                std::fs::remove_dir_all(&old)?;
                return Ok(());
            }
        },
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a folder", dir.display()),
            )
            .into());
        }
        Err(_) => {
            std::fs::rename(&staged, dir)?;
            false
        }
    };
    sync_dir(parent)?;
    if swapped {
        // `staged` now holds the old folder.
        std::fs::remove_dir_all(&staged)?;
    }
    Ok(())
}

/// The empty file every whole-folder export holds: a folder with it was written by
/// [`replace_dir_atomic`] and may be replaced whole.
pub const EXPORT_MARKER: &str = ".llm-cxr-export";

/// A folder may be replaced whole when it is missing, empty, an export (it holds
/// [`EXPORT_MARKER`]), or an export from before the marker: plain files only, one of them a name
/// the new export writes too. Anything else (a user's `models/` with models in it, say) holds
/// what the swap would delete: refused.
fn check_replaceable(dir: &Path, staged: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let (mut foreign, mut shared, mut folders) = (Vec::new(), false, false);
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name == EXPORT_MARKER {
            return Ok(());
        }
        folders |= entry.file_type()?.is_dir();
        if staged.join(&name).exists() {
            shared = true;
        } else {
            foreign.push(name.to_string_lossy().into_owned());
        }
    }
    if foreign.is_empty() || (shared && !folders) {
        return Ok(());
    }
    foreign.sort();
    foreign.truncate(5);
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} holds files this export would delete ({}, ...); it is replaced whole, so give it a new or empty folder",
            dir.display(),
            foreign.join(", ")
        ),
    ))
}

/// Why an output folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{dir} is in use by another llm-cxr run ({holder}); wait for it to end or choose another output folder")]
    InUse { dir: PathBuf, holder: String },
    #[error("{path}: cannot lock: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An advisory lock on an output folder, held until dropped (or the process ends, even by a
/// crash: the operating system releases it). The lock file holds the holder's pid, which the
/// refusal names.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Locks `dir` (created if missing) through `dir/.llm-cxr.lock`.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::at(&dir.join(LOCK_FILE), dir)
    }

    /// Locks `dir` through a lock file beside it (`.<name>.lock`), for a folder that is replaced
    /// whole ([`replace_dir_atomic`]) and so cannot hold its own lock.
    pub fn beside(dir: &Path) -> Result<Self, LockError> {
        let parent = parent_of(dir);
        std::fs::create_dir_all(parent).map_err(|source| LockError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let name = format!("{}lock", temp_prefix(dir));
        Self::at(&parent.join(name), dir)
    }

    fn at(path: &Path, dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_string(),
                };
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(OutputLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
