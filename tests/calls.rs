//! Call records from the command line (SPEC sections 3 and 6): `calls
//! list/get/cancel` and `app logs`, against calls made by `wasmhost call`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use common::{AppToml, StdoutLines, TestEnv, path, wait_with_timeout};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(60);

/// Deploys app `name` with functions `hello`, `fsops` and `ticker`;
/// returns its id.
fn deploy(env: &TestEnv, name: &str) -> String {
    let app = AppToml::new(name)
        .function("hello", |f| f.guest("hello"))
        .function("fsops", |f| f.guest("fsops"))
        .function("ticker", |f| f.guest("ticker"))
        .write(env);
    let out = env.run(&["deploy", path(&app)]).success().stdout();
    let start = out.find("(ap-").expect("deploy prints the app's id") + 1;
    let end = start + out[start..].find(')').unwrap();
    out[start..end].to_owned()
}

/// `calls list ARGS... --json`, parsed.
fn list(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["calls", "list", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all).success().stdout();
    serde_json::from_str::<Vec<Value>>(&out)
        .unwrap_or_else(|e| panic!("calls list --json is not a JSON array ({e}): {out}"))
}

/// `calls get ID --json`, parsed.
fn get(env: &TestEnv, id: &str) -> Value {
    let out = env.run(&["calls", "get", id, "--json"]).success().stdout();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The id of the newest call.
fn newest(env: &TestEnv) -> String {
    list(env, &["--limit", "1"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn stdout_lines(run: common::Run) -> Vec<String> {
    run.success().stdout().lines().map(str::to_owned).collect()
}

#[test]
fn a_call_is_recorded_with_its_args_outcome_and_output() {
    let env = TestEnv::new();
    let app_id = deploy(&env, "rec");
    env.run(&[
        "call",
        "rec",
        "hello",
        "--env",
        "GREETING=secret-value",
        "--",
        "a",
        "b c",
    ])
    .success();

    let calls = list(&env, &["rec"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("ca-"), "{call}");
    assert_eq!(call["app"], "rec");
    assert_eq!(call["app_id"], app_id.as_str());
    assert_eq!(call["function"], "hello");
    assert_eq!(call["args"], json!(["a", "b c"]));
    assert_eq!(call["state"], "succeeded");
    assert_eq!(call["exit_code"], 0);
    assert_eq!(call["attempts"], 1);
    assert_eq!(call["error"], Value::Null);
    assert!(call["finished_at"].is_string(), "{call}");
    // A list carries no output, and never the caller's variables.
    assert!(call.get("stdout").is_none(), "{call}");
    assert!(call.get("env").is_none(), "{call}");

    let full = get(&env, id);
    assert_eq!(
        full["stdout"],
        "hello from wasmhost\narg: a\narg: b c\nGREETING=secret-value\n"
    );
    assert_eq!(full["stderr"], "");
    assert_eq!(full["dropped_stdout"], 0);
    assert_eq!(full["state"], "succeeded");
    let history = full["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{full}");
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[0]["exit_code"], 0);
    assert!(full.get("env").is_none(), "{full}");

    // The app's id lists it as its name does; so does listing every app.
    assert_eq!(list(&env, &[&app_id]).len(), 1);
    assert_eq!(list(&env, &[]).len(), 1);

    let table = env.run(&["calls", "list"]).success().stdout();
    let row = table
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
    assert!(
        row.contains(" rec ") && row.contains(" hello ") && row.contains(" succeeded "),
        "{row}"
    );
    assert!(table.starts_with("ID "), "{table}");

    let shown = env.run(&["calls", "get", id]).success().stdout();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("state:") && l.ends_with("succeeded")),
        "{shown}"
    );
    assert!(shown.contains("\narg: b c\n"), "{shown}");

    let unknown = env.run(&["calls", "list", "nope"]).code_is(2);
    assert!(unknown.stderr().contains("`nope`"), "{}", unknown.stderr());
}

#[test]
fn calls_of_a_name_include_its_stopped_and_redeployed_apps() {
    let env = TestEnv::new();
    let first_id = deploy(&env, "again");
    env.run(&["call", "again", "hello", "--", "first"])
        .success();
    env.run(&["app", "stop", "again", "--yes"]).success();
    let second_id = deploy(&env, "again");
    assert_ne!(first_id, second_id);
    env.run(&["call", "again", "hello", "--", "second"])
        .success();

    let calls = list(&env, &["again"]);
    let seen: Vec<(&Value, &Value)> = calls.iter().map(|c| (&c["args"], &c["app_id"])).collect();
    assert_eq!(
        seen,
        [
            (&json!(["second"]), &json!(second_id)),
            (&json!(["first"]), &json!(first_id)),
        ],
        "newest first, both apps of the name"
    );
    let limited = list(&env, &["again", "--limit", "1"]);
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["args"], json!(["second"]));
    let by_id = list(&env, &[&first_id]);
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["args"], json!(["first"]));
}

