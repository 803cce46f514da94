//! `run --map`: results in input order however the inputs finish, failures
//! summarized without touching the others, the head of the order streamed
//! as it is ready, and instances that really run at once.

use super::*;

#[test]
fn map_prints_300_results_in_input_order() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "mapper", "mapper-data");
    let inputs: Vec<String> = (0..300).map(|i| format!("line {i:03} of 300")).collect();
    let file = map_file(&env, "inputs.txt", &inputs);
    let run = env.run(&map_args(&app, &file, &["echo-line"])).success();
    let out = run.stdout();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        inputs,
        "one result per input, in input order"
    );
    assert!(
        run.stderr().is_empty(),
        "nothing extra when piped: {}",
        run.stderr()
    );
}

#[test]
fn map_keeps_input_order_when_later_inputs_finish_first() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "jitter", "jitter-data");
    // Earlier inputs sleep longer, so completion order is the reverse; each
    // logs when it is done.
    let inputs: Vec<String> = (0..16)
        .map(|i| format!("echo-after {} out-{i:02} /data/done.log", (16 - i) * 40))
        .collect();
    let file = map_file(&env, "inputs.txt", &inputs);
    let out = env
        .run(&map_args(&app, &file, &["words"]))
        .success()
        .stdout();
    let expected: Vec<String> = (0..16).map(|i| format!("out-{i:02}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    let done = volume_file(&env, "jitter-data", "/done.log");
    let finished = |name: &str| done.lines().position(|l| l == name).unwrap();
    assert!(
        finished("out-07") < finished("out-00"),
        "later inputs did not finish first, so the order was never at stake: {done}"
    );
}

#[test]
fn map_failures_do_not_affect_the_others_and_are_summarized() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "failing", "failing-data");
    let inputs = [
        "echo-after 500 first",
        "trap",
        "exit 3",
        "spin",
        "echo-line last",
    ];
    let mut child = env
        .command()
        .args([
            "run",
            s(&app),
            "short",
            "--map",
            "-",
            "--concurrency",
            "8",
            "--",
            "words",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(inputs.join("\n").as_bytes()).unwrap();
    drop(stdin);
    let run = finish(child).code_is(1);
    assert_eq!(
        run.stdout(),
        "first\nlast\n",
        "the good inputs' output, in order"
    );
    let stderr = run.stderr();
    let summary: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        summary.len(),
        4,
        "a header and one line per failure: {stderr}"
    );
    assert!(summary[0].contains("3 of 5"), "{stderr}");
    assert!(
        summary[1].contains("input 2 `trap`") && summary[1].contains("trapped"),
        "{stderr}"
    );
    assert!(
        summary[2].contains("input 3 `exit 3`") && summary[2].contains("exit code 3"),
        "{stderr}"
    );
    assert!(
        summary[3].contains("input 4 `spin`") && summary[3].contains("timed out"),
        "{stderr}"
    );
}

#[test]
fn map_streams_the_head_of_the_order_without_waiting_for_the_rest() {
    let env = TestEnv::new();
    let app = fsops_app(&env, Target::P1, "streamer", "streamer-data");
    let file = map_file(
        &env,
        "inputs.txt",
        &["echo-line early".into(), "sleep 120000".into()],
    );
    let mut child = env.spawn(&[
        "run",
        s(&app),
        "--map",
        s(&file),
        "--concurrency",
        "2",
        "--",
        "words",
    ]);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "early\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the second input is still sleeping"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Each of 8 instances keeps a marker in a shared volume for 2 s and
/// counts the markers it sees: all 8 ran at once only if one of them saw 8
/// (a bound on the wall time would let 2-way parallelism pass).
#[test]
fn eight_sleeps_at_concurrency_8_overlap() {
    let env = TestEnv::new();
    let app = AppToml::new("sleepy")
        .volume("runs", |v| v)
        .function("overlap", |f| f.guest("overlap").mount("/runs", "runs"))
        .write(&env);
    let file = map_file(&env, "inputs.txt", &vec!["x".to_owned(); 8]);
    let out = env
        .run(&map_args(&app, &file, &["/runs", "2000"]))
        .success()
        .stdout();
    let seen: Vec<usize> = out
        .lines()
        .filter_map(|l| l.strip_prefix("max ")?.parse().ok())
        .collect();
    assert_eq!(seen.len(), 8, "{out}");
    assert_eq!(
        seen.iter().max(),
        Some(&8),
        "the most instances seen at once: {out}"
    );
}
