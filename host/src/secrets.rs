//! Secrets: named sets of environment variables (`wasmhost secret create hf
//! HF_TOKEN=…`) that functions listing them in `secrets` get, after their
//! `env` and before an invocation's `--env`.
//!
//! The registry holds them sealed with XChaCha20-Poly1305 under a key kept
//! outside it, in `$WASMHOST_HOME/secret.key` (32 random bytes, mode 0600,
//! made by the first `secret create`; every node of a cluster is given the
//! same file), so a copy of the registry alone reveals no value. Each seal
//! has a random 24-byte nonce, and binds the secret's name as associated
//! data, so a sealed value moved under another name does not open.
//!
//! Values never leave this module but into a guest's environment: errors
//! name secrets and variables, never values, and call records keep only
//! the invocation's own `--env`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::{conflict, not_found, usage};
use crate::home::Home;
use crate::manifest::{self, AppManifest};
use crate::names::{NAME_RULE, is_valid_name};
use crate::registry::{Registry, SealedSecret, SecretRecord, Tx, new_id};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// The key that seals every secret of a home.
struct SecretKey {
    cipher: XChaCha20Poly1305,
    path: PathBuf,
}

impl SecretKey {
    /// The key, which must exist: a missing one cannot open what was sealed.
    fn load(home: &Home) -> Result<Self> {
        let path = home.secret_key_file();
        match read_key(&path)? {
            Some(key) => Ok(Self::new(key, path)),
            None => anyhow::bail!(
                "the secret key file {} is missing, so no secret can be opened; fix: restore the key file the secrets were made with (every node needs the same one), or create the secrets again with `wasmhost secret create NAME KEY=VALUE... --force`",
                path.display()
            ),
        }
    }

    /// The key, made if there is none yet: written whole to a temporary
    /// file (mode 0600 from the start) and linked into place, which fails
    /// if another process got there first, whose key is then the one.
    /// Secrets sealed already (`sealed`, but for `replaced`) mean the key
    /// was lost, not never made: a new one would leave them unopenable and
    /// break again when the old key is put back, so it is refused.
    fn load_or_create(home: &Home, sealed: &[String], replaced: Option<&str>) -> Result<Self> {
        let path = home.secret_key_file();
        if let Some(key) = read_key(&path)? {
            return Ok(Self::new(key, path));
        }
        let orphaned: Vec<&str> = sealed
            .iter()
            .map(String::as_str)
            .filter(|name| Some(*name) != replaced)
            .collect();
        if !orphaned.is_empty() {
            return Err(conflict!(
                "the secret key file {} is missing, yet {} secret(s) sealed with it exist ({}); fix: restore the key file they were made with (every node needs the same one), or delete them with `wasmhost secret delete NAME` before creating new ones",
                path.display(),
                orphaned.len(),
                orphaned.join(", ")
            ));
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key)
            .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        let temp = path.with_file_name(format!(".{}.tmp", new_id("key")));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(&key)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::hard_link(&temp, &path));
        let _ = std::fs::remove_file(&temp);
        match written {
            Ok(()) => Ok(Self::new(key, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(home),
            Err(e) => Err(e)
                .with_context(|| format!("cannot create the secret key file {}", path.display())),
        }
    }

    fn new(key: [u8; KEY_LEN], path: PathBuf) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
            path,
        }
    }

    fn seal(&self, name: &str, values: &BTreeMap<String, String>) -> Result<SealedSecret> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        let plain = serde_json::to_vec(values)?;
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("cannot seal secret `{name}`"))?;
        Ok(SealedSecret {
            nonce: nonce.to_vec(),
            sealed,
        })
    }

    fn open(&self, name: &str, sealed: &SealedSecret) -> Result<BTreeMap<String, String>> {
        let wrong_key = || {
            anyhow::anyhow!(
                "cannot open secret `{name}` with the key in {}: it was sealed with another key, or altered; fix: restore the key file it was made with, or create it again with `wasmhost secret create {name} KEY=VALUE... --force`",
                self.path.display()
            )
        };
        if sealed.nonce.len() != NONCE_LEN {
            return Err(wrong_key());
        }
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| wrong_key())?;
        // Not `?` on serde's error, whose message could quote the text.
        serde_json::from_slice(&plain).map_err(|_| wrong_key())
    }
}

