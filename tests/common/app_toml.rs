//! `AppToml`: the one way a test writes an app.toml, so that the tests say
//! what an app has (volumes, functions and their keys) rather than repeat
//! templates. The text is laid out as a person would write it: `name` on
//! line 1, then top-level keys, then each table in the order it was added,
//! its keys in the order they were set, `mounts` and `env` each one inline
//! table at the place of their first entry. A test that checks an error's
//! line and column may count on that layout; one that needs another layout
//! (or a manifest that is not TOML) keeps its literal text.
//!
//! Modules may be `{guest:NAME}` and `{guest2:NAME}` markers (see
//! [`Function::guest`]), which [`TestEnv::app`] replaces by the built
//! guests' paths when the text is written.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use super::{Target, TestEnv};

/// An app.toml: `AppToml::new("name").volume(..).function(..)`.
#[derive(Clone, Debug)]
pub struct AppToml {
    name: String,
    top: Keys,
    tables: Vec<(String, Keys)>,
}

impl AppToml {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            top: Keys::default(),
            tables: Vec::new(),
        }
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `entrypoint = "FUNCTION"`.
    pub fn entrypoint(self, function: &str) -> Self {
        self.key("entrypoint", &quote(function))
    }

    /// A top-level key with `value` as written (TOML), e.g. an unknown one.
    pub fn key(mut self, key: &str, value: &str) -> Self {
        self.top.set(key, value);
        self
    }

    /// `[volumes.KEY]` with what `with` sets (`|v| v` for an ephemeral one).
    pub fn volume(mut self, key: &str, with: impl FnOnce(Volume) -> Volume) -> Self {
        let volume = with(Volume(Keys::default()));
        self.tables.push((format!("volumes.{key}"), volume.0));
        self
    }

    /// `[functions.KEY]` with what `with` sets.
    pub fn function(mut self, key: &str, with: impl FnOnce(Function) -> Function) -> Self {
        let function = with(Function(Keys::default()));
        self.tables.push((format!("functions.{key}"), function.0));
        self
    }

    /// An entry of the app-wide `[files]`: guest path `at` to `source`
    /// (relative to app.toml).
    pub fn files(mut self, at: &str, source: &str) -> Self {
        let entry = (quote(at), quote(source));
        match self.tables.iter_mut().find(|(header, _)| header == "files") {
            Some((_, keys)) => keys.set(&entry.0, &entry.1),
            None => {
                let mut keys = Keys::default();
                keys.set(&entry.0, &entry.1);
                self.tables.push(("files".to_owned(), keys));
            }
        }
        self
    }

    /// Writes `work/NAME/app.toml` (see [`TestEnv::app`]).
    pub fn write(&self, env: &TestEnv) -> PathBuf {
        env.app(&self.name, &self.to_string())
    }

    /// Writes `dir/app.toml` as it is, markers and all: for an app whose
    /// module path is relative to its app.toml.
    pub fn write_in(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("app.toml");
        std::fs::write(&path, self.to_string()).unwrap();
        path
    }
}

impl fmt::Display for AppToml {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "name = {}", quote(&self.name))?;
        write!(f, "{}", self.top)?;
        for (header, keys) in &self.tables {
            writeln!(f, "[{header}]")?;
            write!(f, "{keys}")?;
        }
        Ok(())
    }
}

/// A `[volumes.KEY]` table.
#[derive(Clone, Debug)]
pub struct Volume(Keys);

impl Volume {
    /// `persist = "NAME"`: the named volume (else ephemeral).
    pub fn persist(self, name: &str) -> Self {
        self.key("persist", &quote(name))
    }

    /// `max_size = "SIZE"`.
    pub fn max_size(self, size: &str) -> Self {
        self.key("max_size", &quote(size))
    }

    /// `max_files = N`.
    pub fn max_files(self, files: u64) -> Self {
        self.key("max_files", &files.to_string())
    }

    /// A key with `value` as written (TOML).
    pub fn key(mut self, key: &str, value: &str) -> Self {
        self.0.set(key, value);
        self
    }
}

/// A `[functions.KEY]` table.
#[derive(Clone, Debug)]
pub struct Function(Keys);

impl Function {
    /// `module = "PATH"` (or a `{guest:NAME}` marker).
    pub fn module(self, module: impl AsRef<Path>) -> Self {
        let module = module.as_ref().to_str().expect("test paths are UTF-8");
        self.key("module", &quote(module))
    }

    /// The test guest `name` built for wasip1: `{guest:NAME}`.
    pub fn guest(self, name: &str) -> Self {
        self.guest_for(Target::P1, name)
    }

    /// The test guest `name` built for wasip2 (a component): `{guest2:NAME}`.
    pub fn guest2(self, name: &str) -> Self {
        self.guest_for(Target::P2, name)
    }

    /// The test guest `name` built for `target`.
    pub fn guest_for(self, target: Target, name: &str) -> Self {
        let marker = match target {
            Target::P1 => "guest",
            Target::P2 => "guest2",
        };
        self.module(format!("{{{marker}:{name}}}"))
    }

    /// An entry of `mounts`: guest path `at` to a volume key, or a
    /// [`Mount`] with options.
    pub fn mount(mut self, at: &str, mount: impl Into<Mount>) -> Self {
        self.0
            .entry("mounts", &quote(at), &mount.into().to_string());
        self
    }

