//! Many machines as one cluster (SPEC section 8, issue 12's "Must hold"
//! 1-6): two machines `a` and `b` (network namespaces on this box, see
//! `common/cluster.rs`), each with its own `$WASMHOST_HOME` and JuiceFS
//! client, sharing one registry in PostgreSQL (`WASMHOST_DB`) and one file
//! system for volumes (`WASMHOST_VOLUMES`, on each machine's own mount).
//! Nodes heartbeat every second and count as dead after three, so a
//! machine's death is noticed fast; every wait is bounded generously.
//!
//! Needs root; skips otherwise, and in the suite's PostgreSQL pass (a
//! cluster is always on PostgreSQL).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Machine};
use common::{
    AppToml, Function, Run, StdoutLines, Target, eventually, files_containing, guest, path,
    wait_with_timeout,
};
use serde_json::Value;

/// A bound on a few short calls, or on noticing a dead machine.
const BOUND: Duration = Duration::from_secs(90);
/// A bound on the long runs (a thousand calls, eight counting processes).
const LONG_BOUND: Duration = Duration::from_secs(600);

/// Heartbeat settings of every node here: a death is noticed within 3 s.
const FAST_HEARTBEAT: &[&str] = &["--heartbeat", "1s", "--dead-after", "3s"];

/// Runs wasmhost on `machine` to completion within `bound` (killing it
/// past it).
fn run_bounded(machine: &Machine, args: &[&str], bound: Duration) -> Run {
    finish(machine.spawn(args), bound)
}

/// Waits for `child` within `bound`, reading what it prints meanwhile.
fn finish(mut child: Child, bound: Duration) -> Run {
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_with_timeout(&mut child, bound);
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    Run(output)
}

/// Deploys `app` from `machine`.
fn deploy(machine: &Machine, app: AppToml) {
    let app = app.write(machine);
    run_bounded(machine, &["deploy", path(&app), "--yes"], BOUND).success();
}

/// `call APP FUNCTION --spawn -- ARGS` on `machine`: the id it printed.
fn spawn_call(machine: &Machine, app: &str, function: &str, args: &[&str]) -> String {
    let mut all = vec!["call", app, function, "--spawn", "--"];
    all.extend_from_slice(args);
    let id = run_bounded(machine, &all, BOUND)
        .success()
        .stdout()
        .trim()
        .to_owned();
    assert!(
        id.starts_with("ca-") && !id.contains('\n'),
        "--spawn prints one call id: {id:?}"
    );
    id
}

/// `calls get ID --json` on `machine`.
fn call_record(machine: &Machine, id: &str) -> Value {
    let out = run_bounded(machine, &["calls", "get", id, "--json"], BOUND)
        .success()
        .stdout();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("calls get --json: {e}: {out}"))
}

