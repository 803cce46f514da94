//! Deployed apps (issue 9 items 2, 12, 13, 14, 22; SPEC sections 2 and 3):
//! names users write, what a redeploy may destroy, module snapshots,
//! `concurrency` across callers, and homes made by the previous release.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::{AppToml, Spawned, Target, TestEnv, eventually, guest, path, wait_with_timeout};

/// Reads `child`'s stdout until a line equal to `line` (bounded).
fn wait_for_line(child: &mut Child, line: &str) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = line.to_owned();
    std::thread::spawn(move || {
        for got in BufReader::new(stdout).lines() {
            if got.is_ok_and(|l| l == wanted) {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the guest never printed `{line}`"));
}

fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    stderr
}

/// The first call id (`ca-` and 22 characters) in `text`.
fn call_id(text: &str) -> &str {
    let start = text
        .find("ca-")
        .unwrap_or_else(|| panic!("no call id in {text:?}"));
    &text[start..start + 25]
}

#[test]
fn python_and_docker_style_names_are_accepted() {
    let env = TestEnv::new();
    let app = AppToml::new("My.App_2")
        .volume("model_cache", |v| v.persist("Model_Cache.v2"))
        .function("expensive_computation", |f| {
            f.guest("fsops").mount("/cache", "model_cache")
        })
        .write(&env);
    env.run(&["deploy", path(&app)]).success();
    env.run(&[
        "call",
        "My.App_2",
        "expensive_computation",
        "--",
        "write",
        "/cache/f",
        "ok",
    ])
    .success();
    let read = env
        .run(&["volume", "get", "Model_Cache.v2", "/f", "-"])
        .success();
    assert_eq!(read.stdout(), "ok");
    // Still never a path.
    let bad = env.run(&["volume", "create", "../escape"]).code_is(2);
    assert!(
        bad.stderr().contains("invalid volume name"),
        "{}",
        bad.stderr()
    );
}

/// An app whose function `fsops` mounts volume key `scratch` at /scratch,
/// ephemeral, or with `persist` the named volume `persist`.
fn scratch_app(env: &TestEnv, name: &str, persist: Option<&str>) -> PathBuf {
    AppToml::new(name)
        .volume("scratch", |v| match persist {
            Some(persist) => v.persist(persist),
            None => v,
        })
        .function("fsops", |f| f.guest("fsops").mount("/scratch", "scratch"))
        .write(env)
}

/// [`scratch_app`] `name`, deployed, with `kept-data-7` in /scratch/keep.
fn deployed_with_data(env: &TestEnv, name: &str) -> PathBuf {
    let app = scratch_app(env, name, None);
    env.run(&["deploy", path(&app)]).success();
    let write = [
        "call",
        name,
        "fsops",
        "--",
        "write",
        "/scratch/keep",
        "kept-data-7",
    ];
    env.run(&write).success();
    app
}

/// `fsops OP /scratch/keep` in a call of app `name`: its stdout.
fn keep_file(env: &TestEnv, name: &str, op: &str) -> String {
    env.run(&["call", name, "fsops", "--", op, "/scratch/keep"])
        .success()
        .stdout()
}

#[test]
fn a_redeploy_never_deletes_a_volume_under_a_running_call_unless_forced() {
    let env = TestEnv::new();
    let app = deployed_with_data(&env, "busy");
    // A call that writes to the ephemeral volume until it is stopped.
    let mut writer = env.spawn_guarded(&[
        "call",
        "busy",
        "fsops",
        "--",
        "lock-then",
        "/scratch/l",
        "churn",
        "1000000000",
        "/scratch",
    ]);
    wait_for_line(&mut writer, "locked");

    // The same app with `scratch` now a named volume: the ephemeral one
    // would be deleted under the call.
    scratch_app(&env, "busy", Some("busy-named"));
    let refused = env.run(&["deploy", path(&app), "--yes"]).code_is(1);
    let id = call_id(&refused.stderr()).to_owned();
    assert!(
        refused.stderr().contains("`scratch`")
            && refused.stderr().contains("function `fsops`")
            && refused.stderr().contains("--force"),
        "{}",
        refused.stderr()
    );
    // Forcing still asks about the data, and without a terminal needs --yes.
    let unconfirmed = env.run(&["deploy", path(&app), "--force"]).code_is(2);
    assert!(
        unconfirmed.stderr().contains("`scratch`") && unconfirmed.stderr().contains("--yes"),
        "{}",
        unconfirmed.stderr()
    );
    assert!(writer.try_wait().unwrap().is_none(), "the call was stopped");
    let kept = keep_file(&env, "busy", "read");
    assert_eq!(kept, "kept-data-7", "the volume's data is intact");

    let forced = env
        .run(&["deploy", path(&app), "--force", "--yes"])
        .success();
    assert!(
        forced.stderr().contains(&id) && forced.stdout().contains("updated"),
        "{}{}",
        forced.stdout(),
        forced.stderr()
    );
    let status = wait_with_timeout(&mut writer, Duration::from_secs(30));
    let stderr = stderr_of(&mut writer);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&id) && stderr.contains("cancelled") && stderr.contains("deploy --force"),
        "{stderr}"
    );
    // `scratch` is the new, empty named volume now.
    let gone = keep_file(&env, "busy", "exists");
    assert_eq!(gone, "no\n");
    env.wait_for_empty_trash();
    assert!(env.data_files_containing("kept-data-7").is_empty());
    env.run(&["app", "stop", "busy", "--yes"]).success();
}

