//! Snapshots of named volumes: read-only, point-in-time copies kept under
//! `$WASMHOST_HOME/snapshots/<volume-id>/<name>`, beside (never inside) the
//! volume, and a volume put back to one or forked from one.
//!
//! Every copy shares data with its source where the file system can
//! (reflinks, see [`clone_tree`]) and is made in a directory
//! of its own, `.op-ID`, under a lease named `op-ID`: it takes its place
//! (a snapshot's name, a restored volume's directory, a new volume's) by a
//! `rename` inside the registry transaction that records it, so no reader
//! ever sees half a copy. A copy whose process died is found by its free
//! lease and trashed by the next command's housekeeping.
//!
//! Consistency: a snapshot is refused while running apps mount the volume
//! writable (unless `force`); nothing pauses writers.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{CWD, RenameFlags};

use super::copy::{CopyReport, clone_tree};
use super::in_use::{MountFilter, refuse_if_mounted};
use super::store::{check_name, insert_named_volume, named_volume, named_volume_in};
use super::{disk, quota};
use crate::error::{conflict, not_found, usage};
use crate::home::Home;
use crate::lease::Lease;
use crate::manifest::Quota;
use crate::registry::{Registry, SnapshotRecord, Tx, VolumeRecord, new_id};

/// Told after each file a copy makes (a progress bar).
pub type Progress<'a> = &'a mut dyn FnMut(&CopyReport);

/// A copy under way: its directory, and the lease that keeps housekeeping
/// from trashing it.
struct Staging {
    dir: PathBuf,
    lease: Lease,
}

impl Staging {
    /// A new, empty directory for a copy, among `volume_id`'s snapshots
    /// (the same file system as the volume, so a rename moves it anywhere
    /// in the store).
    fn new(home: &Home, volume_id: &str) -> Result<Self> {
        let id = new_id("op");
        let lease = Lease::acquire(home, &id)?;
        let parent = home.volume_snapshots_dir(volume_id);
        let dir = parent.join(format!(".{id}"));
        let made = fs::create_dir_all(&parent).and_then(|()| fs::create_dir(&dir));
        if let Err(e) = made {
            lease.release();
            return Err(e).with_context(|| format!("cannot create {}", dir.display()));
        }
        Ok(Self { dir, lease })
    }
}

/// What one copy is: where it comes from, what messages call its two
/// sides (`data`, `data@v1`), and the registry checks that must pass
/// before it starts and again as it is placed.
struct CopyJob<'a, C> {
    /// The named volume the copy is of, or from a snapshot of.
    volume: &'a VolumeRecord,
    from: PathBuf,
    names: (&'a str, &'a str),
    check: C,
}

impl<C: Fn(&Tx) -> Result<()>> CopyJob<'_, C> {
    /// Checks, copies into a new staging directory, then, in one registry
    /// transaction, checks again (the volume is still the one it was too)
    /// and runs `place`, which records the copy and moves it into place.
    /// On any failure the copy goes to the trash.
    fn run<T>(
        self,
        home: &Home,
        registry: &mut Registry,
        progress: Progress,
        place: impl Fn(&Tx, &Path, &CopyReport) -> Result<T>,
    ) -> Result<(T, CopyReport)> {
        registry.read(&self.check)?;
        let staging = Staging::new(home, &self.volume.id)?;
        let result =
            clone_tree(&self.from, &staging.dir, self.names, progress).and_then(|report| {
                let placed = registry.write(|tx| {
                    let name = self.volume.name.as_deref().unwrap_or_default();
                    if named_volume_in(tx, name)?.id != self.volume.id {
                        anyhow::bail!(
                            "volume `{name}` was deleted or replaced while it was being copied"
                        );
                    }
                    (self.check)(tx)?;
                    place(tx, &staging.dir, &report)
                })?;
                Ok((placed, report))
            });
        if result.is_err() {
            disk::trash_dir(home, &staging.dir)?;
        }
        staging.lease.release();
        disk::purge_in_background(home)?;
        result
    }
}

