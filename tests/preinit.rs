//! Pre-initialized snapshots (issue 21 item 2; SPEC section 5): `preinit`
//! runs a function's init export once, at deploy (or the first `run`), and
//! every call starts from a snapshot of the instance it left; an init that
//! writes a volume, fails or leaves a file open fails the deploy with that
//! reason; the snapshot is rebuilt when the env or the shipped files
//! change and not otherwise, and a damaged one is made again.
//!
//! The guest is `guest-examples/programs/src/bin/preinit.rs`: its
//! `wizer.initialize` reads /app/greeting.txt and `WHO` into a static and
//! counts its runs; `main` prints both.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{AppToml, Mount, TestEnv, path};
use wasmhost::digest::sha256_hex;

/// What the init computes from greeting `greeting` and `WHO=who`.
fn value(greeting: &str, who: &str) -> String {
    format!("value={greeting} {who} 333833500")
}

/// App `name` shipping `work/name/src` at /app, with its named volume
/// `name-data` at /data and `env` (WHO, PREINIT_MODE...), pre-initialized
/// by `wizer.initialize` unless `preinit` is false.
fn app(env: &TestEnv, name: &str, vars: &[(&str, &str)], preinit: bool) -> PathBuf {
    let preinit = preinit.then_some("\"wizer.initialize\"");
    app_with(env, name, vars, preinit)
}

/// [`app`] with `preinit` as written (TOML), or none.
fn app_with(env: &TestEnv, name: &str, vars: &[(&str, &str)], preinit: Option<&str>) -> PathBuf {
    let src = env.work.path().join(name).join("src");
    if !src.exists() {
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("greeting.txt"), "hello\n").unwrap();
    }
    let persist = format!("{name}-data");
    AppToml::new(name)
        .volume("data", |v| v.persist(&persist))
        .function("f", |mut f| {
            f = f
                .guest("preinit")
                .mount("/data", Mount::volume("data"))
                .files("/app", "src");
            for (key, value) in vars {
                f = f.env(key, value);
            }
            match preinit {
                Some(preinit) => f.args(&["from-function"]).key("preinit", preinit),
                None => f,
            }
        })
        .write(env)
}

fn call(env: &TestEnv, app: &str) -> String {
    env.run(&["call", app, "f", "--", "x"]).success().stdout()
}