    /// An entry of the function's `files`: guest path `at` to `source`
    /// (relative to app.toml).
    pub fn files(mut self, at: &str, source: &str) -> Self {
        self.0.entry("files", &quote(at), &quote(source));
        self
    }

    /// An entry of `env`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.0.entry("env", name, &quote(value));
        self
    }

    /// `args = [...]`.
    pub fn args(self, args: &[&str]) -> Self {
        self.key("args", &array(args))
    }

    /// `timeout = "DURATION"`.
    pub fn timeout(self, timeout: &str) -> Self {
        self.key("timeout", &quote(timeout))
    }

    /// `memory = "SIZE"`.
    pub fn memory(self, memory: &str) -> Self {
        self.key("memory", &quote(memory))
    }

    /// `concurrency = N`.
    pub fn concurrency(self, concurrency: u32) -> Self {
        self.key("concurrency", &concurrency.to_string())
    }

    /// `max_open_files = N`.
    pub fn max_open_files(self, files: usize) -> Self {
        self.key("max_open_files", &files.to_string())
    }

    /// `max_locks = N`.
    pub fn max_locks(self, locks: usize) -> Self {
        self.key("max_locks", &locks.to_string())
    }

    /// `retries = N`.
    pub fn retries(self, retries: u32) -> Self {
        self.key("retries", &retries.to_string())
    }

    /// `schedule = "SCHEDULE"`.
    pub fn schedule(self, schedule: &str) -> Self {
        self.key("schedule", &quote(schedule))
    }

    /// `http = "ROUTE"`.
    pub fn http(self, route: &str) -> Self {
        self.key("http", &quote(route))
    }

    /// `entry = "EXPORT"`.
    pub fn entry(self, export: &str) -> Self {
        self.key("entry", &quote(export))
    }

    /// `unknown_imports = "CHOICE"`.
    pub fn unknown_imports(self, choice: &str) -> Self {
        self.key("unknown_imports", &quote(choice))
    }

    /// `secrets = [...]`.
    pub fn secrets(self, names: &[&str]) -> Self {
        self.key("secrets", &array(names))
    }

    /// `allowed_hosts = [...]`.
    pub fn allowed_hosts(self, hosts: &[&str]) -> Self {
        self.key("allowed_hosts", &array(hosts))
    }

    /// A key with `value` as written (TOML).
    pub fn key(mut self, key: &str, value: &str) -> Self {
        self.0.set(key, value);
        self
    }
}

/// A mount's value: a volume key alone, or an inline table with options.
#[derive(Clone, Debug)]
pub struct Mount {
    volume: String,
    options: Vec<(String, String)>,
}

impl Mount {
    /// The volume key `volume`, to which options are added.
    pub fn volume(volume: &str) -> Self {
        Self {
            volume: volume.to_owned(),
            options: Vec::new(),
        }
    }

    /// `read_only = true`.
    pub fn read_only(self) -> Self {
        self.key("read_only", "true")
    }

    /// `sub_path = "PATH"`.
    pub fn sub_path(self, sub_path: &str) -> Self {
        self.key("sub_path", &quote(sub_path))
    }

    /// `snapshot = "NAME"`.
    pub fn snapshot(self, snapshot: &str) -> Self {
        self.key("snapshot", &quote(snapshot))
    }

    /// An option with `value` as written (TOML).
    pub fn key(mut self, key: &str, value: &str) -> Self {
        self.options.push((key.to_owned(), value.to_owned()));
        self
    }
}

impl From<&str> for Mount {
    fn from(volume: &str) -> Self {
        Mount::volume(volume)
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.options.is_empty() {
            return write!(f, "{}", quote(&self.volume));
        }
        write!(f, "{{ volume = {}", quote(&self.volume))?;
        for (key, value) in &self.options {
            write!(f, ", {key} = {value}")?;
        }
        write!(f, " }}")
    }
}

/// A table's keys in the order set; an inline-table key (`mounts`, `env`)
/// gathers its entries where it was first set.
#[derive(Clone, Debug, Default)]
struct Keys(Vec<(String, Value)>);

#[derive(Clone, Debug)]
enum Value {
    Written(String),
    Inline(Vec<(String, String)>),
}

impl Keys {
    fn set(&mut self, key: &str, value: &str) {
        self.0
            .push((key.to_owned(), Value::Written(value.to_owned())));
    }

    fn entry(&mut self, key: &str, name: &str, value: &str) {
        let entry = (name.to_owned(), value.to_owned());
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, Value::Inline(entries))) => entries.push(entry),
            _ => self.0.push((key.to_owned(), Value::Inline(vec![entry]))),
        }
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (key, value) in &self.0 {
            match value {
                Value::Written(value) => writeln!(f, "{key} = {value}")?,
                Value::Inline(entries) => {
                    let entries: Vec<String> =
                        entries.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    writeln!(f, "{key} = {{ {} }}", entries.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

/// `s` as a TOML basic string: quotes and backslashes escaped, control
/// characters as `\uXXXX`.
fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `items` as a TOML array of strings.
fn array(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", items.join(", "))
}
