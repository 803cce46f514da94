//! The on-disk volume store: one directory per volume, and a trash.
//!
//! Deleting a volume is one `rename` into the trash, so stopping an app
//! returns at once however many files it wrote; a detached purge process
//! empties the trash, and any later wasmhost command restarts it if it died.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::walk::{self, Cursor, WalkError};
use crate::home::Home;
use crate::registry::new_id;

/// Name of the flock that one purge process holds while it works.
const PURGE_LOCK: &str = ".purge.lock";

/// Makes the empty directories of a new volume: its files, and its
/// host-side lock files (made here, never by a lock call, so none comes
/// back after the volume is deleted).
pub fn create_dir(home: &Home, volume_id: &str) -> Result<()> {
    for dir in [home.volume_dir(volume_id), home.volume_locks_dir(volume_id)] {
        fs::create_dir(&dir)
            .with_context(|| format!("cannot create volume directory {}", dir.display()))?;
    }
    Ok(())
}

/// Moves a volume's files, its host-side lock files, its snapshots and its
/// usage file into the trash.
pub fn trash(home: &Home, volume_id: &str) -> Result<()> {
    for dir in [
        home.volume_dir(volume_id),
        home.volume_locks_dir(volume_id),
        home.volume_snapshots_dir(volume_id),
    ] {
        trash_dir(home, &dir)?;
    }
    // One small file in this machine's home, which in a cluster is not on
    // the trash's file system: deleted, not moved.
    let usage = home.volume_usage_file(volume_id);
    match fs::remove_file(&usage) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot delete {}", usage.display()))
        }
        _ => Ok(()),
    }
}

/// Moves `dir` (a volume's, a snapshot, a copy abandoned half-way) into
/// the trash; one that is gone already is not an error.
pub fn trash_dir(home: &Home, dir: &Path) -> Result<()> {
    let target = home.trash_dir().join(new_id("tr"));
    match fs::rename(dir, &target) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot move {} to the trash", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Trashes the volume, lock and snapshot directories (and usage files) of
/// volumes the registry does not know: what a process left when it died
/// between committing a delete and moving the files, or a lock directory a
/// lock call made as its volume was deleted. Call inside a registry write
/// transaction, so no volume is half-created.
pub fn trash_orphans(home: &Home, known_ids: &[String]) -> Result<()> {
    for parent in [
        home.volumes_dir(),
        home.locks_dir(),
        home.snapshots_dir(),
        home.usage_dir(),
    ] {
        for entry in fs::read_dir(parent)? {
            let name = entry?.file_name();
            let Some(id) = name.to_str() else { continue };
            if !known_ids.iter().any(|known| known == id) {
                trash(home, id)?;
            }
        }
    }
    Ok(())
}

/// Starts a detached purge process if the trash holds anything.
pub fn purge_in_background(home: &Home) -> Result<()> {
    if !trash_has_entries(home)? {
        return Ok(());
    }
    let exe = std::env::current_exe()
        .context("cannot find the wasmhost executable to start the trash purge")?;
    let mut command = Command::new(exe);
    command
        .arg("internal-purge-trash")
        .env("WASMHOST_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group: a Ctrl-C aimed at `run` must not end the purge.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.spawn().context("cannot start the trash purge")?;
    Ok(())
}

fn trash_has_entries(home: &Home) -> Result<bool> {
    Ok(fs::read_dir(home.trash_dir())?.any(|e| e.is_ok_and(|e| e.file_name() != PURGE_LOCK)))
}

/// Empties the trash; returns at once if another process is already at it.
/// Entries are removed by [`walk::remove`]: at any depth, never
/// following a symbolic link, so a link a guest planted to a host directory
/// is removed, not what it points at. An entry that cannot be removed is
/// passed over, so it never keeps the others from being freed; it is named
/// in the error and in [`Home::purge_report`], and the next purge (any
/// wasmhost command starts one) tries it again.
pub fn purge_trash(home: &Home) -> Result<()> {
    let lock_path = home.trash_dir().join(PURGE_LOCK);
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        return Ok(());
    }
    let trash = Cursor::open(&home.trash_dir())
        .with_context(|| format!("cannot open {}", home.trash_dir().display()))?;
    let mut failed = BTreeMap::new();
    loop {
        let entries: Vec<OsString> = trash
            .names()?
            .into_iter()
            .filter(|name| name != PURGE_LOCK && !failed.contains_key(name))
            .collect();
        if entries.is_empty() {
            break;
        }
        for name in entries {
            if let Err(e) = walk::remove(&trash, &name) {
                failed.insert(name, e);
            }
        }
    }
    report_failures(home, &failed)
}

/// Records what this purge left (or that it left nothing) and says so.
fn report_failures(home: &Home, failed: &BTreeMap<OsString, WalkError>) -> Result<()> {
    let report = home.purge_report();
    if failed.is_empty() {
        return match fs::remove_file(&report) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", report.display()))
            }
            _ => Ok(()),
        };
    }
    let lines: Vec<String> = failed
        .values()
        .map(|e| format!("cannot delete {}/{e}", home.trash_dir().display()))
        .collect();
    fs::write(&report, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", report.display()))?;
    bail!(
        "the trash purge left {} entries, tried again by the next purge: {}",
        failed.len(),
        lines.join("; ")
    )
}
