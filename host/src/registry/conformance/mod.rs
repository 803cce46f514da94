//! One set of tests of the registry's operations ([`Tx`]) run against each
//! backend, as River's driver test is: a difference between SQLite and
//! PostgreSQL (a type, a placeholder, a translated `rowid`, a lock) fails
//! here, in a unit test named for its backend (`conformance::postgres::calls`),
//! rather than somewhere in the whole suite's second run.
//!
//! Every test runs on SQLite; on PostgreSQL when `WASMHOST_TEST_PG` names a
//! server (`tests/with-postgres.sh` sets it, and CI runs the suite again
//! under it), each test in a database of its own. Leases and cluster locks
//! are rows only in a cluster, so their tests run on PostgreSQL alone.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use super::*;

mod cluster;
mod queue;
mod state;
mod storage;

use cluster::{cluster_locks, leases, nodes, reaper};
use queue::{calls_by_kind, calls_claimed_and_requeued, calls_ended, calls_output, schedules};
use state::{apps, modules, secrets, transactions};
use storage::{snapshots, volumes};

/// The server (a URL without a database) the PostgreSQL tests make their
/// databases on, as the integration tests' `TestEnv` does.
const TEST_PG_VAR: &str = "WASMHOST_TEST_PG";

/// A new, empty registry on one backend; a PostgreSQL database is dropped
/// with it.
struct Scratch {
    location: Location,
    _dir: Option<tempfile::TempDir>,
    /// The server and the database made on it.
    database: Option<(String, String)>,
}

impl Scratch {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            location: Location::File(dir.path().join("registry.db")),
            _dir: Some(dir),
            database: None,
        }
    }

    /// A database of its own on the test server; none, said once, when no
    /// server is given.
    fn postgres() -> Option<Self> {
        let Some(server) = std::env::var(TEST_PG_VAR).ok().filter(|s| !s.is_empty()) else {
            say_sqlite_only();
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "conformance_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        server_client(&server)
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
        Some(Self {
            location: Location::Postgres(format!("{server}/{name}")),
            _dir: None,
            database: Some((server, name)),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((server, name)) = &self.database {
            // Best effort: a server that is gone takes its databases along.
            let _ = server_client(server)
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    }
}

fn server_client(server: &str) -> ::postgres::Client {
    ::postgres::Client::connect(&format!("{server}/postgres"), ::postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot reach {TEST_PG_VAR} {server}: {e}"))
}

/// Says, once a run, that the PostgreSQL half did not run: on stderr
/// itself, past the test harness's capture, and as a banner under CI, where
/// a run that silently tested one backend would pass for a run of both.
fn say_sqlite_only() {
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        let why = format!(
            "registry conformance: ran on SQLite only ({TEST_PG_VAR} is not set; \
             `bash tests/with-postgres.sh cargo test --lib` runs PostgreSQL too)"
        );
        let text = if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            let rule = "!".repeat(why.len().min(100));
            format!("\n{rule}\n{why}\n{rule}\n")
        } else {
            format!("{why}\n")
        };
        let _ = std::io::stderr().write_all(text.as_bytes());
    });
}

/// Runs `test` on a new registry, failing with its error chain.
fn run(scratch: Scratch, test: fn(&Location) -> Result<()>) {
    if let Err(e) = test(&scratch.location) {
        panic!("{e:#}");
    }
}

/// `#[test]`s for each backend: `sqlite::NAME` and `postgres::NAME` for the
/// tests of both, `postgres::NAME` alone for those of a cluster.
macro_rules! conformance {
    (both: $($both:ident),*; postgres only: $($pg:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $both() {
                super::run(super::Scratch::sqlite(), super::$both);
            })*
        }
        mod postgres {
            $(#[test]
            fn $both() {
                if let Some(scratch) = super::Scratch::postgres() {
                    super::run(scratch, super::$both);
                }
            })*
            $(#[test]
            fn $pg() {
                if let Some(scratch) = super::Scratch::postgres() {
                    super::run(scratch, super::$pg);
                }
            })*
        }
    };
}

conformance! {
    both: apps, transactions, volumes, snapshots, calls_claimed_and_requeued,
        calls_output, calls_ended, calls_by_kind, schedules, secrets, modules, nodes, reaper;
    postgres only: leases, cluster_locks,
}

fn ids<'a>(records: impl IntoIterator<Item = &'a AppRecord>) -> Vec<&'a str> {
    records.into_iter().map(|a| a.id.as_str()).collect()
}

/// A deployed app named `name`, for calls.
fn deployed(registry: &mut Registry, name: &str) -> Result<AppRecord> {
    registry.write(|tx| tx.insert_app(name, AppKind::Deployed, None, false))
}

/// A call of function `f` of `app_id`, queued or (with a holder) running.
fn call<'a>(
    id: &'a str,
    app_id: &'a str,
    running: Option<(&'a str, Option<&'a str>)>,
) -> NewCall<'a> {
    static NO_ARGS: &[String] = &[];
    static NO_ENV: BTreeMap<String, String> = BTreeMap::new();
    NewCall {
        id,
        app_id,
        function: "f",
        args: NO_ARGS,
        env: &NO_ENV,
        module: None,
        max_attempts: 1,
        running,
        ended: None,
        tick: None,
        kind: CallKind::Call,
    }
}