#[test]
fn each_map_input_is_a_call_with_its_args() {
    let env = TestEnv::new();
    deploy(&env, "mapped");
    let inputs: Vec<String> = (1..=20).map(|i| format!("line-{i}")).collect();
    let file = env.work.path().join("inputs.txt");
    std::fs::write(&file, inputs.join("\n") + "\n").unwrap();
    env.run(&[
        "call",
        "mapped",
        "hello",
        "--map",
        path(&file),
        "--",
        "fixed",
    ])
    .success();

    let calls = list(&env, &["mapped"]);
    assert_eq!(calls.len(), 20);
    let mut args: Vec<Value> = calls.iter().map(|c| c["args"].clone()).collect();
    args.sort_by_key(|a| a.to_string());
    let mut expected: Vec<Value> = inputs.iter().map(|i| json!(["fixed", i])).collect();
    expected.sort_by_key(|a| a.to_string());
    assert_eq!(args, expected);
    assert!(
        calls
            .iter()
            .all(|c| c["state"] == "succeeded" && c["exit_code"] == 0),
        "{calls:?}"
    );
    let seventh = calls
        .iter()
        .find(|c| c["args"] == json!(["fixed", "line-7"]))
        .unwrap();
    let full = get(&env, seventh["id"].as_str().unwrap());
    assert_eq!(
        full["stdout"],
        "hello from wasmhost\narg: fixed\narg: line-7\n"
    );
}

#[test]
fn failed_calls_keep_their_exit_code_or_error_and_wait_ends_like_them() {
    let env = TestEnv::new();
    deploy(&env, "fails");
    env.run(&["call", "fails", "hello", "--", "ok"]).success();
    let ok = newest(&env);
    env.run(&["call", "fails", "hello", "--", "--exit", "3"])
        .code_is(3);
    let exited = newest(&env);
    env.run(&["call", "fails", "fsops", "--", "trap"])
        .code_is(1);
    let trapped = newest(&env);

    let record = get(&env, &exited);
    assert_eq!(record["state"], "failed");
    assert_eq!(record["exit_code"], 3);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{record}"
    );
    let record = get(&env, &trapped);
    assert_eq!(record["state"], "failed");
    assert_eq!(record["exit_code"], Value::Null);
    assert!(
        record["error"].as_str().unwrap().contains("unreachable"),
        "{record}"
    );

    // --wait: the output as the guest wrote it, and the call's exit.
    let waited = env
        .run_within(BOUND, &["calls", "get", &exited, "--wait"])
        .code_is(3);
    assert_eq!(
        waited.stdout(),
        "hello from wasmhost\narg: --exit\narg: 3\n"
    );
    let waited = env
        .run_within(BOUND, &["calls", "get", &trapped, "--wait"])
        .code_is(1);
    assert_eq!(waited.stdout(), "");
    assert!(
        waited.stderr().starts_with("error: ") && waited.stderr().contains("unreachable"),
        "{}",
        waited.stderr()
    );
    let waited = env
        .run_within(BOUND, &["calls", "get", &ok, "--wait"])
        .success();
    assert_eq!(waited.stdout(), "hello from wasmhost\narg: ok\n");
    // With --json, the record, and the same exit code.
    let waited = env
        .run_within(BOUND, &["calls", "get", &exited, "--wait", "--json"])
        .code_is(3);
    let record: Value = serde_json::from_str(&waited.stdout()).unwrap();
    assert_eq!(record["exit_code"], 3);
    // Without --wait, showing a failed call succeeds.
    let shown = env.run(&["calls", "get", &trapped]).success().stdout();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("error:") && l.contains("unreachable")),
        "{shown}"
    );

    let ended = env.run(&["calls", "cancel", &exited]).code_is(2);
    assert!(
        ended.stderr().contains("already ended"),
        "{}",
        ended.stderr()
    );
    assert_eq!(get(&env, &exited)["state"], "failed");
}

