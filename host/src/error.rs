//! Errors a caller must branch on, by kind, and the one place where a kind
//! becomes an exit code (the CLI) or an HTTP status (the node): call sites
//! say what went wrong, never which number reports it.

use std::fmt;

use http::StatusCode;

use crate::manifest::ManifestError;

/// What kind of refusal an error is; untyped errors are the host's own
/// failures (exit 1, HTTP 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: a bad name, flag, app.toml or module, a missing `--yes`.
    Invalid,
    /// What was named does not exist (or no longer runs).
    NotFound,
    /// It exists, but its state forbids the request: a name taken, a call
    /// already ended.
    Conflict,
    /// A service the request needs cannot be reached now; trying again may
    /// work.
    Unavailable,
}

impl ErrorKind {
    /// The CLI's exit code (SPEC section 4): 2 for what the user must fix,
    /// 1 for what may pass.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Invalid | Self::NotFound | Self::Conflict => 2,
            Self::Unavailable => 1,
        }
    }

    /// The node API's status (SPEC section 6).
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::Invalid => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A request the library refused, and why, in one line.
#[derive(Debug)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// The kind of the first typed error in `error`'s chain, if any: a
/// [`Refusal`], or a bad app.toml (always [`ErrorKind::Invalid`]).
pub fn kind_of(error: &anyhow::Error) -> Option<ErrorKind> {
    error.chain().find_map(|cause| {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return Some(refusal.kind);
        }
        cause.is::<ManifestError>().then_some(ErrorKind::Invalid)
    })
}

/// The exit code `error` ends the CLI with.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    kind_of(error).map_or(1, ErrorKind::exit_code)
}

/// The HTTP status `error` answers a request with.
pub fn http_status(error: &anyhow::Error) -> StatusCode {
    kind_of(error).map_or(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::http_status)
}

/// `anyhow::Error` of a [`Refusal`] of `$kind`, formatted as `format!`.
macro_rules! refusal {
    ($kind:ident, $($arg:tt)*) => {
        ::anyhow::Error::from($crate::error::Refusal::new(
            $crate::error::ErrorKind::$kind,
            format!($($arg)*),
        ))
    };
}

/// Bad input: an [`ErrorKind::Invalid`] refusal.
macro_rules! usage {
    ($($arg:tt)*) => { $crate::error::refusal!(Invalid, $($arg)*) };
}

/// An [`ErrorKind::NotFound`] refusal.
macro_rules! not_found {
    ($($arg:tt)*) => { $crate::error::refusal!(NotFound, $($arg)*) };
}

/// An [`ErrorKind::Conflict`] refusal.
macro_rules! conflict {
    ($($arg:tt)*) => { $crate::error::refusal!(Conflict, $($arg)*) };
}

pub(crate) use {conflict, not_found, refusal, usage};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_found_under_context() {
        let e = not_found!("no app `x`").context("cannot call");
        assert_eq!(kind_of(&e), Some(ErrorKind::NotFound));
        assert_eq!(exit_code(&e), 2);
        assert_eq!(http_status(&e), StatusCode::NOT_FOUND);
        let e = conflict!("taken");
        assert_eq!(http_status(&e), StatusCode::CONFLICT);
        let untyped = anyhow::anyhow!("disk full");
        assert_eq!(exit_code(&untyped), 1);
        assert_eq!(http_status(&untyped), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
