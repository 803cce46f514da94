//! App lifecycle: start, deploy, stop, named volumes, and reaping apps whose
//! process died. Each change is one registry transaction plus the matching
//! directory work, ordered so a crash at any point leaves nothing half-made:
//! directories are created inside the transaction (removed again if it fails)
//! and trashed only after it commits (orphans are swept by the next command).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::error::usage;
use crate::home::Home;
use crate::lease::Lease;
use crate::manifest::AppManifest;
use crate::names::{NAME_RULE, is_valid_name};
use crate::registry::{AppKind, AppRecord, AppState, Registry, Tx, VolumeRecord};
use crate::volumes;

/// A running app as an invocation needs it: its manifest and its volumes.
#[derive(Debug, Clone)]
pub struct LiveApp {
    pub record: AppRecord,
    pub manifest: AppManifest,
    /// Volume key in app.toml -> the volume mounted under it.
    pub volumes: BTreeMap<String, VolumeRecord>,
}

/// One volume as one function sees it.
#[derive(Debug, Clone)]
pub struct Mount {
    pub guest_path: String,
    pub host_dir: PathBuf,
    pub read_only: bool,
    pub volume_id: String,
}

impl LiveApp {
    /// The mounts of `function`, in app.toml order.
    pub fn mounts(&self, home: &Home, function: &str) -> Vec<Mount> {
        self.manifest.functions[function]
            .mounts
            .iter()
            .map(|m| {
                let volume = &self.volumes[&m.volume];
                Mount {
                    guest_path: m.guest_path.clone(),
                    host_dir: home.volume_dir(&volume.id),
                    read_only: m.read_only,
                    volume_id: volume.id.clone(),
                }
            })
            .collect()
    }
}

/// Starts an ephemeral app for `run`: its lease, its row, its volumes.
pub fn start_ephemeral(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
) -> Result<(LiveApp, Lease)> {
    let app_id = crate::registry::new_id("ap");
    let lease = Lease::acquire(home, &app_id)?;
    let live = with_new_dirs(home, |created| {
        registry.write(|tx| {
            let record = tx.insert_app_with_id(
                &app_id,
                &manifest.name,
                AppKind::Ephemeral,
                Some(manifest),
                true,
            )?;
            let volumes = reconcile_volumes(tx, home, &record.id, manifest, created)?;
            Ok(LiveApp {
                record,
                manifest: manifest.clone(),
                volumes,
            })
        })
    });
    match live {
        Ok(live) => Ok((live, lease)),
        Err(e) => {
            lease.release();
            Err(e)
        }
    }
}

/// Registers a deployed app, or updates the running one of the same name in
/// place: volumes whose declaration is unchanged keep their data.
pub fn deploy(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
) -> Result<(LiveApp, bool)> {
    let (live, trashed, updated) = with_new_dirs(home, |created| {
        registry.write(|tx| {
            let existing = tx
                .latest_app_named(&manifest.name, AppKind::Deployed)?
                .filter(|app| app.state == AppState::Running);
            let updated = existing.is_some();
            let record = match existing {
                Some(app) => {
                    tx.set_manifest(&app.id, manifest)?;
                    app
                }
                None => tx.insert_app(&manifest.name, AppKind::Deployed, Some(manifest), false)?,
            };
            let before = tx.owned_volumes(&record.id)?;
            let volumes = reconcile_volumes(tx, home, &record.id, manifest, created)?;
            let trashed: Vec<_> = before
                .into_iter()
                .filter(|v| !volumes.values().any(|kept| kept.id == v.id))
                .collect();
            for volume in &trashed {
                tx.delete_volume(&volume.id)?;
            }
            Ok((
                LiveApp {
                    record,
                    manifest: manifest.clone(),
                    volumes,
                },
                trashed,
                updated,
            ))
        })
    })?;
    trash_volumes(home, &trashed)?;
    Ok((live, updated))
}

