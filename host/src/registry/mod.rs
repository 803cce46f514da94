//! The registry: apps, volumes, calls, schedules and secrets, in SQLite
//! under `$WASMHOST_HOME` (the embedded default) or in a cluster's
//! PostgreSQL (`--db postgres://…`).
//!
//! All state access goes through [`Registry`] and the typed operations of
//! [`Tx`], written once in the SQL both backends accept (see `backend`);
//! `sqlite` and `postgres` each own a connection, a schema and how their
//! transactions exclude each other.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::manifest::AppManifest;
use crate::volume_usage::Quota;

pub(crate) mod backend;
mod calls;
mod cluster_locks;
mod leases;
mod migrations;
mod modules;
mod nodes;
mod pool;
mod postgres;
mod schedules;
mod secrets;
mod snapshots;
mod sqlite;

use backend::{Backend, FromValue, Row, Value, args};
pub use calls::{
    Attempt, CallEnd, CallRecord, CallState, LogFilter, LogLine, NewCall, Stream, format_ms, now_ms,
};
pub use crate::home::Location;
pub use cluster_locks::LOCKS_CHANNEL;
pub use nodes::{NodeRecord, NodeState};
pub use pool::Registries;
pub use postgres::Listener;
pub use schedules::DueTick;
pub use secrets::{SealedSecret, SecretRecord};
pub use snapshots::SnapshotRecord;

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
    db: Box<dyn Backend>,
}

impl Registry {
    pub fn open(location: &Location) -> Result<Self> {
        let db: Box<dyn Backend> = match location {
            Location::File(path) => Box::new(sqlite::Sqlite::open(path)?),
            Location::Postgres(url) => Box::new(postgres::Postgres::open(url)?),
        };
        Ok(Self { db })
    }

    /// Runs `f` as one write transaction, excluding every other write;
    /// nothing of it is kept if it fails. If the backend can make room
    /// after a failure (a full disk), `f` runs once more, so that stopping
    /// apps and deleting volumes, which free space, still work.
    pub fn write<T>(&mut self, mut f: impl FnMut(&Tx) -> Result<T>) -> Result<T> {
        match self.transaction(Begin::Write, &mut f) {
            Err(e) if self.db.make_room(&e) => self
                .transaction(Begin::Write, &mut f)
                .map_err(|e| self.db.explain(e)),
            result => result.map_err(|e| self.db.explain(e)),
        }
    }

    /// Runs `f` as one write transaction that other such writes may run
    /// beside: for statements that are safe side by side (a claim that
    /// skips locked rows, a heartbeat, output of one call).
    pub fn write_shared<T>(&mut self, mut f: impl FnMut(&Tx) -> Result<T>) -> Result<T> {
        self.transaction(Begin::SharedWrite, &mut f)
            .map_err(|e| self.db.explain(e))
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<T>(&mut self, mut f: impl FnMut(&Tx) -> Result<T>) -> Result<T> {
        self.transaction(Begin::Read, &mut f)
            .map_err(|e| self.db.explain(e))
    }

    /// Runs `f` if no other process of the cluster is running it (the
    /// reaper: one at a time); returns None if one is.
    pub fn as_the_only_reaper<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        if !self.db.try_lock_session(postgres::REAP_LOCK)? {
            return Ok(None);
        }
        let result = f(self);
        self.db.unlock_session(postgres::REAP_LOCK);
        result.map(Some)
    }

    fn transaction<T>(&mut self, begin: Begin, f: &mut impl FnMut(&Tx) -> Result<T>) -> Result<T> {
        match begin {
            Begin::Read => self.db.begin(false)?,
            Begin::Write => self.db.begin(true)?,
            Begin::SharedWrite => self.db.begin_shared_write()?,
        }
        let value = f(&Tx {
            db: RefCell::new(&mut *self.db),
        });
        match value {
            Ok(value) => match self.db.commit() {
                Ok(()) => Ok(value),
                Err(e) => {
                    self.db.rollback();
                    Err(e)
                }
            },
            Err(e) => {
                self.db.rollback();
                Err(e)
            }
        }
    }
}

/// Channels a [`Waiter`] may listen on: `QUEUED` when calls are queued
/// (or queued again for a retry), `ENDED` when calls end or are cancelled.
pub const QUEUED: &str = "wasmhost_queued";
pub const ENDED: &str = "wasmhost_ended";

/// Waits for something to change in the registry: woken at once in a
/// cluster, whose PostgreSQL notifies (LISTEN/NOTIFY), with a slower poll
/// as the fallback; with SQLite, which has no notifications, by polling.
pub struct Waiter {
    listener: Option<postgres::Listener>,
}

/// How long a cluster's waiter waits without a notification before it
/// looks anyway (a notification lost with a connection, say).
const NOTIFIED_FALLBACK: std::time::Duration = std::time::Duration::from_secs(1);

impl Waiter {
    pub fn open(location: &Location, channels: &[&str]) -> Result<Self> {
        Ok(Self {
            listener: match location {
                Location::File(_) => None,
                Location::Postgres(url) => Some(postgres::Listener::open(url, channels)?),
            },
        })
    }

