//! App lifecycle: start, deploy, stop, and reaping apps whose process died.
//! Each change is one registry transaction plus the matching directory work,
//! ordered so a crash at any point leaves nothing half-made: an app's
//! volumes are made to match its app.toml inside the transaction and
//! trashed only after it commits (see `volumes`; orphans are swept by the
//! next command).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::error::{self, ErrorKind, not_found, usage};
use crate::file_store::Shipped;
use crate::home::Home;
use crate::lease::Lease;
use crate::manifest::{AppManifest, FunctionSpec};
use crate::module_store::{self, Snapshot};
use crate::mount::Mount;
use crate::registry::{
    AppKind, AppRecord, AppState, CallRecord, Registry, Tx, VolumeRecord, now_ms,
};
use crate::volumes;

/// A running app as an invocation needs it: its manifest and its volumes.
#[derive(Debug, Clone)]
pub struct LiveApp {
    pub record: AppRecord,
    pub manifest: AppManifest,
    /// Volume key in app.toml -> the volume mounted under it.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Function -> digest of the module snapshot it runs (deployed apps).
    pub modules: BTreeMap<String, String>,
}

impl LiveApp {
    /// The file to load `function`'s module from: its snapshot, or for an
    /// app deployed by a release that took none, the path it named. A
    /// snapshot this machine lacks (deployed from another) is `fetch`ed
    /// first, e.g. with `module_store::fetch`.
    pub fn module(
        &self,
        home: &Home,
        function: &str,
        fetch: impl FnOnce(&str) -> Result<()>,
    ) -> Result<PathBuf> {
        let Some(digest) = self.modules.get(function) else {
            return Ok(self.manifest.functions[function].module.clone());
        };
        let file = home.module_snapshot(digest);
        if !file.exists() {
            fetch(digest)?;
        }
        Ok(file)
    }

    /// The mounts of `function`: its volumes in app.toml order, then its
    /// `files`, each its stored tree mounted read-only (see `file_store`;
    /// a tree this machine lacks is `fetch`ed first by the caller).
    pub fn mounts(&self, home: &Home, function: &str) -> Vec<Mount> {
        mounts_of(home, &self.manifest.functions[function], &self.volumes)
    }
}

/// `spec`'s mounts of `volumes` (by key), then its `files`. A volume
/// `volumes` lacks, one a deploy has yet to make, is new and so empty:
/// the home's empty directory, read-only.
fn mounts_of(
    home: &Home,
    spec: &FunctionSpec,
    volumes: &BTreeMap<String, VolumeRecord>,
) -> Vec<Mount> {
    let files = spec.files.iter().filter_map(|files| {
        let tree = files.tree.as_ref()?;
        Some(Mount {
            guest_path: files.guest_path.clone(),
            host_dir: home.file_tree(tree),
            sub_path: None,
            read_only: true,
            // Nothing changes a stored tree: no quota, no usage.
            snapshot: true,
            volume_id: format!("files-{tree}"),
            quota: Default::default(),
        })
    });
    spec.mounts
        .iter()
        .map(|m| match volumes.get(&m.volume) {
            Some(volume) => Mount {
                guest_path: m.guest_path.clone(),
                host_dir: match &m.snapshot {
                    Some(snapshot) => home.snapshot_dir(&volume.id, snapshot),
                    None => home.volume_dir(&volume.id),
                },
                sub_path: m.sub_path.as_ref().map(PathBuf::from),
                read_only: m.read_only,
                snapshot: m.snapshot.is_some(),
                volume_id: volume.id.clone(),
                quota: volume.quota,
            },
            None => Mount {
                guest_path: m.guest_path.clone(),
                host_dir: home.empty_dir(),
                sub_path: None,
                read_only: true,
                snapshot: true,
                volume_id: format!("new-{}", m.volume),
                quota: Default::default(),
            },
        })
        .chain(files)
        .collect()
}

/// The mounts a deploy of `manifest` would give `function`, as they are
/// now, for its `preinit` to run before the deploy changes anything: the
/// volumes that exist (named ones, and the ephemeral ones of the running
/// app of that name that the deploy keeps) and an empty directory for
/// each the deploy would make.
pub fn mounts_before_deploy(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    function: &str,
) -> Result<Vec<Mount>> {
    let volumes = registry.read(|tx| {
        let app = running_deployed(tx, &manifest.name)?;
        let owned = match &app {
            Some(app) => tx.owned_volumes(&app.id)?,
            None => Vec::new(),
        };
        let mut found = BTreeMap::new();
        for (key, spec) in &manifest.volumes {
            let existing = match (&spec.persist, &app) {
                (Some(name), _) => tx.named_volume(name)?,
                (None, Some(app)) => owned
                    .iter()
                    .find(|v| {
                        v.key.as_deref() == Some(key) && volumes::still_fits(v, &None, &app.id)
                    })
                    .cloned(),
                (None, None) => None,
            };
            if let Some(volume) = existing {
                found.insert(key.clone(), volume);
            }
        }
        Ok(found)
    })?;
    std::fs::create_dir_all(home.empty_dir())?;
    Ok(mounts_of(home, &manifest.functions[function], &volumes))
}

