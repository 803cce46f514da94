//! Compiled code cached on disk, so a module compiles once per engine
//! configuration and later starts by mmap in milliseconds.
//!
//! Entries are keyed by the module's SHA-256 and the engine's compatibility
//! hash, written to a temporary file and renamed into place (readers never see
//! half an entry), and discarded and rebuilt if wasmtime refuses to load them.
//! Hashing a 26 MB module on every start would cost more than the start
//! itself, so a small stamp file remembers each module file's digest by its
//! path, size, inode and change time.

use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::atomic_file;
use crate::digest::sha256_hex;

const ENTRY_SUFFIX: &str = ".cwasm";
/// A pre-initialized snapshot's module, named by its SHA-256 (see
/// [`ModuleCache::snapshot`]).
const SNAPSHOT_SUFFIX: &str = ".snapshot.wasm";
/// The index naming the snapshot made for one key.
const INDEX_SUFFIX: &str = ".preinit";

/// A compiled core module or component.
pub enum Compiled {
    Core(wasmtime::Module),
    Component(Component),
}

#[derive(Clone)]
pub struct ModuleCache {
    dir: PathBuf,
    engine_hash: String,
}

/// What `cache info` reports.
pub struct CacheInfo {
    pub dir: PathBuf,
    pub entries: usize,
    pub bytes: u64,
    /// Pre-initialized snapshots (`preinit`), and their bytes.
    pub snapshots: usize,
    pub snapshot_bytes: u64,
}

impl ModuleCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_hash: format!("{:016x}", hasher.finish()),
        }
    }

    /// Loads `module` from the cache, compiling and storing it on a miss.
    pub fn load(&self, engine: &Engine, module: &Path) -> Result<Compiled> {
        let component = is_component(&read_header(module)?);
        let (digest, bytes) = self.digest(module)?;
        let kind = if component { "component" } else { "module" };
        let entry = self.dir.join(format!(
            "{digest}-{}.{kind}{ENTRY_SUFFIX}",
            self.engine_hash
        ));
        if let Some(compiled) = load_entry(engine, &entry, component)? {
            return Ok(compiled);
        }
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => read_module(module)?,
        };
        // Created before compiling, for the lock; removed again if the module
        // does not compile, so that a bad module leaves no state behind.
        let made = missing_dirs(&self.dir);
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let lock = CompileLock::acquire(&entry);
        // Compiled by the process we waited for.
        if let Some(compiled) = load_entry(engine, &entry, component)? {
            return Ok(compiled);
        }
        tracing::info!(
            "compiling {} (once: later starts load it from the cache)",
            module.display()
        );
        let compiled = if component {
            engine.precompile_component(&bytes)
        } else {
            engine.precompile_module(&bytes)
        };
        let serialized = match compiled {
            Ok(serialized) => serialized,
            Err(e) => {
                drop(lock);
                for dir in &made {
                    let _ = fs::remove_dir(dir);
                }
                return Err(super::BadModule::new(
                    format!("does not compile: {:#}", anyhow::Error::from(e)),
                    "rebuild the module if it is damaged, or without the feature named there: wasmhost runs the standardized WebAssembly features wasmtime 48 supports (WebAssembly 3.0, exceptions among them), threads excepted",
                )
                .into());
            }
        };
        // A full disk costs the next start a compile, not this one its run.
        if write_atomically(&entry, &serialized).is_ok()
            && let Some(compiled) = load_entry(engine, &entry, component)?
        {
            return Ok(compiled);
        }
        // SAFETY: the bytes are wasmtime's own output of a moment ago.
        unsafe {
            Ok(if component {
                Compiled::Component(Component::deserialize(engine, &serialized)?)
            } else {
                Compiled::Core(wasmtime::Module::deserialize(engine, &serialized)?)
            })
        }
    }

    /// The module's SHA-256, from its stamp when the file is unchanged; also
    /// the bytes when they had to be read.
    pub(super) fn digest(&self, module: &Path) -> Result<(String, Option<Vec<u8>>)> {
        let meta = fs::metadata(module)
            .with_context(|| format!("cannot read module {}", module.display()))?;
        let stamp_key = format!(
            "{}\0{}\0{}\0{}\0{}",
            module.display(),
            meta.len(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        let stamp = self
            .dir
            .join(format!("{}.stamp", sha256_hex(stamp_key.as_bytes())));
        if let Ok(digest) = fs::read_to_string(&stamp)
            && digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok((digest, None));
        }
        let bytes = read_module(module)?;
        let digest = sha256_hex(&bytes);
        // The stamp only saves hashing next time; the cache directory may not
        // exist yet (see `load`), and a full disk must not fail the run here.
        let _ = write_atomically(&stamp, digest.as_bytes());
        Ok((digest, Some(bytes)))
    }

    pub fn info(&self) -> Result<CacheInfo> {
        let mut info = CacheInfo {
            dir: self.dir.clone(),
            entries: 0,
            bytes: 0,
            snapshots: 0,
            snapshot_bytes: 0,
        };
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(ENTRY_SUFFIX) {
                info.entries += 1;
                info.bytes += entry.metadata()?.len();
            } else if name.ends_with(SNAPSHOT_SUFFIX) {
                info.snapshots += 1;
                info.snapshot_bytes += entry.metadata()?.len();
            }
        }
        Ok(info)
    }

    /// The engine's compatibility hash, which keys entries.
    pub(super) fn engine_hash(&self) -> &str {
        &self.engine_hash
    }

    /// The pre-initialized snapshot made for `key`, made by `build` and
    /// stored if there is none or the one there is damaged. The snapshot is
    /// stored by its SHA-256 (`<sha256>.snapshot.wasm`, shared by keys that
    /// make the same bytes), then an index `<key>.preinit` naming it, each
    /// written whole; on load the snapshot is checked against the index's
    /// digest (hashed again whenever the file changed since its stamp), so
    /// an overwritten or truncated one is removed and made again, never
    /// run. Processes making the same key at once make it once.
    pub fn snapshot(&self, key: &str, build: impl FnOnce() -> Result<Vec<u8>>) -> Result<PathBuf> {
        let index = self.dir.join(format!("{key}{INDEX_SUFFIX}"));
        if let Some(snapshot) = self.verified(&index) {
            return Ok(snapshot);
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let _lock = CompileLock::acquire(&index);
        if let Some(snapshot) = self.verified(&index) {
            return Ok(snapshot);
        }
        let bytes = build()?;
        let digest = sha256_hex(&bytes);
        let snapshot = self.dir.join(format!("{digest}{SNAPSHOT_SUFFIX}"));
        write_atomically(&snapshot, &bytes)?;
        write_atomically(&index, digest.as_bytes())?;
        Ok(snapshot)
    }

    /// The snapshot `index` names, if it is there and whole; a damaged one
    /// is removed, with its index, to be made again.
    fn verified(&self, index: &Path) -> Option<PathBuf> {
        let digest = fs::read_to_string(index).ok()?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = fs::remove_file(index);
            return None;
        }
        let snapshot = self.dir.join(format!("{digest}{SNAPSHOT_SUFFIX}"));
        match self.digest(&snapshot) {
            Ok((actual, _)) if actual == digest => Some(snapshot),
            Ok(_) => {
                tracing::warn!(
                    "the pre-initialized snapshot {} is damaged (its bytes have another digest); making it again",
                    snapshot.display()
                );
                let _ = fs::remove_file(&snapshot);
                let _ = fs::remove_file(index);
                None
            }
            Err(_) => None,
        }
    }

    /// Removes every entry and stamp; running processes keep their mmaps.
    pub fn clear(&self) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            // The home's empty directory (see `Home::empty_dir`).
            if entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(ENTRY_SUFFIX) || name.ends_with(SNAPSHOT_SUFFIX) {
                removed += 1;
            }
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
        Ok(removed)
    }
}

