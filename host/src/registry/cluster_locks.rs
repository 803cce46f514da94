//! Guest locks across machines (see `locks::cluster`): a `cluster_locks`
//! row per held lock. PostgreSQL only: one machine locks files instead.
//!
//! A lock is free when it has no row, or when its row's owner (a process
//! lease) has expired by the server's clock: the process died, and the
//! next taker of the key takes the row over (until then it stays). Each grant takes a new fence from one
//! sequence, so fences of a key only grow.

use anyhow::Result;

use super::Tx;
use super::backend::args;

/// Where releases are announced (NOTIFY), for waiters to try again.
pub const LOCKS_CHANNEL: &str = "wasmhost_locks";

impl Tx<'_> {
    /// Grants `key` to instance `holder` of the process whose lease is
    /// `owner`, unless a live process holds it; returns the grant's fence.
    /// `died_here` tells owners known dead at once (a process of this
    /// machine), whose leases have yet to expire.
    pub fn take_cluster_lock(
        &self,
        key: &str,
        holder: &str,
        owner: &str,
        died_here: impl Fn(&str) -> bool,
    ) -> Result<Option<i64>> {
        // Free: no row (or one being made, which this waits for).
        let taken = self.query_opt(
            "INSERT INTO cluster_locks (key, holder, owner, fence, taken_at)
             VALUES (?1, ?2, ?3, nextval('cluster_lock_fences'), (extract(epoch from clock_timestamp()) * 1000)::bigint)
             ON CONFLICT (key) DO NOTHING RETURNING fence",
            args![key, holder, owner],
            |r| r.get(0),
        )?;
        if taken.is_some() {
            return Ok(taken);
        }
        // Held, perhaps by a dead process. The row is locked first and its
        // owner's lease read after, by a statement of its own: one
        // statement's snapshot may predate the lease of a process that has
        // just taken the lock (READ COMMITTED re-reads the row it waited
        // for, but not the other tables it reads), and would take it over.
        let held: Option<String> = self.query_opt(
            "SELECT owner FROM cluster_locks WHERE key = ?1 FOR UPDATE",
            args![key],
            |r| r.get(0),
        )?;
        let Some(held_by) = held else {
            // Released meanwhile, which woke the waiters: the next try.
            return Ok(None);
        };
        let lease_check = if died_here(&held_by) {
            ""
        } else {
            "AND NOT EXISTS (
                 SELECT 1 FROM leases l WHERE l.id = cluster_locks.owner
                 AND l.expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint)"
        };
        self.query_opt(
            &format!(
                "UPDATE cluster_locks
                 SET holder = ?2, owner = ?3, fence = nextval('cluster_lock_fences'),
                     taken_at = (extract(epoch from clock_timestamp()) * 1000)::bigint
                 WHERE key = ?1 {lease_check}
                 RETURNING fence"
            ),
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
}
