//! Host locks for wasmhost guests.
//!
//! WASI has no file locks, so instances that share a volume coordinate through
//! the host (`wit/lock.wit`). This crate hides the two ABIs behind one API:
//! raw `wasmhost.*` imports for wasip1 core modules, and the WIT interface
//! `wasmhost:host/lock` for wasip2 components.

use std::fmt;
use std::time::Duration;

/// Why the host refused a lock operation; mirrors the WIT `error` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockError {
    Timeout,
    NotInMount,
    ReadOnly,
    NotHeld,
    AlreadyHeld,
    InvalidPath,
    Io,
    TooManyLocks,
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockError::Timeout => "timed out waiting for the lock",
            LockError::NotInMount => "lock path is not inside a mounted volume",
            LockError::ReadOnly => "lock path is inside a read-only mount",
            LockError::NotHeld => "lock is not held by this instance",
            LockError::AlreadyHeld => {
                "lock is already held by this instance (locks are not reentrant)"
            }
            LockError::InvalidPath => "invalid lock path",
            LockError::Io => "host could not create or lock its lock file",
            LockError::TooManyLocks => {
                "instance holds as many locks as its function's `max_locks` allows"
            }
        })
    }
}

impl std::error::Error for LockError {}

/// Namespace for taking locks; the guard returned owns the lock.
pub struct Lock;

impl Lock {
    /// Waits up to `timeout` for the lock on `path` (a path inside a mounted,
    /// writable volume; the file need not exist).
    pub fn acquire(path: &str, timeout: Duration) -> Result<LockGuard, LockError> {
        // Saturate rather than wrap: a huge timeout means "wait a long time".
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        sys::acquire(path, ms)?;
        Ok(LockGuard {
            path: path.to_owned(),
        })
    }

    /// Takes the lock only if nobody holds it; `Ok(None)` means busy.
    pub fn try_acquire(path: &str) -> Result<Option<LockGuard>, LockError> {
        Ok(sys::try_acquire(path)?.then(|| LockGuard {
            path: path.to_owned(),
        }))
    }
}

/// A held lock. Dropping it releases the lock; the host also releases it when
/// the instance ends, so a leaked guard cannot wedge other instances.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard {
    path: String,
}

impl LockGuard {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Releases now, for callers that want to see a release error that
    /// `Drop` would have to swallow.
    pub fn release(self) -> Result<(), LockError> {
        let path = std::mem::take(&mut std::mem::ManuallyDrop::new(self).path);
        sys::release(&path)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = sys::release(&self.path);
    }
}

#[cfg(not(target_env = "p2"))]
mod sys {
    use super::LockError;

    #[link(wasm_import_module = "wasmhost")]
    unsafe extern "C" {
        fn lock_acquire(ptr: *const u8, len: usize, timeout_ms: i64) -> i32;
        fn lock_try_acquire(ptr: *const u8, len: usize) -> i32;
        fn lock_release(ptr: *const u8, len: usize) -> i32;
    }

    /// Status codes are the WIT enum's order plus one (`wit/README.md`).
    fn status(code: i32) -> Result<(), LockError> {
        Err(match code {
            0 => return Ok(()),
            1 => LockError::Timeout,
            2 => LockError::NotInMount,
            3 => LockError::ReadOnly,
            4 => LockError::NotHeld,
            5 => LockError::AlreadyHeld,
            6 => LockError::InvalidPath,
            8 => LockError::TooManyLocks,
            _ => LockError::Io,
        })
    }

    pub fn acquire(path: &str, timeout_ms: u64) -> Result<(), LockError> {
        let ms = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        status(unsafe { lock_acquire(path.as_ptr(), path.len(), ms) })
    }

    pub fn try_acquire(path: &str) -> Result<bool, LockError> {
        match status(unsafe { lock_try_acquire(path.as_ptr(), path.len()) }) {
            Ok(()) => Ok(true),
            Err(LockError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn release(path: &str) -> Result<(), LockError> {
        status(unsafe { lock_release(path.as_ptr(), path.len()) })
    }
}

#[cfg(target_env = "p2")]
mod sys {
    use super::LockError;

    wit_bindgen::generate!({ path: "../../wit", world: "guest" });

    use wasmhost::host::lock::{self, Error};

    fn convert(e: Error) -> LockError {
        match e {
            Error::Timeout => LockError::Timeout,
            Error::NotInMount => LockError::NotInMount,
            Error::ReadOnly => LockError::ReadOnly,
            Error::NotHeld => LockError::NotHeld,
            Error::AlreadyHeld => LockError::AlreadyHeld,
            Error::InvalidPath => LockError::InvalidPath,
            Error::Io => LockError::Io,
            Error::TooManyLocks => LockError::TooManyLocks,
        }
    }

    pub fn acquire(path: &str, timeout_ms: u64) -> Result<(), LockError> {
        lock::acquire(path, timeout_ms).map_err(convert)
    }

    pub fn try_acquire(path: &str) -> Result<bool, LockError> {
        lock::try_acquire(path).map_err(convert)
    }

    pub fn release(path: &str) -> Result<(), LockError> {
        lock::release(path).map_err(convert)
    }
}
