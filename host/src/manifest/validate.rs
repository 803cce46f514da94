//! Validation: raw app.toml (serde types with spans) into an
//! [`AppManifest`], every problem reported at its line and column with a
//! fix.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::Quota;
use super::raw::{self, RawApp, RawFunction};
use super::{
    AppManifest, DEFAULT_MAX_LOCKS, DEFAULT_MAX_OPEN_FILES, DEFAULT_TIMEOUT, FunctionSpec,
    MAX_CONCURRENCY, MAX_LOCKS_RANGE, MAX_OPEN_FILES_RANGE, ManifestError, MountSpec, Record,
    Route, Schedule, VolumeSpec, check_sub_path, normalize_guest_path, units, valid_env_name,
};
use crate::names::{IDENTIFIER_RULE, NAME_RULE, is_valid_identifier, is_valid_name};

/// Which naming rule a name in app.toml follows (see `names`).
#[derive(Clone, Copy)]
enum Rule {
    /// Apps and named volumes.
    Name,
    /// Functions and volume keys.
    Identifier,
}

/// One app.toml's text being validated, for errors at its spans.
pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

impl Validator<'_> {
    pub(super) fn error(
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

    pub(super) fn validate(&self, base_dir: &Path) -> Result<AppManifest, ManifestError> {
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
            let mut spec = self.function(function, &volumes, base_dir)?;
            spec.files = self.files(&raw.files, &function.files, &spec.mounts, base_dir)?;
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
        let mounts = self.mounts(raw, volumes)?;
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
        self.check_env(raw)?;
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
            record: self.record(raw)?,
            files: Vec::new(),
            preinit: self.preinit(raw)?,
        })
    }

    /// A function's `mounts`: guest paths normalized, each mounted once, of
    /// declared volumes.
    fn mounts(
        &self,
        raw: &RawFunction,
        volumes: &BTreeMap<String, VolumeSpec>,
    ) -> Result<Vec<MountSpec>, ManifestError> {
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
        Ok(mounts)
    }

    /// A function's `env`: names and values WASI can pass.
    fn check_env(&self, raw: &RawFunction) -> Result<(), ManifestError> {
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
        Ok(())
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

    fn record(&self, raw: &RawFunction) -> Result<Record, ManifestError> {
        match raw.record.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("output", _)) => Ok(Record::Output),
            Some(("metadata", _)) => Ok(Record::Metadata),
            Some((other, span)) => Err(self.error(
                Some(span),
                format!("bad `record = \"{}\"`", other.escape_debug()),
                "write record = \"output\" (the default: keep the call's output) or \"metadata\" (keep only when, where and how it ended)",
            )),
        }
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
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
