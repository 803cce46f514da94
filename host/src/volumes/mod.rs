//! Volumes: the directories guests mount, and everything the host does
//! with them, behind this one facade.
//!
//! - [`store`]: named and ephemeral volumes in the registry and on disk
//!   together (create, rename, quota, lookup, an app's volumes made to match
//!   its app.toml), and [`in_use`]: refusals while running apps mount one.
//! - [`disk`]: one directory per volume, and the trash deletes go through.
//! - [`files`] and [`copy`]: the host's own commands on a volume's files
//!   (`volume ls|put|get|cp|rm`), which take room under the volume's quota
//!   before they write; [`walk`] and [`sparse`] are how they reach files a
//!   guest controls and copy them without filling holes.
//! - [`usage`]: what each volume holds and may hold, shared by every process
//!   that writes it; [`quota`]: the host's reservations against it.
//! - [`snapshots`]: read-only copies, restores and forks.
//!
//! Imports only rooms below it (home, manifest, registry, lease, names,
//! text, error); never apps, invoke, the runtime, the CLI or the node.

mod copy;
mod disk;
mod files;
mod in_use;
mod quota;
mod snapshots;
mod sparse;
mod store;
mod usage;
mod walk;

use anyhow::Result;

use crate::home::Home;
use crate::registry::SnapshotRecord;

pub use copy::{CopyReport, Skipped};
pub use disk::{purge_in_background, purge_trash};
pub use files::{Entry, VolumeFiles};
pub use in_use::VolumeInUse;
pub use quota::{apply_quota, counts_now};
pub use snapshots::{
    Progress, create_snapshot, delete_snapshot, find_snapshot, fork_snapshot, list_snapshots,
    restore_snapshot,
};
pub use store::{
    create_named_volume, named_volume, reconcile, rename_named_volume, set_volume_quota,
    still_fits, trash_volumes, with_new_dirs,
};
pub use usage::{Counts, NoRoom, Usage};
pub use walk::{Cursor, Problem};

/// Trashes the volume, lock and snapshot directories (and usage files) the
/// registry does not know, given every volume id and snapshot it does:
/// what a process left when it died between committing a delete and moving
/// the files, or a copy whose process died. Call inside a registry write
/// transaction, so no volume is half-created.
pub fn trash_orphans(
    home: &Home,
    known_ids: &[String],
    snapshots: &[SnapshotRecord],
) -> Result<()> {
    disk::trash_orphans(home, known_ids)?;
    snapshots::trash_orphans(home, snapshots)
}
