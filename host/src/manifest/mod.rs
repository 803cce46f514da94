//! app.toml: parse, then validate into an [`AppManifest`] that the rest of
//! wasmhost can trust. Nothing is created until this has passed.

mod guest_path;
mod hosts;
mod quota;
mod raw;
mod retries;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use guest_path::normalize_guest_path;
pub use hosts::{HostMatch, HostPattern};
pub use quota::Quota;
use raw::{RawApp, RawFunction};
pub use retries::{MAX_BACKOFF, MAX_RETRIES, RetryPolicy};

use crate::names::{IDENTIFIER_RULE, NAME_RULE, is_valid_identifier, is_valid_name};
use crate::triggers::schedule::Schedule;

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

/// A module whose exports do not offer function `function`'s `entry`,
/// reported at that key (at `module` when there is no `entry` line).
pub fn entry_error(
    file: &Path,
    function: &str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ManifestError {
    function_key_error(
        file,
        function,
        |f| f.entry.as_ref().map_or(f.module.span(), |e| e.span()),
        problem,
        fix,
    )
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

/// Which naming rule a name in app.toml follows (see `names`).
#[derive(Clone, Copy)]
enum Rule {
    /// Apps and named volumes.
    Name,
    /// Functions and volume keys.
    Identifier,
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            position: span.map(|span| line_column(self.text, span.start)),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn validate(&self, base_dir: &Path) -> Result<AppManifest, ManifestError> {
        if self.text.trim().is_empty() {
            return Err(self.error(
                None,
                "is empty",
                "give at least `name = \"...\"` and one `[functions.NAME]` with a `module`",
            ));
        }
        let raw: RawApp = toml::from_str(self.text).map_err(|e| self.toml_error(e))?;

        let name = self.name(&raw.name, "app name", Rule::Name)?;
        let mut volumes = BTreeMap::new();
        for (key, volume) in &raw.volumes {
            let key = self.name(key, "volume key", Rule::Identifier)?;
            let persist = match &volume.persist {
                Some(persist) => Some(self.name(persist, "`persist` volume name", Rule::Name)?),
                None => None,
            };
            let max_bytes = match &volume.max_size {
                Some(size) => Some(units::parse_quota_size(size.get_ref()).map_err(|p| {
                    self.error(
                        Some(size.span()),
                        format!("bad `max_size`: {p}"),
                        format!(
                            "write a number and a unit ({}), e.g. max_size = \"50GiB\"",
                            units::QUOTA_UNITS
                        ),
                    )
                })?),
                None => None,
            };
            let max_files = match &volume.max_files {
                Some(n) if *n.get_ref() < 1 => {
                    return Err(self.error(
                        Some(n.span()),
                        format!("`max_files = {}` is out of range", n.get_ref()),
                        "use a whole number of at least 1, e.g. max_files = 500000",
                    ));
                }
                Some(n) => Some(*n.get_ref() as u64),
                None => None,
            };
            volumes.insert(
                key,
                VolumeSpec {
                    persist,
                    quota: Quota {
                        max_bytes,
                        max_files,
                    },
                },
            );
        }
        if raw.functions.is_empty() {
            return Err(self.error(
                None,
                "declares no functions",
                "add a `[functions.NAME]` table with a `module`",
            ));
        }
        let mut functions = BTreeMap::new();
        let mut routes: BTreeMap<Route, String> = BTreeMap::new();
        for (key, function) in &raw.functions {
            let function_name = self.name(key, "function name", Rule::Identifier)?;
            let spec = self.function(function, &volumes, base_dir)?;
            if let (Some(route), Some(raw_route)) = (&spec.http, &function.http)
                && let Some(first) = routes.insert(route.clone(), function_name.clone())
            {
                return Err(self.error(
                    Some(raw_route.span()),
                    format!(
                        "functions `{first}` and `{function_name}` are both on route `{route}`"
                    ),
                    "give each function a route of its own",
                ));
            }
            functions.insert(function_name, spec);
        }
        let entrypoint = match &raw.entrypoint {
            Some(entry) if !functions.contains_key(entry.get_ref()) => {
                return Err(self.error(
                    Some(entry.span()),
                    format!(
                        "`entrypoint` names `{}`, which is not a function of this app",
                        entry.get_ref()
                    ),
                    format!("set it to one of {}", list(functions.keys())),
                ));
            }
            entry => entry.as_ref().map(|e| e.get_ref().clone()),
        };
        Ok(AppManifest {
            name,
            entrypoint,
            volumes,
            functions,
        })
    }

    fn name(
        &self,
        name: &toml::Spanned<String>,
        what: &str,
        rule: Rule,
    ) -> Result<String, ManifestError> {
        let (valid, text) = match rule {
            Rule::Name => (is_valid_name(name.get_ref()), NAME_RULE),
            Rule::Identifier => (is_valid_identifier(name.get_ref()), IDENTIFIER_RULE),
        };
        if valid {
            Ok(name.get_ref().clone())
        } else {
            Err(self.error(
                Some(name.span()),
                format!("invalid {what} `{}`", name.get_ref().escape_debug()),
                format!("use {text}"),
            ))
        }
    }

    fn function(
        &self,
        raw: &RawFunction,
        volumes: &BTreeMap<String, VolumeSpec>,
        base_dir: &Path,
    ) -> Result<FunctionSpec, ManifestError> {
        let module = self.module(&raw.module, base_dir)?;
        let mut mounts: Vec<MountSpec> = Vec::new();
        for (guest_path, mount) in &raw.mounts {
            let normalized = normalize_guest_path(guest_path.get_ref()).map_err(|problem| {
                self.error(
                    Some(guest_path.span()),
                    problem,
                    "use an absolute path such as \"/data\", or a relative name such as \"data\"",
                )
            })?;
            if let Some(first) = mounts.iter().find(|m| m.guest_path == normalized) {
                return Err(self.error(
                    Some(guest_path.span()),
                    format!(
                        "two mounts on guest path `{normalized}` (`{}` and `{}`)",
                        first.volume,
                        mount.get_ref().volume
                    ),
                    "mount each guest path once",
                ));
            }
            let volume = &mount.get_ref().volume;
            if !volumes.contains_key(volume) {
                let fix = if volumes.is_empty() {
                    format!("declare it with a `[volumes.{volume}]` table")
                } else {
                    format!(
                        "declare it with `[volumes.{volume}]`, or use one of {}",
                        list(volumes.keys())
                    )
                };
                return Err(self.error(
                    Some(mount.span()),
                    format!("mount names undeclared volume `{volume}`"),
                    fix,
                ));
            }
            mounts.push(self.mount(normalized, mount.get_ref())?);
        }
        let timeout = match &raw.timeout {
            Some(t) => units::parse_duration(t.get_ref()).map_err(|p| {
                self.error(
                    Some(t.span()),
                    format!("bad `timeout`: {p}"),
                    format!(
                        "write a number and a unit ({}) up to 24h, e.g. timeout = \"60s\" or \"1h30m\"",
                        units::DURATION_UNITS
                    ),
                )
            })?,
            None => DEFAULT_TIMEOUT,
        };
        let memory = match &raw.memory {
            Some(m) => Some(units::parse_size(m.get_ref()).map_err(|p| {
                self.error(
                    Some(m.span()),
                    format!("bad `memory`: {p}"),
                    format!(
                        "write a number and a unit ({}) from 64KiB to 16GiB, e.g. memory = \"512MiB\"",
                        units::SIZE_UNITS
                    ),
                )
            })?),
            None => None,
        };
        let concurrency = match &raw.concurrency {
            Some(c) if !(1..=MAX_CONCURRENCY).contains(c.get_ref()) => {
                return Err(self.error(
                    Some(c.span()),
                    format!("`concurrency = {}` is out of range", c.get_ref()),
                    format!("use a whole number from 1 to {MAX_CONCURRENCY}"),
                ));
            }
            Some(c) => Some(*c.get_ref() as u32),
            None => None,
        };
        let max_open_files = self.count(
            raw.max_open_files.as_ref(),
            "max_open_files",
            MAX_OPEN_FILES_RANGE,
            DEFAULT_MAX_OPEN_FILES,
        )?;
        let max_locks = self.count(
            raw.max_locks.as_ref(),
            "max_locks",
            MAX_LOCKS_RANGE,
            DEFAULT_MAX_LOCKS,
        )?;
        for (key, value) in &raw.env {
            if !valid_env_name(key.get_ref()) {
                return Err(self.error(
                    Some(key.span()),
                    format!(
                        "environment variable name `{}` is invalid",
                        key.get_ref().escape_debug()
                    ),
                    "use a non-empty name without `=` or NUL",
                ));
            }
            if value.get_ref().contains('\0') {
                return Err(self.error(
                    Some(value.span()),
                    format!("the value of `{}` holds a NUL byte", key.get_ref()),
                    "remove it: WASI cannot pass a NUL to a guest",
                ));
            }
        }
        Ok(FunctionSpec {
            module,
            mounts,
            args: raw.args.clone(),
            env: raw
                .env
                .iter()
                .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                .collect(),
            timeout,
            memory,
            concurrency,
            entry: self.entry(raw)?,
            trap_unknown_imports: self.unknown_imports(raw)?,
            max_open_files,
            max_locks,
            retries: self.retries(raw.retries.as_ref())?,
            allowed_hosts: self.allowed_hosts(&raw.allowed_hosts)?,
            secrets: self.secrets(raw)?,
            schedule: self.schedule(raw)?,
            http: self.route(raw)?,
        })
    }

    /// A mount's `read_only`, `sub_path` and `snapshot`, checked.
    fn mount(&self, guest_path: String, raw: &raw::RawMount) -> Result<MountSpec, ManifestError> {
        let sub_path = match &raw.sub_path {
            Some(sub) => Some(check_sub_path(sub.get_ref()).map_err(|problem| {
                self.error(
                    Some(sub.span()),
                    problem,
                    "name a directory inside the volume, e.g. sub_path = \"models/hf\"",
                )
            })?),
            None => None,
        };
        let snapshot = match &raw.snapshot {
            Some(snapshot) => Some(self.name(snapshot, "snapshot name", Rule::Name)?),
            None => None,
        };
        let read_only = match (&raw.read_only, &snapshot) {
            (Some(ro), Some(_)) if !ro.get_ref() => {
                return Err(self.error(
                    Some(ro.span()),
                    "a snapshot mount cannot be writable",
                    "remove `read_only = false`: a snapshot is always mounted read-only",
                ));
            }
            (_, Some(_)) => true,
            (ro, None) => ro.as_ref().is_some_and(|ro| *ro.get_ref()),
        };
        Ok(MountSpec {
            guest_path,
            volume: raw.volume.clone(),
            read_only,
            sub_path,
            snapshot,
        })
    }

    fn secrets(&self, raw: &RawFunction) -> Result<Vec<String>, ManifestError> {
        let mut secrets: Vec<String> = Vec::new();
        for secret in &raw.secrets {
            let name = self.name(secret, "secret name", Rule::Name)?;
            if secrets.contains(&name) {
                return Err(self.error(
                    Some(secret.span()),
                    format!("secret `{name}` is listed twice"),
                    "list each secret once",
                ));
            }
            secrets.push(name);
        }
        Ok(secrets)
    }

    fn schedule(&self, raw: &RawFunction) -> Result<Option<Schedule>, ManifestError> {
        let Some(schedule) = &raw.schedule else {
            return Ok(None);
        };
        Schedule::parse(schedule.get_ref()).map(Some).map_err(|problem| {
            self.error(
                Some(schedule.span()),
                format!("bad `schedule`: {problem}"),
                "write \"every DURATION\" (e.g. \"every 10m\", at least 1s) or a five-field cron line in UTC (minute hour day month weekday, e.g. \"0 3 * * *\")",
            )
        })
    }

    fn route(&self, raw: &RawFunction) -> Result<Option<Route>, ManifestError> {
        let Some(route) = &raw.http else {
            return Ok(None);
        };
        Route::parse(route.get_ref()).map(Some).map_err(|problem| {
            self.error(
                Some(route.span()),
                format!(
                    "route `http = \"{}\"` {problem}",
                    route.get_ref().escape_debug()
                ),
                "write a path such as \"/hello\", or \"/api/...\" for every path under /api",
            )
        })
    }

    /// An export name: any non-empty string wasm allows, but not one that
    /// could not be typed in app.toml by mistake-free intent.
    fn entry(&self, raw: &RawFunction) -> Result<Option<String>, ManifestError> {
        let Some(entry) = &raw.entry else {
            return Ok(None);
        };
        if entry.get_ref().is_empty() || entry.get_ref().contains(char::is_control) {
            return Err(self.error(
                Some(entry.span()),
                format!(
                    "`entry = \"{}\"` is not an export name",
                    entry.get_ref().escape_debug()
                ),
                "name the module's exported function to call, e.g. entry = \"run\"",
            ));
        }
        Ok(Some(entry.get_ref().clone()))
    }

    fn unknown_imports(&self, raw: &RawFunction) -> Result<bool, ManifestError> {
        match raw.unknown_imports.as_ref().map(|u| (u, u.get_ref().as_str())) {
            None | Some((_, "error")) => Ok(false),
            Some((_, "trap")) => Ok(true),
            Some((value, other)) => Err(self.error(
                Some(value.span()),
                format!("`unknown_imports = \"{}\"` is not a choice", other.escape_debug()),
                "use \"error\" (the default: refuse the module) or \"trap\" (run it; a call to such an import traps)",
            )),
        }
    }

    /// A per-instance count limit: `default` when absent, else in `range`.
    fn count(
        &self,
        value: Option<&toml::Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: u32,
    ) -> Result<u32, ManifestError> {
        match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref() as u32),
            Some(v) => Err(self.error(
                Some(v.span()),
                format!("`{key} = {}` is out of range", v.get_ref()),
                format!(
                    "use a whole number from {} to {} (default {default})",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// The module must exist and start like WebAssembly; compiling it is the
    /// runtime's job, but these two mistakes are the common ones.
    fn module(
        &self,
        module: &toml::Spanned<String>,
        base_dir: &Path,
    ) -> Result<PathBuf, ManifestError> {
        let span = Some(module.span());
        if module.get_ref().is_empty() {
            return Err(self.error(
                span,
                "`module` is empty",
                "give the path of a .wasm file, relative to app.toml",
            ));
        }
        let path = base_dir.join(module.get_ref());
        let path = std::path::absolute(&path).unwrap_or(path);
        let mut header = [0u8; 8];
        let read = std::fs::File::open(&path).and_then(|mut file| {
            if file.metadata()?.is_dir() {
                return Err(std::io::Error::other("it is a directory"));
            }
            std::io::Read::read(&mut file, &mut header)
        });
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.error(
                span,
                format!("module file {} does not exist", path.display()),
                "build the module first, or correct the path (it is relative to app.toml)",
            )),
            Err(e) => Err(self.error(
                span,
                format!("cannot read module {}: {e}", path.display()),
                "point `module` at a readable .wasm file",
            )),
            Ok(n) if n < 8 || &header[..4] != b"\0asm" => Err(self.error(
                span,
                format!(
                    "module {} is not WebAssembly (no `\\0asm` header)",
                    path.display()
                ),
                "point `module` at a .wasm file built for wasm32-wasip1 or wasm32-wasip2",
            )),
            Ok(_) => Ok(path),
        }
    }

    fn toml_error(&self, e: toml::de::Error) -> ManifestError {
        let message = toml_message(e.message(), e.span().and_then(|s| self.text.get(s)));
        let fix = if message.starts_with("unknown key") {
            "remove the key or correct its spelling (see the app.toml reference in README.md)"
        } else if message.starts_with("missing key") {
            "add the key (see the app.toml reference in README.md)"
        } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
            "give the value the expected type (see the app.toml reference in README.md)"
        } else if message.contains("is too large") {
            "use a whole number from 1 to 1024"
        } else if message.contains("duplicate key") {
            "keep one of the two keys"
        } else {
            "correct the TOML syntax"
        };
        self.error(e.span(), message, fix)
    }
}

/// A toml/serde message in the words of TOML and of app.toml: keys, tables,
/// arrays and whole numbers rather than fields, maps, sequences and i64.
fn toml_message(message: &str, at: Option<&str>) -> String {
    let message = message.trim().trim_end_matches('.').replace('\n', " ");
    if let Some(number) = message
        .strip_prefix("invalid type: integer `")
        .and_then(|rest| rest.strip_suffix("` as i128, expected i64"))
    {
        return format!("integer `{number}` is too large");
    }
    if message == "duplicate key"
        && let Some(key) = at
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.contains('\n'))
    {
        return format!("duplicate key `{key}`");
    }
    message
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected i64", "expected a whole number")
        .replace("expected i128", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a map", "expected a table")
        .replace("invalid type: map", "invalid type: table")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: sequence", "invalid type: array")
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
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