fn deserialize(engine: &Engine, entry: &Path, component: bool) -> Result<Compiled> {
    // SAFETY: entries are written only by `load`, atomically, under the
    // user's own `$WASMHOST_HOME`; wasmtime checks the header, version and
    // engine settings and refuses a truncated or foreign file.
    unsafe {
        if component {
            Ok(Component::deserialize_file(engine, entry).map(Compiled::Component)?)
        } else {
            Ok(wasmtime::Module::deserialize_file(engine, entry).map(Compiled::Core)?)
        }
    }
}

/// The entry at `entry` if it loads; one that does not (truncated,
/// overwritten, another wasmtime's) is removed, to be rebuilt. One that is
/// sound but does not fit the engine's instance pool is kept: no rebuild
/// would change that.
fn load_entry(engine: &Engine, entry: &Path, component: bool) -> Result<Option<Compiled>> {
    if !entry.exists() {
        return Ok(None);
    }
    match deserialize(engine, entry, component) {
        Ok(compiled) => Ok(Some(compiled)),
        // wasmtime says so only in words: it has no error type for it.
        Err(e) if format!("{e:#}").contains("pooling allocator") => Err(super::BadModule::new(
            format!(
                "does not fit one instance's share of the pool wasmhost keeps for --map: {e:#}"
            ),
            "run it with --concurrency 1, where instances are allocated one by one",
        )
        .into()),
        Err(_) => {
            let _ = fs::remove_file(entry);
            Ok(None)
        }
    }
}

/// An exclusive `flock` on `ENTRY.lock`, held while compiling one entry, so
/// that processes starting the same uncached module at once compile it once
/// (13 s and 280 MB each, for CPython): the others wait, then load the
/// entry. The kernel drops the lock of a process that dies, so a crashed
/// compiler only hands the compile to the next in line. Best effort: on a
/// disk too full for an empty file, each process compiles for itself.
struct CompileLock {
    path: PathBuf,
    _file: Option<fs::File>,
}

impl CompileLock {
    fn acquire(entry: &Path) -> Self {
        let path = entry.with_extension("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()
            .filter(|file| file.lock().is_ok());
        Self { path, _file: file }
    }
}

impl Drop for CompileLock {
    /// Removed while still held, after the entry is written: a process that
    /// opens the old file waits and then finds the entry; one that makes a
    /// new file finds it at once. Debris of a crash is removed by the next
    /// compile of that entry, or by `cache clear`.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `dir` and those of its ancestors that do not exist, innermost first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_owned)
        .collect()
}

pub(super) fn read_header(module: &Path) -> Result<[u8; 8]> {
    let mut header = [0u8; 8];
    fs::File::open(module)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
        .with_context(|| format!("cannot read module {}", module.display()))?;
    Ok(header)
}

fn read_module(module: &Path) -> Result<Vec<u8>> {
    fs::read(module).with_context(|| format!("cannot read module {}", module.display()))
}

/// Components carry layer 1 in the header's version field; core modules 0.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    atomic_file::write(path, contents)
        .with_context(|| format!("cannot write cache entry {}", path.display()))
}