    /// Returns once a look is worth it: after a notification or
    /// [`NOTIFIED_FALLBACK`] in a cluster, after `poll` otherwise.
    pub fn wait(&mut self, poll: std::time::Duration) -> Result<()> {
        match &mut self.listener {
            Some(listener) => listener.wait(NOTIFIED_FALLBACK).map(drop),
            None => {
                std::thread::sleep(poll);
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Begin {
    Read,
    Write,
    SharedWrite,
}

/// The operations on state, inside one transaction.
pub struct Tx<'a> {
    db: RefCell<&'a mut dyn Backend>,
}

const APP_COLUMNS: &str = "id, name, kind, state, created_at, stopped_at, manifest, has_lease";
const VOLUME_COLUMNS: &str =
    "v.id, v.app_id, v.key, v.name, v.created_at, v.max_bytes, v.max_files";

impl Tx<'_> {
    fn execute(&self, sql: &str, args: &[Value]) -> Result<usize> {
        self.db.borrow_mut().execute(sql, args)
    }

    fn query<T>(
        &self,
        sql: &str,
        args: &[Value],
        each: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self.db.borrow_mut().query(sql, args)?;
        rows.iter().map(each).collect()
    }

    fn query_opt<T>(
        &self,
        sql: &str,
        args: &[Value],
        each: impl Fn(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.query(sql, args, each)?.into_iter().next())
    }

    /// The first column of the one row `sql` returns.
    fn query_value<T: FromValue>(&self, sql: &str, args: &[Value]) -> Result<T> {
        match self.query_opt(sql, args, |row| row.get(0))? {
            Some(value) => Ok(value),
            None => anyhow::bail!("the registry returned no row for {sql}"),
        }
    }

    /// Wakes whoever waits on `channel` once this transaction commits.
    pub fn notify(&self, channel: &str) -> Result<()> {
        self.db.borrow_mut().notify(channel)
    }

    /// Holds the lock `key` until this transaction ends (see
    /// `Backend::lock_key`).
    pub fn lock_key(&self, key: &str) -> Result<()> {
        self.db.borrow_mut().lock_key(key)
    }

    fn skip_locked(&self, table: &str) -> String {
        self.db.borrow().skip_locked(table)
    }

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
        self.execute(
            "INSERT INTO apps (id, name, kind, state, created_at, manifest, has_lease) VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6)",
            args![id, name, kind_str(kind), now, manifest_json, has_lease],
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
        self.execute(
            "UPDATE apps SET manifest = ?2 WHERE id = ?1",
            args![app_id, encode_manifest(manifest)?],
        )?;
        Ok(())
    }

    /// Marks a running app stopped and forgets its mounts and schedules.
    /// Returns false if it was already stopped (someone else got there first).
    pub fn mark_stopped(&self, app_id: &str) -> Result<bool> {
        let changed = self.execute(
            "UPDATE apps SET state = 'stopped', stopped_at = ?2 WHERE id = ?1 AND state = 'running'",
            args![app_id, now()],
        )?;
        self.execute("DELETE FROM mounts WHERE app_id = ?1", args![app_id])?;
        self.delete_schedules(app_id)?;
        Ok(changed == 1)
    }

    pub fn app(&self, app_id: &str) -> Result<Option<AppRecord>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1");
        Ok(self.query_apps(&sql, args![app_id])?.pop())
    }

    /// Apps whose id is `id_or_name`, or running apps named `id_or_name`.
    pub fn find_apps(&self, id_or_name: &str) -> Result<Vec<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE id = ?1 OR (name = ?1 AND state = 'running') ORDER BY created_at, id"
        );
        self.query_apps(&sql, args![id_or_name])
    }

    /// The newest app named `name` of `kind`, running or not.
    pub fn latest_app_named(&self, name: &str, kind: AppKind) -> Result<Option<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE name = ?1 AND kind = ?2 ORDER BY (state = 'running') DESC, created_at DESC, rowid DESC LIMIT 1"
        );
        Ok(self.query_apps(&sql, args![name, kind_str(kind)])?.pop())
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
            args![],
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
            args![],
        )
    }

    fn query_apps(&self, sql: &str, params: &[Value]) -> Result<Vec<AppRecord>> {
        let rows = self.query(sql, params, app_from_row)?;
        rows.into_iter()
            .map(|row| -> Result<AppRecord> {
                let (mut app, manifest) = row;
                app.manifest = manifest
                    .map(|json| decode_manifest(&json))
                    .transpose()
                    .with_context(|| {
                        format!("cannot read the stored manifest of app {}", app.id)
                    })?;
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

    /// Sets the module snapshot (by digest) each function of `app_id` runs.
    pub fn set_app_modules(&self, app_id: &str, modules: &BTreeMap<String, String>) -> Result<()> {
        self.execute("DELETE FROM app_modules WHERE app_id = ?1", args![app_id])?;
        for (function, digest) in modules {
            self.execute(
                "INSERT INTO app_modules (app_id, function, digest) VALUES (?1, ?2, ?3)",
                args![app_id, function, digest],
            )?;
        }
        Ok(())
    }

    /// Function -> module snapshot digest, for a deployed app; empty for
    /// one deployed by a release that kept only the module's path.
    pub fn app_modules(&self, app_id: &str) -> Result<BTreeMap<String, String>> {
        let rows = self.query(
            "SELECT function, digest FROM app_modules WHERE app_id = ?1",
            args![app_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    /// Running apps other than the volume's own that mount it.
    pub fn apps_mounting(&self, volume_id: &str) -> Result<Vec<AppRecord>> {
        let sql = format!(
            "SELECT DISTINCT {} FROM apps a JOIN mounts m ON m.app_id = a.id JOIN volumes v ON v.id = m.volume_id
             WHERE m.volume_id = ?1 AND a.state = 'running' AND a.id != v.app_id ORDER BY a.created_at",
            APP_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
        );
        self.query_apps(&sql, args![volume_id])
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
fn app_from_row(row: &Row) -> Result<(AppRecord, Option<String>)> {
    let kind = match row.get::<String>(2)?.as_str() {
        "ephemeral" => AppKind::Ephemeral,
        "deployed" => AppKind::Deployed,
        _ => AppKind::Volume,
    };
    let state = match row.get::<String>(3)?.as_str() {
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
}