fn snapshot_in(tx: &Tx, volume: &VolumeRecord, name: &str) -> Result<SnapshotRecord> {
    tx.snapshot(&volume.id, name)?.ok_or_else(|| {
        let volume = volume.name.as_deref().unwrap_or_default();
        not_found!(
            "volume `{volume}` has no snapshot `{name}`; `wasmhost volume snapshot list {volume}` shows them"
        )
    })
}

/// `volume snapshot create VOLUME NAME`: copies the volume (sharing data
/// where the file system can). Refused while running apps mount it
/// writable, unless `force`, and again if one started during the copy.
pub fn create_snapshot(
    home: &Home,
    registry: &mut Registry,
    volume: &str,
    name: &str,
    force: bool,
    progress: Progress,
) -> Result<(SnapshotRecord, CopyReport)> {
    check_name(name, "snapshot")?;
    let record = named_volume(registry, volume)?;
    let shown = format!("{volume}@{name}");
    let copy = CopyJob {
        volume: &record,
        from: home.volume_dir(&record.id),
        names: (volume, &shown),
        check: |tx: &Tx| {
            if tx.snapshot(&record.id, name)?.is_some() {
                return Err(conflict!(
                    "volume `{volume}` already has a snapshot `{name}`; delete it first with `wasmhost volume snapshot delete {volume} {name}`, or choose another name"
                ));
            }
            refuse_if_mounted(
                tx,
                &record,
                MountFilter::Writable,
                Some((force, "snapshot it while they may write")),
            )
        },
    };
    copy.run(home, registry, progress, |tx, dir, report| {
        let counts = report.counts();
        let snapshot = tx.insert_snapshot(&record.id, name, counts.bytes, counts.files)?;
        let target = home.snapshot_dir(&record.id, name);
        fs::rename(dir, &target)
            .with_context(|| format!("cannot move the snapshot to {}", target.display()))?;
        Ok(snapshot)
    })
}

/// `volume snapshot list VOLUME`.
pub fn list_snapshots(registry: &mut Registry, volume: &str) -> Result<Vec<SnapshotRecord>> {
    let record = named_volume(registry, volume)?;
    registry.read(|tx| tx.snapshots(Some(&record.id)))
}

/// Snapshot `name` of named volume `volume`, for a command to name what it
/// is about to destroy before it asks.
pub fn find_snapshot(registry: &mut Registry, volume: &str, name: &str) -> Result<SnapshotRecord> {
    check_name(name, "snapshot")?;
    let record = named_volume(registry, volume)?;
    registry.read(|tx| snapshot_in(tx, &record, name))
}

/// `volume snapshot delete VOLUME NAME`: refused while running apps mount
/// that snapshot.
pub fn delete_snapshot(
    home: &Home,
    registry: &mut Registry,
    volume: &str,
    name: &str,
) -> Result<()> {
    check_name(name, "snapshot")?;
    let record = named_volume(registry, volume)?;
    registry.write(|tx| {
        snapshot_in(tx, &record, name)?;
        // No --force: their calls could no longer mount it.
        refuse_if_mounted(tx, &record, MountFilter::Snapshot(name), None)?;
        tx.delete_snapshots(&record.id, Some(name))?;
        disk::trash_dir(home, &home.snapshot_dir(&record.id, name))
    })?;
    disk::purge_in_background(home)
}