#[test]
fn unknown_ids_and_apps_are_usage_errors() {
    let env = TestEnv::new();
    deploy(&env, "known");
    for args in [
        &["calls", "get", "ca-nope"][..],
        &["calls", "get", "ca-nope", "--wait"],
        &["calls", "get", "ca-nope", "--json"],
        &["calls", "cancel", "ca-nope"],
        &["app", "logs", "known", "--call", "ca-nope"],
    ] {
        let run = env.run_within(BOUND, args).code_is(2);
        assert!(
            run.stderr().contains("ca-nope"),
            "{args:?}: {}",
            run.stderr()
        );
    }
    let run = env.run(&["app", "logs", "unknown-app"]).code_is(2);
    assert!(run.stderr().contains("unknown-app"), "{}", run.stderr());
    let run = env
        .run(&["app", "logs", "known", "--since", "soon"])
        .code_is(2);
    assert!(run.stderr().contains("--since"), "{}", run.stderr());
}

#[test]
fn cancelling_a_running_call_interrupts_it() {
    let env = TestEnv::new();
    deploy(&env, "cancels");
    let mut caller = env.spawn_guarded(&["call", "cancels", "ticker", "--", "1000", "100"]);
    let lines = StdoutLines::of(&mut caller);
    lines.until("tick 1", BOUND);
    let id = newest(&env);
    assert_eq!(get(&env, &id)["state"], "running");

    let cancelled = env.run(&["calls", "cancel", &id]).success();
    assert_eq!(
        cancelled.stdout(),
        format!("cancelled call {id} (was running)\n")
    );
    let status = wait_with_timeout(&mut caller, BOUND);
    assert_eq!(status.code(), Some(1));
    let record = get(&env, &id);
    assert_eq!(record["state"], "cancelled");
    assert!(
        record["error"].as_str().unwrap().contains("calls cancel"),
        "{record}"
    );

    let waited = env
        .run_within(BOUND, &["calls", "get", &id, "--wait"])
        .code_is(1);
    assert!(waited.stderr().contains("cancelled"), "{}", waited.stderr());
    assert!(
        waited.stdout().starts_with("tick 1\n"),
        "{}",
        waited.stdout()
    );
    env.run(&["calls", "cancel", &id]).code_is(2);
}

/// `TIME CALL FUNCTION STREAM: LINE` without its time, which it checks.
fn untimed(line: &str) -> &str {
    let (time, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{line:?}"
    );
    rest
}

#[test]
fn app_logs_shows_the_lines_of_calls() {
    let env = TestEnv::new();
    deploy(&env, "logs");
    env.run(&["call", "logs", "hello", "--", "a"]).success();
    let hello = newest(&env);
    env.run(&["call", "logs", "ticker", "--", "3", "10"])
        .success();
    let ticker = newest(&env);

    let all = stdout_lines(env.run(&["app", "logs", "logs"]));
    let all: Vec<&str> = all.iter().map(|l| untimed(l)).collect();
    assert_eq!(
        all,
        [
            format!("{hello} hello stdout: hello from wasmhost"),
            format!("{hello} hello stdout: arg: a"),
            format!("{ticker} ticker stdout: tick 1"),
            format!("{ticker} ticker stdout: tick 2"),
            format!("{ticker} ticker stdout: tick 3"),
            format!("{ticker} ticker stderr: done"),
        ]
    );

    let of_ticker = stdout_lines(env.run(&["app", "logs", "logs", "--function", "ticker"]));
    assert_eq!(of_ticker.len(), 4, "{of_ticker:?}");
    assert!(
        of_ticker.iter().all(|l| l.contains(&ticker)),
        "{of_ticker:?}"
    );

    let of_hello = stdout_lines(env.run(&["app", "logs", "logs", "--call", &hello]));
    assert_eq!(of_hello.len(), 2, "{of_hello:?}");
    assert!(of_hello.iter().all(|l| l.contains(&hello)), "{of_hello:?}");

    let tail = stdout_lines(env.run(&["app", "logs", "logs", "--tail", "2"]));
    let tail: Vec<&str> = tail.iter().map(|l| untimed(l)).collect();
    assert_eq!(
        tail,
        [
            format!("{ticker} ticker stdout: tick 3"),
            format!("{ticker} ticker stderr: done"),
        ]
    );

    let recent = stdout_lines(env.run(&["app", "logs", "logs", "--since", "1h"]));
    assert_eq!(recent.len(), 6, "{recent:?}");

    let json = stdout_lines(env.run(&["app", "logs", "logs", "--json"]));
    assert_eq!(json.len(), 6, "{json:?}");
    let parsed: Vec<Value> = json
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let last = parsed.last().unwrap();
    assert_eq!(last["call"], ticker.as_str());
    assert_eq!(last["function"], "ticker");
    assert_eq!(last["stream"], "stderr");
    assert_eq!(last["line"], "done");
    assert!(last["time"].as_str().unwrap().ends_with('Z'), "{last}");
    assert_eq!(parsed[1]["line"], "arg: a");
    assert_eq!(parsed[1]["stream"], "stdout");

    // A call of another app is not this app's.
    deploy(&env, "other");
    env.run(&["call", "other", "hello"]).success();
    let other = newest(&env);
    let run = env
        .run(&["app", "logs", "logs", "--call", &other])
        .code_is(2);
    assert!(run.stderr().contains(&other), "{}", run.stderr());
}

