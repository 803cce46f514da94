//! Apps and volumes in SQLite under `$WASMHOST_HOME`.
//!
//! All state access goes through [`Registry`] and the typed operations of
//! [`Tx`], so a PostgreSQL backend for multi-host use can replace this file
//! without touching its callers. Several wasmhost processes share the file:
//! WAL lets readers run beside a writer, the busy timeout makes writers queue,
//! and every state change is one `BEGIN IMMEDIATE` transaction, so two
//! processes racing to create, mount or delete one volume serialize.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::manifest::AppManifest;
use crate::volume_usage::Quota;

mod calls;
mod schedules;
mod secrets;
mod snapshots;

pub use calls::{
    Attempt, CallEnd, CallRecord, CallState, LogFilter, LogLine, NewCall, Stream, format_ms, now_ms,
};
pub use schedules::DueTick;
pub use secrets::{SealedSecret, SecretRecord};
pub use snapshots::SnapshotRecord;

/// The registry's schema as an ordered list of migrations: applying
/// `MIGRATIONS[i]` takes a registry at version `i` (`PRAGMA user_version`)
/// to `i + 1`, each in its own transaction. Append only: a migration that
/// has shipped is never edited, since homes made by that release ran it.
const MIGRATIONS: &[&str] = &[
    // 1 (the first release): apps, their volumes and mounts.
    "
CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('ephemeral', 'deployed', 'volume')),
    state       TEXT NOT NULL CHECK (state IN ('running', 'stopped')),
    created_at  INTEGER NOT NULL,
    stopped_at  INTEGER,
    manifest    TEXT,
    has_lease   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX apps_by_name ON apps (name, state);
CREATE TABLE volumes (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id),
    key         TEXT,
    name        TEXT,
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX named_volumes ON volumes (name) WHERE name IS NOT NULL;
CREATE TABLE mounts (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    volume_id   TEXT NOT NULL REFERENCES volumes (id),
    key         TEXT NOT NULL,
    PRIMARY KEY (app_id, key)
);
",
    // 2: calls of deployed apps. A running call also holds a lease named by
    // its id, so a caller that died is told from one still at work. Each
    // state has the timestamps it implies.
    "
CREATE TABLE calls (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    error       TEXT,
    -- The digest of the module snapshot the call runs: kept while it runs.
    module      TEXT,
    CHECK (CASE state WHEN 'queued' THEN started_at IS NULL
                      WHEN 'cancelled' THEN 1
                      ELSE started_at IS NOT NULL END),
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE INDEX calls_by_app ON calls (app_id, state);
CREATE INDEX calls_by_state ON calls (state);
",
    // 3: the module snapshot each function of a deployed app runs.
    "
CREATE TABLE app_modules (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (app_id, function)
);
CREATE INDEX app_modules_by_digest ON app_modules (digest);
",
    // 4: every command looks for running apps first (housekeeping), so that
    // costs the same after 100,000 stopped apps as after none.
    "
CREATE INDEX apps_by_state ON apps (state, has_lease);
",
    // 5: calls as a queue and a record (see `calls`): times in milliseconds,
    // what a node needs to run a queued call, attempts, and output.
    calls::MIGRATION_5,
    // 6: volume quotas.
    crate::volume_usage::MIGRATION_6,
    // 7: snapshots of volumes.
    snapshots::MIGRATION_7,
    // 8: schedules (calls gain `tick` and the state `skipped`) and secrets.
    schedules::MIGRATION_8,
];

/// The format of the manifest JSON stored in `apps.manifest`, in its
/// `format` key. 1 is the first release's, which had no key. A field added
/// with a serde default needs no new format; a change that older readers
/// would misread does, and they refuse it with [`NewerThanThisWasmhost`].
const MANIFEST_FORMAT: u64 = 2;

/// State written by a newer wasmhost than this one: refused rather than
/// misread, and never to be "repaired" by moving the registry aside.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} was written by a newer wasmhost ({found}; this one reads up to {known}); upgrade wasmhost"
)]
pub struct NewerThanThisWasmhost {
    pub what: String,
    pub found: String,
    pub known: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Started by `run`, stopped when the invocation ends.
    Ephemeral,
    /// Registered by `deploy`, stopped by `app stop`.
    Deployed,
    /// A named volume, which is an app of its own.
    Volume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub kind: AppKind,
    pub state: AppState,
    /// Unix seconds.
    pub created_at: i64,
    pub stopped_at: Option<i64>,
    #[serde(skip)]
    pub manifest: Option<AppManifest>,
    #[serde(skip)]
    pub has_lease: bool,
    /// Function -> when its schedule next runs it (Unix ms), for a running
    /// deployed app's scheduled functions; filled by [`Tx::list_apps`].
    #[serde(skip)]
    pub next_ticks: BTreeMap<String, i64>,
}

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

