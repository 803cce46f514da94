//! Limits, isolated per invocation (issue 6): `timeout` and `memory` say
//! which limit hit and its value; a runaway loop, an allocation past the cap,
//! a stack overflow and a trap each end only their own invocation, in `run`
//! and under `--map`; a guest flooding stdout cannot exhaust host memory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{AppToml, Run, TestEnv, path};

/// The most any run here may take: the apps' 1 s `timeout` plus 10 s of
/// slack for a loaded machine. A limit enforced late fails this bound.
const BOUND: Duration = Duration::from_secs(11);

/// An app whose one function is fsops (`{guest:fsops}` or `{guest2:fsops}`)
/// with a 1s timeout and a 32MiB memory cap, its module compiled and cached
/// by a first run so that [`BOUND`] times the runs, not the compiler.
fn limited_app(env: &TestEnv, name: &str, module: &str) -> PathBuf {
    let app = AppToml::new(name)
        .function("f", |f| f.module(module).timeout("1s").memory("32MiB"))
        .write(env);
    env.run(&["run", path(&app), "--", "exit", "0"]).success();
    app
}

/// The one line wasmhost itself wrote (guest output aside): `error: …`.
#[track_caller]
fn host_error(run: &Run) -> String {
    let lines: Vec<String> = run
        .stderr()
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line: {}", run.stderr());
    lines[0].clone()
}

/// Runs the app with `guest_args`, which must fail (exit 1) with one line
/// of wasmhost's own that contains each of `needles`.
#[track_caller]
fn fails_with(env: &TestEnv, app: &Path, guest_args: &[&str], needles: &[&str]) -> Run {
    let mut args = vec!["run", path(app), "--"];
    args.extend_from_slice(guest_args);
    let run = env.run_within(BOUND, &args).code_is(1);
    let line = host_error(&run);
    assert!(needles.iter().all(|n| line.contains(n)), "{line}");
    run
}

#[test]
fn runaway_loop_ends_at_the_timeout_and_says_so() {
    let env = TestEnv::new();
    let app = limited_app(&env, "spinner", "{guest:fsops}");
    fails_with(
        &env,
        &app,
        &["spin"],
        &["timed out after 1s", "`timeout`", "function `f`"],
    );
}

/// A guest blocked in a host call (a ten-minute sleep) is not running wasm,
/// so epoch interruption alone would not stop it: the timeout still holds.
#[test]
fn guest_blocked_in_a_host_sleep_still_ends_at_the_timeout() {
    let env = TestEnv::new();
    let app = limited_app(&env, "sleeper", "{guest:fsops}");
    let run = &env
        .run_within(BOUND, &["run", path(&app), "--", "sleep", "600000"])
        .code_is(1);
    let line = host_error(run);
    assert!(
        line.contains("timed out after 1s") && line.contains("`timeout`"),
        "{line}"
    );
    // The app was stopped on the way out.
    let apps = env.apps();
    assert!(apps.iter().all(|a| a["state"] == "stopped"), "{apps:?}");
}

#[test]
fn allocation_past_the_cap_ends_with_the_memory_limit_and_its_value() {
    let env = TestEnv::new();
    let app = limited_app(&env, "hungry", "{guest:fsops}");
    // Under the cap: fine.
    let ok = &env
        .run_within(BOUND, &["run", path(&app), "--", "alloc", "8"])
        .success();
    assert_eq!(ok.stdout(), "allocated\n");
    let run = fails_with(
        &env,
        &app,
        &["alloc", "64"],
        &["ran out of memory", "32MiB", "`memory`"],
    );
    assert!(!run.stdout().contains("allocated"));
}

#[test]
fn stack_overflow_and_trap_give_a_one_line_reason() {
    let env = TestEnv::new();
    let app = limited_app(&env, "crasher", "{guest:fsops}");
    fails_with(
        &env,
        &app,
        &["stack-overflow"],
        &["trapped", "call stack exhausted"],
    );
    fails_with(&env, &app, &["trap"], &["trapped", "unreachable"]);
    // Nothing else broke: the next run of the same app works.
    env.run_within(BOUND, &["run", path(&app), "--", "echo-line", "fine"])
        .success();
}

/// Each failure ends only its own invocation: the others succeed and are
/// printed whole and in input order, and the summary names each failure
/// with its reason.
fn map_isolates_failures(module: &str, name: &str, failing: &[(&str, &str)]) {
    let env = TestEnv::new();
    let app = limited_app(&env, name, module);
    let mut lines = Vec::new();
    let mut expected_out = String::new();
    for (i, (input, _)) in failing.iter().enumerate() {
        lines.push(format!("echo-line before-{i}"));
        expected_out.push_str(&format!("before-{i}\n"));
        lines.push(input.to_string());
    }
    lines.push("echo-line last".into());
    expected_out.push_str("last\n");
    let inputs = env.work.path().join("inputs.txt");
    std::fs::write(&inputs, lines.join("\n") + "\n").unwrap();
    let run = &env
        .run_within(
            BOUND,
            &[
                "run",
                path(&app),
                "--map",
                path(&inputs),
                "--concurrency",
                "2",
                "--",
                "words",
            ],
        )
        .code_is(1);
    assert_eq!(run.stdout(), expected_out, "stderr: {}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!(
            "{} of {} invocations failed",
            failing.len(),
            lines.len()
        )),
        "{stderr}"
    );
    for (i, (input, reason)) in failing.iter().enumerate() {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("input {} `{input}`", 2 * i + 2)))
            .unwrap_or_else(|| panic!("no summary line for {input}: {stderr}"));
        assert!(line.contains(reason), "{line}");
    }
    for i in 0..failing.len() {
        assert!(
            !stderr.contains(&format!("input {} ", 2 * i + 1)),
            "a healthy invocation failed: {stderr}"
        );
    }
}

