//! Leases: how the next wasmhost command learns that a `run` process died
//! without stopping its app (kill -9, power loss).
//!
//! The owner holds an exclusive `flock` on a lease file for as long as it
//! lives; the kernel drops the lock when the process dies however it dies.
//! A PID alone would not do: PIDs are reused.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::home::Home;

/// A held lease; dropping it without [`Lease::release`] keeps the file, which
/// is what a crash looks like.
pub struct Lease {
    path: PathBuf,
    _file: File,
}

impl Lease {
    /// Takes the lease for a new app id. Taken before the app is registered,
    /// so a registered running app without a held lease is a dead one.
    pub fn acquire(home: &Home, app_id: &str) -> Result<Self> {
        let path = home.lease_file(app_id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create lease file {}", path.display()))?;
        file.try_lock()
            .with_context(|| format!("cannot lock lease file {}", path.display()))?;
        Ok(Self { path, _file: file })
    }

    /// Takes over the lease of `app_id` if its owner is gone.
    pub fn take_abandoned(home: &Home, app_id: &str) -> Result<Option<Self>> {
        let path = home.lease_file(app_id);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            // Removed only after the app was marked stopped; gone means dead.
            Err(e) if e.kind() == ErrorKind::NotFound => File::create(&path)?,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open lease file {}", path.display()));
            }
        };
        Ok(file
            .try_lock()
            .is_ok()
            .then_some(Self { path, _file: file }))
    }

    /// Ends the lease once its app is stopped.
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
    }
}
