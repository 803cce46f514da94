//! Guest locks: `wasmhost:host/lock`, exclusive locks on paths inside
//! mounted volumes.
//!
//! A lock's identity is its volume and its path in the volume, whichever
//! mount names it. On one machine a lock is an `flock` on a lock file
//! (`flock`); in a cluster, a row in the registry that every machine sees
//! (`cluster`). Either way the guest API is the same, a wait is a future
//! that a stop or the instance's timeout abandons at once
//! (`instance::until_stopped`), and the locks an instance still holds are
//! released when its table is dropped (it returned, trapped or timed out)
//! or its process dies.

use std::collections::HashMap;
use std::time::Duration;

use crate::home::Home;
use crate::mount::Mount;
use crate::registry::Location;

mod cluster;
mod flock;

pub use flock::remove_unheld;

/// The longest lock path a guest may pass, in bytes (Linux's `PATH_MAX`).
/// Checked before the path is copied out of guest memory or split, so a
/// guest cannot make the host allocate in proportion to a huge path.
pub const MAX_LOCK_PATH: usize = libc::PATH_MAX as usize;

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
    #[error("path is empty, longer than 4096 bytes, not UTF-8, or climbs out of its mount")]
    InvalidPath,
    #[error("the host could not create or lock its lock file")]
    Io,
    #[error("the instance already holds as many locks as its `max_locks` allows")]
    TooManyLocks,
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
    /// The mount's `sub_path`, which a lock's path in the volume starts
    /// with: one lock whichever mount of the volume names it.
    sub_path: Option<String>,
}

/// A lock this instance holds.
enum Held {
    /// Its lock file, unlinked and unlocked when dropped.
    File(flock::LockFile),
    /// Its row in the cluster's registry, deleted by [`InstanceLocks::release`]
    /// or when the table is dropped.
    Row,
}

/// The locks of one instance. A wait for a lock is a future: a stop or the
/// instance's timeout abandons it at once (`instance::until_stopped`), and
/// dropping the table releases every lock still held.
pub struct InstanceLocks {
    home: Home,
    mounts: Vec<LockMount>,
    held: HashMap<String, Held>,
    /// In a cluster: this instance as the holder of registry locks.
    cluster: Option<cluster::Holder>,
    /// The function's `max_locks`.
    max_locks: usize,
    /// Whether an acquire was refused for `max_locks`, so a failure that
    /// follows can say why.
    limit_hit: bool,
}

impl InstanceLocks {
    pub fn new(home: &Home, mounts: &[Mount], max_locks: usize) -> Self {
        Self {
            home: home.clone(),
            mounts: mounts
                .iter()
                .map(|m| LockMount {
                    guest_path: m.guest_path.clone(),
                    volume_id: m.volume_id.clone(),
                    read_only: m.read_only,
                    sub_path: m
                        .sub_path
                        .as_ref()
                        .map(|p| p.to_string_lossy().into_owned()),
                })
                .collect(),
            held: HashMap::new(),
            cluster: match home.registry() {
                Location::Postgres(url) => Some(cluster::Holder::new(home, &url)),
                Location::File(_) => None,
            },
            max_locks,
            limit_hit: false,
        }
    }

    /// Whether the instance was refused a lock for its `max_locks`.
    pub fn limit_hit(&self) -> bool {
        self.limit_hit
    }

    /// Waits up to `timeout` for the lock on `path`.
    pub async fn acquire(&mut self, path: &str, timeout: Duration) -> Result<(), LockError> {
        let (key, volume_id, relative) = self.resolve(path)?;
        if self.held.contains_key(&key) {
            return Err(LockError::AlreadyHeld);
        }
        if self.held.len() >= self.max_locks {
            self.limit_hit = true;
            return Err(LockError::TooManyLocks);
        }
        let held = match &self.cluster {
            Some(cluster) => {
                cluster.acquire(&key, timeout).await?;
                Held::Row
            }
            None => Held::File(flock::acquire(&self.home, volume_id, &relative, timeout).await?),
        };
        self.held.insert(key, held);
        Ok(())
    }

