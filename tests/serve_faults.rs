//! A node under load and faults (SPEC sections 3, 6 and 7's Retries):
//! hundreds of spawned calls from several processes at once, each run
//! exactly once; a node killed with calls running, whose calls a new node
//! retries or fails; a function's `concurrency` across a node's calls;
//! SIGTERM and SIGINT drains within and past their grace; calls queued
//! while no node serves; `app stop` and a redeploy while a node serves.
//!
//! Call records are read through the node's API where a node runs, and
//! from the registry file (read-only) where none does.

mod common;
#[path = "serve_faults/signals.rs"]
mod signals;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::node::Node;
use common::{AppToml, Function, TestEnv, eventually, path, wait_with_timeout};
use serde_json::Value;
use wasmhost::registry::{CallRecord, KindFilter, Registry};

/// A bound on the end of a few short calls.
const CALLS_BOUND: Duration = Duration::from_secs(30);

/// A call as the registry has it.
#[derive(Debug, Clone)]
struct Row {
    state: String,
    attempts: u32,
    node: Option<String>,
    error: Option<String>,
}

fn to_row(call: CallRecord) -> Row {
    Row {
        state: call.state.as_str().to_owned(),
        attempts: call.attempts,
        node: call.node,
        error: call.error,
    }
}

/// Every call of app `name`, oldest first.
fn calls_of(env: &TestEnv, name: &str) -> Vec<Row> {
    let mut calls = env
        .registry()
        .read(|tx| tx.list_calls(Some(name), KindFilter::All, usize::MAX >> 1))
        .unwrap();
    calls.reverse();
    calls.into_iter().map(to_row).collect()
}

/// Call `id` as the registry has it.
fn call_record(registry: &mut Registry, id: &str) -> CallRecord {
    registry
        .read(|tx| tx.call(id))
        .unwrap()
        .unwrap_or_else(|| panic!("no call {id} in the registry"))
}

