//! Lease rows of a cluster (see `crate::lease::heartbeat`). Only the
//! PostgreSQL backend runs these: times are its server's clock, in Unix ms.

use anyhow::Result;

use super::Tx;
use super::backend::args;

/// The server's time, in Unix milliseconds.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl Tx<'_> {
    /// Takes lease `id` for `owner` if no one holds it (there is no row, or
    /// its row expired); false if a live owner holds it.
    pub fn take_lease(&self, id: &str, owner: &str, dead_after_ms: i64) -> Result<bool> {
        let sql = format!(
            "INSERT INTO leases (id, owner, heartbeat_at, expires_at) VALUES (?1, ?2, {NOW_MS}, {NOW_MS} + ?3)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, heartbeat_at = excluded.heartbeat_at,
                                            expires_at = excluded.expires_at
             WHERE leases.expires_at < {NOW_MS}"
        );
        Ok(self.execute(&sql, args![id, owner, dead_after_ms])? == 1)
    }

    /// Takes lease `id` from `owner`, a process that died, whether or not
    /// its renewals have stopped long enough; false if someone else has
    /// it by now.
    pub fn take_lease_from(
        &self,
        id: &str,
        owner: &str,
        me: &str,
        dead_after_ms: i64,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE leases SET owner = ?3, heartbeat_at = {NOW_MS}, expires_at = {NOW_MS} + ?4
             WHERE id = ?1 AND owner = ?2"
        );
        Ok(self.execute(&sql, args![id, owner, me, dead_after_ms])? == 1)
    }

    pub fn lease_owner(&self, id: &str) -> Result<Option<String>> {
        self.query_opt("SELECT owner FROM leases WHERE id = ?1", args![id], |r| {
            r.get(0)
        })
    }

    /// Renews every lease `owner` holds, its own among them.
    pub fn renew_leases(&self, owner: &str, dead_after_ms: i64) -> Result<()> {
        let sql = format!(
            "UPDATE leases SET heartbeat_at = {NOW_MS}, expires_at = {NOW_MS} + ?2
             WHERE owner = ?1 AND expires_at >= {NOW_MS}"
        );
        self.execute(&sql, args![owner, dead_after_ms])?;
        Ok(())
    }

    /// Makes lease `id` dead now: no one renews it any more.
    pub fn abandon_lease(&self, id: &str) -> Result<()> {
        self.execute(
            "UPDATE leases SET owner = '', expires_at = 0 WHERE id = ?1",
            args![id],
        )?;
        Ok(())
    }

    pub fn delete_lease(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM leases WHERE id = ?1", args![id])?;
        Ok(())
    }

    /// Deletes lease `id` if it is still expired (no one took it meanwhile).
    pub fn delete_expired_lease(&self, id: &str) -> Result<()> {
        let sql = format!("DELETE FROM leases WHERE id = ?1 AND expires_at < {NOW_MS}");
        self.execute(&sql, args![id])?;
        Ok(())
    }

    /// Every lease, and whether it has expired.
    pub fn leases(&self) -> Result<Vec<(String, bool)>> {
        let sql = format!("SELECT id, expires_at < {NOW_MS} FROM leases");
        self.query(&sql, args![], |r| Ok((r.get(0)?, r.get(1)?)))
    }

    /// The owner of lease `id`, if it is live.
    pub fn live_lease_owner(&self, id: &str) -> Result<Option<String>> {
        let sql = format!("SELECT owner FROM leases WHERE id = ?1 AND expires_at >= {NOW_MS}");
        self.query_opt(&sql, args![id], |r| r.get(0))
    }
}
