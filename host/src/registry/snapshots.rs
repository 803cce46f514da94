//! Snapshots of volumes, and renaming a named volume: the registry's side.
//! A snapshot's files live under `$WASMHOST_HOME/snapshots/<volume-id>/<name>`
//! (see `crate::volumes::snapshots`); its row says it is complete.

use super::backend::{Row, args};
use anyhow::Result;
use serde::Serialize;

use super::{Tx, now};

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRecord {
    pub volume_id: String,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    pub bytes: u64,
    pub files: u64,
}

const SNAPSHOT_COLUMNS: &str = "volume_id, name, created_at, bytes, files";

fn snapshot_from_row(row: &Row) -> Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        volume_id: row.get(0)?,
        name: row.get(1)?,
        created_at: row.get(2)?,
        bytes: row.get(3)?,
        files: row.get(4)?,
    })
}

impl Tx<'_> {
    pub fn insert_snapshot(
        &self,
        volume_id: &str,
        name: &str,
        bytes: u64,
        files: u64,
    ) -> Result<SnapshotRecord> {
        let created_at = now();
        self.execute(
            "INSERT INTO snapshots (volume_id, name, created_at, bytes, files) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![volume_id, name, created_at, bytes, files],
        )?;
        Ok(SnapshotRecord {
            volume_id: volume_id.to_owned(),
            name: name.to_owned(),
            created_at,
            bytes,
            files,
        })
    }

    pub fn snapshot(&self, volume_id: &str, name: &str) -> Result<Option<SnapshotRecord>> {
        let sql =
            format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE volume_id = ?1 AND name = ?2");
        self.query_opt(&sql, args![volume_id, name], snapshot_from_row)
    }

    /// The snapshots of `volume_id`, or of every volume, oldest first.
    pub fn snapshots(&self, volume_id: Option<&str>) -> Result<Vec<SnapshotRecord>> {
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE CAST(?1 AS TEXT) IS NULL OR volume_id = ?1 ORDER BY created_at, name"
        );
        self.query(&sql, args![volume_id], snapshot_from_row)
    }

    /// Deletes snapshot `name` of `volume_id`, or all of them when `None`.
    pub fn delete_snapshots(&self, volume_id: &str, name: Option<&str>) -> Result<()> {
        self.execute(
            "DELETE FROM snapshots WHERE volume_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR name = ?2)",
            args![volume_id, name],
        )?;
        Ok(())
    }

    /// Gives a named volume, and the volume app that owns it, a new name.
    pub fn rename_volume(&self, volume_id: &str, new_name: &str) -> Result<()> {
        self.execute(
            "UPDATE volumes SET name = ?2 WHERE id = ?1",
            args![volume_id, new_name],
        )?;
        self.execute(
            "UPDATE apps SET name = ?2 WHERE id = (SELECT app_id FROM volumes WHERE id = ?1) AND kind = 'volume'",
            args![volume_id, new_name],
        )?;
        Ok(())
    }
}
