//! Compiled code cached on disk, so a module compiles once per engine
//! configuration and later starts by mmap in milliseconds.
//!
//! Entries are keyed by the module's SHA-256 and the engine's compatibility
//! hash, written to a temporary file and renamed into place (readers never see
//! half an entry), and discarded and rebuilt if wasmtime refuses to load them.
//! Hashing a 26 MB module on every start would cost more than the start
//! itself, so a small stamp file remembers each module file's digest by its
//! path, size, inode and change time.
//!
//! In a cluster the entries and snapshots live on the shared file system
//! (see `Home::compiled_dir`), so a module compiles once per cluster: there
//! each entry is stored by its own SHA-256 and named by an index, as
//! snapshots are, and a machine checks an entry against its digest the
//! first time it loads it, since a shared file system can hand it a torn or
//! damaged file. The stamps stay on the machine: a stamp says that this
//! machine read the file whole.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::atomic_file;
use crate::digest::{sha256_hex, stamp, stamped};
use crate::home::Home;

/// The target of the `compile` span and its note: how the CLI tells a
/// compile from other notes, to show it as a live line on a terminal (the
/// library only says what it does; see `cli/logging.rs`).
pub const COMPILE_TARGET: &str = "wasmhost::compile";

const ENTRY_SUFFIX: &str = ".cwasm";
/// In a shared cache, the index naming the entry compiled for one module
/// and engine (see [`ModuleCache::load_shared`]).
const COMPILED_SUFFIX: &str = ".compiled";
const STAMP_SUFFIX: &str = ".stamp";
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
    /// Entries and snapshots: the home's `cache/`, or the cluster's.
    dir: PathBuf,
    /// This machine's stamps (see [`ModuleCache::digest`]).
    stamps: PathBuf,
    /// Whether `dir` is shared by the machines of a cluster.
    shared: bool,
    engine_hash: String,
}

/// What `cache info` reports.
pub struct CacheInfo {
    pub dir: PathBuf,
    /// Where this machine remembers the shared entries it checked, in a
    /// cluster.
    pub stamps: Option<PathBuf>,
    pub entries: usize,
    pub bytes: u64,
    /// Pre-initialized snapshots (`preinit`), and their bytes.
    pub snapshots: usize,
    pub snapshot_bytes: u64,
}

