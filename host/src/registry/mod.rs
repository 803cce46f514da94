//! The registry: apps, volumes, calls, schedules and secrets, in SQLite
//! under `$WASMHOST_HOME` (the embedded default) or in a cluster's
//! PostgreSQL (`--db postgres://…`).
//!
//! All state access goes through [`Registry`] and the typed operations of
//! [`Tx`], written once in the SQL both backends accept (see `backend`),
//! one file per table or two (`apps`, `volumes`, `calls`, `schedules`…);
//! `sqlite` and `postgres` each own a connection and how their
//! transactions exclude each other, and `migrations` holds both schemas
//! side by side. `conformance` runs the operations against both backends.
//!
//! The registry is a low room: it imports the home (where it is) and the
//! manifest's value types, and nothing that runs apps.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

mod apps;
mod attempts;
pub(crate) mod backend;
mod calls;
mod cluster_locks;
#[cfg(test)]
mod conformance;
mod file_trees;
mod leases;
mod migrations;
mod modules;
mod nodes;
mod output;
mod pool;
mod postgres;
mod schedules;
mod secrets;
mod snapshots;
mod sqlite;
mod volumes;

pub use crate::home::Location;
pub use apps::{AppKind, AppRecord, AppState};
pub use attempts::Attempt;
use backend::{Backend, FromValue, Row, Value};
pub use calls::{
    CallEnd, CallKind, CallRecord, CallState, KindFilter, LogFilter, LogLine, NewCall, Stream,
    WebRequests, format_ms, now_ms,
};
pub use cluster_locks::LOCKS_CHANNEL;
pub use nodes::{NodeRecord, NodeState};
pub use pool::Registries;
pub use postgres::Listener;
pub use schedules::DueTick;
pub use secrets::{SealedSecret, SecretRecord};
pub use snapshots::SnapshotRecord;
pub use volumes::{MountedVolume, VolumeRecord};

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