/// The key in `path`, or None if there is no such file. A key others can
/// read, or of the wrong size, is refused.
fn read_key(path: &Path) -> Result<Option<[u8; KEY_LEN]>> {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        meta => {
            meta.with_context(|| format!("cannot read the secret key file {}", path.display()))?
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the secret key file {} has mode {mode:04o}, so others can read it; fix: `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the secret key file {}", path.display()))?;
    let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "the secret key file {} holds {} bytes, not {KEY_LEN}; fix: restore the key file the secrets were made with, or move it aside and create the secrets again",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(Some(key))
}

fn check_secret_name(name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(usage!(
            "invalid secret name `{}`: use {NAME_RULE}",
            name.escape_debug()
        ))
    }
}

/// Stores secret `name` with `values`; one that exists is replaced only
/// with `replace`.
pub fn create(
    home: &Home,
    registry: &mut Registry,
    name: &str,
    values: &BTreeMap<String, String>,
    replace: bool,
) -> Result<()> {
    check_secret_name(name)?;
    if values.is_empty() {
        return Err(usage!(
            "secret `{name}` would hold no variables; fix: give KEY=VALUE pairs"
        ));
    }
    let sealed: Vec<String> = list(registry)?.into_iter().map(|s| s.name).collect();
    let key = SecretKey::load_or_create(home, &sealed, replace.then_some(name))?;
    let sealed = key.seal(name, values)?;
    let keys: Vec<String> = values.keys().cloned().collect();
    let stored = registry.write(|tx| tx.put_secret(name, &keys, &sealed, replace))?;
    if !stored {
        return Err(conflict!(
            "secret `{name}` exists already; fix: pass --force to replace it, or `wasmhost secret delete {name}` first"
        ));
    }
    Ok(())
}

pub fn list(registry: &mut Registry) -> Result<Vec<SecretRecord>> {
    registry.read(|tx| tx.secrets())
}

/// Deletes secret `name`. Functions that name it fail their next call.
pub fn delete(registry: &mut Registry, name: &str) -> Result<()> {
    check_secret_name(name)?;
    if !registry.write(|tx| tx.delete_secret(name))? {
        return Err(not_found!(
            "no secret is named `{name}`; `wasmhost secret list` shows them"
        ));
    }
    Ok(())
}

/// The variables of secrets `names`, a later secret's over an earlier's,
/// for a function's environment. A secret deleted since the function was
/// deployed is an error naming it.
pub fn environment(
    home: &Home,
    registry: &mut Registry,
    names: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    if names.is_empty() {
        return Ok(env);
    }
    let sealed = registry.read(|tx| {
        names
            .iter()
            .map(|name| Ok((name, tx.sealed_secret(name)?)))
            .collect::<Result<Vec<_>>>()
    })?;
    let key = SecretKey::load(home)?;
    for (name, sealed) in sealed {
        let Some(sealed) = sealed else {
            anyhow::bail!(
                "secret `{name}` does not exist (it was deleted); fix: create it with `wasmhost secret create {name} KEY=VALUE...`, or remove it from the function's `secrets` and deploy again"
            );
        };
        env.extend(key.open(name, &sealed)?);
    }
    Ok(env)
}

/// Refuses an app.toml whose functions name secrets that do not exist, at
/// the line and column of the first such name.
pub fn check_declared(tx: &Tx, manifest: &AppManifest, file: &Path) -> Result<()> {
    let known: Vec<String> = tx.secrets()?.into_iter().map(|s| s.name).collect();
    for (function, spec) in &manifest.functions {
        if let Some(missing) = spec.secrets.iter().find(|s| !known.contains(s)) {
            return Err(manifest::secret_error(
                file,
                function,
                missing,
                format!("secret `{missing}` does not exist"),
                format!(
                    "create it with `wasmhost secret create {missing} KEY=VALUE...`, or correct the name (`wasmhost secret list` shows them)"
                ),
            )
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::new([7; KEY_LEN], PathBuf::from("/k"))
    }

    #[test]
    fn a_seal_opens_under_its_own_name_only() {
        let values = BTreeMap::from([("TOKEN".to_owned(), "s3cr3t".to_owned())]);
        let sealed = key().seal("hf", &values).unwrap();
        assert!(!sealed.sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(key().open("hf", &sealed).unwrap(), values);
        let e = key().open("other", &sealed).unwrap_err().to_string();
        assert!(e.contains("another key") && !e.contains("s3cr3t"), "{e}");
        let other = SecretKey::new([8; KEY_LEN], PathBuf::from("/k"));
        assert!(other.open("hf", &sealed).is_err());
        // A fresh nonce each time.
        assert_ne!(key().seal("hf", &values).unwrap().nonce, sealed.nonce);
    }
}
