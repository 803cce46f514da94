//! Volumes as the registry keeps them: their rows (with the quota the user
//! set) and which app mounts which under what key. Their files are the
//! volume store's business.

use anyhow::Result;
use serde::Serialize;

use super::backend::{Row, Value, args};
use super::{Tx, new_id, now};
use crate::manifest::Quota;

#[derive(Debug, Clone, Serialize)]
pub struct VolumeRecord {
    pub id: String,
    /// The app that owns the volume: its ephemeral app, or its own volume app.
    pub app_id: String,
    /// Key in app.toml, for an ephemeral volume.
    pub key: Option<String>,
    /// `persist` name, for a named volume.
    pub name: Option<String>,
    pub created_at: i64,
    /// As the user set it; the usage file holds the copy writers check.
    #[serde(flatten)]
    pub quota: Quota,
}

/// A volume as one app mounts it: under the key its app.toml uses.
#[derive(Debug, Clone)]
pub struct MountedVolume {
    pub key: String,
    pub volume: VolumeRecord,
}

const VOLUME_COLUMNS: &str =
    "v.id, v.app_id, v.key, v.name, v.created_at, v.max_bytes, v.max_files";

impl Tx<'_> {
    pub fn insert_volume(
        &self,
        app_id: &str,
        key: Option<&str>,
        name: Option<&str>,
        quota: Quota,
    ) -> Result<VolumeRecord> {
        let id = new_id("vo");
        let now = now();
        self.execute(
            "INSERT INTO volumes (id, app_id, key, name, created_at, max_bytes, max_files)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![id, app_id, key, name, now, quota.max_bytes, quota.max_files],
        )?;
        Ok(VolumeRecord {
            id,
            app_id: app_id.to_owned(),
            key: key.map(str::to_owned),
            name: name.map(str::to_owned),
            created_at: now,
            quota,
        })
    }

    /// Records a volume's new quota (the caller also tells its usage file).
    pub fn set_volume_quota(&self, volume_id: &str, quota: Quota) -> Result<()> {
        self.execute(
            "UPDATE volumes SET max_bytes = ?2, max_files = ?3 WHERE id = ?1",
            args![volume_id, quota.max_bytes, quota.max_files],
        )?;
        Ok(())
    }

    /// Deletes a volume's row with its mounts and its snapshots' rows.
    pub fn delete_volume(&self, volume_id: &str) -> Result<()> {
        self.delete_snapshots(volume_id, None)?;
        self.execute("DELETE FROM mounts WHERE volume_id = ?1", args![volume_id])?;
        self.execute("DELETE FROM volumes WHERE id = ?1", args![volume_id])?;
        Ok(())
    }

    pub fn named_volume(&self, name: &str) -> Result<Option<VolumeRecord>> {
        let sql = format!("SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.name = ?1");
        self.query_opt(&sql, args![name], volume_from_row)
    }

    pub fn named_volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.query_volumes(
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.name IS NOT NULL ORDER BY v.name"
            ),
            args![],
        )
    }

    /// Volumes an app owns: its ephemeral ones, or a volume app's own.
    pub fn owned_volumes(&self, app_id: &str) -> Result<Vec<VolumeRecord>> {
        self.query_volumes(
            &format!("SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.app_id = ?1"),
            args![app_id],
        )
    }

    pub fn all_volume_ids(&self) -> Result<Vec<String>> {
        self.query("SELECT id FROM volumes", args![], |r| r.get(0))
    }

    fn query_volumes(&self, sql: &str, params: &[Value]) -> Result<Vec<VolumeRecord>> {
        self.query(sql, params, volume_from_row)
    }

    pub fn mount(&self, app_id: &str, key: &str, volume_id: &str) -> Result<()> {
        self.execute(
            "INSERT INTO mounts (app_id, key, volume_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (app_id, key) DO UPDATE SET volume_id = excluded.volume_id",
            args![app_id, key, volume_id],
        )?;
        Ok(())
    }

    pub fn unmount(&self, app_id: &str, key: &str) -> Result<()> {
        self.execute(
            "DELETE FROM mounts WHERE app_id = ?1 AND key = ?2",
            args![app_id, key],
        )?;
        Ok(())
    }

    /// The volumes a running app mounts, by key.
    pub fn mounted_volumes(&self, app_id: &str) -> Result<Vec<MountedVolume>> {
        let sql = format!(
            "SELECT m.key, {VOLUME_COLUMNS} FROM mounts m JOIN volumes v ON v.id = m.volume_id WHERE m.app_id = ?1 ORDER BY m.key"
        );
        self.query(&sql, args![app_id], |row| {
            Ok(MountedVolume {
                key: row.get(0)?,
                volume: volume_from_row_at(row, 1)?,
            })
        })
    }
}

fn volume_from_row(row: &Row) -> Result<VolumeRecord> {
    volume_from_row_at(row, 0)
}

fn volume_from_row_at(row: &Row, at: usize) -> Result<VolumeRecord> {
    Ok(VolumeRecord {
        id: row.get(at)?,
        app_id: row.get(at + 1)?,
        key: row.get(at + 2)?,
        name: row.get(at + 3)?,
        created_at: row.get(at + 4)?,
        quota: Quota {
            max_bytes: row.get::<Option<i64>>(at + 5)?.map(|n| n as u64),
            max_files: row.get::<Option<i64>>(at + 6)?.map(|n| n as u64),
        },
    })
}