pub struct Registry {
    conn: Connection,
    path: PathBuf,
}

/// Space kept beside the registry for the writes that free space: on a full
/// disk, a stop needs a few pages of WAL before it can delete any volume.
const RESERVE_BYTES: usize = 1 << 20;

fn damaged(path: &Path) -> String {
    format!(
        "cannot open the registry {}; if it is damaged, move it aside and wasmhost starts a new one (volume data stays under volumes/)",
        path.display()
    )
}

/// The SQLite error code somewhere in `e`'s chain.
fn sqlite_code(e: &anyhow::Error) -> Option<ErrorCode> {
    e.chain()
        .find_map(|c| c.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code)
}

/// Serializes opening the registry between processes. Switching to WAL and
/// creating the schema take locks that SQLite refuses at once, without the
/// busy timeout, to a process doing the same (seen as "database is locked"
/// when several `run`s start on a new `$WASMHOST_HOME`). Best effort: on a
/// disk too full to create this empty file, opening goes on without it.
fn opening_lock(registry: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(registry.with_extension("open-lock"))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self> {
        let broken = || damaged(path);
        let _opening = opening_lock(path);
        let conn = Connection::open(path).with_context(broken)?;
        conn.busy_timeout(Duration::from_secs(30))
            .with_context(broken)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(broken)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .with_context(broken)?;
        // Off while migrating (the bundled SQLite turns them on by default),
        // then on: see below.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .with_context(broken)?;
        let mut registry = Self {
            conn,
            path: path.to_owned(),
        };
        registry.migrate().map_err(|e| {
            // Moving aside a registry that is newer, not damaged, loses it.
            if e.is::<NewerThanThisWasmhost>() {
                e
            } else {
                e.context(broken())
            }
        })?;
        // After migrating, which rebuilds tables as SQLite's ALTER TABLE
        // documents: with foreign keys off, so that dropping a table that
        // others reference deletes nothing of theirs.
        registry
            .conn
            .pragma_update(None, "foreign_keys", "ON")
            .with_context(broken)?;
        registry.keep_reserve();
        Ok(registry)
    }

    fn reserve_file(&self) -> PathBuf {
        self.path.with_extension("reserve")
    }

    /// Recreates the reserve if it was spent (best effort: not on a full disk).
    fn keep_reserve(&self) {
        let reserve = self.reserve_file();
        if std::fs::metadata(&reserve).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
            return;
        }
        if std::fs::write(&reserve, vec![0u8; RESERVE_BYTES]).is_err() {
            let _ = std::fs::remove_file(&reserve);
        }
    }

    /// Names the file and the way out in errors a damaged or full disk causes.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match sqlite_code(&e) {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                e.context(damaged(&self.path))
            }
            Some(ErrorCode::DiskFull) => e.context(format!(
                "the disk holding the registry {} is full; free space, e.g. with `wasmhost volume delete` of a large volume",
                self.path.display()
            )),
            _ => e,
        }
    }

    /// Brings the schema up to date, one migration per transaction, so a
    /// process that dies mid-upgrade leaves a registry at some version that
    /// the next one continues from. A registry from a newer wasmhost is
    /// refused untouched.
    fn migrate(&mut self) -> Result<()> {
        let latest = MIGRATIONS.len() as i64;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version > latest {
                return Err(NewerThanThisWasmhost {
                    what: format!("the registry {}", self.path.display()),
                    found: format!("schema version {version}"),
                    known: format!("version {latest}"),
                }
                .into());
            }
            if version == latest {
                return Ok(());
            }
            let next = version + 1;
            tx.execute_batch(MIGRATIONS[version as usize])
                .and_then(|()| tx.pragma_update(None, "user_version", next))
                .and_then(|()| tx.commit())
                .with_context(|| {
                    format!(
                        "cannot upgrade the registry {} to schema version {next}",
                        self.path.display()
                    )
                })?;
        }
    }

    /// Runs `f` as one write transaction; nothing of it is kept if it fails.
    /// On a full disk the reserve is given up and `f` runs once more, so
    /// that stopping apps and deleting volumes, which free space, still work.
    pub fn write<T>(&mut self, mut f: impl FnMut(&Tx) -> Result<T>) -> Result<T> {
        match self.try_write(&mut f) {
            Err(e) if sqlite_code(&e) == Some(ErrorCode::DiskFull) => {
                if std::fs::remove_file(self.reserve_file()).is_err() {
                    return Err(self.explain(e));
                }
                self.try_write(&mut f).map_err(|e| self.explain(e))
            }
            result => result.map_err(|e| self.explain(e)),
        }
    }

    fn try_write<T>(&mut self, f: &mut impl FnMut(&Tx) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&Tx { tx: &tx })?;
        tx.commit().context("cannot commit to the registry")?;
        Ok(value)
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<T>(&mut self, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Deferred)?;
            let value = f(&Tx { tx: &tx })?;
            tx.finish()?;
            Ok(value)
        })();
        result.map_err(|e| self.explain(e))
    }
}

