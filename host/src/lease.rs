//! Leases: how the next wasmhost command learns that a `run` process died
//! without stopping its app (kill -9, power loss), and how a deploy tells a
//! running `call` from one whose process died. A lease is named by the id
//! of what it keeps alive: an app (`ap-…`) or a call (`ca-…`).
//!
//! The owner holds an exclusive `flock` on a lease file for as long as it
//! lives; the kernel drops the lock when the process dies however it dies.
//! A PID alone would not do: PIDs are reused.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::home::Home;

/// How long a lease file under its temporary name may be unlocked before
/// it counts as left behind by a dead process (it is locked and renamed
/// within microseconds by a live one).
const NEW_LEASE_GRACE: Duration = Duration::from_secs(60);

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| modified.elapsed().is_ok_and(|elapsed| elapsed > age))
}

/// A held lease; dropping it without [`Lease::release`] keeps the file, which
/// is what a crash looks like.
pub struct Lease {
    path: PathBuf,
    _file: File,
}

impl Lease {
    /// Takes the lease for a new app id. Taken before the app is registered,
    /// so a registered running app without a held lease is a dead one.
    ///
    /// The file is locked under a temporary name and then linked into place,
    /// so a lease file is never seen unlocked while its owner lives: an
    /// unlocked one without a running app is debris of a dead process that
    /// [`Lease::remove_orphans`] may delete.
    pub fn acquire(home: &Home, app_id: &str) -> Result<Self> {
        let path = home.lease_file(app_id);
        let temp = path.with_extension("lease-new");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create lease file {}", temp.display()))?;
        let placed = file
            .try_lock()
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(fs::hard_link(&temp, &path)?))
            .with_context(|| format!("cannot create lease file {}", path.display()));
        let _ = fs::remove_file(&temp);
        placed?;
        Ok(Self { path, _file: file })
    }

    /// Deletes lease files no live process holds whose app `is_running`
    /// does not know: a process killed before it registered its app, or a
    /// call's whose process died (its record is ended either way).
    pub fn remove_orphans(home: &Home, is_running: impl Fn(&str) -> bool) -> Result<()> {
        for entry in fs::read_dir(home.leases_dir())? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let app_id = match name.strip_suffix(".lease-new") {
                // Another process may have just created it and not yet
                // locked it: only an old one is debris.
                Some(_) if !older_than(&path, NEW_LEASE_GRACE) => continue,
                Some(app_id) => app_id,
                None => match name.strip_suffix(".lease") {
                    Some(app_id) => app_id,
                    None => continue,
                },
            };
            if is_running(app_id) {
                continue;
            }
            let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// The ids of the leases there are, held or not.
    pub fn ids(home: &Home) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(home.leases_dir())? {
            let name = entry?.file_name();
            if let Some(id) = name.to_string_lossy().strip_suffix(".lease") {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Takes over the lease of `id` (an app or a call) if its owner is gone.
    pub fn take_abandoned(home: &Home, id: &str) -> Result<Option<Self>> {
        let path = home.lease_file(id);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            // Removed only after the app was marked stopped; gone means dead.
            Err(e) if e.kind() == ErrorKind::NotFound => File::create(&path)?,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open lease file {}", path.display()));
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

/// STUB on branch `shared` (the lead's process leases replace it): this
/// process's lease in the cluster registry, made on first use and renewed
/// every 5 s by a thread of its own, expiring 15 s after the last renewal.
pub fn process_id(home: &Home) -> Result<String> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let id = crate::registry::new_id("pr");
    let owner = format!("process {}", std::process::id());
    let mut registry = crate::registry::Registry::open(&home.registry())?;
    registry.write_shared(|tx| tx.renew_lease_stub(&id, &owner, 15_000))?;
    let renewed = id.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let _ = registry.write_shared(|tx| tx.renew_lease_stub(&renewed, &owner, 15_000));
        }
    });
    Ok(ID.get_or_init(|| id).clone())
}
