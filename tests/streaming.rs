//! Output and input as streams: `--map -` starts invocations as lines
//! arrive and holds bounded memory, a guest blocked writing to a reader that
//! does not read still times out (and lets go of its locks), a closed stdout
//! ends a command quietly and leaves a guest's stderr working, and a
//! reader that stops reading holds `--map` to bounded memory; `--env`, and
//! NUL bytes WASI cannot carry.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{AppToml, TestEnv, eventually, path as s, wait_with_timeout};

/// An app whose function `mapper` (the `--map` test guest) mounts the named
/// volume `volume` at /data, with `concurrency` instances at once.
fn mapper_app(env: &TestEnv, name: &str, volume: &str, concurrency: u32) -> std::path::PathBuf {
    AppToml::new(name)
        .volume("data", |v| v.persist(volume))
        .function("mapper", |f| {
            f.guest("mapper")
                .mount("/data", "data")
                .concurrency(concurrency)
        })
        .write(env)
}

/// `run APP --map -` with stdin and stdout piped.
fn spawn_map_stdin(env: &TestEnv, app: &Path) -> Child {
    env.command()
        .args(["run", s(app), "--map", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wasmhost")
}

/// `run APP --map FILE` of `inputs`, its stdout and stderr piped.
fn spawn_map_of(env: &TestEnv, app: &Path, inputs: &[String]) -> Child {
    let list = env.work.path().join("inputs.txt");
    std::fs::write(&list, inputs.join("\n")).unwrap();
    env.command()
        .args(["run", s(app), "--map", s(&list)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wasmhost")
}

/// The child's stdout lines, as they come, on a channel.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn send(stdin: &mut ChildStdin, line: &str) {
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
}

/// A field of /proc/PID/status, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// Lines of a file in a named volume (empty if it does not exist yet).
fn volume_lines(env: &TestEnv, volume: &str, remote: &str) -> usize {
    let got = env.run(&["volume", "get", volume, remote, "-"]);
    if got.code() != 0 {
        return 0;
    }
    got.stdout().lines().count()
}

#[test]
fn map_from_stdin_starts_each_input_as_its_line_arrives() {
    let env = TestEnv::new();
    let app = mapper_app(&env, "stream", "stream-data", 4);
    let mut child = spawn_map_stdin(&env, &app);
    let mut stdin = child.stdin.take().unwrap();
    let lines = stdout_lines(&mut child);

    // Input 2 is written only once input 1's output is out: a wasmhost that
    // waits for the end of its input never prints it.
    send(&mut stdin, "emit one 0 -");
    let first = lines.recv_timeout(Duration::from_secs(60));
    if first.is_err() {
        let _ = child.kill();
    }
    assert_eq!(
        first.as_deref(),
        Ok("one"),
        "input 1's output should appear before stdin ends"
    );
    send(&mut stdin, "emit two 0 -");
    drop(stdin);
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let rest: Vec<String> = lines.iter().collect();
    assert!(status.success(), "stderr: {}", stderr_of(&mut child));
    assert_eq!(rest, ["two"]);
}

/// Endless input (a `yes`): the process's memory stays bounded while it
/// reads. Lines are padded to 4 KiB so that a wasmhost that keeps its input
/// would pass the bound within the first 100 MB.
#[test]
fn map_of_endless_stdin_runs_in_bounded_memory() {
    /// VmRSS bound: the runtime, two instances and a few lines in flight
    /// take well under half of it.
    const MAX_RSS_KB: u64 = 200 << 10;
    let env = TestEnv::new();
    let app = mapper_app(&env, "endless", "endless-data", 2);
    let mut child = spawn_map_stdin(&env, &app);
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let lines = stdout_lines(&mut child);
    let pad = "p".repeat(4096);
    // Until wasmhost has taken more than its memory bound of input (so a
    // wasmhost that kept it could not pass), bounded in time; stops early
    // if wasmhost dies.
    let enough = (MAX_RSS_KB << 10) * 5 / 4;
    let writer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        let (mut written, mut bytes) = (0usize, 0u64);
        while bytes < enough && Instant::now() < deadline {
            let line = format!("emit {written} 0 - # {pad}\n");
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
            written += 1;
            bytes += line.len() as u64;
        }
        (written, bytes)
    });
    let mut max_rss = 0;
    while !writer.is_finished() {
        max_rss = max_rss.max(status_kb(pid, "VmRSS"));
        assert!(
            max_rss < MAX_RSS_KB,
            "wasmhost grew to {max_rss} kB reading endless input"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (written, bytes) = writer.join().unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    let outputs: Vec<String> = lines.iter().collect();
    assert!(status.success(), "stderr: {}", stderr_of(&mut child));
    // Every input ran, once, and its output came in input order.
    let expected: Vec<String> = (0..written).map(|i| i.to_string()).collect();
    assert_eq!(outputs.len(), written);
    assert!(outputs == expected, "outputs are not in input order");
    assert!(
        bytes >= enough,
        "only {bytes} bytes of input were taken in 90 s, less than the memory bound"
    );
}

/// One slow input at the head and hundreds of fast ones with big outputs
/// behind it: the finished outputs wait (they are printed in input order),
/// but only up to a bound; past it wasmhost starts nothing new until the
/// head is done.
#[test]
fn map_behind_a_slow_input_holds_bounded_output() {
    /// 300 outputs of 4 MiB would be 1.2 GB held.
    const MAX_HWM_KB: u64 = 600 << 10;
    let env = TestEnv::new();
    let app = mapper_app(&env, "backlog", "backlog-data", 4);
    let mut inputs = vec!["wait /data/go head".to_owned()];
    inputs.extend((1..=300).map(|i| format!("emit {i} 4096 /data/count")));
    let mut child = spawn_map_of(&env, &app, &inputs);
    let pid = child.id();
    let lines = stdout_lines(&mut child);

    // Enough followers have run to fill the backlog; give a wasmhost without
    // the bound time to run far more, then look.
    eventually(Duration::from_secs(60), "followers ran", || {
        volume_lines(&env, "backlog-data", "/count") >= 10
    });
    std::thread::sleep(Duration::from_secs(3));
    let ran = volume_lines(&env, "backlog-data", "/count");
    let hwm = status_kb(pid, "VmHWM");
    let go = env.work.path().join("go");
    std::fs::write(&go, "").unwrap();
    env.run(&["volume", "put", "backlog-data", s(&go), "/go"])
        .success();
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    let tags: Vec<String> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert!(status.success(), "stderr: {}", stderr_of(&mut child));
    assert!(
        ran < 100,
        "{ran} of 300 inputs ran while the head was stuck"
    );
    assert!(hwm < MAX_HWM_KB, "wasmhost peaked at {hwm} kB");
    let mut order = tags;
    order.dedup();
    let expected: Vec<String> = std::iter::once("head".to_owned())
        .chain((1..=300).map(|i| i.to_string()))
        .collect();
    assert!(order == expected, "outputs are not in input order");
}

/// A reader that stops reading (`| sleep`): outputs that finished wait to
/// be written, and count against the same bound as those behind a slow
/// input (issue 20 item 16), so wasmhost starts nothing new past it
/// rather than holding every output in memory.
#[test]
fn map_into_a_reader_that_stops_reading_holds_bounded_memory() {
    /// 60 outputs of 15.6 MiB would be 940 MB held.
    const MAX_HWM_KB: u64 = 500 << 10;
    let env = TestEnv::new();
    let app = mapper_app(&env, "stalled", "stalled-data", 4);
    let inputs: Vec<String> = (1..=60)
        .map(|i| format!("emit {i} 16000 /data/count"))
        .collect();
    // Its stdout is a pipe nobody reads.
    let mut child = spawn_map_of(&env, &app, &inputs);
    let pid = child.id();
    eventually(Duration::from_secs(60), "inputs ran", || {
        volume_lines(&env, "stalled-data", "/count") >= 5
    });
    // Time for a wasmhost without the bound to run every input.
    std::thread::sleep(Duration::from_secs(5));
    let ran = volume_lines(&env, "stalled-data", "/count");
    let hwm = status_kb(pid, "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    assert!(ran < 30, "{ran} of 60 inputs ran with nobody reading");
    assert!(hwm < MAX_HWM_KB, "wasmhost peaked at {hwm} kB");
}

/// A guest that holds a lock and floods a stdout nobody reads is blocked in
/// its write; its `timeout` must still end it and free the lock.
#[test]
fn timeout_ends_a_guest_blocked_writing_to_an_unread_pipe() {
    for target in ["guest", "guest2"] {
        let env = TestEnv::new();
        let app = AppToml::new("flood")
            .volume("data", |v| v.persist("flood-data"))
            .function("fsops", |f| {
                f.module(format!("{{{target}:fsops}}"))
                    .mount("/data", "data")
                    .timeout("2s")
            })
            .write(&env);
        let mut child = env.spawn(&[
            "run",
            s(&app),
            "--",
            "lock-then",
            "/data/l",
            "spew",
            "100000",
        ]);
        // Read the `locked` line, then never read again: the pipe fills.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "locked\n", "{target}: the guest should take its lock");
        let started = Instant::now();
        let status = wait_with_timeout(&mut child, Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{target}");
        let stderr = stderr_of(&mut child);
        assert!(
            stderr.contains("timed out after 2s"),
            "{target}: stderr: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(15), "{target}");
        let other = env
            .run(&["run", s(&app), "--", "try-lock", "/data/l"])
            .success();
        assert_eq!(other.stdout().trim(), "acquired", "{target}");
        drop(stdout);
    }
}

/// A pipe whose reader is already gone, for a child's stdout.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "quiet-vol"]).success();
    for args in [&["app", "list", "--all"][..], &["volume", "list"]] {
        let out = env
            .command()
            .args(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: stderr: {stderr}");
    }
}

/// A guest whose stdout reader went away still writes its stderr: each
/// stream fails on its own (wasmtime's `p2_cli_stdout_epipe`), and the
/// guest, which handles the failed stdout, exits 0.
#[test]
fn a_closed_stdout_leaves_the_guests_stderr_working() {
    for target in ["guest", "guest2"] {
        let env = TestEnv::new();
        let app = AppToml::new("epipe")
            .function("fsops", |f| f.module(format!("{{{target}:fsops}}")))
            .write(&env);
        let out = env
            .command()
            .args(["run", s(&app), "--", "stdout-until-closed"])
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("stderr still works"),
            "{target}: stderr: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{target}: stderr: {stderr}");
    }
}

#[test]
fn map_stops_starting_inputs_once_its_stdout_is_closed() {
    let env = TestEnv::new();
    let app = mapper_app(&env, "closed", "closed-data", 2);
    let inputs: Vec<String> = (0..1000)
        .map(|i| format!("emit {i} 0 /data/count"))
        .collect();
    let list = env.work.path().join("inputs.txt");
    std::fs::write(&list, inputs.join("\n")).unwrap();
    let out = env
        .command()
        .args(["run", s(&app), "--map", s(&list)])
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    let ran = volume_lines(&env, "closed-data", "/count");
    // The first output meets the closed pipe; a loaded machine may run a few
    // more before the map sees it, never anywhere near all.
    assert!((1..500).contains(&ran), "{ran} of 1000 inputs ran");
    // Its ephemeral app was stopped as usual.
    let apps = env.apps();
    let closed = apps.iter().find(|a| a["name"] == "closed").unwrap();
    assert_eq!(closed["state"], "stopped");
}

fn env_app(env: &TestEnv, value: &str) -> std::path::PathBuf {
    AppToml::new("envs")
        .function("fsops", |f| {
            f.guest("fsops").env("FROM_TOML", "toml").env("BOTH", value)
        })
        .write(env)
}

#[test]
fn env_flags_override_app_toml_on_run_and_call() {
    let env = TestEnv::new();
    let app = env_app(&env, "toml");
    let get = |how: &[&str], name: &str| {
        let mut args = how.to_vec();
        args.extend([
            "--env",
            "BOTH=first",
            "--env",
            "BOTH=flag",
            "--env",
            "NEW=a=b",
        ]);
        args.extend(["--", "env", name]);
        env.run(&args).success().stdout().trim().to_owned()
    };
    let run = ["run", s(&app)];
    assert_eq!(get(&run, "BOTH"), "flag");
    assert_eq!(get(&run, "NEW"), "a=b");
    assert_eq!(get(&run, "FROM_TOML"), "toml");
    env.run(&["deploy", s(&app)]).success();
    let call = ["call", "envs", "fsops"];
    assert_eq!(get(&call, "BOTH"), "flag");
    assert_eq!(get(&call, "FROM_TOML"), "toml");
    for bad in ["=x", "NOEQUALS", ""] {
        let out = env
            .run(&["run", s(&app), "--env", bad, "--", "env", "X"])
            .code_is(2);
        assert!(out.stderr().contains("--env"), "{bad:?}: {}", out.stderr());
    }
}

#[test]
fn a_nul_in_an_env_value_is_a_manifest_error_at_its_line() {
    let env = TestEnv::new();
    // As written, for the line of the error.
    let app = env.app(
        "envs",
        r#"
name = "envs"
[functions.fsops]
module = "{guest:fsops}"
env = { FROM_TOML = "toml", BOTH = "a\u0000b" }
"#,
    );
    let out = env.run(&["run", s(&app), "--", "env", "BOTH"]).code_is(2);
    assert!(
        out.stderr().contains("app.toml:5:") && out.stderr().contains("NUL"),
        "{}",
        out.stderr()
    );
}

#[test]
fn a_map_line_with_a_nul_fails_that_input_only() {
    let env = TestEnv::new();
    let app = mapper_app(&env, "nul", "nul-data", 2);
    let list = env.work.path().join("inputs.txt");
    std::fs::write(&list, b"emit a 0 -\nemit b\0c 0 -\nemit d 0 -\n").unwrap();
    let out = env.run(&["run", s(&app), "--map", s(&list)]).code_is(1);
    assert_eq!(out.stdout(), "a\nd\n");
    assert!(
        out.stderr().contains("1 of 3 invocations failed")
            && out.stderr().contains("input 2")
            && out.stderr().contains("NUL byte"),
        "{}",
        out.stderr()
    );
}

/// Arguments cannot come with a NUL from a shell, but app.toml's `args` (and
/// the library's other callers) can: the invocation fails, saying why,
/// rather than a wasip1 guest seeing the argument cut short.
#[test]
fn an_argument_with_a_nul_fails_the_invocation() {
    let env = TestEnv::new();
    for target in ["guest", "guest2"] {
        let app = AppToml::new("nularg")
            .function("fsops", |f| {
                f.module(format!("{{{target}:fsops}}"))
                    .args(&["echo-line", "a\0b"])
            })
            .write(&env);
        let out = env.run(&["run", s(&app)]).code_is(1);
        assert_eq!(out.stdout(), "", "{target}");
        assert!(
            out.stderr().contains("holds a NUL byte"),
            "{target}: {}",
            out.stderr()
        );
    }
}