#[test]
fn a_redeploy_that_discards_data_asks_first() {
    let env = TestEnv::new();
    let app = deployed_with_data(&env, "asks");
    // Unchanged volumes: nothing to ask.
    env.run(&["deploy", path(&app)]).success();

    scratch_app(&env, "asks", Some("asks-named"));
    let refused = env.run(&["deploy", path(&app)]).code_is(2);
    assert!(
        refused.stderr().contains("`scratch`")
            && refused.stderr().contains("asks-named")
            && refused.stderr().contains("--yes"),
        "{}",
        refused.stderr()
    );
    let kept = keep_file(&env, "asks", "read");
    assert_eq!(kept, "kept-data-7");
    env.run(&["deploy", path(&app), "--yes"]).success();
    let gone = keep_file(&env, "asks", "exists");
    assert_eq!(gone, "no\n");
    env.run(&["app", "stop", "asks", "--yes"]).success();
}

fn snapshots(env: &TestEnv) -> Vec<PathBuf> {
    std::fs::read_dir(env.home().join("modules"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// `app` in a directory of its own (named as the app), with a copy of the
/// fsops guest, `guest.wasm`, beside it for its module. Returns the
/// app.toml and the module's paths.
fn app_with_own_module(env: &TestEnv, app: AppToml) -> (PathBuf, PathBuf) {
    let dir = env.work.path().join(app.name());
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("guest.wasm");
    std::fs::copy(guest("fsops", Target::P1), &module).unwrap();
    (app.write_in(&dir), module)
}

#[test]
fn a_deployed_app_runs_the_module_it_was_deployed_with() {
    let env = TestEnv::new();
    let (app, module) = app_with_own_module(
        &env,
        AppToml::new("snap").function("fsops", |f| f.module("guest.wasm")),
    );
    env.run(&["deploy", path(&app)]).success();
    let echo = |word: &str| {
        env.run(&["call", "snap", "fsops", "--", "echo-line", word])
            .success()
            .stdout()
    };
    assert_eq!(echo("one"), "one\n");

    // Overwritten with another program: calls still run the deployed one.
    std::fs::copy(guest("hello", Target::P1), &module).unwrap();
    assert_eq!(echo("two"), "two\n");
    // Gone: calls still work, and the guest's argv[0] is still its name.
    std::fs::remove_file(&module).unwrap();
    assert_eq!(echo("three"), "three\n");
    let args = env
        .run(&["call", "snap", "fsops", "--", "args"])
        .success()
        .stdout();
    assert_eq!(args.lines().next(), Some("guest.wasm"), "{args}");

    // Another app deploying the same bytes shares the snapshot.
    let other = AppToml::new("same")
        .function("fsops", |f| f.guest("fsops"))
        .write(&env);
    env.run(&["deploy", path(&other)]).success();
    assert_eq!(snapshots(&env).len(), 1, "{:?}", snapshots(&env));
    env.run(&["app", "stop", "snap", "--yes"]).success();
    assert_eq!(snapshots(&env).len(), 1, "still used by `same`");
    env.run(&["app", "stop", "same", "--yes"]).success();
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));
}

#[test]
fn a_running_call_keeps_its_snapshot_through_a_redeploy() {
    let env = TestEnv::new();
    let (app, module) = app_with_own_module(
        &env,
        AppToml::new("keep")
            .volume("s", |v| v)
            .function("f", |f| f.module("guest.wasm").mount("/s", "s")),
    );
    env.run(&["deploy", path(&app)]).success();
    let mut call = env.spawn_guarded(&[
        "call",
        "keep",
        "f",
        "--",
        "lock-then",
        "/s/l",
        "sleep",
        "60000",
    ]);
    wait_for_line(&mut call, "locked");

    // A new module: the running call's snapshot stays beside the new one.
    std::fs::copy(guest("hello", Target::P1), &module).unwrap();
    env.run(&["deploy", path(&app)]).success();
    assert_eq!(snapshots(&env).len(), 2, "{:?}", snapshots(&env));
    let hello = env.run(&["call", "keep", "f"]).success().stdout();
    assert!(hello.starts_with("hello from wasmhost"), "{hello}");

    // Its caller killed, the next command ends the call and frees the old one.
    call.kill().unwrap();
    call.wait().unwrap();
    env.run(&["app", "list"]).success();
    assert_eq!(snapshots(&env).len(), 1, "{:?}", snapshots(&env));
    let ended: Vec<(String, Option<String>)> = env
        .registry()
        .read(|tx| tx.list_calls(None, wasmhost::registry::KindFilter::All, 1000))
        .unwrap()
        .into_iter()
        .filter(|c| c.function == "f" && c.error.as_deref().is_some_and(|e| e.contains("died")))
        .map(|c| (c.state.as_str().to_owned(), c.error))
        .collect();
    assert_eq!(
        ended,
        [("failed".into(), Some("its calling process died".into()))],
        "the killed call is recorded as failed"
    );
    env.run(&["app", "stop", "keep", "--yes"]).success();
}

/// The most instances at once that `overlap` guests reported in `stdout`.
fn most_at_once(stdout: &str) -> usize {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("max "))
        .map(|n| n.parse::<usize>().unwrap())
        .max()
        .unwrap_or_else(|| panic!("no `max` line in {stdout:?}"))
}

