//! Files shipped with apps (`files` in app.toml, SPEC section 2), stored
//! content-addressed beside the module snapshots, so that a deployed app
//! runs exactly the code it was deployed with, and a call already running
//! keeps its files when a redeploy ships others.
//!
//! A tree is a manifest listing its directories and files (each file by
//! the SHA-256 of its bytes, its size and whether it is executable), keyed
//! by the SHA-256 of the manifest's JSON. On a machine it is one read-only
//! directory, `$WASMHOST_HOME/files/<digest>/`, built in a temporary
//! directory beside it and renamed into place whole: immutable once there,
//! shared by every app and function that ships the same tree, and mounted
//! read-only as it is. A redeploy that changes a file makes another
//! digest, hence another directory, so a running call's stays as it was.
//!
//! Links are refused, naming the path: followed, they would ship what the
//! author did not look at; kept, they could point out of the tree. Special
//! files are refused too. An app ships at most [`MAX_BYTES`] and
//! [`MAX_FILES`] in all.
//!
//! In a cluster each machine has its own `files/`; a deploy also stores
//! each tree's manifest and its files' bytes in the registry, and a
//! machine about to mount a tree it lacks rebuilds it from there first
//! ([`fetch`]), checking every digest.
//!
//! A machine's trees that no running app names are removed with the
//! unused module snapshots ([`remove_unused`]), but only while no call is
//! running: a call records the module it runs, not its trees, so a call
//! started before a redeploy may still be about to mount its old tree.
//! The registry's copies are kept.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::digest::{copy_hashed, sha256_hex, stamp, stamped};
use crate::error::usage;
use crate::home::Home;
use crate::manifest::AppManifest;
use crate::registry::{Registry, Tx, new_id};

/// The most bytes (of regular files) one app's `files` may hold in all:
/// enough for an interpreter's packages; data belongs in a volume.
pub const MAX_BYTES: u64 = 1 << 30;
/// The most files and directories one app's `files` may hold in all.
pub const MAX_FILES: u64 = 100_000;

/// One file or directory of a tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Relative to the tree's root, `/`-separated, no `.`, `..` or empty
    /// component.
    path: String,
    /// `None` for a directory.
    #[serde(default)]
    file: Option<Blob>,
}

/// A regular file's contents, by digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Blob {
    digest: String,
    size: u64,
    executable: bool,
}

/// What a tree's digest is the digest of (as JSON): its entries, parents
/// before children, so a walk of them can make each directory first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeManifest {
    entries: Vec<Entry>,
}

/// A tree read from its source.
struct Tree {
    /// The directory its entries' paths are relative to.
    root: PathBuf,
    manifest: TreeManifest,
    json: String,
}

/// How much an app's `files` hold so far, against the limits; and where
/// the digests of files read before are remembered (this machine's cache
/// stamps), so that an unchanged file is not hashed at every `run`.
struct Budget {
    bytes: u64,
    files: u64,
    stamps: PathBuf,
}

impl Budget {
    fn add(&mut self, source: &Path, bytes: u64) -> Result<()> {
        self.files += 1;
        self.bytes += bytes;
        if self.files > MAX_FILES {
            return Err(usage!(
                "`files` source {}: the app's files hold more than {MAX_FILES} files and directories, the most an app may ship; fix: ship fewer, or keep data in a volume",
                source.display()
            ));
        }
        if self.bytes > MAX_BYTES {
            return Err(usage!(
                "`files` source {}: the app's files hold more than {} MiB, the most an app may ship; fix: ship less, or keep data in a volume",
                source.display(),
                MAX_BYTES >> 20
            ));
        }
        Ok(())
    }
}

/// The trees of one app's `files`, read from their sources, ready to be
/// stored where the app's record is written.
pub struct Shipped {
    /// Digest -> tree.
    trees: BTreeMap<String, Tree>,
}

