//! One volume as one function sees it: what `apps` lists for a function,
//! `invoke` prepares, and the runtime and the guest locks mount. A module
//! of its own, importing only the manifest's `Quota` and the volumes'
//! `Cursor` and `Usage`, so that those rooms share it without importing
//! `apps` (nor `apps` them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::manifest::Quota;
use crate::volumes::{Cursor, Problem, Usage};

/// One volume as one function sees it.
#[derive(Debug, Clone)]
pub struct Mount {
    pub guest_path: String,
    /// The volume's directory, or its snapshot's.
    pub host_dir: PathBuf,
    /// The directory beneath `host_dir` the guest sees as the mount's root
    /// (plain names, checked by the manifest), resolved when an instance
    /// starts without following links (see `runtime::instance`).
    pub sub_path: Option<PathBuf>,
    pub read_only: bool,
    /// Whether `host_dir` is a snapshot, which nothing may change.
    pub snapshot: bool,
    pub volume_id: String,
    /// The volume's quota when the app started: the usage file's, if it
    /// has none yet (see `volumes::usage`).
    pub quota: Quota,
}

impl Mount {
    /// The directory `sub_path` names, reached from `host_dir` one name
    /// at a time without following a link (a guest may have made a name
    /// on the way a link to `..` or to `/etc`: refused, never followed),
    /// and made where missing, but never in a snapshot. Each directory made
    /// is an entry of the volume like any other: reserved in `usage` (the
    /// volume's, when the volume keeps one) before it is made, the mount
    /// refused when the quota has no room for it.
    pub fn open_sub_path(&self, sub_path: &Path, usage: Option<&Usage>) -> Result<Cursor> {
        let mut dir = Cursor::open(&self.host_dir)
            .with_context(|| format!("cannot open {}", self.host_dir.display()))?;
        for name in sub_path.iter() {
            let missing =
                || matches!(dir.stat(name), Err(e) if matches!(e.problem, Problem::NotFound));
            let reserved = !self.snapshot && usage.is_some() && missing();
            if let Some(usage) = usage.filter(|_| reserved)
                && usage.reserve(0, 1).is_err()
            {
                anyhow::bail!(
                    "cannot mount `{}`: its sub_path `{}` needs directories that volume `{}`'s quota (max_files) has no room for",
                    self.guest_path,
                    sub_path.display(),
                    self.volume_id
                );
            }
            if self.snapshot {
                dir.descend(name)
            } else {
                dir.descend_making(name)
            }
            .inspect_err(|_| {
                if let Some(usage) = usage.filter(|_| reserved) {
                    usage.release(0, 1);
                }
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot mount `{}`: in its sub_path, {e}; wasmhost never follows links in a volume, which could lead outside the sub_path",
                    self.guest_path
                )
            })?;
        }
        Ok(dir)
    }
}
