//! Guest locks across machines (see `locks::cluster`): a `cluster_locks`
//! row per held lock. PostgreSQL only: one machine locks files instead.
//!
//! A lock is free when it has no row, or when its row's owner (a process
//! lease) has expired by the server's clock: the process died, and the
//! next taker takes the row over. Each grant takes a new fence from one
//! sequence, so fences of a key only grow.

use anyhow::Result;

use super::Tx;
use super::backend::args;

/// Where releases are announced (NOTIFY), for waiters to try again.
pub const LOCKS_CHANNEL: &str = "wasmhost_locks";

impl Tx<'_> {
    /// Grants `key` to instance `holder` of the process whose lease is
    /// `owner`, unless a live process holds it; returns the grant's fence.
    /// One statement: two takers of one key serialize on its row.
    pub fn take_cluster_lock(&self, key: &str, holder: &str, owner: &str) -> Result<Option<i64>> {
        self.query_opt(
            "INSERT INTO cluster_locks (key, holder, owner, fence, taken_at)
             VALUES (?1, ?2, ?3, nextval('cluster_lock_fences'), (extract(epoch from clock_timestamp()) * 1000)::bigint)
             ON CONFLICT (key) DO UPDATE
             SET holder = excluded.holder, owner = excluded.owner, fence = excluded.fence, taken_at = excluded.taken_at
             WHERE NOT EXISTS (
                 SELECT 1 FROM leases l WHERE l.id = cluster_locks.owner
                 AND l.expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint)
             RETURNING fence",
            args![key, holder, owner],
            |r| r.get(0),
        )
    }

    /// Releases the lock on `key` that `holder` holds, or with no key every
    /// lock it holds, and wakes the waiters if there was any.
    pub fn release_cluster_locks(&self, holder: &str, key: Option<&str>) -> Result<()> {
        let released = self.execute(
            "DELETE FROM cluster_locks WHERE holder = ?1 AND (?2::text IS NULL OR key = ?2)",
            args![holder, key],
        )?;
        if released > 0 {
            self.notify(LOCKS_CHANNEL)?;
        }
        Ok(())
    }

    /// Deletes the locks of processes whose lease expired (waiters would
    /// take them over anyway) and wakes the waiters if there was any.
    pub fn release_dead_cluster_locks(&self) -> Result<()> {
        let released = self.execute(
            "DELETE FROM cluster_locks c WHERE NOT EXISTS (
                 SELECT 1 FROM leases l WHERE l.id = c.owner
                 AND l.expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint)",
            args![],
        )?;
        if released > 0 {
            self.notify(LOCKS_CHANNEL)?;
        }
        Ok(())
    }
}

impl Tx<'_> {
    /// STUB on branch `shared`, for `lease::process_id`'s stub: the lead's
    /// process leases replace both.
    pub fn renew_lease_stub(&self, id: &str, owner: &str, ttl_ms: i64) -> Result<()> {
        self.execute(
            "INSERT INTO leases (id, owner, expires_at)
             VALUES (?1, ?2, (extract(epoch from clock_timestamp()) * 1000)::bigint + ?3)
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            args![id, owner, ttl_ms],
        )?;
        Ok(())
    }
}