/// Makes the mounts of `app_id` match `manifest`: creates missing ephemeral
/// volumes, creates or attaches named ones, and unmounts keys that are gone.
fn reconcile_volumes(
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
    for (key, persist) in &manifest.volumes {
        let keep = current.remove(key).filter(|v| match persist {
            Some(name) => v.name.as_deref() == Some(name),
            None => v.name.is_none() && v.app_id == app_id,
        });
        let volume = match (keep, persist) {
            (Some(volume), _) => volume,
            (None, Some(name)) => ensure_named_volume(tx, home, name, created)?,
            (None, None) => {
                let volume = tx.insert_volume(app_id, Some(key), None)?;
                volumes::create_dir(home, &volume.id)?;
                created.push(volume.id.clone());
                volume
            }
        };
        tx.mount(app_id, key, &volume.id)?;
        volumes.insert(key.clone(), volume);
    }
    for key in current.keys() {
        tx.unmount(app_id, key)?;
    }
    Ok(volumes)
}

fn ensure_named_volume(
    tx: &Tx,
    home: &Home,
    name: &str,
    created: &mut Vec<String>,
) -> Result<VolumeRecord> {
    if let Some(volume) = tx.named_volume(name)? {
        return Ok(volume);
    }
    let app = tx.insert_app(name, AppKind::Volume, None, false)?;
    let volume = tx.insert_volume(&app.id, None, Some(name))?;
    tx.mount(&app.id, "self", &volume.id)?;
    volumes::create_dir(home, &volume.id)?;
    created.push(volume.id.clone());
    Ok(volume)
}

/// Runs `f`, removing the volume directories it created if it fails.
fn with_new_dirs<T>(home: &Home, f: impl FnOnce(&mut Vec<String>) -> Result<T>) -> Result<T> {
    let mut created = Vec::new();
    let result = f(&mut created);
    if result.is_err() {
        for id in &created {
            let _ = std::fs::remove_dir(home.volume_dir(id));
        }
    }
    result
}

/// `volume create NAME`.
pub fn create_named_volume(
    home: &Home,
    registry: &mut Registry,
    name: &str,
) -> Result<VolumeRecord> {
    check_name(name, "volume")?;
    with_new_dirs(home, |created| {
        registry.write(|tx| {
            if tx.named_volume(name)?.is_some() {
                return Err(usage!("volume `{name}` already exists"));
            }
            ensure_named_volume(tx, home, name, created)
        })
    })
}

/// Why a stop was refused.
#[derive(Debug, thiserror::Error)]
#[error("volume `{volume}` is mounted by running app(s) {}; stop them first, or pass --force to stop them and delete it", .apps.iter().map(|a| format!("`{}` ({})", a.name, a.id)).collect::<Vec<_>>().join(", "))]
pub struct VolumeInUse {
    pub volume: String,
    pub apps: Vec<AppRecord>,
}

/// Stops an app and deletes its ephemeral volumes (a volume app: its one
/// named volume). A volume that running apps mount is refused, unless
/// `force`, which stops them first. Returns false if it was already stopped.
pub fn stop(home: &Home, registry: &mut Registry, app_id: &str, force: bool) -> Result<bool> {
    let (stopped, trashed) = registry.write(|tx| {
        let mut to_stop = vec![app_id.to_owned()];
        for volume in tx
            .owned_volumes(app_id)?
            .iter()
            .filter(|v| v.name.is_some())
        {
            let users = tx.apps_mounting(&volume.id)?;
            if !users.is_empty() && !force {
                return Err(VolumeInUse {
                    volume: volume.name.clone().unwrap_or_default(),
                    apps: users,
                }
                .into());
            }
            to_stop.extend(users.into_iter().map(|a| a.id));
        }
        let mut stopped = false;
        let mut trashed = Vec::new();
        for (i, id) in to_stop.iter().enumerate() {
            let was_running = tx.mark_stopped(id)?;
            if i == 0 {
                stopped = was_running;
            }
            for volume in tx.owned_volumes(id)? {
                tx.delete_volume(&volume.id)?;
                trashed.push(volume);
            }
        }
        Ok((stopped, trashed))
    })?;
    trash_volumes(home, &trashed)?;
    Ok(stopped)
}

