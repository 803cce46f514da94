//! Guest locks on one machine: an `flock` on a host-side lock file under
//! `$WASMHOST_HOME/locks/<volume-id>/`, outside every volume, so a guest can
//! neither see nor delete it. `flock` belongs to the open file description:
//! two instances in one process exclude each other like two processes do, and
//! the kernel drops the lock when the file is closed — when the instance's
//! store is dropped after it returns, traps or times out, or when the process
//! dies.
//!
//! Lock files do not outlive their use. Whoever holds a lock unlinks its file
//! before letting go of it (on release, or when the instance ends), so a
//! guest taking many distinct locks leaves nothing behind. That makes the
//! file at a path change under a waiter: a waiter that wins the flock checks
//! that the path still names the file it locked (fstat against stat) and
//! starts over on the new file if not, so two holders never lock different
//! files for one path. A process that dies holding locks leaves their files;
//! housekeeping removes those ([`remove_unheld`]) under the same protocol
//! when it finds such a process.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LockError;
use crate::digest::sha256_hex;
use crate::home::Home;

/// How long a waiter sleeps between attempts, at first and at most: flock
/// has no wait that a future could await.
const FIRST_PAUSE: Duration = Duration::from_micros(200);
const LONGEST_PAUSE: Duration = Duration::from_millis(10);

/// A held lock: the locked file, and the path that names it (to unlink
/// before the lock is let go).
pub(super) struct LockFile {
    /// Kept open only to keep the flock: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Unlinked while still locked: anyone waiting on this file sees it
        // is no longer the one at `path` and locks that one instead. Gone
        // already if its volume was deleted meanwhile.
        let _ = fs::remove_file(&self.path);
    }
}

/// The lock file of `relative` (a path in volume `volume_id`).
fn lock_file_path(home: &Home, volume_id: &str, relative: &str) -> PathBuf {
    let digest = sha256_hex(relative.as_bytes());
    home.volume_locks_dir(volume_id)
        .join(format!("{digest}.lock"))
}

/// Waits up to `timeout` for the lock on `relative` in volume `volume_id`.
pub(super) async fn acquire(
    home: &Home,
    volume_id: &str,
    relative: &str,
    timeout: Duration,
) -> Result<LockFile, LockError> {
    let file_path = lock_file_path(home, volume_id, relative);
    let deadline = Instant::now().checked_add(timeout);
    let mut pause = FIRST_PAUSE;
    let mut replaced = false;
    loop {
        let file = open_lock_file(home, volume_id, &file_path)?;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(_)) => return Err(LockError::Io),
            }
            let now = Instant::now();
            let left = deadline.map_or(LONGEST_PAUSE, |d| d.saturating_duration_since(now));
            if left.is_zero() {
                return Err(LockError::Timeout);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
        if names_file(&file_path, &file) {
            return Ok(LockFile {
                _file: file,
                path: file_path,
            });
        }
        // Its holder unlinked it when letting go: lock the file that is
        // at the path now. Once more at least, whatever the timeout (the
        // lock was free a moment ago); past that, not beyond the timeout
        // however fast others take and let go of it.
        if replaced && deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(LockError::Timeout);
        }
        replaced = true;
    }
}

/// Opens (creating) the lock file at `path`. Its directory is made with
/// the volume; a home from before that gets it here, but only while the
/// volume exists, so a guest that outlives its deleted volume cannot
/// bring the directory back.
fn open_lock_file(home: &Home, volume_id: &str, path: &Path) -> Result<File, LockError> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match open() {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == ErrorKind::NotFound && home.volume_dir(volume_id).is_dir() => {
            match fs::create_dir(home.volume_locks_dir(volume_id)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(_) => return Err(LockError::Io),
            }
            open().map_err(|_| LockError::Io)
        }
        Err(_) => Err(LockError::Io),
    }
}

/// Whether `path` still names the file `file` is open on.
fn names_file(path: &Path, file: &File) -> bool {
    match (fs::metadata(path), file.metadata()) {
        (Ok(at_path), Ok(open)) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
        _ => false,
    }
}

/// Removes the lock files no one holds: what a process that died holding
/// locks left. Each is locked first and unlinked only if it is still the
/// file at its path, the protocol acquire follows, so a lock someone holds
/// or is about to take is never pulled from under them. (A cluster's lock
/// rows are not files: their next taker takes them over.)
pub fn remove_unheld(home: &Home) -> std::io::Result<()> {
    for volume in fs::read_dir(home.locks_dir())? {
        let Ok(files) = fs::read_dir(volume?.path()) else {
            continue;
        };
        for file in files {
            let path = file?.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() && names_file(&path, &file) {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(())
}
