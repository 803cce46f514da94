//! Files shipped with apps, content-addressed, for a cluster: a deploy
//! stores each tree's manifest and each of its files' bytes here so that
//! any machine can rebuild the tree it runs (see `file_store`). Kept as
//! long as the registry: nothing yet collects trees no app uses.

use anyhow::Result;

use super::Tx;
use super::backend::args;

impl Tx<'_> {
    /// Whether tree `digest` is stored (its files with it).
    pub fn has_file_tree(&self, digest: &str) -> Result<bool> {
        let stored = self.query_opt(
            "SELECT 1 FROM file_trees WHERE digest = ?1",
            args![digest],
            |_| Ok(()),
        )?;
        Ok(stored.is_some())
    }

    /// Stores a tree's manifest under its digest, unless it is there. Store
    /// its files first: a stored tree is a whole one.
    pub fn put_file_tree(&self, digest: &str, manifest: &str) -> Result<()> {
        if !self.has_file_tree(digest)? {
            self.execute(
                "INSERT INTO file_trees (digest, manifest, created_at) VALUES (?1, ?2, ?3)",
                args![digest, manifest, super::now()],
            )?;
        }
        Ok(())
    }

    /// The manifest of tree `digest`, if stored.
    pub fn file_tree(&self, digest: &str) -> Result<Option<String>> {
        self.query_opt(
            "SELECT manifest FROM file_trees WHERE digest = ?1",
            args![digest],
            |r| r.get(0),
        )
    }

    /// Stores a file's bytes under their digest, unless they are there.
    pub fn put_file_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        self.put_bytes("file_blobs", digest, bytes)
    }

    /// The bytes stored under `digest`, if any.
    pub fn file_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.bytes_of("file_blobs", digest)
    }
}
