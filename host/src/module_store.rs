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
//!
//! In a cluster each machine has its own `modules/`, so a deploy also
//! stores the bytes in the registry (`modules` table), and a machine about
//! to run a snapshot it lacks fetches it from there first ([`fetch`]).
//! One machine keeps files only: its `modules/` is the store.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::atomic_file;
use crate::digest::sha256_hex;
use crate::home::Home;
use crate::registry::{Registry, Tx};

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

    /// Writes the snapshot unless it is there already, whole or not at all,
    /// and in a cluster stores its bytes in the registry too. Call inside
    /// the registry write transaction `tx` (see the module header).
    pub fn store(&self, home: &Home, tx: &Tx) -> Result<()> {
        if home.is_shared() {
            tx.put_module(&self.digest, &self.bytes)?;
        }
        write_local(home, &self.digest, &self.bytes)
    }
}

fn write_local(home: &Home, digest: &str, bytes: &[u8]) -> Result<()> {
    let path = home.module_snapshot(digest);
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(());
    }
    atomic_file::write(&path, bytes)
        .with_context(|| format!("cannot store module snapshot {}", path.display()))
}

/// Copies snapshot `digest` from the registry into this machine's
/// `modules/`, checking its digest: for a machine that runs a module
/// deployed from another.
pub fn fetch(home: &Home, registry: &mut Registry, digest: &str) -> Result<()> {
    let path = home.module_snapshot(digest);
    let bytes = registry
        .read(|tx| tx.module_bytes(digest))?
        .with_context(|| {
            format!(
                "module snapshot {} is missing, and the registry holds no copy of it; deploy the app again",
                path.display()
            )
        })?;
    if sha256_hex(&bytes) != digest {
        bail!(
            "the registry's copy of module snapshot {digest} is damaged (its bytes have another digest); deploy the app again"
        );
    }
    // Under the write lock, as a deploy stores it: a clean-up on this
    // machine cannot take the temporary file from under the write.
    registry.write(|_| write_local(home, digest, &bytes))
}

/// Deletes the snapshots no running app uses (in a cluster, from the
/// registry too), and temporary files a process that died while storing
/// one left. Call inside a registry write transaction.
pub fn remove_unused(home: &Home, tx: &Tx) -> Result<()> {
    let in_use = tx.module_digests_in_use()?;
    if home.is_shared() {
        tx.delete_unused_modules()?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_snapshot_is_checked_against_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let mut registry = Registry::open(&home.registry()).unwrap();
        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let digest = sha256_hex(&bytes);
        let e = fetch(&home, &mut registry, &digest).unwrap_err();
        assert!(format!("{e:#}").contains("holds no copy"), "{e:#}");

        registry
            .write(|tx| tx.put_module(&digest, b"something else"))
            .unwrap();
        let e = fetch(&home, &mut registry, &digest).unwrap_err();
        assert!(format!("{e:#}").contains("is damaged"), "{e:#}");
        assert!(!home.module_snapshot(&digest).exists());

        registry.write(|tx| tx.delete_unused_modules()).unwrap();
        registry.write(|tx| tx.put_module(&digest, &bytes)).unwrap();
        fetch(&home, &mut registry, &digest).unwrap();
        assert_eq!(fs::read(home.module_snapshot(&digest)).unwrap(), bytes);
    }
}
