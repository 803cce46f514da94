"""A flooded app and its neighbour on one node (SPEC section 10): app `a`'s
endpoint spins until its 2 s `timeout` ends it, and 64 connections keep
asking for it; app `b`'s endpoint (the WAGI guest's plain answer) is asked
by one connection meanwhile. B's p99 is compared with the 100 ms the
specification allows (the peer column), and B's figures unflooded are
printed beside it. Run by bench/run.py (`--only flood`)."""

import os
import subprocess
import sys

from run import free_port, served, sh, wrk

FLOOD_CONNECTIONS = 64


def measure(tools, work, seconds, row, commands):
    wh, wagi = tools["wasmhost"], tools["guests"] / "wagi.wasm"
    home = work / "flood-home"
    env = dict(os.environ, WASMHOST_HOME=str(home))
    for name, extra in (("a", 'timeout = "2s"\n'), ("b", "")):
        toml = work / f"flood-{name}" / "app.toml"
        toml.parent.mkdir(parents=True, exist_ok=True)
        toml.write_text(f'name = "{name}"\n[functions.page]\nmodule = "{wagi}"\nhttp = "/..."\n{extra}')
        sh([wh, "deploy", str(toml)], env=env)
    port = free_port()
    node = f"http://127.0.0.1:{port}"
    spin_url, b_url = f"{node}/web/a/x?spin", f"{node}/web/b/x"
    node_cmd = [wh, "serve", "--listen", f"127.0.0.1:{port}"]
    with served(node_cmd, env, work / "flood-node.log", b_url):
        wrk(b_url, 1, 1)  # warm-up
        _, calm_p50, calm_p99 = wrk(b_url, 1, seconds)
        # The flood's own answers are 504s (its guests are stopped at their
        # timeout), which is what it is for: its output is not checked.
        flood_cmd = ["wrk", "-t2", f"-c{FLOOD_CONNECTIONS}", f"-d{seconds + 4}s", "--timeout", "10s", spin_url]
        flood = subprocess.Popen(flood_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            subprocess.run(["sleep", "2"], check=True)  # the flood fills A's room first
            rate, p50, p99 = wrk(b_url, 1, seconds)
        finally:
            flood.wait(timeout=seconds + 60)
    print(f"flood: B unflooded p50 {calm_p50:.3g} ms, p99 {calm_p99:.3g} ms; flooded p50 {p50:.3g} ms, "
          f"p99 {p99:.3g} ms, {rate:.4g} req/s", file=sys.stderr)
    row(f"p99 of app B (1 connection) while app A is flooded by {FLOOD_CONNECTIONS} spinning requests, "
        f"vs the 100 ms limit (B alone: p99 {calm_p99:.3g} ms)", p99, 100.0, "ms", "<= 1.0x")
    commands += [" ".join(map(str, node_cmd)), " ".join(flood_cmd),
                 f"wrk -t1 -c1 -d{seconds}s --timeout 10s --latency {b_url}"]
