//! Who mounts a volume: the refusals of an operation (a stop, a rename, a
//! restore, a snapshot) while running apps use the volume in a way that
//! matters to it.

use anyhow::Result;

use crate::manifest::MountSpec;
use crate::registry::{AppRecord, Tx, VolumeRecord};

/// Why a stop, a rename, a restore or a snapshot was refused.
#[derive(Debug, thiserror::Error)]
#[error("volume `{volume}` is mounted{} by running app(s) {}; stop them first{}", if *.writable { " writable" } else { "" }, .apps.iter().map(|a| format!("`{}` ({})", a.name, a.id)).collect::<Vec<_>>().join(", "), .action.map(|a| format!(", or pass --force to {a}")).unwrap_or_default())]
pub struct VolumeInUse {
    pub volume: String,
    pub apps: Vec<AppRecord>,
    /// Whether only the apps that may write it count.
    pub writable: bool,
    /// What `--force` does (`stop them and delete it`), if it is offered.
    pub action: Option<&'static str>,
}

/// Which of a volume's mounts by running apps matter to an operation.
#[derive(Clone, Copy)]
pub enum MountFilter<'a> {
    /// Every mount (rename).
    Any,
    /// Mounts of the volume itself, not of its snapshots (restore).
    Live,
    /// Mounts a guest can write through (taking a snapshot).
    Writable,
    /// Mounts of this snapshot of it (deleting the snapshot).
    Snapshot(&'a str),
}

impl MountFilter<'_> {
    fn matches(self, mount: &MountSpec) -> bool {
        match self {
            MountFilter::Any => true,
            MountFilter::Live => mount.snapshot.is_none(),
            MountFilter::Writable => !mount.read_only,
            MountFilter::Snapshot(name) => mount.snapshot.as_deref() == Some(name),
        }
    }
}

/// Refuses when running apps (other than its own) mount `volume` in a way
/// `filter` picks; `force` (a `--force` that would do `action`) lets it be.
pub fn refuse_if_mounted(
    tx: &Tx,
    volume: &VolumeRecord,
    filter: MountFilter,
    force: Option<(bool, &'static str)>,
) -> Result<()> {
    if force.is_some_and(|(force, _)| force) {
        return Ok(());
    }
    let mut apps = Vec::new();
    for app in tx.apps_mounting(&volume.id)? {
        let keys: Vec<String> = tx
            .mounted_volumes(&app.id)?
            .into_iter()
            .filter(|m| m.volume.id == volume.id)
            .map(|m| m.key)
            .collect();
        // Not knowing how it mounts it, count it as using it every way.
        let uses = app.manifest.as_ref().is_none_or(|manifest| {
            manifest
                .functions
                .values()
                .flat_map(|f| &f.mounts)
                .any(|m| keys.contains(&m.volume) && filter.matches(m))
        });
        if uses {
            apps.push(app);
        }
    }
    if apps.is_empty() {
        return Ok(());
    }
    Err(VolumeInUse {
        volume: volume.name.clone().unwrap_or_else(|| volume.id.clone()),
        apps,
        writable: matches!(filter, MountFilter::Writable),
        action: force.map(|(_, action)| action),
    }
    .into())
}
