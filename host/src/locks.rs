//! Guest locks: `wasmhost:host/lock`, exclusive locks on paths inside
//! mounted volumes.
//!
//! Each lock is an `flock` on a host-side lock file under
//! `$WASMHOST_HOME/locks/<volume-id>/`, outside every volume, so a guest can
//! neither see nor delete it. `flock` belongs to the open file description:
//! two instances in one process exclude each other like two processes do, and
//! the kernel drops the lock when the file is closed — when the instance's
//! store is dropped after it returns, traps or times out, or when the process
//! dies.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::apps::Mount;
use crate::digest::sha256_hex;
use crate::home::Home;

/// The `error` enum of `wit/lock.wit`; `code()` is the wasip1 status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("timed out waiting for the lock")]
    Timeout,
    #[error("path is not inside a mounted volume")]
    NotInMount,
    #[error("path is inside a read-only mount")]
    ReadOnly,
    #[error("lock is not held by this instance")]
    NotHeld,
    #[error("lock is already held by this instance")]
    AlreadyHeld,
    #[error("path is empty, not UTF-8, or climbs out of its mount")]
    InvalidPath,
    #[error("the host could not create or lock its lock file")]
    Io,
}

impl LockError {
    pub fn code(self) -> i32 {
        self as i32 + 1
    }
}

/// A mount as the lock table sees it.
struct LockMount {
    guest_path: String,
    volume_id: String,
    read_only: bool,
}

/// The locks of one instance.
pub struct InstanceLocks {
    locks_root: Home,
    mounts: Vec<LockMount>,
    held: HashMap<String, File>,
    /// Set when the invocation is interrupted, so a waiting acquire gives up.
    cancelled: Arc<AtomicBool>,
    /// The instance's own deadline (its function's `timeout`). A wait in
    /// the host is out of reach of the epoch interruption that enforces it
    /// in guest code, so `acquire` never waits past it; the guest then traps
    /// at its next instruction.
    deadline: Instant,
}

