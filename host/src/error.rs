//! Errors a caller must branch on: they decide the exit code.

use std::fmt;

/// Bad usage: an unknown app, volume or function, a bad name, a missing
/// `--yes`. Exits with 2, like a bad app.toml.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for `Err(UsageError(..).into())`.
macro_rules! usage {
    ($($arg:tt)*) => { ::anyhow::Error::from($crate::error::UsageError(format!($($arg)*))) };
}
pub(crate) use usage;
