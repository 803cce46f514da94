//! Many instances at once (issue 4): `--map` and `--concurrency`, volumes
//! shared between processes, the host lock API and wasip2 components, with
//! the real binary, real guests and real processes.

mod common;
#[path = "concurrency/map.rs"]
mod map;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{AppToml, Function, Mount, Run, Target, TestEnv, wait_with_timeout};

/// How long any one wasmhost process in these tests may take.
const PROCESS_LIMIT: Duration = Duration::from_secs(180);

/// An app whose default function `fsops` is the test guest built for
/// `target`, with an ephemeral volume at /scratch, the named volume
/// `persist` at /data and `persist-ro` read-only at /ro. The function
/// `short` is the same guest with a 2 s timeout.
fn fsops_app(env: &TestEnv, target: Target, name: &str, persist: &str) -> PathBuf {
    let mounted = |f: Function| {
        f.guest_for(target, "fsops")
            .mount("/scratch", "scratch")
            .mount("/data", "data")
            .mount("/ro", Mount::volume("ro").read_only())
    };
    AppToml::new(name)
        .entrypoint("fsops")
        .volume("scratch", |v| v)
        .volume("data", |v| v.persist(persist))
        .volume("ro", |v| v.persist(&format!("{persist}-ro")))
        .function("fsops", |f| {
            mounted(f).env("FLAVOUR", &format!("{name}-env"))
        })
        .function("short", |f| mounted(f).timeout("2s"))
        .write(env)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Writes `lines` to a file in the work dir, for `--map FILE`.
fn map_file(env: &TestEnv, name: &str, lines: &[String]) -> PathBuf {
    let path = env.work.path().join(name);
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    path
}

/// `run APP --map FILE --concurrency 8 -- ARGS...`
fn map_args<'a>(app: &'a Path, file: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run", s(app), "--map", s(file), "--concurrency", "8", "--"];
    all.extend(args);
    all
}

/// Starts every command before waiting for any, so they really overlap, then
/// waits for each (bounded).
fn run_all(env: &TestEnv, commands: &[Vec<&str>]) -> Vec<Run> {
    let children: Vec<Child> = commands.iter().map(|args| env.spawn(args)).collect();
    children.into_iter().map(finish).collect()
}

/// Waits (bounded) for a spawned wasmhost; its output must fit the pipes.
fn finish(child: Child) -> Run {
    finish_within(child, PROCESS_LIMIT)
}

/// Waits for a spawned wasmhost, failing the test if it outlives `limit`.
fn finish_within(mut child: Child, limit: Duration) -> Run {
    let status = wait_with_timeout(&mut child, limit);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    Run(Output {
        status,
        stdout,
        stderr,
    })
}

/// The contents of `remote` in the named volume `volume`.
fn volume_file(env: &TestEnv, volume: &str, remote: &str) -> String {
    env.run(&["volume", "get", volume, remote, "-"])
        .success()
        .stdout()
}

/// Reads the child's stdout up to and including the guest's `locked` line.
fn wait_for_locked(child: &mut Child) {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n", "the holder should report the lock taken");
}

/// The `busy`, `acquired` and `timeout` lines of a run's output, in order.
fn lock_answers(run: &Run) -> Vec<String> {
    run.stdout()
        .lines()
        .filter(|l| ["busy", "acquired", "timeout"].contains(l))
        .map(str::to_owned)
        .collect()
}

/// What `try-lock` says about `lock` right now.
fn try_lock(env: &TestEnv, app: &Path, lock: &str) -> String {
    env.run(&["run", s(app), "--", "try-lock", lock])
        .success()
        .stdout()
        .trim()
        .to_owned()
}