/// `volume snapshot restore VOLUME NAME`: the volume becomes the snapshot
/// again. The snapshot is copied beside the volume's directory, then the
/// two are swapped at once (`RENAME_EXCHANGE`) and the old tree goes to the
/// trash. Refused while running apps mount the volume (its snapshots do
/// not count), unless `force` (their instances then keep the old tree
/// until they end). Returns what was copied.
pub fn restore_snapshot(
    home: &Home,
    registry: &mut Registry,
    volume: &str,
    name: &str,
    force: bool,
    progress: Progress,
) -> Result<CopyReport> {
    check_name(name, "snapshot")?;
    let record = named_volume(registry, volume)?;
    let shown = format!("{volume}@{name}");
    let copy = CopyJob {
        volume: &record,
        from: home.snapshot_dir(&record.id, name),
        names: (&shown, volume),
        check: |tx: &Tx| {
            snapshot_in(tx, &record, name)?;
            refuse_if_mounted(
                tx,
                &record,
                MountFilter::Live,
                Some((force, "restore it anyway")),
            )
        },
    };
    let live = home.volume_dir(&record.id);
    let ((), report) = copy.run(home, registry, progress, |_, dir, _| swap(home, dir, &live))?;
    // The whole tree changed: its count is recounted at the next open.
    quota::files_changed(home, &record)?;
    Ok(report)
}

/// Puts the tree at `new` in `live`'s place and the old one in the trash:
/// one atomic exchange where the file system has it, else two renames.
fn swap(home: &Home, new: &Path, live: &Path) -> Result<()> {
    match rustix::fs::renameat_with(CWD, new, CWD, live, RenameFlags::EXCHANGE) {
        Ok(()) => disk::trash_dir(home, new),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP) => {
            disk::trash_dir(home, live)?;
            fs::rename(new, live)
                .with_context(|| format!("cannot move the restored tree to {}", live.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot swap in the restored {}", live.display())),
    }
}

/// `volume create NEW --from VOLUME@SNAPSHOT`: a new named volume holding a
/// copy of the snapshot, independent of both. Returns what was copied.
pub fn fork_snapshot(
    home: &Home,
    registry: &mut Registry,
    new: &str,
    from: &str,
    quota: Quota,
    progress: Progress,
) -> Result<(VolumeRecord, CopyReport)> {
    check_name(new, "volume")?;
    let (volume, name) = from.split_once('@').ok_or_else(|| {
        usage!("`--from {from}` names no snapshot; write VOLUME@SNAPSHOT, e.g. --from data@v1")
    })?;
    check_name(name, "snapshot")?;
    let record = named_volume(registry, volume)?;
    let copy = CopyJob {
        volume: &record,
        from: home.snapshot_dir(&record.id, name),
        names: (from, new),
        check: |tx: &Tx| {
            if tx.named_volume(new)?.is_some() {
                return Err(conflict!("volume `{new}` already exists"));
            }
            snapshot_in(tx, &record, name).map(drop)
        },
    };
    copy.run(home, registry, progress, |tx, dir, report| {
        quota::check_fits(report.counts(), quota, &format!("snapshot `{from}`"))?;
        let created = insert_named_volume(tx, new, quota)?;
        let target = home.volume_dir(&created.id);
        fs::rename(dir, &target)
            .with_context(|| format!("cannot move the new volume to {}", target.display()))?;
        fs::create_dir(home.volume_locks_dir(&created.id))
            .with_context(|| format!("cannot create volume `{new}`'s lock directory"))?;
        quota::apply_quota(home, &created.id, quota)?;
        Ok(created)
    })
}

/// Trashes what the snapshot directories of known volumes hold that the
/// registry does not: a snapshot whose delete was cut short, or a copy
/// (`.op-ID`) whose process died, told by its lease being free. Call
/// inside a registry write transaction (see [`trash_orphans`](super::trash_orphans)).
pub fn trash_orphans(home: &Home, snapshots: &[SnapshotRecord]) -> Result<()> {
    for volume in fs::read_dir(home.snapshots_dir())? {
        let volume = volume?;
        let volume_id = volume.file_name().to_string_lossy().into_owned();
        let entries = match fs::read_dir(volume.path()) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            other => other?,
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match name.strip_prefix('.') {
                Some(op) => match Lease::take_abandoned(home, op)? {
                    Some(lease) => {
                        lease.release();
                        true
                    }
                    None => false,
                },
                None => !snapshots
                    .iter()
                    .any(|s| s.volume_id == volume_id && s.name == name),
            };
            if orphan {
                disk::trash_dir(home, &entry.path())?;
            }
        }
    }
    Ok(())
}
