//! The cluster's backend: PostgreSQL (`--db postgres://…`), shared by every
//! node and every wasmhost process of the cluster.
//!
//! Write transactions take one transaction-scoped advisory lock, so they
//! exclude each other as SQLite's `BEGIN IMMEDIATE` does and the registry's
//! check-then-write operations (deploy, stop, volume create) keep their
//! meaning; the hot paths (claims with `FOR UPDATE SKIP LOCKED`,
//! heartbeats, output) take [`Backend::begin_shared_write`] instead and
//! run side by side. Reads see one snapshot (REPEATABLE READ).

use std::collections::HashMap;
use std::mem::ManuallyDrop;

use anyhow::{Context, Result, bail};
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use super::NewerThanThisWasmhost;
use super::backend::{Backend, Row, Value};
use super::migrations;

/// Advisory lock keys (any 64-bit numbers no other program of the database
/// uses): "wasmhost" in ASCII, and then one more.
const WRITE_LOCK: i64 = 0x7761_736d_686f_7374;
const MIGRATE_LOCK: i64 = WRITE_LOCK + 1;
/// Held by the one process that reaps dead holders' work at a time.
pub const REAP_LOCK: i64 = WRITE_LOCK + 2;

/// Statements prepared on this connection, by their SQL; bounded, since a
/// few operations build their SQL.
const STATEMENT_CACHE: usize = 512;

pub(super) struct Postgres {
    /// Dropped by hand (see `Drop`).
    client: ManuallyDrop<Client>,
    /// The URL without its password, for messages.
    shown: String,
    statements: HashMap<String, Statement>,
}

/// `url` with any password replaced, so messages never show it.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

impl Postgres {
    pub(super) fn open(url: &str) -> Result<Self> {
        let shown = without_password(url);
        let client = Client::connect(url, NoTls).with_context(|| {
            format!("cannot connect to the registry {shown}; is PostgreSQL running there, and does the database exist?")
        })?;
        let mut db = Self {
            client: ManuallyDrop::new(client),
            shown,
            statements: HashMap::new(),
        };
        db.migrate().map_err(|e| {
            if e.is::<NewerThanThisWasmhost>() {
                e
            } else {
                e.context(format!("cannot set up the registry {}", db.shown))
            }
        })?;
        Ok(db)
    }

    /// Brings the schema up to date, one migration per transaction, while
    /// holding a lock that other processes opening the registry wait for.
    fn migrate(&mut self) -> Result<()> {
        let latest = migrations::POSTGRES.len() as i64;
        loop {
            let mut tx = self.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS wasmhost_schema (version BIGINT NOT NULL)",
            )?;
            let version: i64 = match tx.query_opt("SELECT version FROM wasmhost_schema", &[])? {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO wasmhost_schema (version) VALUES (0)", &[])?;
                    0
                }
            };
            if version > latest {
                return Err(NewerThanThisWasmhost {
                    what: format!("the registry {}", self.shown),
                    found: format!("schema version {version}"),
                    known: format!("version {latest}"),
                }
                .into());
            }
            if version == latest {
                tx.commit()?;
                return Ok(());
            }
            let next = version + 1;
            tx.batch_execute(migrations::POSTGRES[version as usize])
                .and_then(|()| tx.execute("UPDATE wasmhost_schema SET version = $1", &[&next]))
                .and_then(|_| tx.commit())
                .with_context(|| format!("cannot upgrade the registry to schema version {next}"))?;
        }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        let statement = self
            .client
            .prepare(&translate(sql))
            .with_context(|| format!("cannot prepare {sql}"))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// The registry's SQL as PostgreSQL reads it: `$N` for `?N`, a plain join
/// where SQLite was told to keep the join order, and `seq` for rowid.
fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out.replace("CROSS JOIN", "JOIN").replace("rowid", "seq")
}