/// Whether the lock of a process just killed is free: at once on one
/// machine (the kernel drops its flock); in a cluster once the process's
/// lease expires, which a waiter waits for.
fn free_after_its_holder_was_killed(env: &TestEnv, app: &Path, lock: &str) -> String {
    if !env.on_postgres() {
        return try_lock(env, app, lock);
    }
    env.run(&["run", s(app), "--", "lock-timeout", lock, "60000"])
        .success()
        .stdout()
        .trim()
        .to_owned()
}

/// Runs `commands` (`count` writers) at once and asserts that every
/// writer's span overlapped every other's (the last started before the
/// first finished): they raced, whatever they counted.
fn count_at_once(env: &TestEnv, commands: &[Vec<&str>]) {
    let mut spans = Vec::new();
    for run in run_all(env, commands) {
        for line in run.success().stdout().lines() {
            if let Some(span) = line.strip_prefix("span ") {
                let (start, end) = span.split_once(' ').unwrap();
                spans.push((start.parse::<u128>().unwrap(), end.parse::<u128>().unwrap()));
            }
        }
    }
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_start < first_end,
        "the writers did not all run at once, so nothing raced: {spans:?}"
    );
}

/// [`count_at_once`], then the count the file `remote` of `volume` ends at.
fn count_together(env: &TestEnv, commands: &[Vec<&str>], volume: &str, remote: &str) -> u64 {
    count_at_once(env, commands);
    volume_file(env, volume, remote).trim().parse().unwrap()
}

/// Four processes, 100 increments each, under the lock `kind` names; the
/// same four without a lock must lose updates, else the setup raced nothing.
fn four_processes_count_to_400(target: Target, kind: &str) {
    let env = TestEnv::new();
    let app = fsops_app(&env, target, "counter", "counter-vol");
    let count = |kind, file| -> u64 {
        let commands: Vec<Vec<&str>> = (0..4)
            .map(|_| vec!["run", s(&app), "--", "count", kind, file, "100"])
            .collect();
        count_together(&env, &commands, "counter-vol", &file["/data".len()..])
    };
    let unlocked = count("none", "/data/control");
    assert!(
        unlocked < 400,
        "without a lock the same writers lost no update ({unlocked}): the test proves nothing"
    );
    assert_eq!(
        count(kind, "/data/n"),
        400,
        "updates lost under the {kind} lock"
    );
}

#[test]
fn four_processes_count_exactly_under_the_host_lock() {
    four_processes_count_to_400(Target::P1, "host");
}

#[test]
fn four_processes_count_exactly_under_a_guest_link_lock() {
    four_processes_count_to_400(Target::P1, "link");
}

/// Two `--map` processes of eight instances each: the host lock excludes
/// instances of one process as it does processes.
#[test]
fn instances_of_one_process_exclude_each_other_too() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "inproc", "inproc-vol");
    let file = map_file(&env, "inputs.txt", &vec!["25".to_owned(); 8]);
    // The control: one process, its instances without a lock, lose updates.
    let unlocked = count_together(
        &env,
        &[map_args(&app, &file, &["count", "none", "/data/control"])],
        "inproc-vol",
        "/control",
    );
    assert!(
        unlocked < 200,
        "unlocked instances lost nothing: {unlocked}"
    );
    let map = map_args(&app, &file, &["count", "host", "/data/n"]);
    assert_eq!(
        count_together(&env, &[map.clone(), map], "inproc-vol", "/n"),
        400
    );
}

