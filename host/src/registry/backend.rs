//! What a registry backend does: run SQL with arguments in transactions.
//!
//! The registry's operations ([`super::Tx`]) are written once, in the SQL
//! both SQLite and PostgreSQL accept (`?N` placeholders, `ON CONFLICT`,
//! `RETURNING`); a backend translates what little differs and owns its
//! schema, its transactions and how its failures read. Values cross the
//! boundary as [`Value`]s, so no backend's types leak into the operations.

use anyhow::{Result, bail};

/// A registry backend: one connection, used by one thread at a time.
pub(crate) trait Backend: Send {
    /// Starts a transaction. A write transaction excludes every other write
    /// transaction until it ends, as SQLite's `BEGIN IMMEDIATE` does, so an
    /// operation that reads and then writes sees no one else's write between.
    fn begin(&mut self, write: bool) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self);
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize>;
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>>;
    /// Whether a write that failed with `e` may be tried once more, after
    /// the backend made room (SQLite gives up its reserve on a full disk).
    fn make_room(&mut self, _e: &anyhow::Error) -> bool {
        false
    }
    /// Names the store and the way out in errors it knows.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        e
    }
    /// Starts a write transaction that does not exclude others: for the
    /// hot paths (claims, heartbeats, output) whose statements are safe
    /// side by side. SQLite has one writer anyway.
    fn begin_shared_write(&mut self) -> Result<()> {
        self.begin(true)
    }
    /// Sends `channel` a wake-up when the transaction commits (PostgreSQL's
    /// NOTIFY); a no-op where waiters poll.
    fn notify(&mut self, _channel: &str) -> Result<()> {
        Ok(())
    }
    /// What a query's end takes to lock the rows it returns, skipping rows
    /// others have locked (PostgreSQL's `FOR UPDATE … SKIP LOCKED`); empty
    /// where write transactions exclude each other anyway.
    fn skip_locked(&self, _table: &str) -> String {
        String::new()
    }
    /// Holds the lock named `key` until the transaction ends; needless
    /// where write transactions exclude each other.
    fn lock_key(&mut self, _key: &str) -> Result<()> {
        Ok(())
    }
    /// Takes the session-wide lock `key` if no one holds it; where there is
    /// one machine, every caller may go on.
    fn try_lock_session(&mut self, _key: i64) -> Result<bool> {
        Ok(true)
    }
    fn unlock_session(&mut self, _key: i64) {}
}

/// One SQL value, as both backends store it: booleans are integers.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// What may be passed as an argument (see [`args!`]).
pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                // Counts past i64::MAX mean the same as none to any disk.
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_values!(i32, i64, u32, u64, usize);

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// Arguments for `?1`, `?2`, …: `args![id, name, count]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::registry::backend::ToValue::to_value(&$x)),*][..]
    };
}
pub(crate) use args;

/// A result row.
#[derive(Debug)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, at: usize) -> Result<T> {
        match self.0.get(at) {
            Some(value) => T::from_value(value),
            None => bail!("the registry returned no column {at}"),
        }
    }
}

/// What a column may be read as.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self>;
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Text(text) => Ok(text.clone()),
            other => bail!("the registry returned {other:?} where text belongs"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Blob(bytes) => Ok(bytes.clone()),
            other => bail!("the registry returned {other:?} where bytes belong"),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self> {
        Ok(i64::from_value(value)? != 0)
    }
}

macro_rules! int_columns {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self> {
                match value {
                    Value::Int(n) => Ok(<$t>::try_from(*n)?),
                    other => bail!("the registry returned {other:?} where a number belongs"),
                }
            }
        }
    )*};
}
int_columns!(i32, i64, u32, u64);

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            value => T::from_value(value).map(Some),
        }
    }
}