/// Deploys app `name` whose function `overlap` has `concurrency` and
/// mounts an ephemeral volume at /runs for its markers.
fn deploy_overlap(env: &TestEnv, name: &str, concurrency: u32) {
    let app = AppToml::new(name)
        .volume("runs", |v| v)
        .function("overlap", |f| {
            f.guest("overlap")
                .mount("/runs", "runs")
                .concurrency(concurrency)
        })
        .write(env);
    env.run(&["deploy", path(&app)]).success();
}

#[test]
fn concurrency_caps_a_function_across_all_its_callers() {
    let env = TestEnv::new();
    deploy_overlap(&env, "capped", 2);

    // Ten calls in ten processes at once.
    let mut callers: Vec<Spawned> = (0..10)
        .map(|_| env.spawn_guarded(&["call", "capped", "overlap", "--", "/runs", "600"]))
        .collect();
    let mut most = 0;
    for caller in &mut callers {
        let status = wait_with_timeout(caller, Duration::from_secs(120));
        let stdout = stdout_of(caller);
        assert!(status.success(), "{stdout}{}", stderr_of(caller));
        most = most.max(most_at_once(&stdout));
    }
    assert_eq!(most, 2, "ten callers of a function with concurrency = 2");

    // --map asking for more than the function allows gets the function's.
    let inputs = env.work.path().join("inputs.txt");
    std::fs::write(&inputs, "x\n".repeat(10)).unwrap();
    let map = env
        .run(&[
            "call",
            "capped",
            "overlap",
            "--map",
            path(&inputs),
            "--concurrency",
            "10",
            "--",
            "/runs",
            "300",
        ])
        .success();
    assert_eq!(most_at_once(&map.stdout()), 2, "{}", map.stdout());
    assert!(
        map.stderr().contains("at most 2"),
        "the lowered --concurrency is said: {}",
        map.stderr()
    );
    env.run(&["app", "stop", "capped", "--yes"]).success();
}

/// Everything `child` wrote to stdout, once it has ended.
fn stdout_of(child: &mut Child) -> String {
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    stdout
}