impl InstanceLocks {
    pub fn new(
        home: &Home,
        mounts: &[Mount],
        cancelled: Arc<AtomicBool>,
        deadline: Instant,
    ) -> Self {
        Self {
            locks_root: home.clone(),
            mounts: mounts
                .iter()
                .map(|m| LockMount {
                    guest_path: m.guest_path.clone(),
                    volume_id: m.volume_id.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            held: HashMap::new(),
            cancelled,
            deadline,
        }
    }

    /// Waits up to `timeout` for the lock on `path`.
    pub fn acquire(&mut self, path: &str, timeout: Duration) -> Result<(), LockError> {
        let (key, file_path) = self.resolve(path)?;
        if self.held.contains_key(&key) {
            return Err(LockError::AlreadyHeld);
        }
        let file = open_lock_file(&file_path)?;
        let deadline = Instant::now()
            .checked_add(timeout)
            .map_or(self.deadline, |d| d.min(self.deadline));
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(_)) => return Err(LockError::Io),
            }
            let now = Instant::now();
            if now >= deadline || self.cancelled.load(Ordering::Relaxed) {
                return Err(LockError::Timeout);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        self.held.insert(key, file);
        Ok(())
    }

    /// Takes the lock on `path` if it is free.
    pub fn try_acquire(&mut self, path: &str) -> Result<bool, LockError> {
        match self.acquire(path, Duration::ZERO) {
            Ok(()) => Ok(true),
            Err(LockError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn release(&mut self, path: &str) -> Result<(), LockError> {
        let (key, _) = self.resolve(path)?;
        // Closing the file releases the flock.
        self.held.remove(&key).map(drop).ok_or(LockError::NotHeld)
    }

    /// The lock's identity (`volume-id/relative/path`) and its lock file.
    fn resolve(&self, path: &str) -> Result<(String, PathBuf), LockError> {
        let components = normalize(path)?;
        let absolute = path.starts_with('/');
        let mount = self
            .mounts
            .iter()
            .filter(|m| m.guest_path.starts_with('/') == absolute)
            .filter_map(|m| {
                let prefix: Vec<&str> = m
                    .guest_path
                    .split('/')
                    .filter(|p| !p.is_empty() && *p != ".")
                    .collect();
                components.starts_with(&prefix).then_some((prefix.len(), m))
            })
            .max_by_key(|(len, _)| *len);
        let Some((prefix_len, mount)) = mount else {
            return Err(LockError::NotInMount);
        };
        if mount.read_only {
            return Err(LockError::ReadOnly);
        }
        let relative = components[prefix_len..].join("/");
        let digest = sha256_hex(relative.as_bytes());
        let file = self
            .locks_root
            .volume_locks_dir(&mount.volume_id)
            .join(format!("{digest}.lock"));
        Ok((format!("{}/{relative}", mount.volume_id), file))
    }
}

/// Path components with `.` and `..` applied; `..` above the root is refused.
fn normalize(path: &str) -> Result<Vec<&str>, LockError> {
    if path.is_empty() || path.contains('\0') {
        return Err(LockError::InvalidPath);
    }
    let mut components = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                components.pop().ok_or(LockError::InvalidPath)?;
            }
            part => components.push(part),
        }
    }
    Ok(components)
}

fn open_lock_file(path: &PathBuf) -> Result<File, LockError> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    open()
        .or_else(|_| {
            fs::create_dir_all(path.parent().expect("lock files live in a directory"))?;
            open()
        })
        .map_err(|_| LockError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(home: &Home, mounts: &[(&str, bool)]) -> InstanceLocks {
        let mounts: Vec<Mount> = mounts
            .iter()
            .enumerate()
            .map(|(i, (guest, ro))| Mount {
                guest_path: guest.to_string(),
                host_dir: PathBuf::from("/nonexistent"),
                read_only: *ro,
                volume_id: format!("vo-{i}"),
            })
            .collect();
        InstanceLocks::new(
            home,
            &mounts,
            Arc::new(AtomicBool::new(false)),
            Instant::now() + Duration::from_secs(60),
        )
    }

    #[test]
    fn resolves_paths_to_the_longest_mount() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let locks = table(
            &home,
            &[
                ("/", false),
                ("/cache", false),
                ("/ro", true),
                ("data", false),
            ],
        );
        assert_eq!(locks.resolve("/cache/a/../b").unwrap().0, "vo-1/b");
        assert_eq!(locks.resolve("/other/x").unwrap().0, "vo-0/other/x");
        assert_eq!(locks.resolve("data/./k").unwrap().0, "vo-3/k");
        assert_eq!(locks.resolve("/ro/k"), Err(LockError::ReadOnly));
        assert_eq!(locks.resolve("elsewhere/k"), Err(LockError::NotInMount));
        assert_eq!(locks.resolve("/../etc"), Err(LockError::InvalidPath));
        assert_eq!(locks.resolve(""), Err(LockError::InvalidPath));
    }

    #[test]
    fn excludes_other_instances_and_releases_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut first = table(&home, &[("/cache", false)]);
        let mut second = table(&home, &[("/cache", false)]);
        first.acquire("/cache/k", Duration::from_secs(1)).unwrap();
        assert_eq!(
            first.acquire("/cache/k", Duration::ZERO),
            Err(LockError::AlreadyHeld)
        );
        assert_eq!(second.try_acquire("/cache/k"), Ok(false));
        assert_eq!(
            second.acquire("/cache/k", Duration::from_millis(20)),
            Err(LockError::Timeout)
        );
        drop(first);
        assert_eq!(second.try_acquire("/cache/k"), Ok(true));
        assert_eq!(second.release("/cache/k"), Ok(()));
        assert_eq!(second.release("/cache/k"), Err(LockError::NotHeld));
    }
}
