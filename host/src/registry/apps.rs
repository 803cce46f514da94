//! Apps as the registry keeps them: their rows, their stored manifests
//! (versioned, so a home made by an earlier release still reads) and the
//! module snapshot each function of a deployed app runs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use super::backend::{Row, Value, args};
use super::calls::now_ms;
use super::{NewerThanThisWasmhost, Tx, new_id, now};
use crate::manifest::AppManifest;

/// The format of the manifest JSON stored in `apps.manifest`, in its
/// `format` key. 1 is the first release's, which had no key. A field added
/// with a serde default needs no new format; a change that older readers
/// would misread does, and they refuse it with [`NewerThanThisWasmhost`].
const MANIFEST_FORMAT: u64 = 2;

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

const APP_COLUMNS: &str = "id, name, kind, state, created_at, stopped_at, manifest, has_lease";

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

    /// Apps whose id is `id_or_name`, or running apps named `id_or_name`;
    /// never the rows behind named volumes, which `app stop` must not
    /// reach (only `volume delete` deletes a volume's data).
    pub fn find_apps(&self, id_or_name: &str) -> Result<Vec<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE kind != 'volume' AND (id = ?1 OR (name = ?1 AND state = 'running')) ORDER BY created_at, id"
        );
        self.query_apps(&sql, args![id_or_name])
    }

    /// Running deployed apps whose name is `name` in any ASCII case: what a
    /// case-insensitive Host header may name. One query, and no schedule
    /// reads, since any client of a web endpoint can ask for it.
    pub fn running_deployed_apps_named_any_case(&self, name: &str) -> Result<Vec<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE kind = 'deployed' AND state = 'running' AND lower(name) = lower(?1) ORDER BY created_at, id"
        );
        self.query_apps(&sql, args![name])
    }

    /// The newest app named `name` of `kind`, running or not.
    pub fn latest_app_named(&self, name: &str, kind: AppKind) -> Result<Option<AppRecord>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE name = ?1 AND kind = ?2 ORDER BY (state = 'running') DESC, created_at DESC, rowid DESC LIMIT 1"
        );
        Ok(self.query_apps(&sql, args![name, kind_str(kind)])?.pop())
    }

    /// Apps with their next ticks; not the rows behind named volumes,
    /// which `volume list` shows.
    pub fn list_apps(&self, include_stopped: bool) -> Result<Vec<AppRecord>> {
        let filter = if include_stopped {
            "WHERE kind != 'volume'"
        } else {
            "WHERE kind != 'volume' AND state = 'running'"
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
