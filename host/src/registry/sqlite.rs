//! The embedded backend: SQLite in `$WASMHOST_HOME/registry.db`.
//!
//! Several wasmhost processes share the file: WAL lets readers run beside a
//! writer, the busy timeout makes writers queue, and every state change is
//! one `BEGIN IMMEDIATE` transaction, so two processes racing to create,
//! mount or delete one volume serialize.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::NewerThanThisWasmhost;
use super::backend::{Backend, Row, Value};
use super::migrations;
use crate::home::{make_private_file, make_private_if_present};

/// Space kept beside the registry for the writes that free space: on a full
/// disk, a stop needs a few pages of WAL before it can delete any volume.
const RESERVE_BYTES: usize = 1 << 20;

pub(super) struct Sqlite {
    conn: Connection,
    path: PathBuf,
}

fn damaged(path: &Path) -> String {
    format!(
        "cannot open the registry {}; if it is damaged, move it aside and wasmhost starts a new one (volume data stays under volumes/)",
        path.display()
    )
}

/// The SQLite error code somewhere in `e`'s chain.
fn sqlite_code(e: &anyhow::Error) -> Option<ErrorCode> {
    e.chain()
        .find_map(|c| c.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code)
}

/// Serializes opening the registry between processes. Switching to WAL and
/// creating the schema take locks that SQLite refuses at once, without the
/// busy timeout, to a process doing the same (seen as "database is locked"
/// when several `run`s start on a new `$WASMHOST_HOME`). Best effort: on a
/// disk too full to create this empty file, opening goes on without it.
fn opening_lock(registry: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(registry.with_extension("open-lock"))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let broken = || damaged(path);
        let _opening = opening_lock(path);
        // Before SQLite opens it: its WAL and shared memory take its mode.
        make_private_file(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            make_private_if_present(Path::new(&file))?;
        }
        let conn = Connection::open(path).with_context(broken)?;
        conn.busy_timeout(Duration::from_secs(30))
            .with_context(broken)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(broken)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .with_context(broken)?;
        // Off while migrating (the bundled SQLite turns them on by default),
        // then on: see below.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .with_context(broken)?;
        let mut db = Self {
            conn,
            path: path.to_owned(),
        };
        db.migrate().map_err(|e| {
            // Moving aside a registry that is newer, not damaged, loses it.
            if e.is::<NewerThanThisWasmhost>() {
                e
            } else {
                e.context(broken())
            }
        })?;
        // After migrating, which rebuilds tables as SQLite's ALTER TABLE
        // documents: with foreign keys off, so that dropping a table that
        // others reference deletes nothing of theirs.
        db.conn
            .pragma_update(None, "foreign_keys", "ON")
            .with_context(broken)?;
        db.keep_reserve();
        Ok(db)
    }

    fn reserve_file(&self) -> PathBuf {
        self.path.with_extension("reserve")
    }

    /// Recreates the reserve if it was spent (best effort: not on a full disk).
    fn keep_reserve(&self) {
        let reserve = self.reserve_file();
        if std::fs::metadata(&reserve).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
            return;
        }
        if std::fs::write(&reserve, vec![0u8; RESERVE_BYTES]).is_err() {
            let _ = std::fs::remove_file(&reserve);
        }
    }

    /// Brings the schema up to date, one migration per transaction, so a
    /// process that dies mid-upgrade leaves a registry at some version that
    /// the next one continues from. A registry from a newer wasmhost is
    /// refused untouched.
    fn migrate(&mut self) -> Result<()> {
        let latest = migrations::SQLITE.len() as i64;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version > latest {
                return Err(NewerThanThisWasmhost {
                    what: format!("the registry {}", self.path.display()),
                    found: format!("schema version {version}"),
                    known: format!("version {latest}"),
                }
                .into());
            }
            if version == latest {
                return Ok(());
            }
            let next = version + 1;
            tx.execute_batch(migrations::SQLITE[version as usize])
                .and_then(|()| tx.pragma_update(None, "user_version", next))
                .and_then(|()| tx.commit())
                .with_context(|| {
                    format!(
                        "cannot upgrade the registry {} to schema version {next}",
                        self.path.display()
                    )
                })?;
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
            Value::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

impl Backend for Sqlite {
    fn begin(&mut self, write: bool) -> Result<()> {
        self.conn.execute_batch(if write {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN DEFERRED"
        })?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .context("cannot commit to the registry")
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for at in 0..columns {
                values.push(match row.get_ref(at)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Text(text) => Value::Text(String::from_utf8(text.to_vec())?),
                    ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
                    ValueRef::Real(_) => bail!("the registry holds a real number in column {at}"),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn make_room(&mut self, e: &anyhow::Error) -> bool {
        sqlite_code(e) == Some(ErrorCode::DiskFull)
            && std::fs::remove_file(self.reserve_file()).is_ok()
    }

    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match sqlite_code(&e) {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                e.context(damaged(&self.path))
            }
            Some(ErrorCode::DiskFull) => e.context(format!(
                "the disk holding the registry {} is full; free space, e.g. with `wasmhost volume delete` of a large volume",
                self.path.display()
            )),
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::{Location, NewerThanThisWasmhost, Registry};
    use super::*;

    #[test]
    fn migrations_run_in_steps_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        // A registry of the first release: migration 1 only.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(migrations::SQLITE[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let mut registry = Registry::open(&Location::File(path.clone())).unwrap();
        let version: i64 = registry.db.query("PRAGMA user_version", &[]).unwrap()[0]
            .get::<i64>(0)
            .unwrap();
        assert_eq!(version, migrations::SQLITE.len() as i64);
        registry.read(|tx| tx.running_calls(None)).unwrap();
        drop(registry);

        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Registry::open(&Location::File(path.clone())).err().unwrap();
        assert!(e.is::<NewerThanThisWasmhost>(), "{e:#}");
    }
}
