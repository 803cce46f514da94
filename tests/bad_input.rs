//! Bad input is answered by one clear line, exit code 2, and nothing created
//! (issue 6, "Bad input"; spec section 2).
//!
//! `tests/bad-manifests/NN-what.toml` is a corpus of bad app.toml files; each
//! has a sibling `NN-what.expected` holding the exact stderr of
//! `wasmhost run` on it, with the app.toml's path written `{file}` and its
//! directory `{dir}`. A first line `# run: ARGS` gives the arguments after
//! the app.toml (else none) and marks a case that only `run` refuses.
//! Regenerate the snapshots with `UPDATE_SNAPSHOTS=1 cargo test --test bad_input`
//! and review the diff.

mod common;

use std::path::{Path, PathBuf};

use common::{AppToml, TestEnv};

fn corpus_dir() -> PathBuf {
    common::repo_root().join("tests").join("bad-manifests")
}

/// The files app.toml cases may name as modules.
fn write_fixtures(dir: &Path) {
    // The smallest WASI command: `(module (func (export "_start")))`.
    std::fs::write(
        dir.join("ok.wasm"),
        b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b",
    )
    .unwrap();
    // A WebAssembly header followed by a type section that is garbage.
    std::fs::write(
        dir.join("broken.wasm"),
        b"\0asm\x01\0\0\0\x01\x05\xff\xff\xff\xff\xff",
    )
    .unwrap();
    std::fs::write(
        dir.join("text.wasm"),
        "(module) ;; text format, not binary\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("subdir")).unwrap();
}

struct Case {
    name: String,
    toml: PathBuf,
    expected: PathBuf,
    /// Arguments after the app.toml, from a `# run:` first line.
    run_args: Option<Vec<String>>,
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|toml| {
            let bytes = std::fs::read(&toml).unwrap();
            let first_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
            let run_args = String::from_utf8_lossy(first_line)
                .strip_prefix("# run:")
                .map(|args| args.split_whitespace().map(str::to_owned).collect());
            Case {
                name: toml.file_stem().unwrap().to_string_lossy().into_owned(),
                expected: toml.with_extension("expected"),
                toml,
                run_args,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// Runs wasmhost with `$WASMHOST_HOME` set to a directory that does not
/// exist yet; returns exit code, stdout, stderr, and whether it exists now.
fn run_in_no_home(env: &TestEnv, args: &[&str]) -> (i32, String, String, bool) {
    let state = env.home().join("state");
    let output = env
        .command()
        .env("WASMHOST_HOME", &state)
        .args(args)
        .output()
        .unwrap();
    let created = state.exists();
    let _ = std::fs::remove_dir_all(&state);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        created,
    )
}

/// Like [`run_in_no_home`], and asserts that nothing was created.
fn run_creating_nothing(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let (code, stdout, stderr, created) = run_in_no_home(env, args);
    assert!(
        !created,
        "`wasmhost {}` created $WASMHOST_HOME (stderr: {stderr})",
        args.join(" ")
    );
    (code, stdout, stderr)
}

#[test]
fn corpus_covers_the_spec() {
    let cases = cases();
    assert!(cases.len() >= 25, "only {} bad manifests", cases.len());
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for needle in [
        "empty",
        "unterminated",
        "unknown-top-level-key",
        "unknown-volume-key",
        "unknown-function-key",
        "unknown-mount-key",
        "wrong-type",
        "module-missing",
        "module-not-wasm",
        "module-does-not-compile",
        "undeclared-volume",
        "two-mounts",
        "empty-guest-path",
        "dotdot-guest-path",
        "invalid-app-name",
        "invalid-volume-key",
        "invalid-function-name",
        "invalid-persist-name",
        "bad-size",
        "bad-duration",
        "huge",
        "concurrency-zero",
        "unknown-function-for-run",
    ] {
        assert!(
            names.iter().any(|n| n.contains(needle)),
            "no bad manifest covers `{needle}`"
        );
    }
}

#[test]
fn every_bad_manifest_gives_its_exact_message_and_creates_nothing() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let env = TestEnv::new();
    let dir = env.work.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    write_fixtures(&dir);
    let placeholders = |text: &str, file: &Path| {
        text.replace(file.to_str().unwrap(), "{file}")
            .replace(dir.to_str().unwrap(), "{dir}")
    };

    let mut failures = Vec::new();
    for case in cases() {
        let file = dir.join(format!("{}.toml", case.name));
        std::fs::copy(&case.toml, &file).unwrap();
        let mut args = vec!["run".to_owned(), file.to_str().unwrap().to_owned()];
        args.extend(case.run_args.clone().unwrap_or_default());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr, created) = run_in_no_home(&env, &args);
        let message = placeholders(&stderr, &file);

        let mut problems = Vec::new();
        if created {
            problems.push("$WASMHOST_HOME was created".to_owned());
        }
        if code != 2 {
            problems.push(format!("exit code {code}, not 2"));
        }
        if !stdout.is_empty() {
            problems.push(format!("stdout is not empty: {stdout:?}"));
        }
        if message.lines().count() != 1 || !message.ends_with('\n') {
            problems.push("stderr is not exactly one line".to_owned());
        }
        if !message.starts_with("error: {file}") {
            problems.push("the message does not start with the app.toml's path".to_owned());
        }
        if !message.contains("; fix: ") {
            problems.push("the message gives no fix".to_owned());
        }
        if update {
            std::fs::write(&case.expected, &message).unwrap();
        } else {
            match std::fs::read_to_string(&case.expected) {
                Ok(expected) if expected == message => {}
                Ok(expected) => problems.push(format!(
                    "message differs from {}\n  expected: {expected:?}\n  actual:   {message:?}",
                    case.expected.display()
                )),
                Err(_) => problems.push(format!(
                    "no snapshot {} (create it with UPDATE_SNAPSHOTS=1); actual: {message:?}",
                    case.expected.display()
                )),
            }
        }
        // `deploy` validates the same way and says the same thing.
        if case.run_args.is_none() {
            let (code, _, deploy_stderr, created) =
                run_in_no_home(&env, &["deploy", file.to_str().unwrap()]);
            if created {
                problems.push("`deploy` created $WASMHOST_HOME".to_owned());
            }
            if code != 2 || deploy_stderr != stderr {
                problems.push(format!(
                    "`deploy` differs from `run`: exit {code}, {deploy_stderr:?}"
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n  stderr: {stderr:?}",
                case.name,
                problems.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Every `.expected` belongs to a `.toml`, so a renamed case leaves no stale snapshot.
#[test]
fn no_orphan_snapshots() {
    for entry in std::fs::read_dir(corpus_dir()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "expected") {
            assert!(
                path.with_extension("toml").exists(),
                "{} has no .toml",
                path.display()
            );
        }
    }
}

#[test]
fn a_missing_app_toml_is_usage_and_creates_nothing() {
    let env = TestEnv::new();
    let (code, _, stderr) = run_creating_nothing(&env, &["run", "no/such/app.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: no/such/app.toml: cannot read app manifest"),
        "{stderr}"
    );
    let (code, _, stderr) = run_creating_nothing(&env, &["deploy", "no/such/app.toml"]);
    assert_eq!(code, 2, "{stderr}");
}

/// Asserts exit 2 and one `error:` line that contains each of `needles`.
#[track_caller]
fn usage_error(env: &TestEnv, args: &[&str], needles: &[&str]) {
    let run = env.run(args).code_is(2);
    let stderr = run.stderr();
    assert_eq!(
        stderr.lines().count(),
        1,
        "`{}`: not one line: {stderr:?}",
        args.join(" ")
    );
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "`{}`: {stderr:?} does not mention {needle:?}",
            args.join(" ")
        );
    }
    assert!(run.stdout().is_empty(), "{}", run.stdout());
}

/// A deployed app `demo` with one function `f`.
fn deploy_demo(env: &TestEnv) -> PathBuf {
    let dir = env.work.path().join("demo");
    std::fs::create_dir_all(&dir).unwrap();
    write_fixtures(&dir);
    let app = AppToml::new("demo")
        .function("f", |f| f.module("ok.wasm"))
        .write_in(&dir);
    env.run(&["deploy", app.to_str().unwrap()]).success();
    app
}

#[test]
fn unknown_apps_are_usage_errors() {
    let env = TestEnv::new();
    usage_error(&env, &["call", "nosuch", "f"], &["nosuch"]);
    usage_error(&env, &["app", "stop", "nosuch", "--yes"], &["nosuch"]);
    usage_error(
        &env,
        &["app", "stop", "ap-doesnotexist", "--yes"],
        &["ap-doesnotexist"],
    );
    deploy_demo(&env);
    env.run(&["app", "stop", "demo", "--yes"]).success();
    // A stopped app can no longer be called or stopped.
    usage_error(&env, &["call", "demo", "f"], &["demo"]);
    usage_error(&env, &["app", "stop", "demo", "--yes"], &["demo"]);
}

#[test]
fn unknown_function_for_call_is_a_usage_error() {
    let env = TestEnv::new();
    deploy_demo(&env);
    usage_error(
        &env,
        &["call", "demo", "nosuch"],
        &["nosuch", "`f`", "fix:"],
    );
    usage_error(&env, &["call", "demo", "F"], &["`F`"]);
}

#[test]
fn unknown_volumes_are_usage_errors() {
    let env = TestEnv::new();
    let local = env.work.path().join("local.txt");
    std::fs::write(&local, "x").unwrap();
    let local = local.to_str().unwrap();
    usage_error(&env, &["volume", "ls", "nosuch"], &["nosuch"]);
    usage_error(&env, &["volume", "put", "nosuch", local], &["nosuch"]);
    usage_error(&env, &["volume", "get", "nosuch", "/x", "-"], &["nosuch"]);
    usage_error(&env, &["volume", "rm", "nosuch", "/x"], &["nosuch"]);
    usage_error(&env, &["volume", "delete", "nosuch", "--yes"], &["nosuch"]);
    env.run(&["volume", "create", "vol"]).success();
    usage_error(
        &env,
        &["volume", "create", "vol"],
        &["vol", "already exists"],
    );
    env.run(&["volume", "delete", "vol", "--yes"]).success();
    usage_error(&env, &["volume", "ls", "vol"], &["vol"]);
}

#[test]
fn bad_names_are_usage_errors_and_reach_nothing() {
    let env = TestEnv::new();
    for bad in [
        "",
        "_leading-underscore",
        ".hidden",
        "../escape",
        "a/b",
        ".",
        "..",
        "with space",
        "tab\there",
        "newline\nhere",
        &"a".repeat(65),
    ] {
        usage_error(&env, &["volume", "create", bad], &["invalid"]);
        usage_error(&env, &["volume", "ls", bad], &[]);
        usage_error(&env, &["volume", "delete", bad, "--yes"], &[]);
        usage_error(&env, &["app", "stop", bad, "--yes"], &[]);
        usage_error(&env, &["call", bad, "f"], &[]);
    }
    // After `--`, clap passes a leading dash through to the name check.
    usage_error(
        &env,
        &["volume", "create", "--", "-leading-dash"],
        &["invalid", "-leading-dash"],
    );
    let volumes: Vec<_> = std::fs::read_dir(env.home().join("volumes"))
        .unwrap()
        .flatten()
        .collect();
    assert!(volumes.is_empty(), "bad names created {volumes:?}");
    assert!(!env.home().parent().unwrap().join("escape").exists());
}

#[test]
fn concurrency_zero_is_a_usage_error() {
    let env = TestEnv::new();
    let app = deploy_demo(&env);
    for args in [
        vec!["run", app.to_str().unwrap(), "--concurrency", "0"],
        vec!["call", "demo", "f", "--concurrency", "0"],
        vec!["run", app.to_str().unwrap(), "--concurrency", "many"],
    ] {
        let run = env.run(&args).code_is(2);
        let stderr = run.stderr();
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains("--concurrency"),
            "`{}`: {stderr:?}",
            args.join(" ")
        );
    }
}

#[test]
fn unknown_commands_and_flags_are_usage_errors() {
    let env = TestEnv::new();
    for args in [
        vec!["frobnicate"],
        vec!["run"],
        vec!["volume", "create"],
        vec!["app", "list", "--everything"],
    ] {
        let run = env.run(&args).code_is(2);
        assert!(run.stderr().starts_with("error: "), "{}", run.stderr());
    }
}

/// A registry or volumes location that cannot be is bad usage, named in one
/// line; a PostgreSQL that does not answer is a failure, named without its
/// password. Neither makes a home.
#[test]
fn a_bad_db_or_volumes_location_is_one_line_and_hides_the_password() {
    let env = TestEnv::new();
    let volumes = env.work.path().join("not-mounted");
    let home = env.home().join("fresh");
    let home = common::path(&home);
    usage_error(
        &env,
        &[
            "--home",
            home,
            "--db",
            "mysql://me:hunter2@db/x",
            "app",
            "list",
        ],
        &["--db", "postgres://"],
    );
    usage_error(
        &env,
        &[
            "--home",
            home,
            "--volumes",
            common::path(&volumes),
            "app",
            "list",
        ],
        &["--volumes", "not-mounted", "not a directory"],
    );
    // Port 1 on loopback: nothing listens there.
    let run = env
        .run(&[
            "--home",
            home,
            "--db",
            "postgres://me:hunter2@127.0.0.1:1/x",
            "app",
            "list",
        ])
        .code_is(1);
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("cannot connect to the registry postgres://me:***@127.0.0.1:1/x"),
        "{stderr:?}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password leaked: {stderr:?}"
    );
    assert!(!env.home().join("fresh").join("registry.db").exists());
}