/// Stops an app this process started and owns the lease of.
pub fn stop_owned(home: &Home, registry: &mut Registry, app_id: &str, lease: Lease) -> Result<()> {
    stop(home, registry, app_id, false)?;
    lease.release();
    Ok(())
}

fn trash_volumes(home: &Home, trashed: &[VolumeRecord]) -> Result<()> {
    for volume in trashed {
        volumes::trash(home, &volume.id)?;
    }
    if !trashed.is_empty() {
        volumes::purge_in_background(home)?;
    }
    Ok(())
}

/// What every command does first: stop apps whose `run` process died (and
/// remove the lock files it left), trash volume directories a crash
/// orphaned, and restart an interrupted purge.
pub fn housekeeping(home: &Home, registry: &mut Registry) -> Result<Vec<AppRecord>> {
    let mut reaped = Vec::new();
    let leased = registry.read(|tx| tx.leased_running_apps())?;
    for app in &leased {
        if let Some(lease) = Lease::take_abandoned(home, &app.id)? {
            stop(home, registry, &app.id, true)
                .with_context(|| format!("cannot clean up app {} of a dead process", app.id))?;
            lease.release();
            reaped.push(app.clone());
        }
    }
    if !reaped.is_empty() {
        // A process that died holding locks left their files.
        crate::locks::remove_unheld(home).context("cannot remove stale lock files")?;
    }
    registry.write(|tx| volumes::trash_orphans(home, &tx.all_volume_ids()?))?;
    // Leases of apps registered since the read above are locked by their
    // owners, which `remove_orphans` respects.
    Lease::remove_orphans(home, |id| leased.iter().any(|a| a.id == id))?;
    volumes::purge_in_background(home)?;
    Ok(reaped)
}

/// The one running app `id_or_name` names; a name shared by several running
/// apps is refused with their ids.
pub fn find_running_app(registry: &mut Registry, id_or_name: &str) -> Result<AppRecord> {
    let apps = registry.read(|tx| tx.find_apps(id_or_name))?;
    let running: Vec<_> = apps
        .iter()
        .filter(|a| a.state == AppState::Running)
        .collect();
    match (running.as_slice(), apps.first()) {
        ([app], _) => Ok((*app).clone()),
        ([], Some(app)) => Err(usage!("app `{id_or_name}` ({}) is stopped", app.id)),
        ([], None) => Err(usage!(
            "no running app has the id or name `{id_or_name}`; `wasmhost app list` shows them"
        )),
        (many, _) => Err(usage!(
            "{} running apps are named `{id_or_name}`: {}; give an id instead",
            many.len(),
            many.iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The running deployed app `id_or_name`, with its volumes, for `call`.
pub fn load_deployed(registry: &mut Registry, id_or_name: &str) -> Result<LiveApp> {
    let by_name = registry.read(|tx| tx.latest_app_named(id_or_name, AppKind::Deployed))?;
    let record = match by_name {
        Some(app) if app.state == AppState::Stopped => {
            return Err(usage!(
                "app `{id_or_name}` was stopped; deploy it again with `wasmhost deploy APP.toml`"
            ));
        }
        Some(app) => app,
        None => find_running_app(registry, id_or_name)?,
    };
    let manifest = match (record.kind, &record.manifest) {
        (AppKind::Deployed, Some(manifest)) => manifest.clone(),
        _ => {
            return Err(usage!(
                "app `{id_or_name}` is not a deployed app; `call` needs one made by `wasmhost deploy`"
            ));
        }
    };
    let volumes = registry
        .read(|tx| tx.mounted_volumes(&record.id))?
        .into_iter()
        .map(|m| (m.key, m.volume))
        .collect();
    Ok(LiveApp {
        record,
        manifest,
        volumes,
    })
}

/// The named volume `name`, or a usage error naming what exists.
pub fn named_volume(registry: &mut Registry, name: &str) -> Result<VolumeRecord> {
    check_name(name, "volume")?;
    registry
        .read(|tx| tx.named_volume(name))?
        .ok_or_else(|| usage!("no volume is named `{name}`; `wasmhost volume list` shows them"))
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
