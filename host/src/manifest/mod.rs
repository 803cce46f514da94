//! app.toml: parse, then validate into an [`AppManifest`] that the rest of
//! wasmhost can trust. Nothing is created until this has passed.

mod files;
mod guest_path;
mod hosts;
mod preinit;
mod quota;
mod raw;
mod retries;
pub mod schedule;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use files::FilesSpec;
pub use guest_path::normalize_guest_path;
pub use hosts::{HostMatch, HostPattern};
pub use preinit::Preinit;
pub use quota::Quota;
use raw::{RawApp, RawFunction};
pub use retries::{MAX_BACKOFF, MAX_RETRIES, RetryPolicy};
use validate::{Validator, line_column};

pub use schedule::Schedule;

/// `timeout` when app.toml gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The most instances of one function at once that app.toml may ask for.
pub const MAX_CONCURRENCY: i64 = 1024;
/// `max_open_files` when app.toml gives none: more than programs open by
/// accident (CPython at start holds about 10), few enough that `--map`
/// instances of a hoarding guest cannot run the process out of descriptors.
pub const DEFAULT_MAX_OPEN_FILES: u32 = 1024;
/// `max_locks` when app.toml gives none; each held lock is a host file
/// descriptor, so this bounds those too.
pub const DEFAULT_MAX_LOCKS: u32 = 1024;
/// The range app.toml may set `max_open_files` and `max_locks` in. The low
/// end leaves room for stdio and a few mounts, which count as open files.
const MAX_OPEN_FILES_RANGE: std::ops::RangeInclusive<i64> = 16..=1_000_000;
const MAX_LOCKS_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;

/// A validated app.toml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppManifest {
    pub name: String,
    pub entrypoint: Option<String>,
    /// Volume key -> its declaration.
    pub volumes: BTreeMap<String, VolumeSpec>,
    pub functions: BTreeMap<String, FunctionSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionSpec {
    /// Absolute, so a deployed app can be called from any directory.
    pub module: PathBuf,
    pub mounts: Vec<MountSpec>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Cap on linear memory, in bytes.
    pub memory: Option<u64>,
    pub concurrency: Option<u32>,
    /// The export a reactor module runs, after its `_initialize`; `None`
    /// runs a command's `_start`.
    #[serde(default)]
    pub entry: Option<String>,
    /// `unknown_imports = "trap"`: imports wasmhost does not provide are
    /// linked to functions that trap when called, rather than refused.
    #[serde(default)]
    pub trap_unknown_imports: bool,
    /// Most files, directories and other host handles (streams, pollables)
    /// an instance holds at once, counting its stdio and mounts.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u32,
    /// Most `wasmhost:host/lock` locks an instance holds at once.
    #[serde(default = "default_max_locks")]
    pub max_locks: u32,
    /// Defaulted because functions stored before `retries` existed had
    /// none, which is what the default is.
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Where the guest may connect (`allowed_hosts`); empty, the default
    /// and what functions stored before it had, is no network at all.
    #[serde(default)]
    pub allowed_hosts: Vec<HostPattern>,
    /// Named secrets whose variables the function gets, in this order
    /// (a later one's over an earlier's), after `env`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// When a deployed app's function runs on its own, while a node serves.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// `http = "/route"`: the function answers web requests there (see
    /// `triggers::http`). Defaulted: functions stored before it had none.
    #[serde(default)]
    pub http: Option<Route>,
    /// What a call's record keeps: its output too (the default), or
    /// `record = "metadata"` only when, where and how it ended (a busy
    /// endpoint's responses would fill the registry).
    #[serde(default)]
    pub record: Record,
    /// Files shipped with the app, mounted read-only: the app's `[files]`
    /// and the function's own. Defaulted: functions stored before it had
    /// none.
    #[serde(default)]
    pub files: Vec<FilesSpec>,
    /// `preinit`: the export run once, whose initialized instance every
    /// call starts from (see `runtime::preinit`). Defaulted: functions
    /// stored before it had none.
    #[serde(default)]
    pub preinit: Option<Preinit>,
}

/// What a call's record keeps besides when, where and how it ended.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// Its stdout and stderr, capped.
    #[default]
    Output,
    /// Nothing more.
    Metadata,
}

/// A web endpoint's route: a path, or, written with a trailing `/...`, every
/// path under a prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The path, without the `/...` of a prefix route (`/` for `/...`).
    pub path: String,
    /// Written with a trailing `/...`: matches the path and all under it.
    pub prefix: bool,
}

