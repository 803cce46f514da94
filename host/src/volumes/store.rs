//! Volumes in the registry and on disk together: named volumes created,
//! renamed, given a quota and looked up; an app's volumes made to match its
//! app.toml (ephemeral ones created, named ones created or attached); and
//! deleted volumes moved to the trash. Directories are created inside the
//! registry transaction that records them (removed again if it fails, see
//! [`with_new_dirs`]) and trashed only after the one that deletes them has
//! committed, so a crash at any point leaves nothing half-made.

use std::collections::BTreeMap;

use anyhow::Result;

use super::in_use::{MountFilter, refuse_if_mounted};
use super::{disk, quota};
use crate::error::{conflict, not_found, usage};
use crate::home::Home;
use crate::manifest::{AppManifest, Quota, VolumeSpec};
use crate::names::{NAME_RULE, is_valid_name};
use crate::registry::{AppKind, Registry, Tx, VolumeRecord};

/// The named volume `name`, or a usage error naming what exists.
pub fn named_volume(registry: &mut Registry, name: &str) -> Result<VolumeRecord> {
    check_name(name, "volume")?;
    registry.read(|tx| named_volume_in(tx, name))
}

pub fn named_volume_in(tx: &Tx, name: &str) -> Result<VolumeRecord> {
    tx.named_volume(name)?
        .ok_or_else(|| not_found!("no volume is named `{name}`; `wasmhost volume list` shows them"))
}

pub fn check_name(name: &str, what: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(usage!(
            "invalid {what} name `{}`: use {NAME_RULE}",
            name.escape_debug()
        ))
    }
}

/// `volume create NAME [--max-size --max-files]`.
pub fn create_named_volume(
    home: &Home,
    registry: &mut Registry,
    name: &str,
    quota: Quota,
) -> Result<VolumeRecord> {
    check_name(name, "volume")?;
    with_new_dirs(home, |created| {
        registry.write(|tx| {
            if tx.named_volume(name)?.is_some() {
                return Err(conflict!("volume `{name}` already exists"));
            }
            ensure_named_volume(tx, home, name, quota, created)
        })
    })
}

/// `volume set NAME`: replaces the named volume's quota. A quota below what
/// the volume holds refuses growth only; nothing is deleted.
pub fn set_volume_quota(
    home: &Home,
    registry: &mut Registry,
    name: &str,
    change: impl Fn(Quota) -> Quota,
) -> Result<VolumeRecord> {
    check_name(name, "volume")?;
    registry.write(|tx| {
        let mut volume = tx.named_volume(name)?.ok_or_else(|| {
            not_found!("no volume is named `{name}`; `wasmhost volume list` shows them")
        })?;
        volume.quota = change(volume.quota);
        tx.set_volume_quota(&volume.id, volume.quota)?;
        quota::apply_quota(home, &volume.id, volume.quota)?;
        Ok(volume)
    })
}

/// `volume rename OLD NEW`: the same volume (its files, its lock files
/// and its snapshots, all keyed by its id) under a new name; OLD then names
/// nothing, so an app whose `persist` is OLD gets a new, empty volume when
/// it next starts or deploys. Refused while running apps mount it, unless
/// `force`: they then keep the volume they have until they stop.
pub fn rename_named_volume(
    registry: &mut Registry,
    old: &str,
    new: &str,
    force: bool,
) -> Result<VolumeRecord> {
    check_name(old, "volume")?;
    check_name(new, "volume")?;
    registry.write(|tx| {
        let volume = named_volume_in(tx, old)?;
        if tx.named_volume(new)?.is_some() {
            return Err(conflict!(
                "volume `{new}` already exists; choose another name"
            ));
        }
        refuse_if_mounted(
            tx,
            &volume,
            MountFilter::Any,
            Some((force, "rename it anyway")),
        )?;
        tx.rename_volume(&volume.id, new)?;
        Ok(VolumeRecord {
            name: Some(new.to_owned()),
            ..volume
        })
    })
}

/// The rows of a new named volume: its volume app, the volume, the mount.
pub fn insert_named_volume(tx: &Tx, name: &str, quota: Quota) -> Result<VolumeRecord> {
    let app = tx.insert_app(name, AppKind::Volume, None, false)?;
    let volume = tx.insert_volume(&app.id, None, Some(name), quota)?;
    tx.mount(&app.id, "self", &volume.id)?;
    Ok(volume)
}

