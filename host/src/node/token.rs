//! The API's bearer token: `$WASMHOST_HOME/token`, made at the first
//! `serve` with mode 0600 (readable by the home's owner, who can run every
//! command anyway), compared in constant time so its bytes cannot be
//! guessed one at a time from response times.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use subtle::ConstantTimeEq;

use crate::home::Home;

pub fn token_file(home: &Home) -> PathBuf {
    home.root().join("token")
}

/// The token, made (32 random bytes, hex) if there is none yet.
pub fn load_or_create(home: &Home) -> Result<String> {
    let path = token_file(home);
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(fresh.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write the API token {}", path.display()))?;
            Ok(fresh)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the API token {}", path.display()))?;
            let token = token.trim().to_owned();
            if token.len() < 16 {
                anyhow::bail!(
                    "the API token {} is shorter than 16 characters; delete it and `wasmhost serve` makes a new one",
                    path.display()
                );
            }
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create the API token {}", path.display())),
    }
}

/// Whether an `Authorization` header value carries `token`. The scheme's
/// name is case-insensitive (RFC 9110 section 11.1): `bearer` is `Bearer`.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(header) = header else {
        return false;
    };
    let scheme = b"bearer ";
    if header.len() < scheme.len() || !header[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    header[scheme.len()..].ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(authorized(
            Some(b"Bearer secret-token-123"),
            "secret-token-123"
        ));
        assert!(!authorized(
            Some(b"Bearer secret-token-12"),
            "secret-token-123"
        ));
        assert!(!authorized(Some(b"secret-token-123"), "secret-token-123"));
        assert!(authorized(
            Some(b"bEARER secret-token-123"),
            "secret-token-123"
        ));
        assert!(!authorized(Some(b"Bearer"), "secret-token-123"));
        assert!(!authorized(
            Some(b"Bearer  secret-token-123"),
            "secret-token-123"
        ));
        assert!(!authorized(
            Some(b"Basic secret-token-123"),
            "secret-token-123"
        ));
        assert!(!authorized(None, "secret-token-123"));
    }
}
