//! The JSON shapes that both the CLI's `--json` and the node's API give,
//! so the two never drift apart.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use crate::registry::{
    AppRecord, Attempt, CallRecord, SnapshotRecord, Tx, VolumeRecord, format_ms,
};
use crate::volumes::Counts;

/// Unix seconds as `2026-11-25T07:30:00Z`.
pub fn timestamp(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .to_string()
}

/// A row of `app list --json` and of `GET /v1/apps`: `next_ticks` maps
/// each scheduled function to when it next runs.
pub fn app_json(app: &AppRecord) -> Value {
    json!({
        "id": app.id,
        "name": app.name,
        "kind": app.kind,
        "state": app.state,
        "created_at": timestamp(app.created_at),
        "stopped_at": app.stopped_at.map(timestamp),
        "next_ticks": app.next_ticks.iter()
            .map(|(function, tick)| (function.clone(), format_ms(*tick).into()))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

/// A row of `volume list --json` and of `GET /v1/volumes`: what the
/// volume holds (`bytes`, `files`) and its quota (null for none).
pub fn volume_json(volume: &VolumeRecord, counts: &Counts) -> Value {
    json!({
        "name": volume.name,
        "id": volume.id,
        "app_id": volume.app_id,
        "created_at": timestamp(volume.created_at),
        "bytes": counts.bytes,
        "files": counts.files,
        "max_size": volume.quota.max_bytes,
        "max_files": volume.quota.max_files,
    })
}

/// A row of `volume snapshot list --json`.
pub fn snapshot_json(snapshot: &SnapshotRecord) -> Value {
    json!({
        "name": snapshot.name,
        "created_at": timestamp(snapshot.created_at),
        "files": snapshot.files,
        "bytes": snapshot.bytes,
    })
}

/// A call as `calls get --json` and `GET /v1/calls/{id}` show it: its
/// record, its last attempt's output (and how many bytes of it were not
/// kept), and every attempt (SPEC section 6).
#[derive(Serialize)]
pub struct FullCall {
    #[serde(flatten)]
    pub call: CallRecord,
    pub stdout: String,
    pub stderr: String,
    pub dropped_stdout: u64,
    pub dropped_stderr: u64,
    pub attempt_history: Vec<Attempt>,
}

impl FullCall {
    pub fn read(tx: &Tx, call: CallRecord) -> anyhow::Result<Self> {
        let ([stdout, stderr], [dropped_stdout, dropped_stderr]) = tx.call_output(&call)?;
        Ok(Self {
            attempt_history: tx.attempts(&call)?,
            call,
            stdout,
            stderr,
            dropped_stdout,
            dropped_stderr,
        })
    }
}