fn ensure_named_volume(
    tx: &Tx,
    home: &Home,
    name: &str,
    quota: Quota,
    created: &mut Vec<String>,
) -> Result<VolumeRecord> {
    if let Some(volume) = tx.named_volume(name)? {
        return Ok(volume);
    }
    let volume = insert_named_volume(tx, name, quota)?;
    disk::create_dir(home, &volume.id)?;
    quota::apply_quota(home, &volume.id, quota)?;
    created.push(volume.id.clone());
    Ok(volume)
}

/// Makes the mounts of `app_id` match `manifest`: creates missing ephemeral
/// volumes, creates or attaches named ones, and unmounts keys that are gone.
pub fn reconcile(
    tx: &Tx,
    home: &Home,
    app_id: &str,
    manifest: &AppManifest,
    created: &mut Vec<String>,
) -> Result<BTreeMap<String, VolumeRecord>> {
    let mut current: BTreeMap<_, _> = tx
        .mounted_volumes(app_id)?
        .into_iter()
        .map(|m| (m.key, m.volume))
        .collect();
    let mut volumes = BTreeMap::new();
    for (key, spec) in &manifest.volumes {
        let keep = current
            .remove(key)
            .filter(|v| still_fits(v, &spec.persist, app_id));
        let mut volume = match (keep, &spec.persist) {
            (Some(volume), _) => volume,
            (None, Some(name)) => ensure_named_volume(tx, home, name, Quota::default(), created)?,
            (None, None) => {
                let volume = tx.insert_volume(app_id, Some(key), None, spec.quota)?;
                disk::create_dir(home, &volume.id)?;
                created.push(volume.id.clone());
                volume
            }
        };
        let quota = declared_quota(&volume, spec);
        if quota != volume.quota {
            tx.set_volume_quota(&volume.id, quota)?;
            quota::apply_quota(home, &volume.id, quota)?;
            volume.quota = quota;
        }
        tx.mount(app_id, key, &volume.id)?;
        volumes.insert(key.clone(), volume);
    }
    for key in current.keys() {
        tx.unmount(app_id, key)?;
    }
    check_snapshot_mounts(tx, manifest, &volumes)?;
    Ok(volumes)
}

/// Refuses mounts of snapshots that do not exist (yet): found now rather
/// than by every call.
fn check_snapshot_mounts(
    tx: &Tx,
    manifest: &AppManifest,
    volumes: &BTreeMap<String, VolumeRecord>,
) -> Result<()> {
    for (function, spec) in &manifest.functions {
        for mount in &spec.mounts {
            let Some(snapshot) = &mount.snapshot else {
                continue;
            };
            let volume = &volumes[&mount.volume];
            if tx.snapshot(&volume.id, snapshot)?.is_none() {
                let what = volume.name.as_deref().unwrap_or(&mount.volume);
                return Err(not_found!(
                    "function `{function}` mounts snapshot `{snapshot}` of volume `{what}`, which has none of that name; take it with `wasmhost volume snapshot create {what} {snapshot}`"
                ));
            }
        }
    }
    Ok(())
}

/// The quota `volume` gets under declaration `spec`: an ephemeral volume
/// app.toml's exactly; a named volume each key app.toml gives (app.toml
/// wins over `volume create` and `volume set`), keeping its own for a key
/// app.toml leaves out.
fn declared_quota(volume: &VolumeRecord, spec: &VolumeSpec) -> Quota {
    if spec.persist.is_none() {
        return spec.quota;
    }
    Quota {
        max_bytes: spec.quota.max_bytes.or(volume.quota.max_bytes),
        max_files: spec.quota.max_files.or(volume.quota.max_files),
    }
}

/// Whether `volume`, mounted under a key, still fits that key's
/// declaration (`persist` name, or `None` for ephemeral) in `app_id`.
pub fn still_fits(volume: &VolumeRecord, persist: &Option<String>, app_id: &str) -> bool {
    match persist {
        Some(name) => volume.name.as_deref() == Some(name),
        None => volume.name.is_none() && volume.app_id == app_id,
    }
}

/// Runs `f`, removing the volume directories it created if it fails.
pub fn with_new_dirs<T>(home: &Home, f: impl FnOnce(&mut Vec<String>) -> Result<T>) -> Result<T> {
    let mut created = Vec::new();
    let result = f(&mut created);
    if result.is_err() {
        for id in &created {
            let _ = std::fs::remove_dir(home.volume_dir(id));
        }
    }
    result
}

/// Moves the files of volumes whose rows a committed transaction deleted
/// to the trash, and starts a purge.
pub fn trash_volumes(home: &Home, trashed: &[VolumeRecord]) -> Result<()> {
    for volume in trashed {
        disk::trash(home, &volume.id)?;
    }
    if !trashed.is_empty() {
        disk::purge_in_background(home)?;
    }
    Ok(())
}
