//! The layout of `$WASMHOST_HOME`: one place that knows where state lives,
//! the registry's [`Location`] included. A leaf: the registry and every
//! other room ask it where things are, and it asks none of them.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::usage;

/// Directory names under `$WASMHOST_HOME`.
const REGISTRY_FILE: &str = "registry.db";
const VOLUMES_DIR: &str = "volumes";
const TRASH_DIR: &str = "trash";
const LEASES_DIR: &str = "leases";
const LOCKS_DIR: &str = "locks";
const CACHE_DIR: &str = "cache";
const MODULES_DIR: &str = "modules";
const FILES_DIR: &str = "files";
const SLOTS_DIR: &str = "slots";
const SNAPSHOTS_DIR: &str = "snapshots";
const USAGE_DIR: &str = "usage";
const PURGE_REPORT: &str = "purge-errors.txt";
const SECRET_KEY_FILE: &str = "secret.key";

/// Where the registry is: which backend, and its file or server. The home
/// says where (see [`Home::registry`]); the registry opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// SQLite, in this file.
    File(PathBuf),
    /// PostgreSQL, at this `postgres://` URL.
    Postgres(String),
}

impl Location {
    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// The state directory, created on first use, and where this machine
/// finds the registry and the volumes, which a cluster shares.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
    /// `$WASMHOST_DB`: a PostgreSQL URL; none for SQLite under `root`.
    db: Option<String>,
    /// `$WASMHOST_VOLUMES`: the shared file system's mount point, which
    /// holds volumes, their snapshots, lock files and trash (one file
    /// system, so a delete is a rename); none for `root`.
    shared: Option<PathBuf>,
}

/// Creates directory `path` (and its parents) as 0700, or narrows one that
/// exists to 0700 if others may enter it.
fn make_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create state directory {}", path.display()))?;
    narrow(path, 0o700)
}

