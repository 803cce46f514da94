//! Files shipped with the app (issue 21 item 1; SPEC section 2): `files`
//! and `[files]` are copied at `deploy` and `run` into a content-addressed
//! store, mounted read-only, shared between apps shipping the same tree; a
//! redeploy ships the new tree while a running call keeps its own; links
//! and trees past the limits are refused with one clear line.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{AppToml, TestEnv, eventually, path, wait_with_timeout};

/// Writes `files` (relative path, contents) under `work/APP/src`, the
/// directory the apps below ship.
fn source(env: &TestEnv, app: &str, files: &[(&str, &str)]) -> PathBuf {
    let src = env.work.path().join(app).join("src");
    for (file, contents) in files {
        let file = src.join(file);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, contents).unwrap();
    }
    src
}

/// App `name`: function `fsops` with `src` shipped at /app and an
/// ephemeral volume at /scratch.
fn shipping_app(name: &str) -> AppToml {
    AppToml::new(name)
        .volume("scratch", |v| v)
        .function("fsops", |f| {
            f.guest("fsops")
                .mount("/scratch", "scratch")
                .files("/app", "src")
        })
}

/// The trees this home stores (its temporary directories left out).
fn stored_trees(env: &TestEnv) -> Vec<PathBuf> {
    let mut trees: Vec<PathBuf> = fs::read_dir(env.home().join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    trees.sort();
    trees
}

/// What `file` holds, read by a call of deployed app `app`.
fn reads(env: &TestEnv, app: &str, file: &str) -> String {
    call_stdout(env, app, &["read", file])
}

fn call_stdout(env: &TestEnv, app: &str, args: &[&str]) -> String {
    let mut command = vec!["call", app, "fsops", "--"];
    command.extend(args);
    env.run(&command).success().stdout()
}

#[test]
fn a_deployed_app_runs_the_shipped_code_and_a_redeploy_ships_the_new_tree() {
    let env = TestEnv::new();
    let src = source(
        &env,
        "shipped",
        &[("main.py", "print('v1')\n"), ("lib/util.py", "x = 1\n")],
    );
    let app = shipping_app("shipped").write(&env);
    env.run(&["deploy", path(&app)]).success();
    assert_eq!(reads(&env, "shipped", "/app/main.py"), "print('v1')\n");
    assert_eq!(reads(&env, "shipped", "/app/lib/util.py"), "x = 1\n");
    // What was deployed runs, whatever happens to the sources after.
    fs::write(src.join("main.py"), "print('v2')\n").unwrap();
    assert_eq!(reads(&env, "shipped", "/app/main.py"), "print('v1')\n");
    env.run(&["deploy", path(&app)]).success();
    assert_eq!(reads(&env, "shipped", "/app/main.py"), "print('v2')\n");
    // The first tree, which nothing uses now, is gone; stopping the app
    // removes the second.
    let trees = stored_trees(&env);
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert_eq!(
        fs::read_to_string(trees[0].join("main.py")).unwrap(),
        "print('v2')\n"
    );
    env.run(&["app", "stop", "shipped", "--yes"]).success();
    assert_eq!(stored_trees(&env), Vec::<PathBuf>::new());
}

#[test]
fn a_running_call_keeps_its_tree_across_a_redeploy() {
    let env = TestEnv::new();
    let src = source(&env, "keeper", &[("code.txt", "old\n")]);
    let app = shipping_app("keeper").write(&env);
    env.run(&["deploy", path(&app)]).success();
    // Reads the file, says it did, waits for /scratch/go, reads it again.
    let mut running = env.spawn_guarded(&[
        "call",
        "keeper",
        "fsops",
        "--",
        "wait-for",
        "/app/code.txt",
        "read",
        "/app/code.txt",
        ";",
        "write",
        "/scratch/started",
        "x",
        ";",
        "wait-for",
        "/scratch/go",
        "read",
        "/app/code.txt",
    ]);
    eventually(Duration::from_secs(60), "the call to start", || {
        call_stdout(&env, "keeper", &["exists", "/scratch/started"]) == "yes\n"
    });
    fs::write(src.join("code.txt"), "new\n").unwrap();
    env.run(&["deploy", path(&app)]).success();
    assert_eq!(reads(&env, "keeper", "/app/code.txt"), "new\n");
    // The old tree is kept for the running call.
    assert_eq!(stored_trees(&env).len(), 2, "{:?}", stored_trees(&env));
    call_stdout(&env, "keeper", &["write", "/scratch/go", "x"]);
    let status = wait_with_timeout(&mut running, Duration::from_secs(60));
    let mut stdout = String::new();
    std::io::Read::read_to_string(running.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "the running call failed: {stdout:?}");
    assert_eq!(stdout, "old\nold\n", "the running call saw another tree");
    assert_eq!(reads(&env, "keeper", "/app/code.txt"), "new\n");
    // Once it has ended, the next command's housekeeping removes it.
    env.run(&["app", "list"]).success();
    assert_eq!(stored_trees(&env).len(), 1, "{:?}", stored_trees(&env));
}

#[test]
fn run_ships_files_app_wide_and_per_function_and_single_files() {
    let env = TestEnv::new();
    source(
        &env,
        "runner",
        &[("code.txt", "from src\n"), ("other/code.txt", "own\n")],
    );
    fs::write(env.work.path().join("runner/settings.toml"), "a = 1\n").unwrap();
    let app = AppToml::new("runner")
        .files("/app", "src")
        .files("/etc/cfg", "settings.toml")
        .function("fsops", |f| f.guest("fsops").files("/own", "src/other"))
        .write(&env);
    let run = |args: &[&str]| {
        let mut command = vec!["run", path(&app), "--"];
        command.extend(args);
        env.run(&command).success().stdout()
    };
    assert_eq!(run(&["read", "/app/code.txt"]), "from src\n");
    assert_eq!(run(&["read", "/own/code.txt"]), "own\n");
    // A file is shipped inside its guest path, under its own name.
    assert_eq!(run(&["read", "/etc/cfg/settings.toml"]), "a = 1\n");
    assert_eq!(run(&["ls", "/etc/cfg"]), "settings.toml\n");
    // The function's own entry on a guest path replaces the app's.
    let overridden = AppToml::new("runner")
        .files("/app", "src")
        .function("fsops", |f| f.guest("fsops").files("/app", "src/other"))
        .write(&env);
    let read = env.run(&["run", path(&overridden), "--", "read", "/app/code.txt"]);
    assert_eq!(read.success().stdout(), "own\n");
}

#[test]
fn a_symbolic_link_in_the_tree_is_refused_naming_it() {
    let env = TestEnv::new();
    let src = source(&env, "linked", &[("code.txt", "x\n")]);
    std::os::unix::fs::symlink("/etc/passwd", src.join("passwd")).unwrap();
    let app = shipping_app("linked").write(&env);
    for command in ["deploy", "run"] {
        let refused = env.run(&[command, path(&app)]).code_is(2);
        let stderr = refused.stderr();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{} is a symbolic link",
                src.join("passwd").display()
            )),
            "{stderr}"
        );
    }
    let call = env.run(&["call", "linked", "fsops", "--", "ls", "/app"]);
    assert_ne!(call.code(), 0, "the refused deploy registered the app");
}

