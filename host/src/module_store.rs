//! Snapshots of deployed modules, so a deployed app runs exactly what was
//! deployed whatever later happens to the `.wasm` files it was deployed
//! from (SPEC section 3).
//!
//! A snapshot is the module's bytes at `$WASMHOST_HOME/modules/<sha256>.wasm`:
//! content-addressed, so apps deploying the same bytes share one file. Both
//! storing a snapshot and removing unused ones happen inside a registry
//! write transaction, so a deploy never references a file that a concurrent
//! clean-up is deleting: the clean-up sees either no reference and no file
//! yet, or the committed reference.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result};

use crate::atomic_file;
use crate::digest::sha256_hex;
use crate::home::Home;

/// A module's bytes, read once at deploy time.
pub struct Snapshot {
    pub digest: String,
    bytes: Vec<u8>,
}

impl Snapshot {
    pub fn read(module: &Path) -> Result<Self> {
        let bytes =
            fs::read(module).with_context(|| format!("cannot read module {}", module.display()))?;
        Ok(Self {
            digest: sha256_hex(&bytes),
            bytes,
        })
    }

    /// Writes the snapshot unless it is there already, whole or not at all.
    /// Call inside a registry write transaction (see the module header).
    pub fn store(&self, home: &Home) -> Result<()> {
        let path = home.module_snapshot(&self.digest);
        if fs::metadata(&path).is_ok_and(|m| m.len() == self.bytes.len() as u64) {
            return Ok(());
        }
        atomic_file::write(&path, &self.bytes)
            .with_context(|| format!("cannot store module snapshot {}", path.display()))
    }
}

/// Deletes the snapshots no running app uses, and temporary files a
/// process that died while storing one left. Call inside a registry write
/// transaction, with `in_use` read in it.
pub fn remove_unused(home: &Home, in_use: &BTreeSet<String>) -> Result<()> {
    let dir = home.modules_dir();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let used = name
            .strip_suffix(".wasm")
            .is_some_and(|digest| in_use.contains(digest));
        if !used {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot delete {}", path.display()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