/// A lock is released when its instance ends, not only when its process
/// does: under `--map`, an instance that trapped, exited or timed out
/// holding a lock leaves it free for a later instance of the same process
/// (on a reused pool slot). A sibling sees it busy while the holder lives,
/// so the `acquired` after it means the release, not a lock that never
/// excluded within one process.
fn a_lock_dies_with_its_instance(target: Target) -> (TestEnv, PathBuf) {
    let env = TestEnv::new();
    let app = fsops_app(&env, target, "holder", "holder-data");

    // Two slots: each holder marks the lock taken, its sibling checks it is
    // busy, lets the holder end without releasing, then waits for it.
    let mut lines = Vec::new();
    for (lock, end) in [("a", "trap"), ("b", "exit 0")] {
        lines.push(format!(
            "lock-then /data/{lock}.lock write /data/{lock}.held x ; wait-for /data/{lock}.seen {end}"
        ));
        lines.push(format!(
            "wait-for /data/{lock}.held try-lock /data/{lock}.lock ; write /data/{lock}.seen x ; lock-timeout /data/{lock}.lock 10000"
        ));
    }
    let file = map_file(&env, "pairs.txt", &lines);
    let run = env.run(&[
        "run",
        s(&app),
        "--map",
        s(&file),
        "--concurrency",
        "2",
        "--",
        "words",
    ]);
    assert_eq!(
        lock_answers(&run),
        ["busy", "acquired", "busy", "acquired"],
        "each sibling saw the lock busy, then acquired it: {}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("input 1 ") && run.stderr().contains("trapped"),
        "{}",
        run.stderr()
    );

    // One slot, so the later instance reuses the holder's: timed out (the
    // `short` function's 2 s), trapped or exited while holding it.
    let file = map_file(
        &env,
        "serial.txt",
        &[
            "lock-then /data/c.lock spin".into(),
            "try-lock /data/c.lock".into(),
            "lock-then /data/d.lock trap".into(),
            "try-lock /data/d.lock".into(),
            "hold-lock /data/e.lock 0".into(),
            "try-lock /data/e.lock".into(),
        ],
    );
    let run = env
        .run(&[
            "run",
            s(&app),
            "short",
            "--map",
            s(&file),
            "--concurrency",
            "1",
            "--",
            "words",
        ])
        .code_is(1);
    assert_eq!(lock_answers(&run), ["acquired"; 3], "{}", run.stderr());
    assert!(
        run.stderr().contains("input 1 ") && run.stderr().contains("timed out"),
        "{}",
        run.stderr()
    );

    (env, app)
}

#[test]
fn a_lock_dies_with_its_holder() {
    let (env, app) = a_lock_dies_with_its_instance(Target::P1);
    // Its process killed (SIGKILL) while holding it.
    let mut holder = env.spawn(&["run", s(&app), "--", "hold-lock", "/data/d.lock", "120000"]);
    wait_for_locked(&mut holder);
    assert_eq!(
        try_lock(&env, &app, "/data/d.lock"),
        "busy",
        "held while its holder lives"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        free_after_its_holder_was_killed(&env, &app, "/data/d.lock"),
        "acquired"
    );
}

#[test]
fn a_component_lock_dies_with_its_instance() {
    a_lock_dies_with_its_instance(Target::P2);
}