fn refs(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => Err(format!("a number given where {ty} belongs").into()),
            },
            Value::Text(text) => text.as_str().to_sql(ty, out),
            Value::Blob(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn value_at(row: &postgres::Row, at: usize) -> Result<Value> {
    let ty = row.columns()[at].type_().clone();
    let value = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(at)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(at)?
            .map(|n| Value::Int(n.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(at)?
            .map(|n| Value::Int(n.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(at)?
            .map(|b| Value::Int(b.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            row.try_get::<_, Option<String>>(at)?.map(Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(at)?.map(Value::Blob),
        Type::NUMERIC => bail!("the registry returned a NUMERIC in column {at}; cast it to BIGINT"),
        other => bail!("the registry returned a {other} in column {at}"),
    };
    Ok(value.unwrap_or(Value::Null))
}

impl Backend for Postgres {
    fn begin(&mut self, write: bool) -> Result<()> {
        if write {
            self.client.batch_execute("BEGIN")?;
            self.client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
        } else {
            self.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")?;
        }
        Ok(())
    }

    fn begin_shared_write(&mut self) -> Result<()> {
        self.client.batch_execute("BEGIN")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .context("cannot commit to the registry")
    }

    fn rollback(&mut self) {
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, &refs(args))? as usize)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        let rows = self.client.query(&statement, &refs(args))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|at| value_at(row, at))
                    .collect::<Result<_>>()
                    .map(Row)
            })
            .collect()
    }

    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let lost = e
            .chain()
            .find_map(|c| c.downcast_ref::<postgres::Error>())
            .is_some_and(postgres::Error::is_closed);
        if lost {
            e.context(format!(
                "lost the connection to the registry {}",
                self.shown
            ))
        } else {
            e
        }
    }

    fn notify(&mut self, channel: &str) -> Result<()> {
        self.client
            .execute("SELECT pg_notify($1, '')", &[&channel])?;
        Ok(())
    }

    fn skip_locked(&self, table: &str) -> String {
        format!(" FOR UPDATE OF {table} SKIP LOCKED")
    }

    fn lock_key(&mut self, key: &str) -> Result<()> {
        self.client
            .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
        Ok(())
    }

    fn try_lock_session(&mut self, key: i64) -> Result<bool> {
        Ok(self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
            .get(0))
    }

    fn unlock_session(&mut self, key: i64) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&key]);
    }
}

/// A connection of its own that LISTENs: what a process's waiters block on
/// instead of polling (see [`super::Waiter`], `locks::cluster`).
pub struct Listener(Postgres);

impl Listener {
    pub fn open(url: &str, channels: &[&str]) -> Result<Self> {
        let mut db = Postgres::open(url)?;
        for channel in channels {
            db.client.batch_execute(&format!("LISTEN {channel}"))?;
        }
        Ok(Self(db))
    }

    /// Waits up to `timeout` for a notification; true if one came. Any
    /// others already here are taken with it: one wake-up covers them.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Result<bool> {
        use postgres::fallible_iterator::FallibleIterator;
        let mut notifications = self.0.client.notifications();
        let woken = notifications.timeout_iter(timeout).next()?.is_some();
        while notifications.iter().next()?.is_some() {}
        Ok(woken)
    }
}

impl Drop for Postgres {
    /// Closing the blocking client blocks on its own runtime, which tokio
    /// refuses on a thread that drives async tasks: a connection given up
    /// there (a pool dropped at a node's shutdown) is closed on a thread of
    /// its own.
    fn drop(&mut self) {
        // SAFETY: `client` is not used again; this is its only take.
        let client = unsafe { ManuallyDrop::take(&mut self.client) };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new().spawn(move || drop(client));
        } else {
            drop(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_is_translated_outside_quotes_only() {
        assert_eq!(
            translate(
                "SELECT '?' FROM calls c CROSS JOIN apps a WHERE c.id = ?1 ORDER BY c.rowid LIMIT ?12"
            ),
            "SELECT '?' FROM calls c JOIN apps a WHERE c.id = $1 ORDER BY c.seq LIMIT $12"
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            without_password("postgres://me:secret@db:5432/wasmhost"),
            "postgres://me:***@db:5432/wasmhost"
        );
        assert_eq!(without_password("postgres://me@db/w"), "postgres://me@db/w");
    }
}
