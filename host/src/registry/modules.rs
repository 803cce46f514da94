//! Deployed modules' bytes, content-addressed, for a cluster: a deploy
//! stores them here so that any machine can run what was deployed, and a
//! machine that lacks one copies it into its own `modules/` (see
//! `module_store`). Unused ones go when the local files do.

use anyhow::Result;

use super::Tx;
use super::backend::args;

/// The digests of the module snapshots that running apps use, and that
/// running calls use (a call started before a redeploy may still be about
/// to load the module it was started with).
const DIGESTS_IN_USE: &str =
    "SELECT m.digest FROM app_modules m JOIN apps a ON a.id = m.app_id WHERE a.state = 'running'
     UNION SELECT module FROM calls WHERE state = 'running' AND module IS NOT NULL";

impl Tx<'_> {
    pub fn module_digests_in_use(&self) -> Result<std::collections::BTreeSet<String>> {
        let rows = self.query(DIGESTS_IN_USE, args![], |r| r.get(0))?;
        Ok(rows.into_iter().collect())
    }

    /// Stores a module's bytes under their digest, unless they are there
    /// (looked for first, so a redeploy sends no bytes it stored before).
    pub fn put_module(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        self.put_bytes("modules", digest, bytes)
    }

    /// The bytes stored under `digest`, if any.
    pub fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.bytes_of("modules", digest)
    }

    /// Stores `bytes` in `table` (`modules` or `file_blobs`: digest, bytes,
    /// size, created_at) unless they are there.
    pub(super) fn put_bytes(&self, table: &str, digest: &str, bytes: &[u8]) -> Result<()> {
        let stored = self.query_opt(
            &format!("SELECT 1 FROM {table} WHERE digest = ?1"),
            args![digest],
            |_| Ok(()),
        )?;
        if stored.is_none() {
            self.execute(
                &format!(
                    "INSERT INTO {table} (digest, bytes, size, created_at) VALUES (?1, ?2, ?3, ?4)"
                ),
                args![digest, bytes, bytes.len(), super::now()],
            )?;
        }
        Ok(())
    }

    /// The bytes `table` holds under `digest`, if any.
    pub(super) fn bytes_of(&self, table: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        self.query_opt(
            &format!("SELECT bytes FROM {table} WHERE digest = ?1"),
            args![digest],
            |r| r.get(0),
        )
    }

    /// Deletes the stored modules nothing running uses.
    pub fn delete_unused_modules(&self) -> Result<()> {
        self.execute(
            &format!("DELETE FROM modules WHERE digest NOT IN ({DIGESTS_IN_USE})"),
            args![],
        )?;
        Ok(())
    }
}