#[test]
fn waiting_for_a_lock_does_not_outlive_the_function_timeout() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "waiter", "waiter-data");
    let mut holder = env.spawn(&["run", s(&app), "--", "hold-lock", "/data/w.lock", "120000"]);
    wait_for_locked(&mut holder);
    // `short` has a 2 s timeout; without it the wait would last 120 s.
    let waiter = env.spawn(&[
        "run",
        s(&app),
        "short",
        "--",
        "lock-timeout",
        "/data/w.lock",
        "120000",
    ]);
    // The 2 s timeout plus 10 s of slack.
    let run = finish_within(waiter, Duration::from_secs(12)).code_is(1);
    assert!(
        run.stderr().contains("timed out after 2s"),
        "{}",
        run.stderr()
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn cache_under_map_from_several_processes_computes_each_key_once() {
    let env = TestEnv::new();
    let app = AppToml::new("cache")
        .volume("results", |v| v.persist("cache-vol"))
        .function("cache", |f| {
            f.guest("cache").mount("/cache", "results").timeout("120s")
        })
        .write(&env);
    let keys: Vec<String> = (0..12).map(|i| format!("key-{i:02}")).collect();
    // Each process sees every key twice, in its own order.
    let files: Vec<PathBuf> = (0..3)
        .map(|p| {
            let mut lines: Vec<String> = keys.iter().chain(&keys).cloned().collect();
            lines.rotate_left(p * 5);
            map_file(&env, &format!("keys-{p}.txt"), &lines)
        })
        .collect();
    let commands: Vec<Vec<&str>> = files
        .iter()
        .map(|f| vec!["run", s(&app), "--map", s(f), "--concurrency", "4"])
        .collect();
    let mut values = BTreeMap::new();
    let mut misses = Vec::new();
    let mut computing = BTreeSet::new();
    for (process, (run, file)) in run_all(&env, &commands).into_iter().zip(&files).enumerate() {
        let out = run.success().stdout();
        let inputs = std::fs::read_to_string(file).unwrap();
        assert_eq!(out.lines().count(), inputs.lines().count(), "{out}");
        for (line, key) in out.lines().zip(inputs.lines()) {
            let [got_key, value, how] = line.split(' ').collect::<Vec<_>>()[..] else {
                panic!("bad output line {line:?}")
            };
            assert_eq!(got_key, key, "output in input order");
            assert!(how == "hit" || how == "miss", "{line}");
            if how == "miss" {
                misses.push(key.to_owned());
                computing.insert(process);
            }
            let first = values
                .entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
            assert_eq!(first, value, "hits and misses agree on {key}");
        }
    }
    misses.sort();
    assert_eq!(misses, keys, "each key computed (missed) exactly once");
    // Each process starts at another key; one computing them all would mean
    // the others came after it and nothing raced.
    assert!(
        computing.len() > 1,
        "only process {computing:?} computed keys: the processes did not overlap"
    );
    let mut computed: Vec<String> = volume_file(&env, "cache-vol", "/computed.log")
        .lines()
        .map(str::to_owned)
        .collect();
    computed.sort();
    assert_eq!(computed, keys, "computed.log names each key once");
}

#[test]
fn wasip2_component_uses_volumes_args_env_exit_code_and_locks() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P2, "compo", "compo-data");
    env.run(&[
        "run",
        s(&app),
        "--",
        "write",
        "/data/hello.txt",
        "from a component",
    ])
    .success();
    let read = env
        .run(&["run", s(&app), "--", "read", "/data/hello.txt"])
        .success();
    assert_eq!(read.stdout(), "from a component");
    assert_eq!(
        volume_file(&env, "compo-data", "/hello.txt"),
        "from a component"
    );
    env.run(&["run", s(&app), "--", "write", "/scratch/tmp.txt", "x"])
        .success();

    let args = env
        .run(&["run", s(&app), "--", "args", "two words", "z"])
        .success()
        .stdout();
    assert!(args.ends_with("\nargs\ntwo words\nz\n"), "{args}");
    assert_eq!(
        env.run(&["run", s(&app), "--", "env", "FLAVOUR"])
            .success()
            .stdout(),
        "compo-env\n"
    );
    env.run(&["run", s(&app), "--", "exit", "0"]).success();
    // wasi:cli/exit 0.2 carries only ok or error (`exit-with-code` is
    // unstable and Rust's std does not call it), so any failing code is 1.
    env.run(&["run", s(&app), "--", "exit", "7"]).code_is(1);
    let trapped = env.run(&["run", s(&app), "--", "trap"]).code_is(1);
    assert!(trapped.stderr().contains("trapped"), "{}", trapped.stderr());

    // Locks exclude between component processes...
    let commands: Vec<Vec<&str>> = (0..3)
        .map(|_| vec!["run", s(&app), "--", "count", "host", "/data/n", "50"])
        .collect();
    assert_eq!(count_together(&env, &commands, "compo-data", "/n"), 150);

    // ...are busy while another holds them, and die with their process.
    let mut holder = env.spawn(&["run", s(&app), "--", "hold-lock", "/data/k.lock", "120000"]);
    wait_for_locked(&mut holder);
    assert_eq!(try_lock(&env, &app, "/data/k.lock"), "busy");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        free_after_its_holder_was_killed(&env, &app, "/data/k.lock"),
        "acquired"
    );
    // (Release at instance end: `a_component_lock_dies_with_its_instance`.)

    // A core module and a component share one lock table.
    let core = fsops_app(&env, Target::P1, "core", "compo-data");
    let mut holder = env.spawn(&["run", s(&core), "--", "hold-lock", "/data/x.lock", "120000"]);
    wait_for_locked(&mut holder);
    assert_eq!(try_lock(&env, &app, "/data/x.lock"), "busy");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// The lock API's three refusals, as a guest of `target` sees them.