fn is_final(call: &Value) -> bool {
    matches!(
        call["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Waits (bounded) for call `id` to end, as `machine` sees it.
fn wait_final(machine: &Machine, id: &str, bound: Duration) -> Value {
    let deadline = Instant::now() + bound;
    loop {
        let call = call_record(machine, id);
        if is_final(&call) {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "call {id} has not ended after {bound:?}: {call}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `nodes list --json` on `machine`: node id -> its row.
fn nodes(machine: &Machine) -> BTreeMap<String, Value> {
    let out = run_bounded(machine, &["nodes", "list", "--json"], BOUND)
        .success()
        .stdout();
    let rows: Vec<Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nodes list --json: {e}: {out}"));
    rows.into_iter()
        .map(|row| (row["id"].as_str().unwrap().to_owned(), row))
        .collect()
}

/// Node `id`'s row in `nodes list --json`.
#[track_caller]
fn node_row<'a>(listed: &'a BTreeMap<String, Value>, id: &str) -> &'a Value {
    listed
        .get(id)
        .unwrap_or_else(|| panic!("nodes list has no node {id}: {listed:?}"))
}

/// The state of app `name` (its newest), as `machine` sees it.
fn app_state(machine: &Machine, name: &str) -> Option<String> {
    let out = run_bounded(machine, &["app", "list", "--all", "--json"], BOUND)
        .success()
        .stdout();
    let apps: Vec<Value> = serde_json::from_str(&out).expect("app list --json is JSON");
    apps.iter()
        .rfind(|a| a["name"] == name)
        .map(|a| a["state"].as_str().unwrap().to_owned())
}

/// A text no other test run writes.
fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// An app `name` whose function `fsops` mounts an ephemeral volume at
/// /scratch, for `run`.
fn ephemeral_app(machine: &Machine, name: &str) -> std::path::PathBuf {
    AppToml::new(name)
        .volume("scratch", |v| v)
        .function("fsops", |f| f.guest("fsops").mount("/scratch", "scratch"))
        .write(machine)
}

/// `run APP -- ...` on `machine`: writes `token` into its ephemeral volume,
/// then sleeps; returns once it said it wrote it.
fn run_holding_token(machine: &Machine, app: &Path, token: &str) -> (common::Spawned, StdoutLines) {
    let mut run = machine.spawn_guarded(&[
        "run",
        path(app),
        "--",
        "wait-for",
        "/scratch",
        "write",
        "/scratch/marker",
        token,
        ";",
        "echo-line",
        "written",
        ";",
        "sleep",
        "600000",
    ]);
    let lines = StdoutLines::of(&mut run);
    lines.until("written", BOUND);
    (run, lines)
}

/// Files wasmhost keeps on the shared file system (volumes, snapshots, the
/// trash...), as `machine` mounts it, that hold `needle`.
fn on_mount(machine: &Machine, needle: &str) -> Vec<std::path::PathBuf> {
    files_containing(machine.shared(), needle)
}

#[test]
fn a_call_spawned_on_one_machine_runs_on_a_node_of_either_and_names_it() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.a(), cluster.b());
    // Deployed on a from a copy of the module that is gone after: a node
    // on b runs the bytes the registry keeps.
    let module = a.work.path().join("hello-copy.wasm");
    std::fs::copy(guest("hello", Target::P1), &module).unwrap();
    deploy(
        a,
        AppToml::new("hello").function("hello", |f| f.module(&module)),
    );
    std::fs::remove_file(&module).unwrap();

    let node_b = b.serve(FAST_HEARTBEAT);
    let id = spawn_call(b, "hello", "hello", &["from-b"]);
    let call = wait_final(a, &id, BOUND);
    assert_eq!(call["state"], "succeeded", "{call}");
    assert_eq!(
        call["stdout"], "hello from wasmhost\narg: from-b\n",
        "{call}"
    );
    assert_eq!(call["node"], node_b.id.as_str(), "{call}");
    drop(node_b);

    // Queued on b, run by a's node.
    let node_a = a.serve(FAST_HEARTBEAT);
    let id = spawn_call(b, "hello", "hello", &["to-a"]);
    let call = wait_final(b, &id, BOUND);
    assert_eq!(call["state"], "succeeded", "{call}");
    assert_eq!(call["stdout"], "hello from wasmhost\narg: to-a\n", "{call}");
    assert_eq!(call["node"], node_a.id.as_str(), "{call}");
}

#[test]
fn a_thousand_remote_map_inputs_run_once_each_on_both_nodes_in_input_order() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.a(), cluster.b());
    deploy(
        a,
        AppToml::new("many")
            .volume("marks", |v| v.persist("marks"))
            .function("fsops", |f| f.guest("fsops").mount("/marks", "marks")),
    );
    let node_a = a.serve(FAST_HEARTBEAT);
    let node_b = b.serve(FAST_HEARTBEAT);
    let listed = nodes(b);
    for node in [&node_a, &node_b] {
        let row = node_row(&listed, &node.id);
        assert_eq!(row["state"], "alive", "{listed:?}");
        assert!(!row["last_heartbeat"].is_null(), "{listed:?}");
    }

    // Each input creates, with O_EXCL, a file named by it: a second run of
    // an input fails, a lost one leaves no file.
    let inputs: Vec<String> = (0..1000)
        .map(|i| format!("wait-for /marks create-excl /marks/in-{i} {i} ; echo-line out-{i}"))
        .collect();
    let file = a.work.path().join("inputs");
    std::fs::write(&file, inputs.join("\n") + "\n").unwrap();
    let out = run_bounded(
        a,
        &[
            "call",
            "many",
            "fsops",
            "--remote",
            "--map",
            path(&file),
            "--",
            "words",
        ],
        LONG_BOUND,
    )
    .success();
    let wanted: String = (0..1000).map(|i| format!("out-{i}\n")).collect();
    assert!(
        out.stdout() == wanted,
        "1000 outputs in input order; got {:?}...",
        &out.stdout()[..200.min(out.stdout().len())]
    );

    let listed = run_bounded(
        b,
        &["calls", "list", "many", "--json", "--limit", "5000"],
        BOUND,
    )
    .success()
    .stdout();
    let calls: Vec<Value> = serde_json::from_str(&listed).expect("calls list --json is JSON");
    assert_eq!(calls.len(), 1000, "one call per input");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for call in &calls {
        assert_eq!(call["state"], "succeeded", "{call}");
        assert_eq!(call["attempts"], 1, "run once: {call}");
        *per_node
            .entry(call["node"].as_str().unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&node_a.id, &node_b.id]),
        "{per_node:?}"
    );
    for (node, ran) in &per_node {
        assert!(*ran >= 100, "node {node} ran {ran} of 1000: {per_node:?}");
    }
    eprintln!("calls per node: {per_node:?}");
    let made: BTreeSet<String> = std::fs::read_dir(b.volume_dir("marks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let wanted: BTreeSet<String> = (0..1000).map(|i| format!("in-{i}")).collect();
    assert_eq!(made, wanted, "one file per input, each made once");
}

#[test]
fn a_file_a_guest_writes_on_one_machine_is_read_by_a_guest_on_the_other() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.a(), cluster.b());
    deploy(
        a,
        AppToml::new("share")
            .volume("data", |v| v.persist("shared"))
            .function("fsops", |f| f.guest("fsops").mount("/data", "data")),
    );
    let note = token("note");
    run_bounded(
        a,
        &["call", "share", "fsops", "--", "write", "/data/note", &note],
        BOUND,
    )
    .success();
    let read = run_bounded(
        b,
        &["call", "share", "fsops", "--", "read", "/data/note"],
        BOUND,
    )
    .success();
    assert_eq!(read.stdout(), note);
    // Written through a's mount, it is in the shared file system as b
    // mounts it, and in neither home.
    assert_eq!(
        std::fs::read_to_string(b.volume_dir("shared").join("note")).unwrap(),
        note
    );
    for machine in [a, b] {
        assert_eq!(
            files_containing(machine.home(), &note),
            Vec::<std::path::PathBuf>::new()
        );
    }
}