/// Starts an ephemeral app for `run`: its lease, its row, its volumes, its
/// `files` stored (`manifest` holds their trees' digests, see
/// `file_store::Shipped::collect`).
pub fn start_ephemeral(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    files: &Shipped,
) -> Result<(LiveApp, Lease)> {
    let app_id = crate::registry::new_id("ap");
    let lease = Lease::acquire(home, &app_id)?;
    let live = volumes::with_new_dirs(home, |created| {
        registry.write(|tx| {
            let record = tx.insert_app_with_id(
                &app_id,
                &manifest.name,
                AppKind::Ephemeral,
                Some(manifest),
                true,
            )?;
            let volumes = volumes::reconcile(tx, home, &record.id, manifest, created)?;
            files.store(home, tx)?;
            Ok(LiveApp {
                record,
                manifest: manifest.clone(),
                volumes,
                modules: BTreeMap::new(),
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

/// What deploying a manifest would destroy: the ephemeral volumes of the
/// running app of that name that the update deletes (no longer declared,
/// or now `persist`), and the running calls that use them.
#[derive(Debug, Default)]
pub struct DeployPlan {
    pub app: String,
    pub discarded: Vec<VolumeRecord>,
    pub busy_calls: Vec<CallRecord>,
}

/// Why a deploy was refused: it would delete volumes under running calls.
#[derive(Debug, thiserror::Error)]
#[error("updating app `{app}` deletes volume(s) {} that running call(s) use: {}; wait for them to end, or pass --force to interrupt them", list(.volumes), .calls.iter().map(|c| format!("{} (function `{}`)", c.id, c.function)).collect::<Vec<_>>().join(", "))]
pub struct VolumesInUseByCalls {
    pub app: String,
    /// Volume keys.
    pub volumes: Vec<String>,
    pub calls: Vec<CallRecord>,
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DeployPlan {
    /// Refuses the deploy if running calls use a volume it deletes.
    pub fn refuse_busy_calls(&self) -> Result<()> {
        match self.busy_calls.first() {
            None => Ok(()),
            Some(_) => Err(VolumesInUseByCalls {
                app: self.app.clone(),
                volumes: self
                    .discarded
                    .iter()
                    .filter_map(|v| v.key.clone())
                    .collect(),
                calls: self.busy_calls.clone(),
            }
            .into()),
        }
    }
}

/// What deploying `manifest` now would destroy, so the caller can ask
/// before [`deploy`] does it.
pub fn plan_deploy(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
) -> Result<DeployPlan> {
    registry.read(|tx| plan_in(tx, home, manifest))
}

fn running_deployed(tx: &Tx, name: &str) -> Result<Option<AppRecord>> {
    Ok(tx
        .latest_app_named(name, AppKind::Deployed)?
        .filter(|app| app.state == AppState::Running))
}

fn plan_in(tx: &Tx, home: &Home, manifest: &AppManifest) -> Result<DeployPlan> {
    let Some(app) = running_deployed(tx, &manifest.name)? else {
        return Ok(DeployPlan::default());
    };
    let discarded: Vec<VolumeRecord> = tx
        .owned_volumes(&app.id)?
        .into_iter()
        .filter(|v| {
            let declared = v.key.as_ref().and_then(|k| manifest.volumes.get(k));
            !declared.is_some_and(|spec| volumes::still_fits(v, &spec.persist, &app.id))
        })
        .collect();
    let mut busy_calls = Vec::new();
    for call in tx.running_calls(Some(&app.id))? {
        let uses_discarded = match app
            .manifest
            .as_ref()
            .and_then(|m| m.functions.get(&call.function))
        {
            Some(spec) => spec
                .mounts
                .iter()
                .any(|m| discarded.iter().any(|v| v.key.as_ref() == Some(&m.volume))),
            // Not knowing what it mounts, count it as using everything.
            None => !discarded.is_empty(),
        };
        // A call whose process died holds nothing (housekeeping ends it).
        if uses_discarded && !holder_died(home, &call)? {
            busy_calls.push(call);
        }
    }
    Ok(DeployPlan {
        app: app.name,
        discarded,
        busy_calls,
    })
}

/// How a deploy went.
pub struct Deployed {
    pub live: LiveApp,
    /// An update of a running app, rather than a new one.
    pub updated: bool,
    /// Calls interrupted (with `force`) because they used a deleted volume.
    pub interrupted: Vec<CallRecord>,
}

/// Registers a deployed app, or updates the running one of the same name in
/// place: volumes whose declaration is unchanged keep their data, and each
/// function runs `snapshots[function]` and the `files` trees `manifest`
/// names (stored from `files`) from now on. Deletes only the volumes
/// `agreed` lists (the user was asked about them); one that running calls
/// use is refused unless `force`, which cancels those calls.
pub fn deploy(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    (snapshots, files): (&BTreeMap<String, Snapshot>, &Shipped),
    agreed: &DeployPlan,
    force: bool,
) -> Result<Deployed> {
    let (deployed, trashed) =
        volumes::with_new_dirs(home, |created| {
            registry.write(|tx| {
            let plan = plan_in(tx, home, manifest)?;
            if plan
                .discarded
                .iter()
                .any(|v| !agreed.discarded.iter().any(|a| a.id == v.id))
            {
                anyhow::bail!(
                    "app `{}` changed while this deploy was being confirmed; deploy again",
                    manifest.name
                );
            }
            if !force {
                plan.refuse_busy_calls()?;
            }
            let reason = format!(
                "interrupted by `wasmhost deploy --force`, which deleted volume(s) {} of app `{}`",
                list(&plan.discarded.iter().filter_map(|v| v.key.clone()).collect::<Vec<_>>()),
                manifest.name
            );
            for call in &plan.busy_calls {
                tx.cancel_call(&call.id, &reason)?;
            }
            let existing = running_deployed(tx, &manifest.name)?;
            let updated = existing.is_some();
            let record = match existing {
                Some(app) => {
                    tx.set_manifest(&app.id, manifest)?;
                    app
                }
                None => tx.insert_app(&manifest.name, AppKind::Deployed, Some(manifest), false)?,
            };
            let volumes = volumes::reconcile(tx, home, &record.id, manifest, created)?;
            for volume in &plan.discarded {
                tx.delete_volume(&volume.id)?;
            }
            let mut modules = BTreeMap::new();
            for (function, snapshot) in snapshots {
                snapshot.store(home, tx)?;
                modules.insert(function.clone(), snapshot.digest.clone());
            }
            tx.set_app_modules(&record.id, &modules)?;
            files.store(home, tx)?;
            tx.set_schedules(&record.id, &manifest.first_ticks(now_ms()))?;
            Ok((
                Deployed {
                    live: LiveApp {
                        record,
                        manifest: manifest.clone(),
                        volumes,
                        modules,
                    },
                    updated,
                    interrupted: plan.busy_calls,
                },
                plan.discarded,
            ))
        })
        })?;
    wait_for_callers(home, &deployed.interrupted, CALLER_GRACE);
    volumes::trash_volumes(home, &trashed)?;
    remove_unused_modules(home, registry)?;
    Ok(deployed)
}

/// Whether the process running `call` has died (its lease is free).
fn holder_died(home: &Home, call: &CallRecord) -> Result<bool> {
    let holder = call.holder.as_deref().unwrap_or(&call.id);
    Ok(Lease::take_abandoned(home, holder)?.is_some())
}

fn attempt_open(home: &Home, call_id: &str) -> bool {
    Registry::open(&home.registry())
        .and_then(|mut registry| registry.read(|tx| tx.attempt_open(call_id)))
        .unwrap_or(false)
}

/// How long a forced deploy waits for the calls it cancelled to end: a
/// caller sees the cancellation within a poll and gives its instances two
/// seconds to unwind.
const CALLER_GRACE: Duration = Duration::from_secs(10);

/// Waits, at most `limit` in all, until the processes of `calls` have let
/// go of their leases, so that they are interrupted rather than see their
/// files vanish under them.
fn wait_for_callers(home: &Home, calls: &[CallRecord], limit: Duration) {
    let deadline = Instant::now() + limit;
    for call in calls {
        while Instant::now() < deadline && !holder_died(home, call).unwrap_or(true) {
            // A process that runs other calls too (a node) lives on: what
            // tells it has let go of this one is its attempt's end.
            if !attempt_open(home, &call.id) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Deletes module snapshots (and shipped files) that no running app uses, deciding under the
/// registry's write lock (see `module_store`). A transaction of its own,
/// after the change that freed them has committed.
fn remove_unused_modules(home: &Home, registry: &mut Registry) -> Result<()> {
    registry.write(|tx| {
        module_store::remove_unused(home, tx)?;
        crate::file_store::remove_unused(home, tx)
    })
}

/// Stops an app and deletes its ephemeral volumes (a volume app: its one
/// named volume), cancelling its queued and running calls. A volume that running apps
/// mount is refused, unless `force`, which stops them first. Returns false
/// if it was already stopped.
pub fn stop(home: &Home, registry: &mut Registry, app_id: &str, force: bool) -> Result<bool> {
    let (stopped, to_stop, trashed) = registry.write(|tx| {
        let mut to_stop = vec![app_id.to_owned()];
        for volume in tx
            .owned_volumes(app_id)?
            .iter()
            .filter(|v| v.name.is_some())
        {
            let users = tx.apps_mounting(&volume.id)?;
            if !users.is_empty() && !force {
                return Err(volumes::VolumeInUse {
                    volume: volume.name.clone().unwrap_or_default(),
                    apps: users,
                    writable: false,
                    action: Some("stop them and delete it"),
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
            tx.cancel_app_calls(id, "its app was stopped")?;
        }
        Ok((stopped, to_stop, trashed))
    })?;
    volumes::trash_volumes(home, &trashed)?;
    // Best effort: a caller of the stopped app still waiting for a
    // concurrency slot is interrupted by the stop anyway.
    for id in &to_stop {
        let _ = std::fs::remove_dir_all(home.app_slots_dir(id));
    }
    remove_unused_modules(home, registry)?;
    Ok(stopped)
}

/// Stops an app this process started and owns the lease of.
pub fn stop_owned(home: &Home, registry: &mut Registry, app_id: &str, lease: Lease) -> Result<()> {
    stop(home, registry, app_id, false)?;
    lease.release();
    Ok(())
}

/// The one running app `id_or_name` names; a name shared by several running
/// apps is refused with their ids.
pub fn find_running_app(registry: &mut Registry, id_or_name: &str) -> Result<AppRecord> {
    registry.read(|tx| running_app_in(tx, id_or_name))
}

fn running_app_in(tx: &Tx, id_or_name: &str) -> Result<AppRecord> {
    let apps = tx.find_apps(id_or_name)?;
    let running: Vec<_> = apps
        .iter()
        .filter(|a| a.state == AppState::Running)
        .collect();
    match (running.as_slice(), apps.first()) {
        ([app], _) => Ok((*app).clone()),
        ([], Some(app)) => Err(not_found!("app `{id_or_name}` ({}) is stopped", app.id)),
        ([], None) if tx.named_volume(id_or_name)?.is_some() => Err(not_found!(
            "`{id_or_name}` is a volume, not an app; `wasmhost volume delete {id_or_name}` deletes it"
        )),
        ([], None) => Err(not_found!(
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

/// The running deployed app a web request names: `name` as spelled, else
/// the one running deployed app whose name differs from it only in case
/// (a Host header is case-insensitive, and browsers send it in lower case).
pub fn web_app_in(tx: &Tx, name: &str) -> Result<LiveApp> {
    let exact = deployed_app_in(tx, name);
    let missing = matches!(&exact, Err(e) if error::kind_of(e) == Some(ErrorKind::NotFound));
    if !missing {
        return exact;
    }
    match tx.running_deployed_apps_named_any_case(name)?.as_slice() {
        [one] => deployed_app_in(tx, &one.id),
        _ => exact,
    }
}

/// The running deployed app `id_or_name`, with its volumes and modules.
pub fn deployed_app_in(tx: &Tx, id_or_name: &str) -> Result<LiveApp> {
    let record = match tx.latest_app_named(id_or_name, AppKind::Deployed)? {
        Some(app) if app.state == AppState::Stopped => {
            return Err(not_found!(
                "app `{id_or_name}` was stopped; deploy it again with `wasmhost deploy APP.toml`"
            ));
        }
        Some(app) => app,
        None => running_app_in(tx, id_or_name)?,
    };
    let manifest = match (record.kind, &record.manifest) {
        (AppKind::Deployed, Some(manifest)) => manifest.clone(),
        _ => {
            return Err(not_found!(
                "app `{id_or_name}` is not a deployed app; `call` needs one made by `wasmhost deploy`"
            ));
        }
    };
    let volumes = tx
        .mounted_volumes(&record.id)?
        .into_iter()
        .map(|m| (m.key, m.volume))
        .collect();
    let modules = tx.app_modules(&record.id)?;
    Ok(LiveApp {
        record,
        manifest,
        volumes,
        modules,
    })
}

/// The spec of `function` of app `app_id`, if the app has it.
pub fn function_of(tx: &Tx, app_id: &str, function: &str) -> Result<Option<FunctionSpec>> {
    Ok(tx
        .app(app_id)?
        .and_then(|app| app.manifest)
        .and_then(|m| m.functions.get(function).cloned()))
}