impl Route {
    /// Parses `/a/b` or `/a/...`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err("does not start with `/`".into());
        }
        if let Some(bad) = text
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%'))
        {
            return Err(format!("holds `{}`", bad.escape_debug()));
        }
        let (path, prefix) = match text.strip_suffix("/...") {
            Some(path) => (if path.is_empty() { "/" } else { path }, true),
            None => (text, false),
        };
        if path.contains("...") || path.split('/').any(|part| part == "." || part == "..") {
            return Err(
                "has a `.`, `..` or `...` component (only a trailing `/...` may appear)".into(),
            );
        }
        if path.len() > 1 && path.ends_with('/') || path.contains("//") {
            return Err("has an empty component".into());
        }
        Ok(Self {
            path: path.to_owned(),
            prefix,
        })
    }

    /// Whether `path` (a request's, without its query) is this route's.
    pub fn matches(&self, path: &str) -> bool {
        if !self.prefix {
            return path == self.path;
        }
        self.path == "/"
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.prefix, self.path.as_str()) {
            (false, path) => f.write_str(path),
            (true, "/") => f.write_str("/..."),
            (true, path) => write!(f, "{path}/..."),
        }
    }
}

fn default_max_open_files() -> u32 {
    DEFAULT_MAX_OPEN_FILES
}

fn default_max_locks() -> u32 {
    DEFAULT_MAX_LOCKS
}