/// The cache's snapshot indexes (`<key>.preinit`) and, for each, the
/// snapshot it names and that file's inode.
fn snapshots(env: &TestEnv) -> Vec<(PathBuf, PathBuf, u64)> {
    let cache = env.home().join("cache");
    let mut found: Vec<(PathBuf, PathBuf, u64)> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "preinit"))
        .map(|index| {
            let digest = fs::read_to_string(&index).unwrap();
            let snapshot = cache.join(format!("{digest}.snapshot.wasm"));
            let inode = fs::metadata(&snapshot).unwrap().ino();
            (index, snapshot, inode)
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_call_starts_from_the_state_its_init_computed_without_running_it_again() {
    let env = TestEnv::new();
    let file = app(&env, "warm", &[("WHO", "world")], true);
    env.run(&["deploy", path(&file)]).success();
    assert_eq!(snapshots(&env).len(), 1, "deploy made the snapshot");
    for _ in 0..2 {
        let out = call(&env, "warm");
        assert!(out.contains(&value("hello", "world")), "{out}");
        // 1: the snapshot's count; each call's instance does not run it.
        assert!(out.contains("init_runs=1\n"), "{out}");
        assert!(
            out.contains("\nargs=from-function,x\n"),
            "the call's args: {out}"
        );
        assert!(out.contains("init_args=from-function\n"), "{out}");
    }
    let info = env.run(&["cache", "info"]).success().stdout();
    assert!(info.contains("\n1 pre-initialized snapshots"), "{info}");
    // `run` makes (here: finds) the snapshot for its ephemeral app too.
    let out = env.run(&["run", path(&file), "--", "y"]).success().stdout();
    assert!(out.contains(&value("hello", "world")), "{out}");
    assert!(out.contains("init_runs=1\n"), "{out}");

    // Without `preinit` nothing ran the export: the value is not there.
    let cold = app(&env, "cold", &[("WHO", "world")], false);
    let out = env.run(&["run", path(&cold)]).success().stdout();
    assert!(out.contains("value=<not initialized>"), "{out}");
    assert!(out.contains("init_runs=0\n"), "{out}");
}

#[test]
fn preinit_with_args_gives_the_init_its_own_arguments() {
    let env = TestEnv::new();
    let preinit = "{ export = \"wizer.initialize\", args = [\"-c\", \"import pandas\"] }";
    let file = app_with(&env, "withargs", &[("WHO", "you")], Some(preinit));
    let out = env.run(&["run", path(&file), "--", "y"]).success().stdout();
    assert!(out.contains("init_args=-c,import pandas\n"), "{out}");
    assert!(out.contains("\nargs=from-function,y\n"), "{out}");
    assert!(out.contains(&value("hello", "you")), "{out}");
}

#[test]
fn an_init_that_writes_its_volume_fails_the_deploy_which_changes_nothing() {
    let env = TestEnv::new();
    let good = app(&env, "writer", &[("WHO", "world")], true);
    env.run(&["deploy", path(&good)]).success();
    let app_id = env.apps()[0]["id"].clone();
    let bad = app(
        &env,
        "writer",
        &[("WHO", "moon"), ("PREINIT_MODE", "write")],
        true,
    );
    let out = env.run(&["deploy", path(&bad)]).code_is(2);
    let err = out.stderr();
    assert!(err.contains("`preinit` of function `f`"), "{err}");
    assert!(err.contains("the init writes its volume"), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("every mount read-only"), "{err}");
    // Reported at the `preinit` line, in one line.
    assert!(err.contains("app.toml:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Nothing was written, and the deployed app runs what it ran.
    assert!(!env.volume_dir("writer-data").join("from-init").exists());
    let apps = env.apps();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0]["id"], app_id);
    assert!(call(&env, "writer").contains(&value("hello", "world")));
}

#[test]
fn an_init_that_traps_fails_the_deploy_with_its_message_and_creates_nothing() {
    let env = TestEnv::new();
    let file = app(&env, "trap", &[("PREINIT_MODE", "trap")], true);
    let err = env.run(&["deploy", path(&file)]).code_is(2).stderr();
    assert!(err.contains("the init failed: trapped"), "{err}");
    assert!(err.contains("the init gave up"), "{err}");
    assert!(env.apps().is_empty(), "no app was registered");
    assert!(snapshots(&env).is_empty(), "no snapshot was stored");
}

#[test]
fn an_init_that_leaves_a_file_open_is_refused_naming_the_count() {
    let env = TestEnv::new();
    let file = app(&env, "leak", &[("PREINIT_MODE", "leak")], true);
    let err = env.run(&["deploy", path(&file)]).code_is(2).stderr();
    assert!(
        err.contains("the init left 1 file(s) or other handle(s) open"),
        "{err}"
    );
    assert!(env.apps().is_empty());
    assert!(snapshots(&env).is_empty());
}

#[test]
fn preinit_on_a_component_is_refused_at_its_module() {
    let env = TestEnv::new();
    let file = AppToml::new("comp")
        .function("f", |f| {
            f.guest2("hello")
                .key("preinit", "{ export = \"init\", args = [\"-c\"] }")
        })
        .write(&env);
    let err = env.run(&["deploy", path(&file)]).code_is(2).stderr();
    assert!(
        err.contains("is a component, which `preinit` does not apply to"),
        "{err}"
    );
}

#[test]
fn a_snapshot_is_rebuilt_after_a_change_of_env_or_files_and_not_otherwise() {
    let env = TestEnv::new();
    let file = app(&env, "keyed", &[("WHO", "world")], true);
    env.run(&["deploy", path(&file)]).success();
    let first = snapshots(&env);
    assert_eq!(first.len(), 1);

    // The same app again: the same snapshot, not made again (a new one
    // would be a new file, written beside and renamed over).
    env.run(&["deploy", path(&file)]).success();
    assert_eq!(snapshots(&env), first);
    assert!(call(&env, "keyed").contains(&value("hello", "world")));

    let file = app(&env, "keyed", &[("WHO", "moon")], true);
    env.run(&["deploy", path(&file)]).success();
    assert_eq!(snapshots(&env).len(), 2, "a new env, a new snapshot");
    assert!(call(&env, "keyed").contains(&value("hello", "moon")));

    let greeting = env.work.path().join("keyed/src/greeting.txt");
    fs::write(&greeting, "bonjour\n").unwrap();
    env.run(&["deploy", path(&file)]).success();
    assert_eq!(snapshots(&env).len(), 3, "new files, a new snapshot");
    let out = call(&env, "keyed");
    assert!(out.contains(&value("bonjour", "moon")), "{out}");
    assert!(out.contains("init_runs=1\n"), "{out}");
}

#[test]
fn a_damaged_snapshot_is_detected_and_made_again_and_the_call_succeeds() {
    let env = TestEnv::new();
    let file = app(&env, "damaged", &[("WHO", "world")], true);
    env.run(&["deploy", path(&file)]).success();
    let [(_, snapshot, _)] = &snapshots(&env)[..] else {
        panic!("one snapshot expected");
    };
    // Bytes overwritten in place: the same size, so only its digest can
    // tell.
    let mut bytes = fs::read(snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0xAB);
    fs::write(snapshot, &bytes).unwrap();
    assert_ne!(digest_of(snapshot), name_of(snapshot));

    let run = env.run(&["call", "damaged", "f"]).success();
    assert!(
        run.stdout().contains(&value("hello", "world")),
        "{}",
        run.stdout()
    );
    assert!(run.stdout().contains("init_runs=1\n"));
    assert!(run.stderr().contains("is damaged"), "{}", run.stderr());
    for (_, snapshot, _) in snapshots(&env) {
        assert_eq!(
            digest_of(&snapshot),
            name_of(&snapshot),
            "made again, whole"
        );
    }
}

fn digest_of(file: &Path) -> String {
    sha256_hex(&fs::read(file).unwrap())
}

/// The digest a snapshot's name says it has.
fn name_of(file: &Path) -> String {
    let name = file.file_name().unwrap().to_string_lossy();
    name.strip_suffix(".snapshot.wasm").unwrap().to_owned()
}
