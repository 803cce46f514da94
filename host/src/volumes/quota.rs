//! The host's side of quotas: what a volume holds now, a new quota handed
//! to its writers, and room taken before the host itself writes a volume
//! (`volume put`, `volume cp`) or a recount asked for after it changed one
//! (`volume rm`, a restore). Guests' writes are counted by the runtime
//! against the same usage file (see [`usage`](super::usage)).

use std::path::Path;

use anyhow::{Context, Result};

use super::usage::{Counts, Usage, count};
use crate::error::usage;
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
/// put` copies it) into volume `volume`, less what it `replaces` (a file
/// it truncates), before anything is copied: refused with a message saying
/// how much is missing. The room stays taken and the count is marked for a
/// recount: other overwritten files make it high until then, never low.
pub fn reserve_put(
    home: &Home,
    volume: &VolumeRecord,
    local: &Path,
    replaces: Counts,
) -> Result<()> {
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
    let net = Counts {
        bytes: counts.bytes.saturating_sub(replaces.bytes),
        files: counts.files.saturating_sub(replaces.files),
    };
    reserve_copy(home, volume, net, &local.display().to_string())
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

/// Refuses to make a volume of quota `quota` holding `counts` (`what`, a
/// snapshot it is forked from): it would start over its quota, where every
/// write that grows it fails.
pub fn check_fits(counts: Counts, quota: Quota, what: &str) -> Result<()> {
    let over = |max: Option<u64>, have: u64| max.is_some_and(|max| have > max);
    if over(quota.max_bytes, counts.bytes) || over(quota.max_files, counts.files) {
        return Err(usage!(
            "{what} holds {} bytes and {} files, more than the quota given (max_size {}, max_files {}); give a larger --max-size or --max-files, or none",
            counts.bytes,
            counts.files,
            quota.max_bytes.map_or("none".into(), |b| b.to_string()),
            quota.max_files.map_or("none".into(), |f| f.to_string()),
        ));
    }
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