    /// Takes the lock on `path` if it is free.
    pub async fn try_acquire(&mut self, path: &str) -> Result<bool, LockError> {
        match self.acquire(path, Duration::ZERO).await {
            Ok(()) => Ok(true),
            Err(LockError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn release(&mut self, path: &str) -> Result<(), LockError> {
        let (key, _, _) = self.resolve(path)?;
        match (self.held.remove(&key), &self.cluster) {
            (None, _) => Err(LockError::NotHeld),
            (Some(Held::Row), Some(cluster)) => cluster.release(Some(&key)),
            (Some(Held::Row), None) => Ok(()),
            (Some(Held::File(file)), _) => {
                // Unlinks the lock file, then closing it releases the flock.
                drop(file);
                Ok(())
            }
        }
    }

    /// The lock's identity (`volume-id/relative/path`), its volume, and
    /// its path in the volume.
    fn resolve(&self, path: &str) -> Result<(String, &str, String), LockError> {
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
        let relative = mount
            .sub_path
            .iter()
            .map(String::as_str)
            .chain(components[prefix_len..].iter().copied())
            .collect::<Vec<_>>()
            .join("/");
        Ok((
            format!("{}/{relative}", mount.volume_id),
            &mount.volume_id,
            relative,
        ))
    }
}

impl Drop for InstanceLocks {
    fn drop(&mut self) {
        if let Some(cluster) = &self.cluster
            && self.held.values().any(|held| matches!(held, Held::Row))
        {
            // Best effort: if the registry cannot be reached, the rows
            // are freed when this process's lease expires.
            let _ = cluster.release(None);
        }
    }
}

/// Path components with `.` and `..` applied; `..` above the root is refused.
fn normalize(path: &str) -> Result<Vec<&str>, LockError> {
    if path.is_empty() || path.len() > MAX_LOCK_PATH || path.contains('\0') {
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    fn table(home: &Home, mounts: &[(&str, bool)], max_locks: usize) -> InstanceLocks {
        let mounts: Vec<Mount> = mounts
            .iter()
            .enumerate()
            .map(|(i, (guest, ro))| {
                let volume_id = format!("vo-{i}");
                fs::create_dir_all(home.volume_dir(&volume_id)).unwrap();
                Mount {
                    guest_path: guest.to_string(),
                    host_dir: PathBuf::from("/nonexistent"),
                    sub_path: None,
                    read_only: *ro,
                    snapshot: false,
                    volume_id,
                    quota: Default::default(),
                }
            })
            .collect();
        InstanceLocks::new(home, &mounts, max_locks)
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn lock_files(home: &Home) -> usize {
        fs::read_dir(home.volume_locks_dir("vo-0")).map_or(0, |d| d.count())
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
            8,
        );
        let key = |path| locks.resolve(path).map(|(key, _, _)| key);
        assert_eq!(key("/cache/a/../b").unwrap(), "vo-1/b");
        assert_eq!(key("/other/x").unwrap(), "vo-0/other/x");
        assert_eq!(key("data/./k").unwrap(), "vo-3/k");
        assert_eq!(key("/ro/k"), Err(LockError::ReadOnly));
        assert_eq!(key("elsewhere/k"), Err(LockError::NotInMount));
        assert_eq!(key("/../etc"), Err(LockError::InvalidPath));
        assert_eq!(key(""), Err(LockError::InvalidPath));
        let longest = format!("/{}", "a".repeat(MAX_LOCK_PATH - 1));
        assert!(key(&longest).is_ok());
        assert_eq!(key(&format!("{longest}a")), Err(LockError::InvalidPath));
    }

    #[test]
    fn excludes_other_instances_and_releases_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut first = table(&home, &[("/cache", false)], 8);
        let mut second = table(&home, &[("/cache", false)], 8);
        block_on(async {
            first
                .acquire("/cache/k", Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(
                first.acquire("/cache/k", Duration::ZERO).await,
                Err(LockError::AlreadyHeld)
            );
            assert_eq!(second.try_acquire("/cache/k").await, Ok(false));
            assert_eq!(
                second.acquire("/cache/k", Duration::from_millis(20)).await,
                Err(LockError::Timeout)
            );
            drop(first);
            assert_eq!(second.try_acquire("/cache/k").await, Ok(true));
            assert_eq!(second.release("/cache/k"), Ok(()));
            assert_eq!(second.release("/cache/k"), Err(LockError::NotHeld));
        });
    }

    #[test]
    fn lock_files_go_with_their_locks() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut locks = table(&home, &[("/cache", false)], 8);
        block_on(async {
            for i in 0..100 {
                locks
                    .acquire(&format!("/cache/{i}"), Duration::ZERO)
                    .await
                    .unwrap();
                locks.release(&format!("/cache/{i}")).unwrap();
            }
            assert_eq!(lock_files(&home), 0);
            locks.acquire("/cache/kept", Duration::ZERO).await.unwrap();
            assert_eq!(lock_files(&home), 1);
        });
        drop(locks);
        assert_eq!(lock_files(&home), 0);
    }

    #[test]
    fn a_waiter_locks_the_file_that_replaced_the_one_it_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut holder = table(&home, &[("/cache", false)], 8);
        let mut waiter = table(&home, &[("/cache", false)], 8);
        let mut third = table(&home, &[("/cache", false)], 8);
        block_on(async {
            holder.acquire("/cache/k", Duration::ZERO).await.unwrap();
            let wait = waiter.acquire("/cache/k", Duration::from_secs(5));
            let release_then_retake = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                holder.release("/cache/k").unwrap();
                // A newcomer takes the new file at the path before the waiter
                // wakes; the waiter must not also "hold" the unlinked one.
                third.acquire("/cache/k", Duration::ZERO).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                third.release("/cache/k").unwrap();
            };
            let (waited, ()) = tokio::join!(wait, release_then_retake);
            waited.unwrap();
        });
        assert_eq!(lock_files(&home), 1);
        assert_eq!(block_on(third.try_acquire("/cache/k")), Ok(false));
    }

    #[test]
    fn max_locks_bounds_the_locks_held_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut locks = table(&home, &[("/cache", false)], 2);
        block_on(async {
            locks.acquire("/cache/a", Duration::ZERO).await.unwrap();
            locks.acquire("/cache/b", Duration::ZERO).await.unwrap();
            assert!(!locks.limit_hit());
            assert_eq!(
                locks.acquire("/cache/c", Duration::ZERO).await,
                Err(LockError::TooManyLocks)
            );
            assert!(locks.limit_hit());
            locks.release("/cache/a").unwrap();
            locks.acquire("/cache/c", Duration::ZERO).await.unwrap();
        });
    }

    #[test]
    fn no_lock_directory_for_a_deleted_volume() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut locks = table(&home, &[("/cache", false)], 8);
        fs::remove_dir_all(home.volume_dir("vo-0")).unwrap();
        assert_eq!(
            block_on(locks.acquire("/cache/k", Duration::ZERO)),
            Err(LockError::Io)
        );
        assert!(!home.volume_locks_dir("vo-0").exists());
    }

    #[test]
    fn remove_unheld_spares_held_locks() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut locks = table(&home, &[("/cache", false)], 8);
        block_on(locks.acquire("/cache/held", Duration::ZERO)).unwrap();
        fs::write(home.volume_locks_dir("vo-0").join("left.lock"), "").unwrap();
        flock::remove_unheld(&home).unwrap();
        assert_eq!(lock_files(&home), 1);
        assert_eq!(locks.release("/cache/held"), Ok(()));
    }
}