impl Shipped {
    /// Reads each `files` source of `manifest` (each once, however many
    /// functions ship it) and records its tree's digest in the manifest.
    pub fn collect(manifest: &mut AppManifest, stamps: &Path) -> Result<Self> {
        let mut by_source: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut trees = BTreeMap::new();
        let mut budget = Budget {
            bytes: 0,
            files: 0,
            stamps: stamps.to_owned(),
        };
        for function in manifest.functions.values_mut() {
            for files in &mut function.files {
                if !by_source.contains_key(&files.source) {
                    let tree = Tree::read(&files.source, &mut budget)?;
                    let digest = sha256_hex(tree.json.as_bytes());
                    by_source.insert(files.source.clone(), digest.clone());
                    trees.entry(digest).or_insert(tree);
                }
                files.tree = by_source.get(&files.source).cloned();
            }
        }
        Ok(Self { trees })
    }

    /// Stores each tree unless this machine has it, and in a cluster in
    /// the registry too. Call inside the registry write transaction that
    /// records the app.
    pub fn store(&self, home: &Home, tx: &Tx) -> Result<()> {
        for (digest, tree) in &self.trees {
            let dir = home.file_tree(digest);
            if !dir.is_dir() {
                let copy = |blob: &Blob, path: &str, dest: &Path| {
                    copy_verified(&tree.root.join(path), dest, blob)
                };
                materialize(home, digest, &tree.manifest, copy)?;
            }
            if home.is_shared() && !tx.has_file_tree(digest)? {
                for entry in &tree.manifest.entries {
                    if let Some(blob) = &entry.file {
                        let path = dir.join(&entry.path);
                        let bytes = fs::read(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        tx.put_file_blob(&blob.digest, &bytes)?;
                    }
                }
                tx.put_file_tree(digest, &tree.json)?;
            }
        }
        Ok(())
    }
}

impl Tree {
    /// Walks `source` (a directory, or a single file shipped under its own
    /// name), hashing each file, refusing links and special files.
    fn read(source: &Path, budget: &mut Budget) -> Result<Self> {
        let meta = fs::symlink_metadata(source)
            .with_context(|| format!("cannot read `files` source {}", source.display()))?;
        let mut entries = Vec::new();
        let root = if meta.is_dir() {
            walk(source, budget, &mut entries)?;
            source.to_owned()
        } else {
            let name = utf8_name(source, source.file_name().unwrap_or_default())?;
            entries.push(file_entry(source, name.to_owned(), &meta, budget)?);
            source.parent().unwrap_or(Path::new("/")).to_owned()
        };
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = TreeManifest { entries };
        let json = serde_json::to_string(&manifest)?;
        Ok(Self {
            root,
            manifest,
            json,
        })
    }
}

/// Every entry under directory `source`, depth first with a stack of its
/// own (so a deep tree cannot overflow the host's).
fn walk(source: &Path, budget: &mut Budget, entries: &mut Vec<Entry>) -> Result<()> {
    let mut pending = vec![String::new()];
    while let Some(dir) = pending.pop() {
        let listed = source.join(&dir);
        let read = fs::read_dir(&listed)
            .with_context(|| format!("cannot list `files` directory {}", listed.display()))?;
        for child in read {
            let child = child.with_context(|| format!("cannot list {}", listed.display()))?;
            let path = child.path();
            let name = utf8_name(&path, &child.file_name())?.to_owned();
            let relative = match dir.is_empty() {
                true => name,
                false => format!("{dir}/{name}"),
            };
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.is_dir() {
                budget.add(source, 0)?;
                entries.push(Entry {
                    path: relative.clone(),
                    file: None,
                });
                pending.push(relative);
            } else {
                entries.push(file_entry(&path, relative, &meta, budget)?);
            }
        }
    }
    Ok(())
}

/// A regular file's entry, counted in `budget`; a link or a special file
/// is refused, naming it.
fn file_entry(
    path: &Path,
    relative: String,
    meta: &fs::Metadata,
    budget: &mut Budget,
) -> Result<Entry> {
    if meta.is_symlink() {
        return Err(usage!(
            "`files`: {} is a symbolic link, which wasmhost does not ship (it could lead out of the tree); fix: replace it by what it points to, or move it out of the shipped directory",
            path.display()
        ));
    }
    if !meta.is_file() {
        return Err(usage!(
            "`files`: {} is not a regular file or directory (a FIFO, socket or device); fix: move it out of the shipped directory",
            path.display()
        ));
    }
    budget.add(path, meta.len())?;
    // A stale stamp cannot ship wrong bytes: what is stored is checked
    // against the digest as it is copied.
    let (digest, size) = match stamped(&budget.stamps, path, meta) {
        Some(digest) => (digest, meta.len()),
        None => {
            let file =
                fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            let (digest, size) = copy_hashed(file, std::io::sink())
                .with_context(|| format!("cannot read {}", path.display()))?;
            stamp(&budget.stamps, path, meta, &digest);
            (digest, size)
        }
    };
    Ok(Entry {
        path: relative,
        file: Some(Blob {
            digest,
            size,
            executable: meta.permissions().mode() & 0o111 != 0,
        }),
    })
}

fn utf8_name<'a>(path: &Path, name: &'a std::ffi::OsStr) -> Result<&'a str> {
    name.to_str().ok_or_else(|| {
        usage!(
            "`files`: the name of {} is not UTF-8; fix: rename it",
            path.display()
        )
    })
}