fn lock_errors_are_distinct(target: Target) {
    let env = TestEnv::new();
    let app = fsops_app(&env, target, "errs", "errs-data");
    let lock_timeout =
        |path: &str, ms: &str| env.run(&["run", s(&app), "--", "lock-timeout", path, ms]);

    let outside = lock_timeout("/elsewhere/k.lock", "10").code_is(1).stderr();
    assert!(outside.contains("not inside a mounted volume"), "{outside}");
    let read_only = lock_timeout("/ro/k.lock", "10").code_is(1).stderr();
    assert!(read_only.contains("read-only mount"), "{read_only}");
    assert_ne!(outside, read_only);

    assert_eq!(
        lock_timeout("/data/k.lock", "10").success().stdout(),
        "acquired\n"
    );
    // A timeout too long to add to a clock means "wait long", not a crash.
    let forever = u64::MAX.to_string();
    assert_eq!(
        lock_timeout("/data/k.lock", &forever).success().stdout(),
        "acquired\n"
    );
    let mut holder = env.spawn(&["run", s(&app), "--", "hold-lock", "/data/k.lock", "120000"]);
    wait_for_locked(&mut holder);
    assert_eq!(
        lock_timeout("/data/k.lock", "200").success().stdout(),
        "timeout\n"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn lock_errors_are_distinct_for_core_modules() {
    lock_errors_are_distinct(Target::P1);
}

#[test]
fn lock_errors_are_distinct_for_components() {
    lock_errors_are_distinct(Target::P2);
}

#[test]
fn concurrent_calls_share_a_deployed_apps_ephemeral_volume() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "svc", "svc-data");
    env.run(&["deploy", s(&app)]).success();
    let file = map_file(&env, "inputs.txt", &vec!["25".to_owned(); 4]);
    let call = vec![
        "call",
        "svc",
        "fsops",
        "--map",
        s(&file),
        "--concurrency",
        "4",
        "--",
        "count",
        "host",
        "/scratch/n",
    ];
    count_at_once(&env, &[call.clone(), call.clone(), call]);
    let total = env
        .run(&["call", "svc", "fsops", "--", "read", "/scratch/n"])
        .success()
        .stdout();
    assert_eq!(
        total.trim(),
        "300",
        "three calls of 4 x 25 increments on one volume"
    );
    // What one call writes, the next open in another call sees.
    let names: BTreeSet<String> = (0..6).map(|i| format!("file-{i}")).collect();
    let writes: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            vec![
                "call".into(),
                "svc".into(),
                "fsops".into(),
                "--".into(),
                "write".into(),
                format!("/scratch/{n}"),
                n.clone(),
            ]
        })
        .collect();
    let writes: Vec<Vec<&str>> = writes
        .iter()
        .map(|w| w.iter().map(String::as_str).collect())
        .collect();
    for run in run_all(&env, &writes) {
        run.success();
    }
    let listed = env
        .run(&["call", "svc", "fsops", "--", "ls", "/scratch"])
        .success()
        .stdout();
    let listed: BTreeSet<String> = listed
        .lines()
        .filter(|l| l.starts_with("file-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, names);
    env.run(&["app", "stop", "svc", "--yes"]).success();
}
