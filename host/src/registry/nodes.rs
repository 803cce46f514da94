//! Nodes (`wasmhost serve` processes) as `nodes list` shows them. Whether
//! one is alive is its lease's business (`crate::lease`); a node's lease is
//! named by its id.

use anyhow::Result;
use serde::Serialize;

use super::Tx;
use super::backend::{Row, args};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving: its lease is held.
    Alive,
    /// Gone without stopping (killed, or its machine died): its lease is not.
    Dead,
    /// Drained and stopped.
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRecord {
    pub id: String,
    /// As the registry has it; `crate::node::list` tells alive from dead.
    pub state: NodeState,
    /// The machine's host name.
    pub host: String,
    /// Where its HTTP API listens.
    pub address: String,
    pub pid: u32,
    #[serde(serialize_with = "super::calls::rfc3339")]
    pub started_at: i64,
    #[serde(serialize_with = "super::calls::rfc3339_opt")]
    pub stopped_at: Option<i64>,
    /// When it last renewed its lease (a cluster's nodes only).
    #[serde(serialize_with = "super::calls::rfc3339_opt")]
    pub last_heartbeat: Option<i64>,
    /// Calls it runs now.
    pub running_calls: u64,
}

fn node_from_row(row: &Row) -> Result<NodeRecord> {
    let stopped_at: Option<i64> = row.get(5)?;
    Ok(NodeRecord {
        id: row.get(0)?,
        state: match stopped_at {
            Some(_) => NodeState::Stopped,
            None => NodeState::Alive,
        },
        host: row.get(1)?,
        address: row.get(2)?,
        pid: row.get(3)?,
        started_at: row.get(4)?,
        stopped_at,
        last_heartbeat: row.get(6)?,
        running_calls: row.get(7)?,
    })
}

impl Tx<'_> {
    pub fn insert_node(&self, id: &str, host: &str, address: &str, pid: u32) -> Result<()> {
        self.execute(
            "INSERT INTO nodes (id, host, address, pid, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![id, host, address, pid, super::now_ms()],
        )?;
        Ok(())
    }

    pub fn node_stopped(&self, id: &str) -> Result<()> {
        self.execute(
            "UPDATE nodes SET stopped_at = ?2 WHERE id = ?1 AND stopped_at IS NULL",
            args![id, super::now_ms()],
        )?;
        Ok(())
    }

    /// Nodes that have not stopped, or stopped since `since` (Unix ms),
    /// oldest first.
    pub fn nodes(&self, since: i64) -> Result<Vec<NodeRecord>> {
        self.query(
            "SELECT n.id, n.host, n.address, n.pid, n.started_at, n.stopped_at, l.heartbeat_at,
                    (SELECT count(*) FROM calls c WHERE c.state = 'running' AND c.node = n.id)
             FROM nodes n LEFT JOIN leases l ON l.id = n.id
             WHERE n.stopped_at IS NULL OR n.stopped_at >= ?1 ORDER BY n.started_at, n.id",
            args![since],
            node_from_row,
        )
    }
}
