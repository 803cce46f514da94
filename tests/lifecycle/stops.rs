//! Stopping what runs, end to end: a killed `run` reaped by the next
//! command, `app stop` from another shell, Ctrl-C and SIGTERM on `run` and
//! `call`, and the locks of a named volume across mount paths.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use super::{volume_dirs, wait_until_running};
use crate::common::{AppToml, TestEnv, path, wait_with_timeout};

/// Reads the child's stdout up to the guest's `locked` line, so what follows
/// lands on a running instance (one holding its lock), not on one starting.
fn wait_for_locked(child: &mut Child) {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n", "the guest should report the lock taken");
}

/// Sends `signal` (`-INT`, `-TERM`) to the child.
fn send(signal: &str, child: &Child) {
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits (bounded) for a child stopped on purpose: exit 1 and one line of
/// stderr, which is returned.
fn stopped_with_one_line(child: &mut Child) -> String {
    let status = wait_with_timeout(child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

/// What the fsops guest's `try-lock` says about `lock`, run in `app`.
fn try_lock(env: &TestEnv, app: &std::path::Path, lock: &str) -> String {
    env.run(&["run", path(app), "--", "try-lock", lock])
        .success()
        .stdout()
        .trim()
        .to_owned()
}

#[test]
fn killed_run_is_reaped_by_the_next_command() {
    let env = TestEnv::new();
    let app = env.fsops_app("victim", "victim-data");
    let mut child = env.spawn(&["run", path(&app), "--", "sleep", "60000"]);
    let id = wait_until_running(&env, "victim");
    // Leave a file in the ephemeral volume, as the guest would have.
    let ephemeral = env.home().join("volumes");
    let dirs: Vec<_> = std::fs::read_dir(&ephemeral)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 2);
    for dir in &dirs {
        std::fs::write(dir.join("left-behind.txt"), "reap-me-3b7d").unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let list = env.run(&["app", "list", "--json"]).success();
    let running: Vec<serde_json::Value> = serde_json::from_str(&list.stdout()).unwrap();
    assert!(
        !running.iter().any(|a| a["id"] == id.as_str()),
        "{running:?}"
    );
    assert!(
        list.stderr().contains(&id),
        "reaping is reported: {}",
        list.stderr()
    );
    env.wait_for_empty_trash();
    // Only the named volume's copy survives.
    assert_eq!(env.files_containing("reap-me-3b7d").len(), 1);
    assert!(
        !env.home()
            .join("leases")
            .join(format!("{id}.lease"))
            .exists()
    );
}

#[test]
fn app_stop_from_another_shell_ends_a_running_run() {
    let env = TestEnv::new();
    let app = env.fsops_app("stoppable", "stoppable-data");
    let mut child = env.spawn(&["run", path(&app), "--", "lock-then", "/data/held", "spin"]);
    wait_for_locked(&mut child);
    let id = wait_until_running(&env, "stoppable");
    env.run(&["app", "stop", &id, "--yes"]).success();
    let stderr = stopped_with_one_line(&mut child);
    assert!(
        stderr.contains("was stopped") && stderr.contains(&id),
        "{stderr}"
    );
    assert_eq!(volume_dirs(&env).len(), 1, "only the named volume remains");
    assert_eq!(
        try_lock(&env, &app, "/data/held"),
        "acquired",
        "the instance ended"
    );
}

/// A stop that lands while the run is still starting its instance (its
/// volumes trashed under it) is reported as the stop, not as a failure.
#[test]
fn app_stop_right_after_start_is_reported_as_a_stop() {
    let env = TestEnv::new();
    let app = env.fsops_app("early", "early-data");
    // The run waits between its app's start and its instance's for the
    // gate (a debug build's hook), so the stop lands there for certain.
    let gate = env.work.path().join("gate");
    let op = ["lock-then", "/data/held", "spin"];
    let mut child = env
        .command()
        .args([&["run", path(&app), "--"][..], &op].concat())
        .env("WASMHOST_TEST_START_GATE", &gate)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_until_running(&env, "early");
    env.run(&["app", "stop", &id, "--yes"]).success();
    std::fs::write(&gate, "").unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was stopped"), "{stderr}");
    assert_eq!(stdout, "", "its instance never ran");
}

/// Ctrl-C (SIGINT) and SIGTERM stop a running `run` like `app stop` does:
/// instances interrupted (a spinning one and one asleep in a host call),
/// ephemeral volumes deleted, exit 1 with one line.
#[test]
fn signals_end_a_running_run_and_delete_its_ephemeral_volumes() {
    for (signal, op) in [("-INT", "spin"), ("-TERM", "spin"), ("-TERM", "sleep")] {
        let env = TestEnv::new();
        let app = env.fsops_app("signalled", "signalled-data");
        let mut args = vec!["run", path(&app), "--", "lock-then", "/data/held", op];
        if op == "sleep" {
            args.push("600000");
        }
        let mut child = env.spawn(&args);
        wait_for_locked(&mut child);
        let id = wait_until_running(&env, "signalled");
        send(signal, &child);
        let stderr = stopped_with_one_line(&mut child);
        assert!(
            stderr.contains("interrupted") && stderr.contains(&id),
            "{signal} {op}: {stderr}"
        );
        assert_eq!(volume_dirs(&env).len(), 1, "only the named volume remains");
        let apps = env.apps();
        let run_app = apps.iter().find(|a| a["id"] == id.as_str()).unwrap();
        assert_eq!(run_app["state"], "stopped", "{signal} {op}");
        assert_eq!(
            try_lock(&env, &app, "/data/held"),
            "acquired",
            "{signal} {op}"
        );
    }
}

/// A `call` ends on Ctrl-C (the deployed app keeps running, with its
/// volumes' data) and on `app stop` from another shell (the app stops).
#[test]
fn ctrl_c_and_app_stop_end_a_running_call() {
    let env = TestEnv::new();
    let app = env.fsops_app("callee", "callee-data");
    env.run(&["deploy", path(&app)]).success();
    let call = |args: &[&str]| {
        let mut all = vec!["call", "callee", "fsops", "--"];
        all.extend_from_slice(args);
        env.run(&all)
    };
    call(&["write", "/scratch/kept", "still here"]).success();

    let mut child = env.spawn(&[
        "call",
        "callee",
        "fsops",
        "--",
        "lock-then",
        "/scratch/held",
        "spin",
    ]);
    wait_for_locked(&mut child);
    send("-INT", &child);
    let stderr = stopped_with_one_line(&mut child);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        stderr.contains("ended") && !stderr.contains("stopping"),
        "a call's Ctrl-C ends the call, it does not stop the deployed app: {stderr}"
    );
    assert!(
        env.apps()
            .iter()
            .any(|a| a["name"] == "callee" && a["state"] == "running")
    );
    assert_eq!(
        call(&["try-lock", "/scratch/held"]).success().stdout(),
        "acquired\n"
    );
    assert_eq!(
        call(&["read", "/scratch/kept"]).success().stdout(),
        "still here"
    );

    let mut child = env.spawn(&[
        "call",
        "callee",
        "fsops",
        "--",
        "lock-then",
        "/scratch/held",
        "sleep",
        "600000",
    ]);
    wait_for_locked(&mut child);
    env.run(&["app", "stop", "callee", "--yes"]).success();
    let stderr = stopped_with_one_line(&mut child);
    assert!(stderr.contains("stopped"), "{stderr}");
    env.wait_for_empty_trash();
    assert!(env.data_files_containing("still here").is_empty());
}

/// A lock names a place in a named volume, not a mount point: two apps
/// mounting one volume at /a and /b exclude each other on the same file.
#[test]
fn one_named_volumes_locks_are_shared_across_mount_paths() {
    let env = TestEnv::new();
    let mount = |name: &str, at: &str| {
        AppToml::new(name)
            .volume("v", |v| v.persist("shared"))
            .function("f", |f| f.guest("fsops").mount(at, "v"))
            .write(&env)
    };
    let (a, b) = (mount("at-a", "/a"), mount("at-b", "/b"));
    let mut holder = env.spawn(&["run", path(&a), "--", "hold-lock", "/a/dir/k", "120000"]);
    wait_for_locked(&mut holder);
    assert_eq!(try_lock(&env, &b, "/b/dir/k"), "busy");
    assert_eq!(try_lock(&env, &b, "/b/dir/other"), "acquired");
    assert_eq!(try_lock(&env, &a, "/a/dir/k"), "busy");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(try_lock(&env, &b, "/b/dir/k"), "acquired");
}