/// Copies `source` to `dest`, refusing it if its bytes are no longer
/// those `blob` was read as.
fn copy_verified(source: &Path, dest: &Path, blob: &Blob) -> Result<()> {
    let from =
        fs::File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let to =
        fs::File::create_new(dest).with_context(|| format!("cannot write {}", dest.display()))?;
    let (digest, _) = copy_hashed(from, std::io::BufWriter::new(to))
        .with_context(|| format!("cannot copy {}", source.display()))?;
    if digest != blob.digest {
        bail!(
            "{} changed while it was being shipped; deploy again",
            source.display()
        );
    }
    Ok(())
}

/// Makes tree `digest`'s directory from `manifest`, `fill` writing each
/// file: in a temporary directory, made read-only, then renamed into place
/// (a tree another process stored meanwhile is kept).
fn materialize(
    home: &Home,
    digest: &str,
    manifest: &TreeManifest,
    fill: impl Fn(&Blob, &str, &Path) -> Result<()>,
) -> Result<()> {
    let temp = home.files_dir().join(format!(".{}", new_id("tmp")));
    fs::create_dir(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    let built = (|| {
        for entry in &manifest.entries {
            if !is_plain_relative(&entry.path) {
                bail!(
                    "tree {digest} holds a bad path `{}`",
                    entry.path.escape_debug()
                );
            }
            let dest = temp.join(&entry.path);
            match &entry.file {
                None => fs::create_dir(&dest)?,
                Some(blob) => {
                    fill(blob, &entry.path, &dest)?;
                    let mode = if blob.executable { 0o555 } else { 0o444 };
                    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
                }
            }
        }
        for entry in manifest.entries.iter().rev().filter(|e| e.file.is_none()) {
            fs::set_permissions(temp.join(&entry.path), fs::Permissions::from_mode(0o555))?;
        }
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o555))?;
        let dir = home.file_tree(digest);
        match fs::rename(&temp, &dir) {
            Err(_) if dir.is_dir() => remove_tree(&temp),
            renamed => renamed.with_context(|| format!("cannot store {}", dir.display())),
        }
    })();
    if built.is_err() {
        let _ = remove_tree(&temp);
    }
    built.with_context(|| format!("cannot store the files of tree {digest}"))
}

fn is_plain_relative(path: &str) -> bool {
    !path.starts_with('/') && path.split('/').all(|p| !matches!(p, "" | "." | ".."))
}

