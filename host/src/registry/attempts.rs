//! A call's attempts: the calls row holds its current (or last) attempt,
//! and `call_attempts` each earlier one, moved there when the call went
//! back in the queue for a retry (see `calls`).

use anyhow::Result;
use serde::Serialize;

use super::Tx;
use super::backend::args;
use super::calls::{CallRecord, rfc3339, rfc3339_opt};

/// One attempt of a call.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    pub node: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub started_at: i64,
    #[serde(serialize_with = "rfc3339_opt")]
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

impl Tx<'_> {
    /// Every attempt of `call` so far, the current one last.
    pub fn attempts(&self, call: &CallRecord) -> Result<Vec<Attempt>> {
        let mut attempts = self.earlier_attempts(&call.id)?;
        if let Some(started_at) = call.started_at {
            attempts.push(Attempt {
                attempt: call.attempts,
                node: call.node.clone(),
                started_at,
                finished_at: call.finished_at,
                exit_code: call.exit_code,
                error: call.error.clone(),
            });
        }
        Ok(attempts)
    }

    fn earlier_attempts(&self, id: &str) -> Result<Vec<Attempt>> {
        self.query(
            "SELECT attempt, node, started_at, finished_at, exit_code, error FROM call_attempts WHERE call_id = ?1 ORDER BY attempt",
            args![id], |r| {
            Ok(Attempt {
                attempt: r.get(0)?,
                node: r.get(1)?,
                started_at: r.get(2)?,
                finished_at: r.get(3)?,
                exit_code: r.get(4)?,
                error: r.get(5)?,
            })
        })
    }
}
