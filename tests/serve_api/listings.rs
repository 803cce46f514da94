//! What the API lists and shows: apps and volumes as the CLI lists them,
//! a call's logs as NDJSON (followed while it runs), and the OpenAPI
//! document checked against a running node.

use super::*;

#[test]
fn apps_and_volumes_are_the_cli_lists() {
    let env = TestEnv::new();
    deploy(&env, greet());
    let app = env.fsops_app("keeper", "kept");
    env.run(&["deploy", path(&app)]).success();
    env.run(&["volume", "create", "spare"]).success();
    deploy_one(&env, "gone", "hello");
    env.run(&["app", "stop", "gone", "--yes"]).success();
    let node = Node::start(&env);

    let cli = |args: &[&str]| -> Value {
        serde_json::from_str(&env.run(args).success().stdout()).unwrap()
    };
    let apps = node.get_json("/v1/apps", 200);
    assert_eq!(apps, cli(&["app", "list", "--json"]));
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for name in ["greet", "keeper"] {
        assert!(names.contains(&name), "{name} missing from {apps}");
    }
    // Named volumes are no apps (issue 20 item 12): `/v1/volumes` has them.
    for name in ["kept", "spare"] {
        assert!(
            !names.contains(&name),
            "volume {name} listed as an app: {apps}"
        );
    }
    assert!(!names.contains(&"gone"), "a stopped app is listed: {apps}");
    let volumes = node.get_json("/v1/volumes", 200);
    assert_eq!(volumes, cli(&["volume", "list", "--json"]));
    assert_eq!(volumes.as_array().unwrap().len(), 2, "{volumes}");
}

/// The NDJSON lines of a logs answer.
fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn logs_are_ndjson_and_follow_a_running_call() {
    let env = TestEnv::new();
    deploy(&env, greet());
    deploy_one(&env, "tick", "ticker");
    let node = Node::start(&env);

    let first = call_ok(&node, CALLS, json!({"args": ["first"]}));
    let second = call_ok(&node, CALLS, json!({"args": ["second"]}));

    let reply = node.send("GET", "/v1/apps/greet/logs", Auth::Token, None, b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.content_type.as_deref(), Some("application/x-ndjson"));
    let lines = ndjson(&reply.body);
    let texts: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["call"].as_str().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    let (a, b) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    assert_eq!(
        texts,
        [
            (a, "hello from wasmhost"),
            (a, "arg: first"),
            (b, "hello from wasmhost"),
            (b, "arg: second"),
        ]
    );
    for line in &lines {
        let mut keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["call", "function", "line", "stream", "time"],
            "{line}"
        );
        assert_eq!(line["function"], "hello");
        assert_eq!(line["stream"], "stdout");
    }
    let (_, only_b) = node.get(&format!("/v1/apps/greet/logs?call={b}&since=1h&follow=0"));
    assert_eq!(ndjson(&only_b).len(), 2, "{only_b}");
    let (_, none) = node.get("/v1/apps/greet/logs?function=nope");
    assert_eq!(none, "");

    // follow=1: the lines of a call printing every 200 ms arrive one by
    // one while it runs.
    let id = spawn(
        &node,
        "/v1/apps/tick/functions/ticker/calls",
        json!(["8", "200"]),
    );
    let (status, stream) = node.get_stream(
        &format!("/v1/apps/tick/logs?follow=1&call={id}"),
        Duration::from_secs(20),
    );
    assert_eq!(status, 200);
    let mut stream = BufReader::new(stream);
    let started = Instant::now();
    let mut arrivals = Vec::new();
    for i in 1..=8 {
        let mut line = String::new();
        stream
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("tick {i} did not arrive: {e}"));
        let line: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(line["line"], format!("tick {i}"), "{line}");
        assert_eq!(line["call"], id.as_str());
        arrivals.push(started.elapsed());
        if i == 1 {
            let call = node.get_json(&format!("/v1/calls/{id}"), 200);
            assert_eq!(
                call["state"], "running",
                "tick 1 came after the end: {call}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ticks too slow"
        );
    }
    // Eight ticks 200 ms apart span 1.4 s; lines sent in one piece at the
    // end would arrive within a few milliseconds of each other.
    assert!(
        arrivals[7] - arrivals[0] >= Duration::from_millis(800),
        "the ticks arrived together: {arrivals:?}"
    );
    let ended = node.wait_call(&id, Duration::from_secs(30));
    assert_eq!(ended["state"], "succeeded", "{ended}");
}

/// A venv under the target's tmp dir holding schemathesis (made once, kept
/// across runs).
fn schemathesis() -> PathBuf {
    const VERSION: &str = "4.32.5";
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    std::fs::create_dir_all(&dir).unwrap();
    let venv = dir.join("venv");
    let bin = venv.join("bin").join("schemathesis");
    let marker = dir.join(format!("installed-{VERSION}"));
    // One installer at a time across test processes.
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock(2) on a descriptor we own; released when `lock` closes.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    if marker.exists() && bin.exists() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("python3 is needed to install schemathesis (PyPI) for the OpenAPI test");
    assert!(
        made.status.success(),
        "python3 -m venv failed (install python3-venv): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let installed = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("schemathesis=={VERSION}"),
        ])
        .output()
        .expect("run the venv's pip");
    assert!(
        installed.status.success(),
        "pip install schemathesis=={VERSION} failed (the OpenAPI test needs PyPI):\n{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    std::fs::write(&marker, "").unwrap();
    bin
}

#[test]
fn the_openapi_document_holds_against_the_node() {
    let schemathesis = schemathesis();
    let env = TestEnv::new();
    deploy(&env, greet());
    let node = Node::start(&env);
    // Real names, so generated requests reach the handlers; `follow`
    // pinned off, since a followed log never ends by itself.
    let config = env.work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        r#"
[parameters]
app = "greet"
function = "hello"

[[operations]]
include-name = "GET /v1/apps/{app}/logs"
parameters = { follow = "0" }
"#,
    )
    .unwrap();
    let out = env.work.path().join("schemathesis.out");
    let out_file = std::fs::File::create(&out).unwrap();
    let started = Instant::now();
    let mut run = Command::new(&schemathesis)
        .current_dir(env.work.path())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(node.url("/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {}", node.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,positive_data_acceptance,negative_data_rejection,\
             ignored_auth,unsupported_method,missing_required_header",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            "--no-color",
        ])
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .expect("run schemathesis");
    let status = wait_with_timeout(&mut run, Duration::from_secs(300));
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "schemathesis found problems ({status}) in {:?}:\n{report}\nnode stderr:\n{}",
        started.elapsed(),
        node.stderr()
    );
    assert_healthy(&node, "schemathesis");
}