#[test]
fn eight_processes_on_two_machines_count_to_800_under_the_host_lock() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.a(), cluster.b());
    deploy(
        a,
        AppToml::new("count")
            .volume("data", |v| v.persist("counter"))
            .function("fsops", |f| {
                f.guest("fsops").mount("/data", "data").timeout("600s")
            }),
    );
    let args = [
        "call",
        "count",
        "fsops",
        "--",
        "counter-lock",
        "/data/n",
        "100",
    ];
    let counters: Vec<Child> = [a, b]
        .iter()
        .flat_map(|machine| (0..4).map(|_| machine.spawn(&args)))
        .collect();
    for counter in counters {
        finish(counter, LONG_BOUND).success();
    }
    let read = run_bounded(
        b,
        &["call", "count", "fsops", "--", "read", "/data/n"],
        BOUND,
    )
    .success();
    assert_eq!(read.stdout(), "800\n", "8 processes x 100 increments");
    assert_eq!(
        std::fs::read_to_string(a.volume_dir("counter").join("n")).unwrap(),
        "800\n"
    );
}

#[test]
fn a_dead_machine_s_calls_lock_and_ephemeral_app_are_taken_over_by_the_other() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.a(), cluster.b());
    let gated = |f: Function| f.guest("fsops").mount("/gates", "gates");
    deploy(
        a,
        AppToml::new("crash")
            .volume("gates", |v| v.persist("crash-gates"))
            .function("work", |f| gated(f).retries(1))
            .function("hold", gated)
            .function("wait", gated),
    );
    let gates_b = b.volume_dir("crash-gates");
    let mut node_a = a.serve(FAST_HEARTBEAT);

    // On a: a call that holds a lock, an ephemeral app, and four calls
    // that wait for a gate.
    let hold = spawn_call(
        b,
        "crash",
        "hold",
        &[
            "lock-then",
            "/gates/held",
            "write",
            "/gates/holding",
            "yes",
            ";",
            "sleep",
            "600000",
        ],
    );
    eventually(BOUND, "the lock held on a", || {
        gates_b.join("holding").exists()
    });
    let busy = run_bounded(
        b,
        &["call", "crash", "wait", "--", "try-lock", "/gates/held"],
        BOUND,
    )
    .success();
    assert_eq!(busy.stdout(), "busy\n", "a's lock excludes b");
    let mut waiter = b.spawn_guarded(&[
        "call",
        "crash",
        "wait",
        "--",
        "lock-timeout",
        "/gates/held",
        "120000",
    ]);
    let waiter_lines = StdoutLines::of(&mut waiter);

    let eph = ephemeral_app(a, "eph");
    let marker = token("eph");
    let (mut run_a, _run_lines) = run_holding_token(a, &eph, &marker);
    eventually(BOUND, "the ephemeral volume's file seen on b", || {
        !on_mount(b, &marker).is_empty()
    });

    let gate = ["wait-for", "/gates/open", "echo-line", "through"];
    let work: Vec<String> = (0..4)
        .map(|_| spawn_call(b, "crash", "work", &gate))
        .collect();
    eventually(BOUND, "the calls running on a", || {
        work.iter().all(|id| {
            let call = call_record(b, id);
            call["state"] == "running" && call["node"] == node_a.id.as_str()
        })
    });
    let node_b = b.serve(FAST_HEARTBEAT);

    // Machine a dies: its node, its `run`, its file system client.
    node_a.signal(libc::SIGKILL);
    run_a.kill().unwrap();
    a.mount.kill();
    node_a.wait_exit(Duration::from_secs(10));
    let dead = node_a.id.clone();
    std::fs::write(gates_b.join("open"), "").unwrap();

    // The lock goes to b's waiter.
    waiter_lines.until("acquired", BOUND);
    assert!(wait_with_timeout(&mut waiter, BOUND).success());

    // b retries a's calls, and they succeed there.
    for id in &work {
        let call = wait_final(b, id, BOUND);
        assert_eq!(call["state"], "succeeded", "{call}");
        assert_eq!(call["attempts"], 2, "{call}");
        assert_eq!(call["node"], node_b.id.as_str(), "{call}");
        assert_eq!(call["stdout"], "through\n", "{call}");
        let history = call["attempt_history"].as_array().unwrap();
        assert_eq!(history[0]["node"], dead.as_str(), "{call}");
    }
    // The lock's holder had no retries: it failed with its node.
    let held = wait_final(b, &hold, BOUND);
    assert_eq!(held["state"], "failed", "{held}");

    // a's ephemeral app is reaped and its volume freed.
    eventually(BOUND, "a's ephemeral app stopped", || {
        app_state(b, "eph").as_deref() == Some("stopped")
    });
    eventually(BOUND, "a's ephemeral volume gone", || {
        on_mount(b, &marker).is_empty()
    });

    let listed = nodes(b);
    assert_eq!(node_row(&listed, &dead)["state"], "dead", "{listed:?}");
    assert_eq!(
        node_row(&listed, &node_b.id)["state"],
        "alive",
        "{listed:?}"
    );
}

#[test]
fn an_ephemeral_app_started_on_one_machine_and_stopped_from_the_other_is_gone_from_both_mounts() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (cluster.a(), cluster.b());
    let eph = ephemeral_app(a, "eph");
    let marker = token("eph");
    let (mut run_a, _lines) = run_holding_token(a, &eph, &marker);
    for machine in [a, b] {
        eventually(BOUND, "the ephemeral volume's file on both mounts", || {
            !on_mount(machine, &marker).is_empty()
        });
    }

    run_bounded(b, &["app", "stop", "eph", "--yes"], BOUND).success();
    let status = wait_with_timeout(&mut run_a, BOUND);
    assert_eq!(status.code(), Some(1), "a stopped `run` exits 1");
    assert_eq!(app_state(a, "eph").as_deref(), Some("stopped"));
    for machine in [a, b] {
        eventually(BOUND, "the ephemeral volume gone from both mounts", || {
            on_mount(machine, &marker).is_empty()
        });
    }
}
