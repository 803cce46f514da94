//! Shared by the integration tests: guests built from `guest-examples/` by
//! the test run itself, and a private `$WASMHOST_HOME` per test.
#![allow(dead_code)]

pub mod app_toml;
pub mod cluster;
pub mod node;
pub mod pg;
pub mod raw_http;
pub mod skip;
pub mod wheel;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use app_toml::{AppToml, Function, Mount, Volume};

/// The wasm targets guests are built for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    P1,
    P2,
}

impl Target {
    fn triple(self) -> &'static str {
        match self {
            Target::P1 => "wasm32-wasip1",
            Target::P2 => "wasm32-wasip2",
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn guest_dir() -> PathBuf {
    repo_root().join("guest-examples")
}

/// Builds every guest for `target` once per test binary; cargo's own lock
/// serializes test binaries building at once.
pub fn guest(name: &str, target: Target) -> PathBuf {
    static P1: OnceLock<()> = OnceLock::new();
    static P2: OnceLock<()> = OnceLock::new();
    let once = if target == Target::P1 { &P1 } else { &P2 };
    once.get_or_init(|| build_guests(target));
    let path = guest_dir()
        .join("target")
        .join(target.triple())
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(path.exists(), "guest {} was not built", path.display());
    path
}

fn build_guests(target: Target) {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if installed.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains(target.triple())) {
        let status = Command::new("rustup")
            .args(["target", "add", target.triple()])
            .status()
            .expect("run rustup");
        assert!(
            status.success(),
            "rustup target add {} failed",
            target.triple()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(guest_dir())
        .args([
            "build",
            "--release",
            "--target",
            target.triple(),
            "--target-dir",
        ])
        .arg(guest_dir().join("target"))
        // The host build's flags are not meant for guests.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo build for guests");
    assert!(
        output.status.success(),
        "building guests for {} failed:\n{}",
        target.triple(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The server (a URL without a database) on which every `TestEnv` gets a
/// database of its own, to run the whole suite on PostgreSQL
/// (`tests/with-postgres.sh` sets it); unset, the registry is SQLite.
pub const TEST_PG_VAR: &str = "WASMHOST_TEST_PG";

/// A private `$WASMHOST_HOME` and a directory for app files; with
/// `WASMHOST_TEST_PG` set, a private PostgreSQL database as its registry.
pub struct TestEnv {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
    /// `$WASMHOST_DB` for this env's commands (none: SQLite in the home).
    pub db: Option<String>,
    /// The database made for this env alone, dropped with it.
    _own_db: Option<pg::Database>,
    /// Where this env's commands run, for a machine of a cluster.
    place: Option<cluster::Place>,
}

impl TestEnv {
    pub fn new() -> Self {
        Self::new_on(
            std::env::var(TEST_PG_VAR)
                .ok()
                .filter(|server| !server.is_empty())
                .map(|server| pg::Database::create(&server)),
        )
    }

    /// An env on SQLite whatever the suite runs on: for tests of SQLite
    /// itself (its files, its upgrades from earlier releases).
    pub fn on_sqlite() -> Self {
        Self::new_on(None)
    }

    fn new_on(own_db: Option<pg::Database>) -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            db: own_db.as_ref().map(pg::Database::url),
            _own_db: own_db,
            place: None,
        }
    }

    /// Another home on this env's registry: a second machine's, on one box.
    pub fn beside(&self) -> Self {
        Self {
            db: self.db.clone(),
            ..Self::new_on(None)
        }
    }

    /// An env whose commands run on a machine of a cluster: in its network
    /// namespace, on the cluster's registry `db_url`, with what wasmhost
    /// shares (volumes, snapshots, trash) on the machine's mount of the
    /// shared file system.
    pub fn on_machine(place: cluster::Place, db_url: &str) -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            db: Some(db_url.to_owned()),
            _own_db: None,
            place: Some(place),
        }
    }

    /// This env's registry, opened as its wasmhost commands open it.
    pub fn registry(&self) -> wasmhost::registry::Registry {
        use wasmhost::registry::{Location, Registry};
        let location = match &self.db {
            Some(url) => Location::Postgres(url.clone()),
            None => Location::File(self.home().join("registry.db")),
        };
        Registry::open(&location).unwrap()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Whether this env's registry is in PostgreSQL (else SQLite under the
    /// home).
    pub fn on_postgres(&self) -> bool {
        self.db.is_some()
    }

    /// Everything in this env's PostgreSQL registry, as `pg_dump` writes
    /// its data; None on SQLite (whose file is under the home).
    pub fn registry_dump(&self) -> Option<String> {
        let url = self.db.as_ref()?;
        let out = Command::new(pg::bin("pg_dump"))
            .args(["--data-only", "--no-owner", url])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where volume contents live: `volumes/` under `WASMHOST_VOLUMES`,
    /// else under the home.
    pub fn volumes_dir(&self) -> PathBuf {
        match &self.place {
            Some(place) => place.shared.join("volumes"),
            None => self.home().join("volumes"),
        }
    }

    /// The `--listen` address of a node of this env: a free port on
    /// loopback, or on the machine's own address in its namespace (which
    /// the tests reach over the cluster's bridge).
    pub fn listen_addr(&self) -> String {
        match &self.place {
            Some(place) => format!("{}:0", place.addr),
            None => "127.0.0.1:0".to_owned(),
        }
    }

    pub fn command(&self) -> Command {
        let mut command = match &self.place {
            Some(place) => place.command(env!("CARGO_BIN_EXE_wasmhost")),
            None => Command::new(env!("CARGO_BIN_EXE_wasmhost")),
        };
        command
            .env("WASMHOST_HOME", self.home.path())
            .env_remove("WASMHOST_DB")
            .env_remove("WASMHOST_VOLUMES")
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        if let Some(db) = &self.db {
            command.env("WASMHOST_DB", db);
        }
        if let Some(place) = &self.place {
            command.env("WASMHOST_VOLUMES", &place.shared);
        }
        command
    }

    /// Runs wasmhost to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.command().args(args).output().expect("run wasmhost"))
    }

    /// Runs wasmhost to completion, asserting it took less than `bound`
    /// (a hang fails the test instead of stalling the suite).
    pub fn run_within(&self, bound: Duration, args: &[&str]) -> Run {
        let start = Instant::now();
        let run = self.run(args);
        assert!(
            start.elapsed() < bound,
            "{args:?} took {:?}",
            start.elapsed()
        );
        run
    }

    /// Starts wasmhost without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wasmhost")
    }

    /// Starts wasmhost without waiting, killed if the test ends first.
    pub fn spawn_guarded(&self, args: &[&str]) -> Spawned {
        Spawned(self.spawn(args))
    }

    /// Writes `work/NAME/app.toml` with `{guest:NAME}` (wasip1) and
    /// `{guest2:NAME}` (wasip2) replaced by absolute module paths.
    pub fn app(&self, name: &str, toml: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = toml.to_owned();
        for (marker, target) in [("{guest:", Target::P1), ("{guest2:", Target::P2)] {
            while let Some(start) = text.find(marker) {
                let end = start + text[start..].find('}').unwrap();
                let guest_name = text[start + marker.len()..end].to_owned();
                let path = guest(&guest_name, target);
                text.replace_range(start..=end, path.to_str().unwrap());
            }
        }
        let path = dir.join("app.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An app whose function `fsops` (the test guest) mounts an ephemeral
    /// volume at /scratch and the named volume `persist` at /data.
    pub fn fsops_app(&self, name: &str, persist: &str) -> PathBuf {
        AppToml::new(name)
            .volume("scratch", |v| v)
            .volume("data", |v| v.persist(persist))
            .function("fsops", |f| {
                f.guest("fsops")
                    .mount("/scratch", "scratch")
                    .mount("/data", "data")
            })
            .write(self)
    }

    /// Files under `$WASMHOST_HOME` other than the registry's that hold
    /// `needle`: where a volume's data could be left behind. (The registry
    /// keeps each call's arguments and output in its records.)
    pub fn data_files_containing(&self, needle: &str) -> Vec<PathBuf> {
        self.files_containing(needle)
            .into_iter()
            .filter(|f| {
                !f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("registry.")
            })
            .collect()
    }

    /// Every regular file under `$WASMHOST_HOME` whose contents include `needle`.
    pub fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        files_containing(self.home(), needle)
    }

    /// Waits (bounded) for the background purge to empty the trash.
    pub fn wait_for_empty_trash(&self) {
        let trash = self.home().join("trash");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Vec<_> = std::fs::read_dir(&trash)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name() != ".purge.lock")
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "trash still holds {left:?} after 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `app list --all --json`, parsed.
    pub fn apps(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["app", "list", "--all", "--json"]).success();
        serde_json::from_str(&out.stdout()).expect("app list --json is JSON")
    }
}

/// Every regular file under `root` whose contents include `needle`.
pub fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && std::fs::read(&path)
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A finished wasmhost process.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts exit code 0 and returns self.
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(
            self.code(),
            0,
            "wasmhost failed\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit code\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// Waits for a child with a bound, killing it if it overstays.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it holds, for at most `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl TestEnv {
    /// The host directory of the named volume `name` (from `volume list --json`).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        let list: serde_json::Value =
            serde_json::from_str(&self.run(&["volume", "list", "--json"]).success().stdout())
                .expect("volume list --json is JSON");
        let id = list
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name} is not listed"))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.volumes_dir().join(id)
    }

    /// What the trash holds, but the purge's lock.
    pub fn trash_entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.home().join("trash"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name() != ".purge.lock")
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A wasmhost process that is killed if the test fails before it ends, so
/// a failed test leaves no long-running process behind.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The lines of a child's stdout as it writes them, read by a thread.
pub struct StdoutLines(std::sync::mpsc::Receiver<String>);

impl StdoutLines {
    pub fn of(child: &mut Child) -> Self {
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self(rx)
    }

    /// The next line, or `None` if none comes within `limit` (or stdout ended).
    pub fn next_within(&self, limit: Duration) -> Option<String> {
        self.0.recv_timeout(limit).ok()
    }

    /// Lines up to and including the first that contains `needle`; panics
    /// if none does within `limit`.
    #[track_caller]
    pub fn until(&self, needle: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("no line with {needle:?} within {limit:?}; got {seen:?}"),
            }
        }
    }
}

/// A child killed when dropped: a server or node not yet up, whose test
/// failed before it took the child over.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