impl ModuleCache {
    pub fn new(home: &Home, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: home.compiled_dir(),
            stamps: home.cache_dir(),
            shared: home.compiled_dir_is_shared(),
            engine_hash: format!("{:016x}", hasher.finish()),
        }
    }

    /// Loads `module` from the cache, compiling and storing it on a miss.
    pub fn load(&self, engine: &Engine, module: &Path) -> Result<Compiled> {
        let component = is_component(&read_header(module)?);
        let (digest, bytes) = self.digest(module)?;
        let kind = if component { "component" } else { "module" };
        let key = format!("{digest}-{}.{kind}", self.engine_hash);
        if self.shared {
            return self.load_shared(engine, module, &key, bytes, component);
        }
        let entry = self.dir.join(format!("{key}{ENTRY_SUFFIX}"));
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
        let serialized = match compile(engine, module, &bytes, component, false) {
            Ok(serialized) => serialized,
            Err(e) => {
                drop(lock);
                for dir in &made {
                    let _ = fs::remove_dir(dir);
                }
                return Err(e);
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

    /// In a cluster: the entry for `key` is stored by its SHA-256
    /// (`<sha256>.cwasm`) and named by an index (`<key>.compiled`), as
    /// snapshots are, so that it is checked against the index's digest on
    /// each machine's first load (see [`ModuleCache::stored`]). The
    /// compile lock is a `flock` on the shared file system: where that does
    /// not exclude across machines, two machines may both compile, and
    /// each writes a file of its own and renames it; the last index wins
    /// and names a whole entry either way. A checked entry that wasmtime
    /// still refuses is removed with its index and compiled once more.
    fn load_shared(
        &self,
        engine: &Engine,
        module: &Path,
        key: &str,
        mut bytes: Option<Vec<u8>>,
        component: bool,
    ) -> Result<Compiled> {
        let index = self.dir.join(format!("{key}{COMPILED_SUFFIX}"));
        for _ in 0..2 {
            let entry = self.stored(&index, ENTRY_SUFFIX, || {
                let bytes = match bytes.take() {
                    Some(bytes) => bytes,
                    None => read_module(module)?,
                };
                compile(engine, module, &bytes, component, true)
            })?;
            if let Some(compiled) = load_entry(engine, &entry, component)? {
                return Ok(compiled);
            }
            let _ = fs::remove_file(&index);
        }
        anyhow::bail!(
            "the compiled entry of {} in the shared cache {} does not load, even made again",
            module.display(),
            self.dir.display()
        )
    }

    /// The module's SHA-256, from its stamp when the file is unchanged; also
    /// the bytes when they had to be read.
    pub(super) fn digest(&self, module: &Path) -> Result<(String, Option<Vec<u8>>)> {
        let meta = fs::metadata(module)
            .with_context(|| format!("cannot read module {}", module.display()))?;
        if let Some(digest) = stamped(&self.stamps, module, &meta) {
            return Ok((digest, None));
        }
        let bytes = read_module(module)?;
        let digest = sha256_hex(&bytes);
        // The cache directory may not exist yet (see `load`): then the
        // next run hashes again.
        stamp(&self.stamps, module, &meta, &digest);
        Ok((digest, Some(bytes)))
    }

    /// Remembers that `file`, just written by this process, has `digest`:
    /// no need to hash it again on its next load.
    fn remember(&self, file: &Path, digest: &str) {
        if let Ok(meta) = fs::metadata(file) {
            let _ = fs::create_dir_all(&self.stamps);
            stamp(&self.stamps, file, &meta, digest);
        }
    }

    pub fn info(&self) -> Result<CacheInfo> {
        let mut info = CacheInfo {
            dir: self.dir.clone(),
            stamps: self.shared.then(|| self.stamps.clone()),
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
    /// stored if there is none or the one there is damaged (see
    /// [`ModuleCache::stored`]).
    pub fn snapshot(&self, key: &str, build: impl FnOnce() -> Result<Vec<u8>>) -> Result<PathBuf> {
        let index = self.dir.join(format!("{key}{INDEX_SUFFIX}"));
        self.stored(&index, SNAPSHOT_SUFFIX, build)
    }

    /// The file `index` names, made by `build` and stored if there is none
    /// or the one there is damaged. The file is stored by its SHA-256
    /// (`<sha256>SUFFIX`, shared by indexes that name the same bytes), then
    /// the index naming it, each written whole; on load the file is
    /// checked against the index's digest (hashed again whenever it changed
    /// since this machine's stamp of it), so an overwritten or truncated
    /// one is removed and made again, never run. Processes making the same
    /// index at once make it once.
    fn stored(
        &self,
        index: &Path,
        suffix: &str,
        build: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<PathBuf> {
        if let Some(found) = self.verified(index, suffix) {
            return Ok(found);
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let _lock = CompileLock::acquire(index);
        if let Some(found) = self.verified(index, suffix) {
            return Ok(found);
        }
        let bytes = build()?;
        let digest = sha256_hex(&bytes);
        let file = self.dir.join(format!("{digest}{suffix}"));
        write_atomically(&file, &bytes)?;
        self.remember(&file, &digest);
        write_atomically(index, digest.as_bytes())?;
        Ok(file)
    }

    /// The file `index` names, if it is there and whole; a damaged one is
    /// removed, with its index, to be made again.
    fn verified(&self, index: &Path, suffix: &str) -> Option<PathBuf> {
        let digest = fs::read_to_string(index).ok()?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = fs::remove_file(index);
            return None;
        }
        let file = self.dir.join(format!("{digest}{suffix}"));
        match self.digest(&file) {
            Ok((actual, _)) if actual == digest => Some(file),
            Ok(_) => {
                tracing::warn!(
                    "the cached {} is damaged (its bytes have another digest); making it again",
                    file.display()
                );
                let _ = fs::remove_file(&file);
                let _ = fs::remove_file(index);
                None
            }
            Err(_) => None,
        }
    }

    /// Removes what this machine keeps: on a home of its own, every
    /// entry, snapshot and stamp; in a cluster, its stamps, so that it
    /// checks each shared entry again on its next load, and with `shared`
    /// the cluster's entries and snapshots too. Running processes keep
    /// their mmaps.
    pub fn clear(&self, shared: bool) -> Result<Cleared> {
        let mut cleared = clear_dir(&self.stamps)?;
        if self.shared && shared {
            cleared.entries += clear_dir(&self.dir)?.entries;
        }
        Ok(cleared)
    }

    /// Whether entries are shared by the machines of a cluster.
    pub fn is_shared(&self) -> bool {
        self.shared
    }
}

/// What `cache clear` removed.
#[derive(Default)]
pub struct Cleared {
    /// Compiled entries and snapshots.
    pub entries: usize,
    /// Stamps of checked files.
    pub stamps: usize,
}

/// Removes every file in `dir`, counting entries and stamps; directories
/// stay (the home's empty directory, see `Home::empty_dir`).
fn clear_dir(dir: &Path) -> Result<Cleared> {
    let mut cleared = Cleared::default();
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cleared),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(ENTRY_SUFFIX) || name.ends_with(SNAPSHOT_SUFFIX) {
            cleared.entries += 1;
        } else if name.ends_with(STAMP_SUFFIX) {
            cleared.stamps += 1;
        }
        fs::remove_file(entry.path())
            .with_context(|| format!("cannot remove {}", entry.path().display()))?;
    }
    Ok(cleared)
}

/// Compiles `bytes`, inside a `compile` span whose note the CLI shows as a
/// live line on a terminal and, for a large module, as one note otherwise
/// (see [`COMPILE_TARGET`]): the compile of a 99 MB module takes minutes.
fn compile(
    engine: &Engine,
    module: &Path,
    bytes: &[u8],
    component: bool,
    shared: bool,
) -> Result<Vec<u8>> {
    let _compiling = tracing::info_span!(target: COMPILE_TARGET, "compile").entered();
    let once = match shared {
        true => "once for the cluster: every machine loads it from the shared cache",
        false => "once: later starts load it from the cache",
    };
    tracing::info!(
        target: COMPILE_TARGET,
        bytes = bytes.len(),
        "compiling {} ({once})",
        module.display()
    );
    let compiled = if component {
        engine.precompile_component(bytes)
    } else {
        engine.precompile_module(bytes)
    };
    compiled.map_err(|e| {
        super::BadModule::new(
            format!("does not compile: {:#}", anyhow::Error::from(e)),
            "rebuild the module if it is damaged, or without the feature named there: wasmhost runs the standardized WebAssembly features wasmtime 48 supports (WebAssembly 3.0, exceptions among them), threads excepted",
        )
        .into()
    })
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
