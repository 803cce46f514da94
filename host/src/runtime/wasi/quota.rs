//! What an instance needs to keep its volumes' usage and quotas: the usage
//! of each writable mount (see `volumes::usage`), and which mount a host
//! descriptor belongs to. The shims in `quota_p1` and `quota_p2` stand in
//! front of wasmtime-wasi's calls that grow or shrink a volume: they reserve
//! growth before the call (failing it with ENOSPC when the quota has no room,
//! so nothing past the quota is written: a write that would cross it fails
//! whole, never shortened) and give back what a call freed after it.
//!
//! Accounting of the hard cases: a file unlinked while a guest still has
//! it open is given back when unlinked; growing it afterwards is charged
//! (the count is then high, never low) and marks the volume for a recount.
//! Renaming over a file gives the replaced file back; a rename or hard link
//! between two volumes is refused with EXDEV (programs then copy), as a
//! rename between file systems would be, once wasmtime-wasi has found both
//! ends writable. A hard link counts as a file and
//! no bytes: a file's bytes are counted once however many names it has.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::mount::Mount;
use crate::runtime::Invocation;
use crate::volumes::{NoRoom, Usage};

/// One mount as the shims see it.
struct MountUsage {
    /// The volume's directory, resolved, to tell which mount a host
    /// descriptor's file is in.
    root: PathBuf,
    volume_id: String,
    /// A read-only mount can neither grow nor shrink its volume:
    /// wasmtime-wasi refuses such calls, and the shims leave them to it.
    read_only: bool,
    /// The volume's usage, one for all the mounts of the volume: the quota
    /// belongs to the volume, whatever mount or `sub_path` reaches it.
    /// `None` for a snapshot, and for a volume no mount may write.
    usage: Option<Arc<Usage>>,
}

/// The usage of an instance's mounts, in the order of its mounts (which is
/// the order of its preopens).
pub struct VolumeQuotas {
    mounts: Vec<MountUsage>,
}

/// Why a shim refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The quota has no room: ENOSPC.
    NoSpace,
    /// Between two volumes: EXDEV.
    CrossVolume,
}

impl From<NoRoom> for Refusal {
    fn from(_: NoRoom) -> Self {
        Self::NoSpace
    }
}

impl VolumeQuotas {
    pub fn open(invocation: &Invocation) -> Result<Self> {
        // One open per volume that some mount may write, or whose
        // `sub_path` the host may have to make.
        let mut volumes: HashMap<&str, Arc<Usage>> = HashMap::new();
        let changes = |m: &&Mount| !m.snapshot && (!m.read_only || m.sub_path.is_some());
        for mount in invocation.mounts.iter().filter(changes) {
            if !volumes.contains_key(mount.volume_id.as_str()) {
                let usage = Usage::open(invocation.home, &mount.volume_id, mount.quota)?;
                volumes.insert(&mount.volume_id, Arc::new(usage));
            }
        }
        let mut mounts: Vec<MountUsage> = Vec::new();
        for mount in invocation.mounts {
            let root = mount
                .host_dir
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", mount.host_dir.display()))?;
            let usage = match mount.snapshot {
                true => None,
                false => volumes.get(mount.volume_id.as_str()).cloned(),
            };
            mounts.push(MountUsage {
                root,
                volume_id: mount.volume_id.clone(),
                read_only: mount.read_only,
                usage,
            });
        }
        Ok(Self { mounts })
    }

    /// The usage of mount `mount`'s volume, read-only or not: for what the
    /// host itself makes in it (the directories of a `sub_path`).
    pub fn volume_usage(&self, mount: usize) -> Option<&Usage> {
        self.mounts.get(mount)?.usage.as_deref()
    }

    /// The usage to keep for what happens in mount `mount`: none for a
    /// read-only mount.
    pub fn usage(&self, mount: usize) -> Option<&Usage> {
        let mount = self.mounts.get(mount)?;
        mount.usage.as_deref().filter(|_| !mount.read_only)
    }

    /// Waits for the turn of file `inode` of mount `mount` to be changed
    /// (see `Usage::try_file_turn`), for a shim to measure, change and
    /// settle it in: `None` when no other open has the volume (no one to
    /// race with) or it keeps no usage. Should turns fail (a file system
    /// without locks), the change goes without, and marks a recount.
    pub fn file_turn(
        &self,
        mount: usize,
        inode: u64,
    ) -> impl Future<Output = Option<FileTurn>> + Send + use<> {
        let usage = self.mounts.get(mount).filter(|m| !m.read_only);
        let usage = usage.and_then(|m| m.usage.clone()).filter(|u| u.shared());
        async move {
            let usage = usage?;
            loop {
                match usage.try_file_turn(inode) {
                    Ok(true) => return Some(FileTurn { usage, inode }),
                    // Turns last one call: another writer's ends soon.
                    Ok(false) => tokio::time::sleep(TURN_POLL).await,
                    Err(_) => {
                        usage.mark_stale();
                        return None;
                    }
                }
            }
        }
    }

    /// Whether a rename or link between mounts `a` and `b` is refused as
    /// crossing volumes: they are two volumes, both writable. One that is
    /// read-only makes the call "not permitted", which wasmtime-wasi
    /// answers before anything else, as a program expects (a rename onto a
    /// read-only file system is EROFS before EXDEV).
    pub fn crosses_volumes(&self, a: usize, b: usize) -> bool {
        match (self.mounts.get(a), self.mounts.get(b)) {
            (Some(a), Some(b)) => a.volume_id != b.volume_id && !a.read_only && !b.read_only,
            _ => false,
        }
    }

    /// The mount the file or directory open as `fd` is in, by the path the
    /// kernel knows it by (a file unlinked since keeps its directory's): a
    /// writable one where several mounts of its volume reach the path
    /// (a read-only mount of the whole volume and a writable one of a
    /// `sub_path`), since whether the descriptor may write is its own.
    pub fn mount_of(&self, fd: BorrowedFd) -> Option<usize> {
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let within = |m: &&MountUsage| path.starts_with(&m.root);
        let writable = self.mounts.iter().position(|m| within(&m) && !m.read_only);
        writable.or_else(|| self.mounts.iter().position(|m| within(&m)))
    }
}

/// How often a writer looks again for a file's turn another has.
const TURN_POLL: Duration = Duration::from_micros(200);

/// A file's turn to be changed, ended when dropped.
pub struct FileTurn {
    usage: Arc<Usage>,
    inode: u64,
}

impl Drop for FileTurn {
    fn drop(&mut self) {
        self.usage.end_file_turn(self.inode);
    }
}

/// What removing or replacing an entry gives back: a directory or a link
/// one file; a regular file one file and, if it was its last name, its
/// bytes.
pub fn freed_by(regular: bool, links: u64, size: u64) -> (u64, u64) {
    if regular && links <= 1 {
        (size, 1)
    } else {
        (0, 1)
    }
}

/// The growth of a file of `size` bytes when `len` bytes are written at
/// `start`: none when nothing is written (a write of nothing, or one that
/// failed, leaves the file as it was wherever it was aimed).
pub fn growth(size: u64, start: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    start.saturating_add(len).saturating_sub(size)
}

#[cfg(test)]
mod tests {
    use super::growth;

    #[test]
    fn growth_counts_only_bytes_written_past_the_end() {
        assert_eq!(growth(100, 50, 100), 50);
        assert_eq!(growth(100, 200, 10), 110);
        assert_eq!(growth(100, 0, 10), 0);
        // A failed write at 3 MB wrote nothing and grew nothing.
        assert_eq!(growth(100, 3 << 20, 0), 0);
    }
}