fn call_row(env: &TestEnv, id: &str) -> Row {
    to_row(call_record(&mut env.registry(), id))
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Waits (bounded) until every call in `ids` has ended.
fn wait_all_final(env: &TestEnv, ids: &[String], bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut registry = env.registry();
    loop {
        let left: Vec<String> = ids
            .iter()
            .filter(|id| !is_final(call_record(&mut registry, id).state.as_str()))
            .cloned()
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} calls have not ended after {bound:?}, e.g. {:?}",
            left.len(),
            ids.len(),
            to_row(call_record(&mut registry, &left[0]))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until the calls `ids` all run on node `node`.
fn wait_all_running(env: &TestEnv, ids: &[String], node: &str) {
    eventually(
        CALLS_BOUND,
        &format!("{} calls running on node {node}", ids.len()),
        || {
            ids.iter().all(|id| {
                let row = call_row(env, id);
                row.state == "running" && row.node.as_deref() == Some(node)
            })
        },
    );
}

/// Runs wasmhost to completion within `bound`: (exit code, stdout, stderr).
fn run_bounded(env: &TestEnv, args: &[&str], bound: Duration) -> (i32, String, String) {
    let child = env.spawn(args);
    finish(child, args, bound)
}

/// Waits for `child` within `bound` (killing it past it) and reads what it
/// printed; its output must fit the pipes' buffers.
fn finish(mut child: Child, args: &[&str], bound: Duration) -> (i32, String, String) {
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let start = Instant::now();
    let status = wait_with_timeout(&mut child, bound);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        start.elapsed() < bound,
        "{args:?} took {:?}: {stderr}",
        start.elapsed()
    );
    (status.code().unwrap_or(-1), stdout, stderr)
}

/// `call APP FUNCTION --spawn -- ARGS`: the one id it printed.
fn spawn_call(env: &TestEnv, app: &str, function: &str, args: &[&str]) -> String {
    let mut all = vec!["call", app, function, "--spawn", "--"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_bounded(env, &all, CALLS_BOUND);
    assert_eq!(code, 0, "{all:?}: {stderr}");
    let id = stdout.trim().to_owned();
    assert!(
        id.starts_with("ca-") && !id.contains('\n'),
        "--spawn prints one call id: {stdout:?}"
    );
    id
}

/// The call `id` from the node's API.
fn api_call(node: &Node, id: &str) -> Value {
    node.get_json(&format!("/v1/calls/{id}"), 200)
}

fn deploy(env: &TestEnv, app: &Path) {
    let (code, _, stderr) = run_bounded(env, &["deploy", path(app), "--yes"], CALLS_BOUND);
    assert_eq!(code, 0, "deploy: {stderr}");
}

/// Writes `lines` to a file under the work directory and returns its path.
fn input_file(env: &TestEnv, name: &str, lines: &[String]) -> String {
    let file = env.work.path().join(name);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    path(&file).to_owned()
}

#[test]
fn five_hundred_calls_spawned_by_four_processes_each_run_exactly_once() {
    let env = TestEnv::new();
    let app = AppToml::new("many")
        .volume("marks", |v| v.persist("marks"))
        .function("fsops", |f| f.guest("fsops").mount("/marks", "marks"))
        .write(&env);
    deploy(&env, &app);
    let node = Node::start(&env);

    // Each call creates, with O_EXCL, a file named by its input: a second
    // run of one input would fail, and a lost one would leave no file.
    let inputs: Vec<Vec<String>> = (0..4)
        .map(|p| {
            (0..125)
                .map(|i| format!("create-excl /marks/in-{p}-{i} {p}.{i}"))
                .collect()
        })
        .collect();
    let files: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(p, lines)| input_file(&env, &format!("inputs-{p}"), lines))
        .collect();
    let spawners: Vec<Child> = files
        .iter()
        .map(|file| {
            env.spawn(&[
                "call", "many", "fsops", "--spawn", "--map", file, "--", "words",
            ])
        })
        .collect();
    let mut ids: Vec<String> = Vec::new();
    for (spawner, lines) in spawners.into_iter().zip(&inputs) {
        let (code, stdout, stderr) = finish(spawner, &["call", "--spawn"], CALLS_BOUND);
        assert_eq!(code, 0, "call --spawn --map: {stderr}");
        assert!(
            !stderr.contains("no node"),
            "a node serves this home: {stderr}"
        );
        let printed: Vec<String> = stdout.lines().map(str::to_owned).collect();
        assert_eq!(printed.len(), lines.len(), "one id per input: {stdout}");
        // The ids come in input order: each names the call of its line.
        for (id, line) in printed.iter().zip(lines) {
            assert!(id.starts_with("ca-"), "{id:?}");
            let args = call_record(&mut env.registry(), id).args;
            assert_eq!(args, ["words", line.as_str()], "call {id}");
        }
        ids.extend(printed);
    }
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 500, "500 distinct call ids");

    wait_all_final(&env, &ids, Duration::from_secs(90));
    for id in &ids {
        let call = api_call(&node, id);
        assert_eq!(call["state"], "succeeded", "{call}");
        assert_eq!(call["attempts"], 1, "run once: {call}");
        assert_eq!(call["node"], node.id.as_str(), "{call}");
        assert_eq!(
            call["attempt_history"].as_array().map(Vec::len),
            Some(1),
            "{call}"
        );
    }
    let made: BTreeSet<String> = std::fs::read_dir(env.volume_dir("marks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let wanted: BTreeSet<String> = (0..4)
        .flat_map(|p| (0..125).map(move |i| format!("in-{p}-{i}")))
        .collect();
    assert_eq!(made, wanted, "one file per input, each made once");
    let (code, listed, stderr) = run_bounded(
        &env,
        &["calls", "list", "many", "--json", "--limit", "1000"],
        CALLS_BOUND,
    );
    assert_eq!(code, 0, "calls list: {stderr}");
    let listed: Vec<Value> = serde_json::from_str(&listed).expect("calls list --json is JSON");
    assert_eq!(listed.len(), 500, "calls list has one row per call");
    let listed_ids: BTreeSet<&str> = listed.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, distinct.iter().map(|id| id.as_str()).collect());
    assert!(
        listed
            .iter()
            .all(|c| c["state"] == "succeeded" && c["attempts"] == 1),
        "{listed:?}"
    );

    // `--remote --map` waits and prints every output in input order, the
    // later inputs finishing first.
    let lines: Vec<String> = (0..100)
        .map(|i| format!("echo-after {} out-{i}", (99 - i) % 10 * 5))
        .collect();
    let file = input_file(&env, "remote", &lines);
    let (code, stdout, stderr) = run_bounded(
        &env,
        &[
            "call", "many", "fsops", "--remote", "--map", &file, "--", "words",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "call --remote --map: {stderr}");
    let wanted: String = (0..100).map(|i| format!("out-{i}\n")).collect();
    assert_eq!(stdout, wanted, "100 outputs in input order");
    assert_eq!(calls_of(&env, "many").len(), 600);
}

/// Deploys app `name`: functions `once` (no retries) and `retried` (one
/// retry) of the `fsops` guest, both mounting the named volume
/// `NAME-gates` at /gates.
fn deploy_pair(env: &TestEnv, name: &str) {
    let gated = |f: Function| f.guest("fsops").mount("/gates", "gates");
    let app = AppToml::new(name)
        .volume("gates", |v| v.persist(&format!("{name}-gates")))
        .function("once", gated)
        .function("retried", |f| gated(f).retries(1))
        .write(env);
    deploy(env, &app);
}

#[test]
fn calls_of_a_killed_node_are_retried_by_the_next_node_or_failed() {
    let env = TestEnv::new();
    deploy_pair(&env, "crash");
    // Read now: `volume list` is a command, and every command's
    // housekeeping would end the dead node's calls before the next node.
    let gates = env.volume_dir("crash-gates");
    let mut first = Node::start_with(&env, &["--max-calls", "16"]);
    // Every call waits for /gates/open, made once the node is dead.
    let wait = ["wait-for", "/gates/open", "echo-line", "through"];
    let retried: Vec<String> = (0..8)
        .map(|_| spawn_call(&env, "crash", "retried", &wait))
        .collect();
    let once: Vec<String> = (0..2)
        .map(|_| spawn_call(&env, "crash", "once", &wait))
        .collect();
    let all: Vec<String> = retried.iter().chain(&once).cloned().collect();
    wait_all_running(&env, &all, &first.id);

    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    let dead = first.id.clone();
    for id in &all {
        assert_eq!(
            call_row(&env, id).state,
            "running",
            "no one has noticed yet"
        );
    }
    std::fs::write(gates.join("open"), "").unwrap();

    let second = Node::start_with(&env, &["--max-calls", "16"]);
    assert_ne!(second.id, dead);
    wait_all_final(&env, &all, CALLS_BOUND);
    for id in &retried {
        let call = api_call(&second, id);
        assert_eq!(call["state"], "succeeded", "{call}");
        assert_eq!(call["attempts"], 2, "{call}");
        assert_eq!(call["node"], second.id.as_str(), "{call}");
        let history = call["attempt_history"].as_array().unwrap();
        assert_eq!(history.len(), 2, "{call}");
        assert_eq!(history[0]["node"], dead.as_str(), "{call}");
        let error = history[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&dead) && error.contains("died"),
            "the first attempt's error names the dead node: {call}"
        );
        assert_eq!(history[1]["node"], second.id.as_str(), "{call}");
        assert_eq!(history[1]["exit_code"], 0, "{call}");
        assert_eq!(call["stdout"], "through\n", "{call}");
    }
    for id in &once {
        let call = api_call(&second, id);
        assert_eq!(call["state"], "failed", "{call}");
        assert_eq!(call["attempts"], 1, "{call}");
        let error = call["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&dead) && error.contains("died"),
            "the error names the node's death: {call}"
        );
    }
    assert!(
        calls_of(&env, "crash").iter().all(|c| c.state != "running"),
        "none stays running"
    );
}

/// The `max N` an `overlap` guest printed.
fn most_at_once(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `max` line in {stdout:?}"))
}

#[test]
fn a_node_runs_at_most_a_functions_concurrency_of_its_calls_at_once() {
    let env = TestEnv::new();
    let app = AppToml::new("capped")
        .volume("runs", |v| v)
        .function("overlap", |f| {
            f.guest("overlap").mount("/runs", "runs").concurrency(2)
        })
        .write(&env);
    deploy(&env, &app);
    let node = Node::start(&env);
    let lines: Vec<String> = (0..10).map(|i| format!("input-{i}")).collect();
    let file = input_file(&env, "inputs", &lines);
    let (code, stdout, stderr) = run_bounded(
        &env,
        &[
            "call", "capped", "overlap", "--spawn", "--map", &file, "--", "/runs", "300",
        ],
        CALLS_BOUND,
    );
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<String> = stdout.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 10, "{stdout}");
    wait_all_final(&env, &ids, Duration::from_secs(60));
    let mut most = 0;
    for id in &ids {
        let call = api_call(&node, id);
        assert_eq!(call["state"], "succeeded", "{call}");
        let at_once = most_at_once(call["stdout"].as_str().unwrap());
        assert!(at_once <= 2, "{at_once} instances at once: {call}");
        most = most.max(at_once);
    }
    assert_eq!(
        most, 2,
        "ten queued calls of a function with concurrency = 2"
    );

    // As the registry recorded them, too: no instant had three attempts.
    let spans: Vec<(i64, i64)> = env
        .registry()
        .read(|tx| tx.list_calls(None, KindFilter::All, usize::MAX >> 1))
        .unwrap()
        .into_iter()
        .filter_map(|c| Some((c.started_at?, c.finished_at.expect("every call ended"))))
        .collect();
    assert_eq!(spans.len(), 10);
    for &(start, _) in &spans {
        let at_once = spans
            .iter()
            .filter(|&&(s, e)| s <= start && start < e)
            .count();
        assert!(at_once <= 2, "{at_once} attempts ran at once: {spans:?}");
    }
}