/// The operations on state, inside one transaction.
pub struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
}

const APP_COLUMNS: &str = "id, name, kind, state, created_at, stopped_at, manifest, has_lease";
const VOLUME_COLUMNS: &str =
    "v.id, v.app_id, v.key, v.name, v.created_at, v.max_bytes, v.max_files";

impl Tx<'_> {
    pub fn insert_app(
        &self,
        name: &str,
        kind: AppKind,
        manifest: Option<&AppManifest>,
        has_lease: bool,
    ) -> Result<AppRecord> {
        self.insert_app_with_id(&new_id("ap"), name, kind, manifest, has_lease)
    }

    /// Inserts an app whose id was chosen before, e.g. to name its lease.
    pub fn insert_app_with_id(
        &self,
        id: &str,
        name: &str,
        kind: AppKind,
        manifest: Option<&AppManifest>,
        has_lease: bool,
    ) -> Result<AppRecord> {
        let id = id.to_owned();
        let manifest_json = manifest.map(encode_manifest).transpose()?;
        let now = now();
        self.tx.execute(
            "INSERT INTO apps (id, name, kind, state, created_at, manifest, has_lease) VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6)",
            params![id, name, kind_str(kind), now, manifest_json, has_lease],
        )?;
        Ok(AppRecord {
            id,
            name: name.to_owned(),
            kind,
            state: AppState::Running,
            created_at: now,
            stopped_at: None,
            manifest: manifest.cloned(),
            has_lease,
            next_ticks: BTreeMap::new(),
        })
    }

    pub fn set_manifest(&self, app_id: &str, manifest: &AppManifest) -> Result<()> {
        self.tx.execute(
            "UPDATE apps SET manifest = ?2 WHERE id = ?1",
            params![app_id, encode_manifest(manifest)?],
        )?;
        Ok(())
    }

    /// Marks a running app stopped and forgets its mounts and schedules.
    /// Returns false if it was already stopped (someone else got there first).
    pub fn mark_stopped(&self, app_id: &str) -> Result<bool> {
        let changed = self.tx.execute(
            "UPDATE apps SET state = 'stopped', stopped_at = ?2 WHERE id = ?1 AND state = 'running'",
            params![app_id, now()],
        )?;
        self.tx
            .execute("DELETE FROM mounts WHERE app_id = ?1", params![app_id])?;
        self.delete_schedules(app_id)?;
        Ok(changed == 1)
    }

    pub fn app(&self, app_id: &str) -> Result<Option<AppRecord>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1");
        Ok(self.query_apps(&sql, params![app_id])?.pop())
    }

    /// Apps whose id is `id_or_name`, or running apps named `id_or_name`.
    pub fn find_apps(&self, id_or_name: &str) -> Result<Vec<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE id = ?1 OR (name = ?1 AND state = 'running') ORDER BY created_at, id"
        );
        self.query_apps(&sql, params![id_or_name])
    }

    /// The newest app named `name` of `kind`, running or not.
    pub fn latest_app_named(&self, name: &str, kind: AppKind) -> Result<Option<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE name = ?1 AND kind = ?2 ORDER BY (state = 'running') DESC, created_at DESC, rowid DESC LIMIT 1"
        );
        Ok(self.query_apps(&sql, params![name, kind_str(kind)])?.pop())
    }

    /// Apps with their next ticks.
    pub fn list_apps(&self, include_stopped: bool) -> Result<Vec<AppRecord>> {
        let filter = if include_stopped {
            ""
        } else {
            "WHERE state = 'running'"
        };
        let mut apps = self.query_apps(
            &format!("SELECT {APP_COLUMNS} FROM apps {filter} ORDER BY created_at, rowid"),
            [],
        )?;
        let mut ticks = self.next_ticks()?;
        let now = now_ms();
        for app in &mut apps {
            let (Some(stored), Some(manifest)) = (ticks.remove(&app.id), &app.manifest) else {
                continue;
            };
            app.next_ticks = stored
                .into_iter()
                .filter_map(|(function, tick)| {
                    let schedule = manifest.functions.get(&function)?.schedule.as_ref()?;
                    Some((function, schedule.upcoming(tick, now)?))
                })
                .collect();
        }
        Ok(apps)
    }

    /// Running apps that hold a lease, i.e. belong to a live `run` process.
    pub fn leased_running_apps(&self) -> Result<Vec<AppRecord>> {
        self.query_apps(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE state = 'running' AND has_lease = 1"),
            [],
        )
    }

    fn query_apps(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<AppRecord>> {
        let mut stmt = self.tx.prepare(sql)?;
        let rows = stmt.query_map(params, app_from_row)?;
        rows.map(|row| -> Result<AppRecord> {
            let (mut app, manifest) = row?;
            app.manifest = manifest
                .map(|json| decode_manifest(&json))
                .transpose()
                .with_context(|| format!("cannot read the stored manifest of app {}", app.id))?;
            Ok(app)
        })
        .collect()
    }

    pub fn insert_volume(
        &self,
        app_id: &str,
        key: Option<&str>,
        name: Option<&str>,
        quota: Quota,
    ) -> Result<VolumeRecord> {
        let id = new_id("vo");
        let now = now();
        self.tx.execute(
            "INSERT INTO volumes (id, app_id, key, name, created_at, max_bytes, max_files)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                app_id,
                key,
                name,
                now,
                quota.max_bytes.map(sql_count),
                quota.max_files.map(sql_count)
            ],
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
        self.tx.execute(
            "UPDATE volumes SET max_bytes = ?2, max_files = ?3 WHERE id = ?1",
            params![
                volume_id,
                quota.max_bytes.map(sql_count),
                quota.max_files.map(sql_count)
            ],
        )?;
        Ok(())
    }

    /// Deletes a volume's row with its mounts and its snapshots' rows.
    pub fn delete_volume(&self, volume_id: &str) -> Result<()> {
        self.delete_snapshots(volume_id, None)?;
        self.tx.execute(
            "DELETE FROM mounts WHERE volume_id = ?1",
            params![volume_id],
        )?;
        self.tx
            .execute("DELETE FROM volumes WHERE id = ?1", params![volume_id])?;
        Ok(())
    }

    pub fn named_volume(&self, name: &str) -> Result<Option<VolumeRecord>> {
        let sql = format!("SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.name = ?1");
        Ok(self
            .tx
            .query_row(&sql, params![name], volume_from_row)
            .optional()?)
    }

    pub fn named_volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.query_volumes(
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.name IS NOT NULL ORDER BY v.name"
            ),
            [],
        )
    }

    /// Volumes an app owns: its ephemeral ones, or a volume app's own.
    pub fn owned_volumes(&self, app_id: &str) -> Result<Vec<VolumeRecord>> {
        self.query_volumes(
            &format!("SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.app_id = ?1"),
            params![app_id],
        )
    }

    pub fn all_volume_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.tx.prepare("SELECT id FROM volumes")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        Ok(ids.collect::<rusqlite::Result<_>>()?)
    }

    fn query_volumes(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<VolumeRecord>> {
        let mut stmt = self.tx.prepare(sql)?;
        let rows = stmt.query_map(params, volume_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn mount(&self, app_id: &str, key: &str, volume_id: &str) -> Result<()> {
        self.tx.execute(
            "INSERT OR REPLACE INTO mounts (app_id, key, volume_id) VALUES (?1, ?2, ?3)",
            params![app_id, key, volume_id],
        )?;
        Ok(())
    }

    pub fn unmount(&self, app_id: &str, key: &str) -> Result<()> {
        self.tx.execute(
            "DELETE FROM mounts WHERE app_id = ?1 AND key = ?2",
            params![app_id, key],
        )?;
        Ok(())
    }

    /// The volumes a running app mounts, by key.
    pub fn mounted_volumes(&self, app_id: &str) -> Result<Vec<MountedVolume>> {
        let sql = format!(
            "SELECT m.key, {VOLUME_COLUMNS} FROM mounts m JOIN volumes v ON v.id = m.volume_id WHERE m.app_id = ?1 ORDER BY m.key"
        );
        let mut stmt = self.tx.prepare(&sql)?;
        let rows = stmt.query_map(params![app_id], |row| {
            Ok(MountedVolume {
                key: row.get(0)?,
                volume: volume_from_row_at(row, 1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets the module snapshot (by digest) each function of `app_id` runs.
    pub fn set_app_modules(&self, app_id: &str, modules: &BTreeMap<String, String>) -> Result<()> {
        self.tx
            .execute("DELETE FROM app_modules WHERE app_id = ?1", params![app_id])?;
        for (function, digest) in modules {
            self.tx.execute(
                "INSERT INTO app_modules (app_id, function, digest) VALUES (?1, ?2, ?3)",
                params![app_id, function, digest],
            )?;
        }
        Ok(())
    }

    /// Function -> module snapshot digest, for a deployed app; empty for
    /// one deployed by a release that kept only the module's path.
    pub fn app_modules(&self, app_id: &str) -> Result<BTreeMap<String, String>> {
        let mut stmt = self
            .tx
            .prepare("SELECT function, digest FROM app_modules WHERE app_id = ?1")?;
        let rows = stmt.query_map(params![app_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Digests of the module snapshots that running apps use, and that
    /// running calls use (a call started before a redeploy may still be
    /// about to load the module it was started with).
    pub fn module_digests_in_use(&self) -> Result<BTreeSet<String>> {
        let mut stmt = self.tx.prepare(
            "SELECT m.digest FROM app_modules m JOIN apps a ON a.id = m.app_id WHERE a.state = 'running'
             UNION SELECT module FROM calls WHERE state = 'running' AND module IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Running apps other than the volume's own that mount it.
    pub fn apps_mounting(&self, volume_id: &str) -> Result<Vec<AppRecord>> {
        let sql = format!(
            "SELECT DISTINCT {} FROM apps a JOIN mounts m ON m.app_id = a.id JOIN volumes v ON v.id = m.volume_id
             WHERE m.volume_id = ?1 AND a.state = 'running' AND a.id != v.app_id ORDER BY a.created_at",
            APP_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
        );
        self.query_apps(&sql, params![volume_id])
    }
}

fn kind_str(kind: AppKind) -> &'static str {
    match kind {
        AppKind::Ephemeral => "ephemeral",
        AppKind::Deployed => "deployed",
        AppKind::Volume => "volume",
    }
}

/// An app without its manifest, and the manifest's stored JSON, decoded
/// by the caller so that a bad one is reported as such.
fn app_from_row(row: &rusqlite::Row) -> rusqlite::Result<(AppRecord, Option<String>)> {
    let kind = match row.get::<_, String>(2)?.as_str() {
        "ephemeral" => AppKind::Ephemeral,
        "deployed" => AppKind::Deployed,
        _ => AppKind::Volume,
    };
    let state = match row.get::<_, String>(3)?.as_str() {
        "running" => AppState::Running,
        _ => AppState::Stopped,
    };
    let app = AppRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        kind,
        state,
        created_at: row.get(4)?,
        stopped_at: row.get(5)?,
        manifest: None,
        has_lease: row.get(7)?,
        next_ticks: BTreeMap::new(),
    };
    Ok((app, row.get(6)?))
}

/// A manifest as stored: its JSON with the `format` key.
fn encode_manifest(manifest: &AppManifest) -> Result<String> {
    let mut json = serde_json::to_value(manifest)?;
    if let serde_json::Value::Object(fields) = &mut json {
        fields.insert("format".into(), MANIFEST_FORMAT.into());
    }
    Ok(serde_json::to_string(&json)?)
}

/// A stored manifest of any format this wasmhost knows; what later formats
/// added is defaulted (`#[serde(default)]`) for earlier ones.
fn decode_manifest(json: &str) -> Result<AppManifest> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let format = match value.get("format") {
        None => 1,
        Some(format) => format
            .as_u64()
            .with_context(|| format!("its `format` is {format}, not a number"))?,
    };
    if format > MANIFEST_FORMAT {
        return Err(NewerThanThisWasmhost {
            what: "it".into(),
            found: format!("manifest format {format}"),
            known: format!("format {MANIFEST_FORMAT}"),
        }
        .into());
    }
    Ok(serde_json::from_value(value)?)
}

fn volume_from_row(row: &rusqlite::Row) -> rusqlite::Result<VolumeRecord> {
    volume_from_row_at(row, 0)
}

fn volume_from_row_at(row: &rusqlite::Row, at: usize) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        id: row.get(at)?,
        app_id: row.get(at + 1)?,
        key: row.get(at + 2)?,
        name: row.get(at + 3)?,
        created_at: row.get(at + 4)?,
        quota: Quota {
            max_bytes: row.get::<_, Option<i64>>(at + 5)?.map(|n| n as u64),
            max_files: row.get::<_, Option<i64>>(at + 6)?.map(|n| n as u64),
        },
    })
}

/// A count as SQLite stores it (a signed 64-bit integer); quotas past
/// `i64::MAX` mean the same as no quota to any disk.
fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `PREFIX-` and 22 random base-62 characters, like Modal's ids.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 22];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    let tail: String = bytes.iter().map(|b| base62(*b as u64)).collect();
    format!("{prefix}-{tail}")
}

/// A call's id: `ca-`, the time in milliseconds (8 base-62 digits, so ids
/// sort as they were made until the year 8900), then 14 random characters.
/// Time-ordered ids go into the registry's indexes at their right edge,
/// rather than at random pages, which keeps the writes of a batch of
/// calls few.
pub fn new_call_id() -> String {
    let mut time = now_ms().max(0) as u64;
    let mut digits = [' '; 8];
    for digit in digits.iter_mut().rev() {
        *digit = base62(time % 62);
        time /= 62;
    }
    let random = new_id("ca");
    format!("ca-{}{}", String::from_iter(digits), &random[3..17])
}

fn base62(n: u64) -> char {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    ALPHABET[(n % 62) as usize] as char
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as release 1625aba stored it (format 1: no `format` key).
    /// A key added to `AppManifest` or `FunctionSpec` without a serde
    /// default breaks this, as it would break every home of that release.
    const FORMAT_1: &str = r#"{"name":"fixture-app","entrypoint":"fsops","volumes":{"data":"fixture-data","scratch":null},"functions":{"fsops":{"module":"/tmp/wasmhost-fixture/fsops.wasm","mounts":[{"guest_path":"/data","volume":"data","read_only":false},{"guest_path":"/scratch","volume":"scratch","read_only":false}],"args":[],"env":{"FLAVOUR":"old"},"timeout":{"secs":60,"nanos":0},"memory":268435456,"concurrency":4}}}"#;

    #[test]
    fn every_stored_manifest_format_decodes() {
        let old = decode_manifest(FORMAT_1).unwrap();
        assert_eq!(old.functions["fsops"].concurrency, Some(4));
        let stored = encode_manifest(&old).unwrap();
        assert!(
            stored.contains(&format!("\"format\":{MANIFEST_FORMAT}")),
            "{stored}"
        );
        assert_eq!(decode_manifest(&stored).unwrap(), old);
    }

    #[test]
    fn a_newer_manifest_format_is_refused() {
        let newer = FORMAT_1.replacen('{', "{\"format\":99,", 1);
        let e = decode_manifest(&newer).unwrap_err();
        assert!(e.is::<NewerThanThisWasmhost>(), "{e:#}");
        assert!(format!("{e:#}").contains("manifest format 99"), "{e:#}");
    }

    #[test]
    fn migrations_run_in_steps_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        // A registry of the first release: migration 1 only.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let mut registry = Registry::open(&path).unwrap();
        let version: i64 = registry
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        registry.read(|tx| tx.running_calls(None)).unwrap();
        drop(registry);

        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Registry::open(&path).err().unwrap();
        assert!(e.is::<NewerThanThisWasmhost>(), "{e:#}");
    }
}