/// Makes the file at `path` private to the user (0600): created empty if
/// missing, narrowed if others may read it. For state a library other than
/// wasmhost's writes, such as SQLite's registry file, whose WAL and shared
/// memory files SQLite then creates with the same mode. A file that exists
/// is changed by its path and never opened: closing any descriptor of a
/// file drops every POSIX lock the process holds on it, SQLite's included.
pub fn make_private_file(path: &Path) -> Result<()> {
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => narrow(path, 0o600),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Makes the file at `path` private to the user (0600) if it is there: for
/// files another process may remove at any moment, as SQLite does its WAL
/// and shared memory when its last connection closes.
pub fn make_private_if_present(path: &Path) -> Result<()> {
    match narrow(path, 0o600) {
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
                == Some(std::io::ErrorKind::NotFound) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Sets `path`'s mode to `mode` if it lets group or others in.
fn narrow(path: &Path, mode: u32) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(
            || {
                format!(
                    "cannot make {} private to its user (mode {mode:04o})",
                    path.display()
                )
            },
        )?;
    }
    Ok(())
}

/// A variable's value, if set and not empty.
fn setting(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

impl Home {
    /// `$WASMHOST_HOME`, else `~/.wasmhost`.
    pub fn from_env() -> Result<Self> {
        Self::locate()?.create()
    }

    /// Where `$WASMHOST_HOME` is, without creating anything: for work that
    /// must leave no state behind if it fails, such as compiling a module
    /// (the module cache creates its own directory when it stores an entry).
    pub fn locate() -> Result<Self> {
        let root = match setting("WASMHOST_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").context(
                    "neither WASMHOST_HOME nor HOME is set; set WASMHOST_HOME to a state directory",
                )?;
                PathBuf::from(home).join(".wasmhost")
            }
        };
        Self::with_settings(root)
    }

    /// A home at `root` with the registry and volumes `$WASMHOST_DB` and
    /// `$WASMHOST_VOLUMES` name, checked.
    fn with_settings(root: PathBuf) -> Result<Self> {
        let db = match setting("WASMHOST_DB") {
            None => None,
            Some(url) => {
                let url = url
                    .into_string()
                    .map_err(|_| usage!("WASMHOST_DB (--db) is not UTF-8"))?;
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    return Err(usage!(
                        "WASMHOST_DB (--db) is {:?}; give a postgres://USER@HOST:PORT/DATABASE URL, or unset it for the embedded registry",
                        url.split('@').next_back().unwrap_or_default()
                    ));
                }
                Some(url)
            }
        };
        let shared = setting("WASMHOST_VOLUMES").map(PathBuf::from);
        if let Some(dir) = &shared
            && !dir.is_dir()
        {
            return Err(usage!(
                "WASMHOST_VOLUMES (--volumes) is {}, which is not a directory; mount the shared file system there first",
                dir.display()
            ));
        }
        Ok(Self { root, db, shared })
    }

    /// Opens (creating if needed) a state directory at `root`, with the
    /// registry and volumes `$WASMHOST_DB` and `$WASMHOST_VOLUMES` say.
    pub fn at(root: PathBuf) -> Result<Self> {
        Self::with_settings(root)?.create()
    }

    /// Makes the home and its state directories, each private to the user
    /// (0700; one made wider by an earlier release is narrowed), so the
    /// registry, volumes, snapshots, trash and leases are theirs alone.
    fn create(self) -> Result<Self> {
        let home = self;
        make_private_dir(&home.root)?;
        for (base, dir) in [
            (home.shared_root(), VOLUMES_DIR),
            (home.shared_root(), TRASH_DIR),
            (home.shared_root(), LOCKS_DIR),
            (home.shared_root(), SNAPSHOTS_DIR),
            (&home.root, LEASES_DIR),
            (&home.root, CACHE_DIR),
            (&home.root, MODULES_DIR),
            (&home.root, FILES_DIR),
            (&home.root, SLOTS_DIR),
            (&home.root, USAGE_DIR),
        ] {
            make_private_dir(&base.join(dir))?;
        }
        make_private_dir(&home.compiled_dir())?;
        Ok(home)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shared_root(&self) -> &Path {
        self.shared.as_deref().unwrap_or(&self.root)
    }

    /// Where the registry is: SQLite under the home, or `$WASMHOST_DB`.
    pub fn registry(&self) -> Location {
        match &self.db {
            Some(url) => Location::Postgres(url.clone()),
            None => Location::File(self.root.join(REGISTRY_FILE)),
        }
    }

    /// Whether other machines share this registry (a cluster).
    pub fn is_shared(&self) -> bool {
        self.db.is_some()
    }

    /// Where the files of volume `volume_id` live.
    pub fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.shared_root().join(VOLUMES_DIR).join(volume_id)
    }

    /// One directory per volume that has snapshots: each snapshot is a
    /// directory in it named as the snapshot, beside the copies under way
    /// (`.op-ID`, see `volumes::snapshots`). Outside every volume, so no guest sees
    /// them but through a snapshot mount.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.shared_root().join(SNAPSHOTS_DIR)
    }

    pub fn volume_snapshots_dir(&self, volume_id: &str) -> PathBuf {
        self.snapshots_dir().join(volume_id)
    }

    pub fn snapshot_dir(&self, volume_id: &str, snapshot: &str) -> PathBuf {
        self.volume_snapshots_dir(volume_id).join(snapshot)
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.shared_root().join(VOLUMES_DIR)
    }

    /// Deleted data waits here for the background purge; no volume sees it.
    pub fn trash_dir(&self) -> PathBuf {
        self.shared_root().join(TRASH_DIR)
    }

    /// The key that seals secrets (see `secrets`), outside the registry.
    pub fn secret_key_file(&self) -> PathBuf {
        self.shared_root().join(SECRET_KEY_FILE)
    }

    /// What the last trash purge could not remove, if anything.
    pub fn purge_report(&self) -> PathBuf {
        self.root.join(PURGE_REPORT)
    }

    /// One lease file per app or call owned by a live process (see `lease`).
    pub fn lease_file(&self, id: &str) -> PathBuf {
        self.leases_dir().join(format!("{id}.lease"))
    }

    pub fn leases_dir(&self) -> PathBuf {
        self.root.join(LEASES_DIR)
    }

    /// Host-side lock files of volume `volume_id`, outside every volume.
    pub fn volume_locks_dir(&self, volume_id: &str) -> PathBuf {
        self.locks_dir().join(volume_id)
    }

    /// One directory of lock files per volume (see `locks`).
    pub fn locks_dir(&self) -> PathBuf {
        self.shared_root().join(LOCKS_DIR)
    }

    /// One usage file per volume (see `volumes::usage`).
    pub fn usage_dir(&self) -> PathBuf {
        self.root.join(USAGE_DIR)
    }

    pub fn volume_usage_file(&self, volume_id: &str) -> PathBuf {
        self.usage_dir().join(volume_id)
    }

    /// This machine's cache: compiled modules and snapshots on a home of
    /// its own, and in a cluster only the stamps that remember which
    /// shared entries this machine has checked (see
    /// [`Home::compiled_dir`]).
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR)
    }

    /// Where compiled modules and pre-initialized snapshots are kept: in a
    /// cluster (a shared registry and `--volumes`), on the shared file
    /// system beside `volumes/`, so that a module compiles once per
    /// cluster rather than once per machine; else this home's cache. Not
    /// under `volumes/`, so no volume name or mount reaches it.
    pub fn compiled_dir(&self) -> PathBuf {
        match (&self.shared, self.is_shared()) {
            (Some(shared), true) => shared.join(CACHE_DIR),
            _ => self.cache_dir(),
        }
    }

    /// Whether [`Home::compiled_dir`] is shared by the cluster's machines.
    pub fn compiled_dir_is_shared(&self) -> bool {
        self.shared.is_some() && self.is_shared()
    }

    /// An empty directory (made by whoever mounts it): what a `preinit` run
    /// before a deploy sees where the deploy will make a new, so empty,
    /// volume. Under the cache, whose `clear` leaves directories alone.
    pub fn empty_dir(&self) -> PathBuf {
        self.cache_dir().join("empty")
    }

    /// The module snapshots deployed apps run, one file per content digest.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join(MODULES_DIR)
    }

    pub fn module_snapshot(&self, digest: &str) -> PathBuf {
        self.modules_dir().join(format!("{digest}.wasm"))
    }

    /// This machine's store of files shipped with apps (see `file_store`).
    pub fn files_dir(&self) -> PathBuf {
        self.root.join(FILES_DIR)
    }

    /// The read-only directory of stored tree `digest`.
    pub fn file_tree(&self, digest: &str) -> PathBuf {
        self.files_dir().join(digest)
    }

    /// Concurrency slot files of one app's function (see `slots`).
    pub fn function_slots_dir(&self, app_id: &str, function: &str) -> PathBuf {
        self.app_slots_dir(app_id).join(function)
    }

    pub fn app_slots_dir(&self, app_id: &str) -> PathBuf {
        self.root.join(SLOTS_DIR).join(app_id)
    }
}