#[test]
fn a_call_spawned_with_no_node_waits_queued_for_one() {
    let env = TestEnv::new();
    let app = AppToml::new("later")
        .function("fsops", |f| f.guest("fsops"))
        .write(&env);
    deploy(&env, &app);
    let (code, stdout, stderr) = run_bounded(
        &env,
        &[
            "call",
            "later",
            "fsops",
            "--spawn",
            "--",
            "echo-line",
            "ran",
        ],
        CALLS_BOUND,
    );
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim().to_owned();
    assert!(id.starts_with("ca-") && !id.contains('\n'), "{stdout:?}");
    assert!(
        stderr.contains("no node is serving"),
        "--spawn says no node serves: {stderr:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let call = call_row(&env, &id);
    assert_eq!(
        (call.state.as_str(), call.attempts),
        ("queued", 0),
        "{call:?}"
    );

    let node = Node::start(&env);
    let call = node.wait_call(&id, CALLS_BOUND);
    assert_eq!(call["state"], "succeeded", "{call}");
    assert_eq!(call["node"], node.id.as_str(), "{call}");
    assert_eq!(call["stdout"], "ran\n", "{call}");
}

#[test]
fn app_stop_interrupts_its_calls_and_the_node_serves_on_and_picks_up_updates() {
    let env = TestEnv::new();
    let stopped = AppToml::new("stopped")
        .function("fsops", |f| f.guest("fsops").concurrency(1))
        .write(&env);
    deploy(&env, &stopped);
    let other = |module: &str, greeting: &str| {
        AppToml::new("other")
            .function("f", |f| f.guest(module).env("GREETING", greeting))
            .write(&env)
    };
    let node = Node::start(&env);

    // One call running and one queued behind it (concurrency = 1).
    let running = spawn_call(&env, "stopped", "fsops", &["sleep", "60000"]);
    wait_all_running(&env, std::slice::from_ref(&running), &node.id);
    let queued = spawn_call(&env, "stopped", "fsops", &["echo-line", "never"]);
    let stopping = Instant::now();
    let (code, _, stderr) = run_bounded(&env, &["app", "stop", "stopped", "--yes"], CALLS_BOUND);
    assert_eq!(code, 0, "{stderr}");
    let call = node.wait_call(&running, Duration::from_secs(10));
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "interrupted within a bound"
    );
    assert_eq!(call["state"], "cancelled", "{call}");
    assert!(
        call["error"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped"),
        "{call}"
    );
    let call = node.wait_call(&queued, Duration::from_secs(10));
    assert_eq!(
        call["state"], "cancelled",
        "a queued call of a stopped app ends: {call}"
    );
    assert_eq!(call["attempts"], 0, "{call}");

    // The node serves on: an app deployed while it runs, then updated,
    // runs what was deployed last.
    deploy(&env, &other("fsops", "one"));
    let id = spawn_call(&env, "other", "f", &["env", "GREETING"]);
    let call = node.wait_call(&id, CALLS_BOUND);
    assert_eq!(call["state"], "succeeded", "{call}");
    assert_eq!(call["stdout"], "one\n", "{call}");
    deploy(&env, &other("fsops", "two"));
    let id = spawn_call(&env, "other", "f", &["env", "GREETING"]);
    let call = node.wait_call(&id, CALLS_BOUND);
    assert_eq!(call["stdout"], "two\n", "the updated env: {call}");
    deploy(&env, &other("hello", "three"));
    let id = spawn_call(&env, "other", "f", &[]);
    let call = node.wait_call(&id, CALLS_BOUND);
    assert_eq!(
        call["stdout"], "hello from wasmhost\nGREETING=three\n",
        "the updated module: {call}"
    );
    assert!(
        calls_of(&env, "stopped").iter().all(|c| is_final(&c.state)),
        "{:?}",
        calls_of(&env, "stopped")
    );
}