#[test]
fn a_caller_waiting_for_a_slot_still_obeys_ctrl_c_and_app_stop() {
    let env = TestEnv::new();
    deploy_overlap(&env, "single", 1);
    let call = ["call", "single", "overlap", "--", "/runs", "60000"];
    let mut holder = env.spawn_guarded(&call);
    wait_for_line(&mut holder, "started");
    let mut interrupted = env.spawn_guarded(&call);
    let mut stopped = env.spawn_guarded(&call);
    // The waiters have registered their calls before they wait for the slot.
    eventually(Duration::from_secs(30), "three running calls", || {
        let calls = env.run(&["calls", "list", "single", "--json"]).success();
        let calls: Vec<serde_json::Value> = serde_json::from_str(&calls.stdout()).unwrap();
        calls.iter().filter(|c| c["state"] == "running").count() == 3
    });

    let sent = std::process::Command::new("kill")
        .args(["-INT", &interrupted.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_with_timeout(&mut interrupted, Duration::from_secs(30));
    let stderr = stderr_of(&mut interrupted);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        holder.try_wait().unwrap().is_none(),
        "Ctrl-C reached the holder"
    );

    env.run(&["app", "stop", "single", "--yes"]).success();
    for child in [&mut holder, &mut stopped] {
        let status = wait_with_timeout(child, Duration::from_secs(30));
        let stderr = stderr_of(child);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("was stopped"), "{stderr}");
    }
    for waiter in [&mut interrupted, &mut stopped] {
        assert_eq!(
            stdout_of(waiter),
            "",
            "a waiting caller ran beside the holder"
        );
    }
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Where the fixture's app.toml was when the old release deployed it (see
/// tests/fixtures/make-home-1625aba.sh).
const FIXTURE_MODULE: &str = "/tmp/wasmhost-fixture/fsops.wasm";

/// A copy of the home that release 1625aba made, its stored module path
/// pointed at the freshly built guest: this stands in for "the user's
/// module is still where it was deployed from", since that release kept
/// only the path.
fn old_home(env: &TestEnv) -> rusqlite::Connection {
    copy_tree(
        &common::repo_root().join("tests/fixtures/home-1625aba"),
        env.home(),
    );
    let db = rusqlite::Connection::open(env.home().join("registry.db")).unwrap();
    let fsops = guest("fsops", Target::P1);
    db.execute(
        "UPDATE apps SET manifest = replace(manifest, ?1, ?2)",
        [FIXTURE_MODULE, path(&fsops)],
    )
    .unwrap();
    db
}

#[test]
fn a_home_made_by_the_previous_release_keeps_working() {
    let env = TestEnv::on_sqlite();
    drop(old_home(&env));
    let apps = env.apps();
    let find = |name: &str| {
        apps.iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no app {name} in {apps:?}"))
    };
    assert_eq!(find("fixture-app")["state"], "running");
    assert_eq!(find("fixture-app")["kind"], "deployed");
    assert_eq!(find("fixture-stopped")["state"], "stopped");
    // A named volume is no app (issue 20 item 12), but still a volume.
    assert!(apps.iter().all(|a| a["name"] != "fixture-data"), "{apps:?}");
    let volumes = env.run(&["volume", "list"]).success().stdout();
    assert!(volumes.contains("fixture-data"), "{volumes}");

    let read = |file: &str| {
        env.run(&["call", "fixture-app", "fsops", "--", "read", file])
            .success()
            .stdout()
    };
    assert_eq!(read("/data/hello.txt"), "hello from 1625aba");
    assert_eq!(read("/scratch/note.txt"), "ephemeral note");
    let env_var = env
        .run(&["call", "fixture-app", "fsops", "--", "env", "FLAVOUR"])
        .success();
    assert_eq!(env_var.stdout(), "old\n");
    let file = env
        .run(&["volume", "get", "fixture-data", "/hello.txt", "-"])
        .success();
    assert_eq!(file.stdout(), "hello from 1625aba");

    let db = rusqlite::Connection::open(env.home().join("registry.db")).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 13, "every migration ran");
    env.run(&["app", "stop", "fixture-app", "--yes"]).success();
    assert_eq!(
        env.run(&["volume", "get", "fixture-data", "/hello.txt", "-"])
            .success()
            .stdout(),
        "hello from 1625aba"
    );
}

#[test]
fn state_from_a_newer_wasmhost_is_refused_not_misread() {
    let env = TestEnv::on_sqlite();
    let db = old_home(&env);
    // A manifest stored in a format this wasmhost does not know.
    db.execute(
        "UPDATE apps SET manifest = json_set(manifest, '$.format', 99) WHERE name = 'fixture-app'",
        [],
    )
    .unwrap();
    drop(db);
    let call = env
        .run(&["call", "fixture-app", "fsops", "--", "exit", "0"])
        .code_is(1);
    assert!(
        call.stderr().contains("manifest format 99") && call.stderr().contains("upgrade wasmhost"),
        "{}",
        call.stderr()
    );

    // A registry whose schema is newer than every migration known here.
    let db = rusqlite::Connection::open(env.home().join("registry.db")).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let list = env.run(&["app", "list"]).code_is(1);
    assert!(
        list.stderr().contains("schema version 99")
            && list.stderr().contains("upgrade wasmhost")
            && !list.stderr().contains("move it aside"),
        "{}",
        list.stderr()
    );
}