/// A `[volumes.KEY]` table.
///
/// Stored as releases before quotas stored it (the `persist` name, or null
/// for an ephemeral volume) when it has no quota, so their homes load and
/// they can read what this one writes; a table only when it has one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredVolume", into = "StoredVolume")]
pub struct VolumeSpec {
    /// The named volume it mounts; `None` for an ephemeral one.
    pub persist: Option<String>,
    /// `max_size` and `max_files`. For a named volume, app.toml's quota
    /// replaces the volume's own when the app starts or deploys; with
    /// neither key, the volume keeps whatever quota it has.
    pub quota: Quota,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredVolume {
    Persist(Option<String>),
    Table {
        persist: Option<String>,
        #[serde(default)]
        max_bytes: Option<u64>,
        #[serde(default)]
        max_files: Option<u64>,
    },
}

impl From<StoredVolume> for VolumeSpec {
    fn from(stored: StoredVolume) -> Self {
        match stored {
            StoredVolume::Persist(persist) => Self {
                persist,
                quota: Quota::default(),
            },
            StoredVolume::Table {
                persist,
                max_bytes,
                max_files,
            } => Self {
                persist,
                quota: Quota {
                    max_bytes,
                    max_files,
                },
            },
        }
    }
}

impl From<VolumeSpec> for StoredVolume {
    fn from(spec: VolumeSpec) -> Self {
        if spec.quota == Quota::default() {
            return Self::Persist(spec.persist);
        }
        Self::Table {
            persist: spec.persist,
            max_bytes: spec.quota.max_bytes,
            max_files: spec.quota.max_files,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    /// Normalized: `/`, `/a/b`, `.` or `a/b`.
    pub guest_path: String,
    pub volume: String,
    pub read_only: bool,
    /// A directory inside the volume that the guest sees as the mount's
    /// root: plain names joined by `/`, none `.` or `..`.
    #[serde(default)]
    pub sub_path: Option<String>,
    /// A snapshot of the volume to mount instead of the volume itself
    /// (always read-only).
    #[serde(default)]
    pub snapshot: Option<String>,
}

impl AppManifest {
    /// The function `run` calls: the one named, else `entrypoint`, else the
    /// only one.
    pub fn select_function(&self, requested: Option<&str>) -> Result<&str, String> {
        let known = || {
            self.functions
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match requested.or(self.entrypoint.as_deref()) {
            Some(name) => match self.functions.get_key_value(name) {
                Some((name, _)) => Ok(name),
                None => Err(format!(
                    "app `{}` has no function `{name}`; fix: use one of its functions: {}",
                    self.name,
                    known()
                )),
            },
            None if self.functions.len() == 1 => Ok(self.functions.keys().next().unwrap()),
            None => Err(format!(
                "app `{}` has several functions and no `entrypoint`; fix: name one of {} after APP.toml, or set `entrypoint`",
                self.name,
                known()
            )),
        }
    }
}

/// A bad app.toml: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole.
    pub position: Option<(usize, usize)>,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: ", self.file.display())?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for ManifestError {}

/// Reads and validates the app.toml at `path`.
pub fn load(path: &Path) -> Result<AppManifest, ManifestError> {
    let whole_file = |problem: String, fix: &str| ManifestError {
        file: path.to_owned(),
        position: None,
        problem,
        fix: fix.to_owned(),
    };
    let bytes = std::fs::read(path).map_err(|e| {
        whole_file(
            format!("cannot read app manifest: {e}"),
            "check the path to app.toml",
        )
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| whole_file("is not UTF-8 text".into(), "save app.toml as UTF-8"))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    Validator {
        file: path,
        text: &text,
    }
    .validate(base_dir)
}

/// A module that passed validation but that wasmtime refuses, reported at
/// function `function`'s `module` in the app.toml at `file`.
pub fn module_error(
    file: &Path,
    function: &str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ManifestError {
    function_key_error(file, function, |f| f.module.span(), problem, fix)
}

/// An error at the key `span` picks in function `function`'s table.
fn function_key_error(
    file: &Path,
    function: &str,
    span: impl Fn(&RawFunction) -> Range<usize>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ManifestError {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let position = toml::from_str::<RawApp>(&text).ok().and_then(|raw| {
        let (_, spec) = raw
            .functions
            .iter()
            .find(|(k, _)| k.get_ref() == function)?;
        Some(line_column(&text, span(spec).start))
    });
    ManifestError {
        file: file.to_owned(),
        position,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The key of a function's table that an optional setting's error is
/// reported at (at `module` when the table has no such line).
#[derive(Debug, Clone, Copy)]
pub enum FunctionKey {
    /// A module whose exports do not offer the function's `entry`.
    Entry,
    /// A pre-initialization that failed or was refused.
    Preinit,
}

/// A problem with function `function`'s `key` in the app.toml at `file`.
pub fn key_error(
    file: &Path,
    function: &str,
    key: FunctionKey,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ManifestError {
    let span = |f: &RawFunction| {
        let at = match key {
            FunctionKey::Entry => f.entry.as_ref().map(|e| e.span()),
            FunctionKey::Preinit => f.preinit.as_ref().map(|p| p.span()),
        };
        at.unwrap_or(f.module.span())
    };
    function_key_error(file, function, span, problem, fix)
}

/// A mount's `sub_path`: relative, plain names (no `.`, `..` or empty
/// component), so it names a place beneath the volume root before any
/// link is looked at; returned without a trailing `/`.
pub fn check_sub_path(sub_path: &str) -> Result<String, String> {
    let shown = sub_path.escape_debug();
    if sub_path.starts_with('/') {
        return Err(format!("`sub_path = \"{shown}\"` is absolute"));
    }
    let trimmed = sub_path.strip_suffix('/').unwrap_or(sub_path);
    for part in trimmed.split('/') {
        match part {
            "" => return Err(format!("`sub_path = \"{shown}\"` has an empty component")),
            "." | ".." => {
                return Err(format!("`sub_path = \"{shown}\"` has a `{part}` component"));
            }
            _ if part.contains(|c: char| c.is_control()) => {
                return Err(format!(
                    "`sub_path = \"{shown}\"` holds a control character"
                ));
            }
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

/// A secret that does not exist, reported at its name in function
/// `function`'s `secrets` (found by the registry, after validation).
pub fn secret_error(
    file: &Path,
    function: &str,
    secret: &str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ManifestError {
    function_key_error(
        file,
        function,
        |f| {
            f.secrets
                .iter()
                .find(|s| s.get_ref() == secret)
                .map_or(f.module.span(), |s| s.span())
        },
        problem,
        fix,
    )
}

/// Whether `name` can be an environment variable's name: WASI passes
/// `NAME=value` as one C string.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// Parses and validates manifest text; `base_dir` anchors module paths.
pub fn parse(file: &Path, text: &str, base_dir: &Path) -> Result<AppManifest, ManifestError> {
    Validator { file, text }.validate(base_dir)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod stored {
    use super::*;

    /// A function stored by a release before the per-instance limits and
    /// `retries` loads with their defaults.
    #[test]
    fn functions_stored_without_the_limits_get_their_defaults() {
        let stored = r#"{"module":"/m.wasm","mounts":[],"args":[],"env":{},
            "timeout":{"secs":300,"nanos":0},"memory":null,"concurrency":null}"#;
        let function: FunctionSpec = serde_json::from_str(stored).unwrap();
        assert_eq!(function.max_open_files, DEFAULT_MAX_OPEN_FILES);
        assert_eq!(function.max_locks, DEFAULT_MAX_LOCKS);
        assert_eq!(function.retries, RetryPolicy::default());
        assert!(function.allowed_hosts.is_empty());
        assert_eq!(function.http, None);
    }

    #[test]
    fn retry_policies_survive_the_registry() {
        let stored = r#"{"module":"/m.wasm","mounts":[],"args":[],"env":{},
            "timeout":{"secs":300,"nanos":0},"memory":null,"concurrency":null}"#;
        let mut function: FunctionSpec = serde_json::from_str(stored).unwrap();
        function.retries = RetryPolicy {
            max: 3,
            initial_delay: Duration::from_millis(250),
            backoff: 1.5,
            max_delay: Duration::from_secs(90),
        };
        let json = serde_json::to_string(&function).unwrap();
        assert_eq!(
            serde_json::from_str::<FunctionSpec>(&json).unwrap(),
            function
        );
    }
}
