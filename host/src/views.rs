//! The JSON shapes that both the CLI's `--json` and the node's API give,
//! so the two never drift apart.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::registry::{AppRecord, VolumeRecord};

/// Unix seconds as `2026-11-25T07:30:00Z`.
pub fn timestamp(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .to_string()
}

/// A row of `app list --json` and of `GET /v1/apps`.
pub fn app_json(app: &AppRecord) -> Value {
    json!({
        "id": app.id,
        "name": app.name,
        "kind": app.kind,
        "state": app.state,
        "created_at": timestamp(app.created_at),
        "stopped_at": app.stopped_at.map(timestamp),
    })
}

/// A row of `volume list --json` and of `GET /v1/volumes`.
pub fn volume_json(volume: &VolumeRecord) -> Value {
    json!({
        "name": volume.name,
        "id": volume.id,
        "app_id": volume.app_id,
        "created_at": timestamp(volume.created_at),
    })
}

/// A call as `calls get --json` and `GET /v1/calls/{id}` show it: its
/// record, every attempt, and its kept output (SPEC section 6).
pub fn call_json(
    tx: &crate::registry::Tx,
    call: &crate::registry::CallRecord,
) -> anyhow::Result<Value> {
    let ([stdout, stderr], [dropped_stdout, dropped_stderr]) = tx.call_output(call)?;
    let mut value = serde_json::to_value(call)?;
    if let Value::Object(fields) = &mut value {
        fields.insert("stdout".into(), stdout.into());
        fields.insert("stderr".into(), stderr.into());
        fields.insert("dropped_stdout".into(), dropped_stdout.into());
        fields.insert("dropped_stderr".into(), dropped_stderr.into());
        fields.insert(
            "attempt_history".into(),
            serde_json::to_value(tx.attempts(&call.id)?)?,
        );
    }
    Ok(value)
}