/// Removes a tree this store made (no links in it), read-only
/// directories included.
fn remove_tree(path: &Path) -> Result<()> {
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        for child in fs::read_dir(&dir)? {
            let child = child?;
            if child.file_type()?.is_dir() {
                pending.push(child.path());
            }
        }
    }
    Ok(fs::remove_dir_all(path)?)
}

/// Removes this machine's trees that no running app's manifest names, and
/// temporary directories a process that died while storing one left; none
/// while any call runs (see the module header). Call inside a registry
/// write transaction, as storing one is, so neither sees the other half
/// done.
pub fn remove_unused(home: &Home, tx: &Tx) -> Result<()> {
    let dir = home.files_dir();
    let stored: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    if stored.is_empty() || !tx.running_calls(None)?.is_empty() {
        return Ok(());
    }
    let in_use: std::collections::BTreeSet<String> = tx
        .list_apps(false)?
        .into_iter()
        .filter_map(|app| app.manifest)
        .flat_map(|manifest| manifest.functions.into_values())
        .flat_map(|function| function.files)
        .filter_map(|files| files.tree)
        .collect();
    for path in stored {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if in_use.contains(name.as_ref()) {
            continue;
        }
        // Not a temporary directory (stores run under this write lock):
        // a tree a prepared call holds (see `hold`) stays; the lock is kept
        // while the tree goes, so no call takes it meanwhile.
        let lock = match name.starts_with('.') {
            true => None,
            false => match fs::File::open(&path) {
                Ok(dir) if dir.try_lock().is_ok() => Some(dir),
                _ => continue,
            },
        };
        remove_tree(&path).with_context(|| format!("cannot delete {}", path.display()))?;
        drop(lock);
    }
    Ok(())
}

/// Holds tree `digest` for as long as the returned file is open (a
/// shared `flock` on its directory), so that [`remove_unused`] leaves it
/// to the calls that mount it, however long they run. Fetches it first
/// from the registry if this machine lacks it (`fetch` gets the registry).
pub fn hold(home: &Home, digest: &str, fetch: impl FnOnce() -> Result<()>) -> Result<fs::File> {
    let dir = home.file_tree(digest);
    if !dir.is_dir() {
        fetch()?;
    }
    let held = fs::File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    held.lock_shared()
        .with_context(|| format!("cannot hold {}", dir.display()))?;
    // Removed between the check and the lock: say so rather than mount nothing.
    if !dir.is_dir() {
        bail!("the files of tree {digest} were removed as the call started; call again");
    }
    Ok(held)
}

/// Rebuilds tree `digest` on this machine from the registry's copy,
/// checking its manifest's and each file's digest: for a machine that runs
/// an app deployed from another.
pub fn fetch(home: &Home, registry: &mut Registry, digest: &str) -> Result<()> {
    let json = registry.read(|tx| tx.file_tree(digest))?.with_context(|| {
        format!(
            "the files of tree {digest} are missing on this machine, and the registry holds no copy of them; deploy the app again"
        )
    })?;
    if sha256_hex(json.as_bytes()) != digest {
        bail!(
            "the registry's copy of files tree {digest} is damaged (another digest); deploy the app again"
        );
    }
    let manifest: TreeManifest = serde_json::from_str(&json)
        .with_context(|| format!("the registry's copy of files tree {digest} cannot be read"))?;
    registry.write(|tx| {
        if home.file_tree(digest).is_dir() {
            return Ok(());
        }
        let fill = |blob: &Blob, path: &str, dest: &Path| {
            let bytes = tx.file_blob(&blob.digest)?.with_context(|| {
                format!("the registry holds no copy of `{path}` of files tree {digest}; deploy the app again")
            })?;
            if sha256_hex(&bytes) != blob.digest {
                bail!("the registry's copy of `{path}` of files tree {digest} is damaged; deploy the app again");
            }
            Ok(fs::write(dest, bytes)?)
        };
        materialize(home, digest, &manifest, fill)
    })
}