/// Sends SIGINT to `pid`.
fn interrupt(pid: u32) {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn app_logs_follow_shows_lines_while_the_call_runs() {
    let env = TestEnv::new();
    deploy(&env, "follows");
    env.run(&["call", "follows", "hello", "--", "old"])
        .success();

    let mut follow = env.spawn_guarded(&["app", "logs", "follows", "--follow", "--tail", "1"]);
    let lines = StdoutLines::of(&mut follow);
    // The last line so far, and only it: the follow has started.
    let first = lines.until("arg: old", BOUND);
    assert_eq!(first.len(), 1, "{first:?}");

    let mut call = env.spawn_guarded(&["call", "follows", "ticker", "--", "10", "300"]);
    let early = lines.until("ticker stdout: tick 2", BOUND);
    assert!(
        call.try_wait().unwrap().is_none(),
        "the call ended before `app logs --follow` showed its second line"
    );
    assert_eq!(early.len(), 2, "{early:?}");
    assert!(early[0].ends_with("ticker stdout: tick 1"), "{early:?}");
    let rest = lines.until("ticker stderr: done", BOUND);
    assert_eq!(rest.len(), 9, "tick 3 to tick 10, then done: {rest:?}");
    assert!(rest[7].ends_with("stdout: tick 10"), "{rest:?}");
    assert!(wait_with_timeout(&mut call, BOUND).success());

    // Ctrl-C ends it, with nothing more said.
    interrupt(follow.id());
    let status = wait_with_timeout(&mut follow, BOUND);
    assert!(status.success(), "{status:?}");
    assert_eq!(lines.next_within(Duration::from_millis(100)), None);
}

#[test]
fn app_logs_follow_ends_quietly_when_its_reader_goes() {
    let env = TestEnv::new();
    deploy(&env, "reader");
    env.run(&["call", "reader", "hello", "--", "one"]).success();
    let mut follow = env.spawn_guarded(&["app", "logs", "reader", "--follow"]);
    let mut stdout = BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("arg: one") {
        line.clear();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "stdout ended");
    }
    drop(stdout);
    // The next line finds no reader.
    env.run(&["call", "reader", "hello", "--", "two"]).success();
    let status = wait_with_timeout(&mut follow, BOUND);
    let mut stderr = String::new();
    std::io::Read::read_to_string(follow.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn guest_text_is_escaped_for_terminals_and_exact_in_json() {
    let env = TestEnv::new();
    deploy(&env, "esc");
    let evil = "\x1b]0;pwned\x07\r\u{202e}fake";
    let out = env
        .run(&["call", "esc", "fsops", "--", "echo-line", evil])
        .success();
    assert_eq!(out.stdout(), format!("{evil}\n"));
    let id = newest(&env);
    let escaped = "\\e]0;pwned\\a\\r\\u202efake";
    let raw_controls = |text: &str| {
        text.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
    };

    let shown = env.run(&["calls", "get", &id]).success().stdout();
    assert!(shown.contains(&format!("\n{escaped}\n")), "{shown}");
    assert!(!raw_controls(&shown), "{shown:?}");
    let logs = env.run(&["app", "logs", "esc"]).success().stdout();
    assert!(logs.ends_with(&format!("stdout: {escaped}\n")), "{logs}");
    assert!(!raw_controls(&logs), "{logs:?}");
    let table = env.run(&["calls", "list"]).success().stdout();
    assert!(!raw_controls(&table), "{table:?}");

    let full = get(&env, &id);
    assert_eq!(full["stdout"], format!("{evil}\n"));
    assert_eq!(full["args"], json!(["echo-line", evil]));
    let line = env
        .run(&["app", "logs", "esc", "--json"])
        .success()
        .stdout();
    let line: Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(line["line"], evil);
}