#[test]
fn the_guest_cannot_change_the_files_mount() {
    let env = TestEnv::new();
    source(&env, "readonly", &[("code.txt", "kept\n")]);
    let app = shipping_app("readonly").write(&env);
    env.run(&["deploy", path(&app)]).success();
    for attempt in [
        vec!["write", "/app/code.txt", "changed"],
        vec!["write", "/app/new.txt", "x"],
        vec!["rm", "/app/code.txt"],
        vec!["mkdir", "/app/dir"],
    ] {
        let mut command = vec!["call", "readonly", "fsops", "--"];
        command.extend(&attempt);
        let refused = env.run(&command).code_is(1);
        let stderr = refused.stderr();
        assert!(
            [
                "Read-only file system",
                "Operation not permitted",
                "Permission denied"
            ]
            .iter()
            .any(|e| stderr.contains(e)),
            "{attempt:?}: {stderr}"
        );
    }
    assert_eq!(reads(&env, "readonly", "/app/code.txt"), "kept\n");
    assert_eq!(call_stdout(&env, "readonly", &["ls", "/app"]), "code.txt\n");
}

#[test]
fn two_apps_shipping_the_same_tree_share_one_stored_copy() {
    let env = TestEnv::new();
    for name in ["twin-a", "twin-b"] {
        source(&env, name, &[("code.txt", "same\n"), ("d/e.txt", "also\n")]);
        env.run(&["deploy", path(&shipping_app(name).write(&env))])
            .success();
    }
    let trees = stored_trees(&env);
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert_eq!(
        fs::read_to_string(trees[0].join("d/e.txt")).unwrap(),
        "also\n"
    );
    source(&env, "twin-b", &[("code.txt", "different\n")]);
    env.run(&["deploy", path(&env.work.path().join("twin-b/app.toml"))])
        .success();
    assert_eq!(stored_trees(&env).len(), 2);
    assert_eq!(reads(&env, "twin-a", "/app/code.txt"), "same\n");
    assert_eq!(reads(&env, "twin-b", "/app/code.txt"), "different\n");
}

#[test]
fn files_past_the_size_limit_are_refused_naming_the_source_and_the_limit() {
    let env = TestEnv::new();
    let src = source(&env, "huge", &[("small.txt", "x\n")]);
    // Sparse: refused by its size before a byte of it is read.
    let big = fs::File::create(src.join("big.bin")).unwrap();
    big.set_len((1 << 30) + 1).unwrap();
    let app = shipping_app("huge").write(&env);
    let refused = env.run(&["deploy", path(&app)]).code_is(2);
    let stderr = refused.stderr();
    assert!(stderr.contains("more than 1024 MiB"), "{stderr}");
    assert!(
        stderr.contains(&src.join("big.bin").display().to_string()),
        "{stderr}"
    );
}

/// A machine of a cluster that lacks a tree rebuilds it from the
/// registry's copy; on one machine there is none, and the call says so.
#[test]
fn a_missing_tree_is_rebuilt_from_the_registry_of_a_cluster() {
    let env = TestEnv::new();
    source(
        &env,
        "fetched",
        &[("code.txt", "fetched\n"), ("d/x", "y\n")],
    );
    env.run(&["deploy", path(&shipping_app("fetched").write(&env))])
        .success();
    let [tree] = stored_trees(&env).try_into().unwrap();
    remove_read_only(&tree);
    let call = env.run(&["call", "fetched", "fsops", "--", "read", "/app/code.txt"]);
    if env.on_postgres() {
        assert_eq!(call.success().stdout(), "fetched\n");
        assert_eq!(fs::read_to_string(tree.join("d/x")).unwrap(), "y\n");
    } else {
        let stderr = call.code_is(1).stderr();
        assert!(stderr.contains("the registry holds no copy"), "{stderr}");
    }
}

fn remove_read_only(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(dir) {
        if entry.is_dir() {
            fs::set_permissions(&entry, fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    fs::remove_dir_all(dir).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut at = 0;
    while at < all.len() {
        if all[at].is_dir() {
            let children: Vec<PathBuf> = fs::read_dir(&all[at])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            all.extend(children);
        }
        at += 1;
    }
    all
}
