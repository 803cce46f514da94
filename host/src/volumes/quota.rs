//! The host's side of quotas: what a volume holds now, a new quota handed
//! to its writers, and room taken before the host itself writes a volume
//! (`volume put`, `volume cp`) or a recount asked for after it changed one
//! (`volume rm`, a restore). Guests' writes are counted by the runtime
//! against the same usage file (see [`usage`](super::usage)).

use std::path::Path;

use anyhow::{Context, Result};

use super::usage::{Counts, Usage, count};
use crate::home::Home;
use crate::manifest::Quota;
use crate::registry::VolumeRecord;

/// Gives volume `volume_id`'s writers `quota` to check from now on.
pub fn apply_quota(home: &Home, volume_id: &str, quota: Quota) -> Result<()> {
    Usage::open(home, volume_id, quota)?.set_quota(quota);
    Ok(())
}

/// What `volume` holds now: exact unless a process is writing it (then
/// what the writers have reserved), recounted first if stale.
pub fn counts_now(home: &Home, volume: &VolumeRecord) -> Result<Counts> {
    Ok(Usage::open(home, &volume.id, volume.quota)?.counts())
}

/// Reserves room for copying `local` (a file or a directory, as `volume
/// put` copies it) into volume `volume`, before anything is copied: refused
/// with a message saying how much is missing. The room stays taken and the
/// count is marked for a recount: overwritten files make it high until
/// then, never low.
pub fn reserve_put(home: &Home, volume: &VolumeRecord, local: &Path) -> Result<()> {
    let counts = match std::fs::symlink_metadata(local) {
        Ok(meta) if meta.is_dir() => count(local)
            .with_context(|| format!("cannot count {}", local.display()))
            .map(|c| Counts {
                files: c.files + 1,
                ..c
            })?,
        Ok(meta) => Counts {
            bytes: meta.len(),
            files: 1,
        },
        // `put` says what is wrong with it.
        Err(_) => return Ok(()),
    };
    reserve_copy(home, volume, counts, &local.display().to_string())
}

/// Reserves room for `counts` that the host is about to copy (`what`) into
/// volume `volume`: refused with a message saying how much is missing. The
/// room stays taken and the count is marked for a recount: overwritten
/// files make it high until then, never low.
pub fn reserve_copy(home: &Home, volume: &VolumeRecord, counts: Counts, what: &str) -> Result<()> {
    let usage = Usage::open(home, &volume.id, volume.quota)?;
    if usage.reserve(counts.bytes, counts.files).is_err() {
        let now = usage.counts();
        let quota = usage.quota();
        anyhow::bail!(
            "{what} ({} bytes, {} files) does not fit in volume `{}`: it holds {} bytes and {} files of its quota of {} bytes and {} files; free space in it, or raise its quota with `wasmhost volume set`",
            counts.bytes,
            counts.files,
            volume.name.as_deref().unwrap_or(&volume.id),
            now.bytes,
            now.files,
            quota
                .max_bytes
                .map_or("unlimited".into(), |b| b.to_string()),
            quota
                .max_files
                .map_or("unlimited".into(), |f| f.to_string()),
        );
    }
    usage.mark_stale();
    Ok(())
}

/// Marks volume `volume`'s count for a recount, after the host changed its
/// files other than through a guest (`volume rm`, and copies or restores
/// of files into it: what the snapshot and `volume cp` work should call
/// after it writes a volume, or [`Usage::reserve`] first to keep a quota).
pub fn files_changed(home: &Home, volume: &VolumeRecord) -> Result<()> {
    Usage::open(home, &volume.id, volume.quota)?.mark_stale();
    Ok(())
}