#[test]
fn under_map_each_limit_ends_only_its_own_invocation() {
    map_isolates_failures(
        "{guest:fsops}",
        "mapped",
        &[
            ("spin", "timed out after 1s (the function's `timeout`)"),
            (
                "alloc 64",
                "hit its limit of 32MiB (the function's `memory`)",
            ),
            ("stack-overflow", "call stack exhausted"),
            ("trap", "unreachable"),
            ("exit 3", "exit code 3"),
        ],
    );
}

#[test]
fn wasip2_component_timeout_and_trap_end_only_their_own_invocation() {
    let env = TestEnv::new();
    let app = limited_app(&env, "component", "{guest2:fsops}");
    fails_with(&env, &app, &["spin"], &["timed out after 1s", "`timeout`"]);
    fails_with(&env, &app, &["trap"], &["trapped", "unreachable"]);
    drop(env);
    map_isolates_failures(
        "{guest2:fsops}",
        "component-map",
        &[
            ("spin", "timed out after 1s (the function's `timeout`)"),
            ("trap", "unreachable"),
        ],
    );
}

/// A guest writing far more than the capture cap under `--map` is cut off at
/// the cap (its writes fail) instead of growing host memory without bound;
/// the other invocations are unaffected.
#[test]
fn stdout_flood_under_map_is_capped() {
    let env = TestEnv::new();
    let app = AppToml::new("flood")
        .function("f", |f| f.guest("fsops").timeout("120s"))
        .write(&env);
    let inputs = env.work.path().join("inputs.txt");
    std::fs::write(&inputs, "echo-line first\nspew 256\necho-line last\n").unwrap();
    let run = &env
        .run_within(
            BOUND,
            &["run", path(&app), "--map", path(&inputs), "--", "words"],
        )
        .code_is(1);
    let stdout = &run.0.stdout;
    assert!(
        stdout.starts_with(b"first\n") && stdout.ends_with(b"last\n"),
        "healthy outputs missing"
    );
    let flood = stdout.len() - "first\n".len() - "last\n".len();
    assert!(stdout[6..6 + flood].iter().all(|&b| b == b'x'));
    // 256 MiB written; what is kept stops at the per-invocation cap (16 MiB).
    assert!(
        flood > 0 && flood <= 16 << 20,
        "kept {flood} bytes of a 256 MiB flood"
    );
    let stderr = run.stderr();
    assert!(
        stderr.contains("1 of 3 invocations failed") && stderr.contains("input 2 `spew 256`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("after its output reached the 16MiB that --map keeps"),
        "{stderr}"
    );
}

/// Under `--map` too, a guest blocked in a host sleep ends at its timeout and
/// frees its slot: with one slot, the input after it still runs.
#[test]
fn map_guest_blocked_in_a_host_sleep_ends_at_the_timeout() {
    let env = TestEnv::new();
    let app = limited_app(&env, "map-sleeper", "{guest:fsops}");
    let inputs = env.work.path().join("sleeps.txt");
    std::fs::write(&inputs, "sleep 600000\necho-line after\n").unwrap();
    let run = &env
        .run_within(
            BOUND,
            &[
                "run",
                path(&app),
                "--map",
                inputs.to_str().unwrap(),
                "--concurrency",
                "1",
                "--",
                "words",
            ],
        )
        .code_is(1);
    assert_eq!(run.stdout(), "after\n");
    assert!(
        run.stderr().contains("input 1") && run.stderr().contains("timed out after 1s"),
        "{}",
        run.stderr()
    );
}

/// A poll on two clocks is not a plain sleep: wasmhost hands it to
/// wasmtime-wasi's own `poll_oneoff`, which answers it correctly and is
/// abandoned at the timeout all the same.
#[test]
fn poll_on_two_clocks_answers_and_ends_at_the_timeout() {
    let env = TestEnv::new();
    let app = limited_app(&env, "poller", "{guest:fsops}");
    let run = env.run_within(
        BOUND,
        &["run", path(&app), "--", "poll-two-clocks", "500", "50"],
    );
    assert_eq!(run.success().stdout(), "events: 2\n");
    let run = &env
        .run_within(
            BOUND,
            &[
                "run",
                path(&app),
                "--",
                "poll-two-clocks",
                "600000",
                "500000",
            ],
        )
        .code_is(1);
    assert!(
        host_error(run).contains("timed out after 1s"),
        "{}",
        run.stderr()
    );
}
