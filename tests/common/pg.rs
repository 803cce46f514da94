//! A private PostgreSQL 15 server for the tests: `initdb` into a temporary
//! directory, `postgres` on a free port with a socket directory of its own,
//! trusting local connections (and those from the subnets it is told of),
//! stopped and removed when dropped. Also the databases of a server given
//! by URL (`WASMHOST_TEST_PG`), which `TestEnv` uses to run the whole suite
//! on PostgreSQL.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and the server run
//! as the `postgres` system user (the Debian packages make it), with their
//! directories given to it. The server is this process's child, with a
//! parent-death signal, so a test binary that is killed leaves no server
//! behind.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a new server gets to accept connections.
const START_BOUND: Duration = Duration::from_secs(60);
/// How long a server gets to shut down before it is killed.
const STOP_BOUND: Duration = Duration::from_secs(15);

/// The server binaries: `$PG_BIN`, else Debian's PostgreSQL 15.
pub fn bin(name: &str) -> PathBuf {
    std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
        .join(name)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid PostgreSQL's programs run as: the `postgres` user's
/// when we are root, else none (they run as we do).
fn server_user() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "PostgreSQL does not run as root, and there is no `postgres` user to run it as \
             (install the postgresql package, or run the tests as another user)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// A command of PostgreSQL's that runs as the server's user, and gets
/// SIGKILL if the thread that started it ends first.
fn as_server_user(program: &str) -> Command {
    let mut command = Command::new(bin(program));
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; it runs after the uid change
    // (which would clear it).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Gives `path` to the server's user, when that is not us.
fn give_to_server(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// A running private server, stopped and removed when dropped.
pub struct PgServer {
    child: Child,
    port: u16,
    /// The address URLs name (the first one it listens on).
    host: String,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// A server listening on 127.0.0.1 only, in a directory of the
    /// system's temporary directory.
    pub fn start() -> PgServer {
        Self::start_on(&std::env::temp_dir(), &["127.0.0.1"], &[])
    }

    /// A server in a new directory under `parent` (which the server's
    /// user must be able to enter), listening on `addresses` (the first is
    /// the one its URLs name), trusting connections from loopback and from
    /// `subnets` (CIDR, `10.213.5.0/24`).
    pub fn start_on(parent: &Path, addresses: &[&str], subnets: &[&str]) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("wasmhost-pg-")
            .tempdir_in(parent)
            .unwrap();
        give_to_server(dir.path());
        let data = dir.path().join("data");
        let out = as_server_user("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb (is PostgreSQL 15 installed? set PG_BIN to its bin directory)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !subnets.is_empty() {
            use std::io::Write;
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .unwrap();
            for subnet in subnets {
                writeln!(hba, "host all all {subnet} trust").unwrap();
            }
        }
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).unwrap();
        give_to_server(&sockets);
        // A free port can be taken between our look and the server's bind:
        // then the server exits at once and the next port is tried.
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("server-{port}.log"))).unwrap();
            let child = as_server_user("postgres")
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&sockets)
                .args(["-c", &format!("listen_addresses={}", addresses.join(","))])
                // Speed over durability: a test's server never outlives it.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                // Two nodes, their pools, JuiceFS clients and parallel tests.
                .args(["-c", "max_connections=400"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("run postgres");
            let mut child = super::KillOnDrop(Some(child));
            if wait_ready(child.0.as_mut().unwrap(), addresses[0], port, dir.path()) {
                return PgServer {
                    child: child.0.take().unwrap(),
                    port,
                    host: addresses[0].to_owned(),
                    dir,
                };
            }
        }
        panic!("PostgreSQL did not start on any of 5 free ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@HOST:PORT`: the server, no database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}", self.host, self.port)
    }

    /// The URL of database `name` on this server.
    pub fn db_url(&self, name: &str) -> String {
        format!("{}/{name}", self.url())
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        create_database(&self.url(), name);
        self.db_url(name)
    }

    /// Runs `sql` in database `db` with psql; its output, unaligned.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.db_url(db), sql)
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        logs(self.dir.path())
    }
}

/// Waits (bounded) until the server `child` accepts connections on
/// `host:port`; false if it exited (its port was taken); panics, with the
/// logs in `dir`, if it does neither.
fn wait_ready(child: &mut Child, host: &str, port: u16, dir: &Path) -> bool {
    let deadline = Instant::now() + START_BOUND;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let ready = Command::new(bin("pg_isready"))
            .args(["-q", "-h", host, "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not accept connections within {START_BOUND:?}: {}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the servers whose logs are in `dir` logged (every port tried).
fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".log") {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends every session.
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_BOUND;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A port no one listens on now (on 127.0.0.1).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `sql` against the database at `url` with psql, stopping at the
/// first error; its output, unaligned and without headers.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new(bin("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {url} -c {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates database `name` on the server at `server` (a URL without a
/// database).
pub fn create_database(server: &str, name: &str) {
    psql(
        &format!("{server}/postgres"),
        &format!("CREATE DATABASE \"{name}\""),
    );
}

/// A database of its own on the server at `server`, dropped (its sessions
/// ended) when this is.
pub struct Database {
    server: String,
    name: String,
}

impl Database {
    /// Creates a database with a name no other in this run has.
    pub fn create(server: &str) -> Database {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        create_database(server, &name);
        Database {
            server: server.to_owned(),
            name,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort: a server that is gone takes its databases with it.
        let _ = Command::new(bin("psql"))
            .args(["-X", "-q", "-d"])
            .arg(format!("{}/postgres", self.server))
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
