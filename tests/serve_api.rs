//! The node's HTTP API (SPEC section 6): `wasmhost serve` on a free port,
//! driven over HTTP as a client would — the token on every route but
//! /v1/health, calls run, spawned and cancelled, bad requests refused with
//! one JSON line and nothing recorded, the lists the CLI prints, NDJSON
//! logs (followed while a call prints), and the OpenAPI document checked
//! against the node by schemathesis.

mod common;
#[path = "serve_api/listings.rs"]
mod listings;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::{Auth, Node};
use common::{AppToml, TestEnv, path, wait_with_timeout};
use serde_json::{Value, json};

/// `greet`: the hello guest, and fsops (for a call that outlives the test's
/// patience unless it is cancelled).
fn greet() -> AppToml {
    AppToml::new("greet")
        .function("hello", |f| f.guest("hello"))
        .function("fsops", |f| f.guest("fsops"))
}

const CALLS: &str = "/v1/apps/greet/functions/hello/calls";

fn deploy(env: &TestEnv, app: AppToml) {
    let app = app.write(env);
    env.run(&["deploy", path(&app)]).success();
}

/// Deploys app `name` with one function, `function`, running the wasip1
/// guest of the same name.
fn deploy_one(env: &TestEnv, name: &str, function: &str) {
    deploy(
        env,
        AppToml::new(name).function(function, |f| f.guest(function)),
    );
}

/// POSTs `body` to the calls route `calls` and returns the ended call.
#[track_caller]
fn call_ok(node: &Node, calls: &str, body: Value) -> Value {
    let (status, answer) = node.post_json(calls, &body.to_string());
    assert_eq!(status, 200, "POST {calls} {body}: {answer}");
    serde_json::from_str(&answer).unwrap()
}

/// Cancels call `id`, asserting the node says it was running.
#[track_caller]
fn cancel_running(node: &Node, id: &str) {
    let (status, body) = node.delete(&format!("/v1/calls/{id}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "id": id, "state": "cancelled", "was": "running" })
    );
}

/// How many calls the registry holds (every call of a deployed app is
/// recorded, so this is what a refused request must not change).
fn recorded_calls(env: &TestEnv) -> usize {
    env.registry()
        .read(|tx| tx.list_calls(None, wasmhost::registry::KindFilter::All, usize::MAX >> 1))
        .unwrap()
        .len()
}

/// The token with its last byte changed: the same length, one byte off.
fn one_byte_off(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let last = bytes.last_mut().unwrap();
    *last = if *last == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

/// Asserts an error answer: `status`, JSON content, and a body that is one
/// line holding `{"error": "…"}` and nothing else. Returns the message.
#[track_caller]
fn assert_error(what: &str, status: u16, reply: &common::node::Reply) -> String {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/json"),
        "{what}: an error is JSON"
    );
    assert!(
        !reply.body.trim_end().contains('\n'),
        "{what}: the error is not one line: {:?}",
        reply.body
    );
    let body = reply.json();
    let fields = body.as_object().unwrap();
    assert_eq!(fields.len(), 1, "{what}: only `error`: {body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `error` is a string: {body}"));
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{what}: {message:?}"
    );
    message.to_owned()
}

#[track_caller]
fn assert_healthy(node: &Node, after: &str) {
    let (status, body) = node.get_as("/v1/health", Auth::None);
    assert_eq!(status, 200, "health after {after}: {body}");
}

/// Spawns a call (`"spawn": true`) and returns its id.
#[track_caller]
fn spawn(node: &Node, calls: &str, args: Value) -> String {
    let (status, body) = node.post_json(calls, &json!({ "args": args, "spawn": true }).to_string());
    assert_eq!(status, 202, "{body}");
    let queued: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(queued["state"], "queued", "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ca-"), "{id}");
    id
}

/// Waits (bounded) until call `id` is running and its stdout holds `text`.
#[track_caller]
fn wait_for_output(node: &Node, id: &str, text: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let call = node.get_json(&format!("/v1/calls/{id}"), 200);
        let state = call["state"].as_str().unwrap();
        assert!(
            ["queued", "running"].contains(&state),
            "call {id} ended: {call}"
        );
        if state == "running" && call["stdout"].as_str().unwrap().contains(text) {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "call {id} was not running with {text:?} printed within 30s: {call}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn every_route_but_health_needs_the_exact_token() {
    let env = TestEnv::new();
    deploy(&env, greet());
    let node = Node::start(&env);

    let (status, body) = node.get_as("/v1/health", Auth::None);
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health,
        json!({ "status": "ok", "node": node.id, "version": env!("CARGO_PKG_VERSION") })
    );
    let mode = std::fs::metadata(env.home().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is the owner's only");

    // A call to cancel, running while it is refused without the token.
    let sleeper = spawn(
        &node,
        "/v1/apps/greet/functions/fsops/calls",
        json!(["sleep", "60000"]),
    );
    wait_for_output(&node, &sleeper, "");
    let finished = call_ok(&node, CALLS, json!({}));
    let finished = finished["id"].as_str().unwrap();

    let wrong = one_byte_off(&node.token);
    assert_eq!(wrong.len(), node.token.len());
    let routes = [
        ("GET", "/v1/apps".to_owned()),
        ("GET", "/v1/volumes".to_owned()),
        ("GET", "/v1/openapi.json".to_owned()),
        ("POST", CALLS.to_owned()),
        ("GET", format!("/v1/calls/{finished}")),
        ("DELETE", format!("/v1/calls/{sleeper}")),
        ("GET", "/v1/apps/greet/logs".to_owned()),
    ];
    let before = recorded_calls(&env);
    for (method, route) in &routes {
        for auth in [Auth::None, Auth::Bearer(&wrong), Auth::Bearer("")] {
            let reply = node.send(method, route, auth, Some("application/json"), b"{}");
            assert_error(&format!("{method} {route} with {auth:?}"), 401, &reply);
        }
        // The token without the scheme, or under another scheme.
        for header in [node.token.clone(), format!("Basic {}", node.token)] {
            let reply = raw_request(&node, method, route, &header);
            assert!(
                reply.starts_with("HTTP/1.1 401"),
                "{method} {route} with Authorization: {header}: {reply}"
            );
        }
    }
    assert_eq!(
        recorded_calls(&env),
        before,
        "a refused POST recorded a call"
    );
    let sleeping = node.get_json(&format!("/v1/calls/{sleeper}"), 200);
    assert_eq!(
        sleeping["state"], "running",
        "a refused DELETE cancelled: {sleeping}"
    );

    // With the token each route works (the scheme's name in any case).
    let any_case = raw_request(&node, "GET", "/v1/apps", &format!("bEARER {}", node.token));
    assert!(any_case.starts_with("HTTP/1.1 200"), "{any_case}");
    let apps = node.get_json("/v1/apps", 200);
    assert!(
        apps.as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "greet"),
        "{apps}"
    );
    assert!(node.get_json("/v1/volumes", 200).is_array());
    let document = node.get_json("/v1/openapi.json", 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    call_ok(&node, CALLS, json!({}));
    let got = node.get_json(&format!("/v1/calls/{finished}"), 200);
    assert_eq!(got["state"], "succeeded", "{got}");
    let (status, logs) = node.get("/v1/apps/greet/logs");
    assert_eq!(status, 200, "{logs}");
    assert!(logs.contains("hello from wasmhost"), "{logs}");
    cancel_running(&node, &sleeper);
}

/// One request on a fresh connection with `Authorization: HEADER`; the
/// answer's text.
fn raw_request(node: &Node, method: &str, route: &str, header: &str) -> String {
    let mut stream = TcpStream::connect(node.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {route} HTTP/1.1\r\nHost: {}\r\nAuthorization: {header}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        node.addr
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn calls_return_their_exit_code_and_output() {
    let env = TestEnv::new();
    deploy(&env, greet());
    let node = Node::start(&env);

    let ended = call_ok(
        &node,
        CALLS,
        json!({"args": ["one two", "ünï"], "env": {"GREETING": "hi there"}}),
    );
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["exit_code"], 0, "{ended}");
    assert_eq!(ended["app"], "greet");
    assert_eq!(ended["function"], "hello");
    assert_eq!(ended["args"], json!(["one two", "ünï"]));
    assert_eq!(ended["node"], node.id.as_str());
    assert_eq!(ended["attempts"], 1);
    assert_eq!(
        ended["stdout"],
        "hello from wasmhost\narg: one two\narg: ünï\nGREETING=hi there\n"
    );
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(ended[field].is_string(), "{field}: {ended}");
    }
    // What the POST answered is the record.
    let id = ended["id"].as_str().unwrap();
    assert_eq!(node.get_json(&format!("/v1/calls/{id}"), 200), ended);

    let failed = call_ok(&node, CALLS, json!({"args": ["--exit", "7"]}));
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["exit_code"], 7, "{failed}");
    assert!(
        failed["stdout"].as_str().unwrap().contains("arg: 7"),
        "{failed}"
    );

    let id = spawn(&node, CALLS, json!(["spawned"]));
    let spawned = node.wait_call(&id, Duration::from_secs(30));
    assert_eq!(spawned["state"], "succeeded", "{spawned}");
    assert_eq!(spawned["exit_code"], 0, "{spawned}");
    assert_eq!(spawned["stdout"], "hello from wasmhost\narg: spawned\n");
    assert_eq!(spawned["node"], node.id.as_str());

    // A finished call cannot be cancelled, and says so.
    let reply = node.send("DELETE", &format!("/v1/calls/{id}"), Auth::Token, None, b"");
    assert_error("cancelling a finished call", 409, &reply);
    assert_eq!(node.wait_call(&id, Duration::ZERO)["state"], "succeeded");
}

#[test]
fn cancel_interrupts_a_running_call_and_frees_its_lock() {
    let env = TestEnv::new();
    let app = env.fsops_app("locker", "locker-data");
    env.run(&["deploy", path(&app)]).success();
    let node = Node::start(&env);
    let calls = "/v1/apps/locker/functions/fsops/calls";

    // Holds the lock for 60 s unless interrupted.
    let holder = spawn(
        &node,
        calls,
        json!(["hold-lock", "/data/shared.lock", "60000"]),
    );
    wait_for_output(&node, &holder, "locked\n");
    // While it holds the lock, another call cannot have it.
    let busy = call_ok(
        &node,
        calls,
        json!({"args": ["lock-timeout", "/data/shared.lock", "300"]}),
    );
    assert_eq!(busy["stdout"], "timeout\n", "the lock should be held");

    let cancelled_at = Instant::now();
    cancel_running(&node, &holder);
    // The instance is interrupted: its attempt ends within seconds, not
    // after the guest's 60 s.
    let deadline = cancelled_at + Duration::from_secs(15);
    let call = loop {
        let call = node.get_json(&format!("/v1/calls/{holder}"), 200);
        assert_eq!(call["state"], "cancelled", "{call}");
        if call["attempt_history"][0]["finished_at"].is_string() {
            break call;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled call's attempt has not ended after 15s: {call}"
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(call["finished_at"].is_string(), "{call}");
    assert_eq!(call["exit_code"], Value::Null, "{call}");
    assert_eq!(
        call["error"], "cancelled by DELETE /v1/calls/{id} on the node API",
        "{call}"
    );

    // And the lock it held is free.
    let after = call_ok(
        &node,
        calls,
        json!({"args": ["lock-timeout", "/data/shared.lock", "2000"]}),
    );
    assert_eq!(after["stdout"], "acquired\n", "{after}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(30),
        "cancel to a free lock took {:?}",
        cancelled_at.elapsed()
    );
}

#[test]
fn bad_requests_get_one_json_line_and_record_nothing() {
    let env = TestEnv::new();
    deploy(&env, greet());
    deploy_one(&env, "gone", "hello");
    env.run(&["app", "stop", "gone", "--yes"]).success();
    let node = Node::start(&env);
    let json_type = Some("application/json");
    // (what, method, route, content type, body, status)
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, Option<&str>, &[u8], u16)] = &[
        ("malformed JSON", "POST", CALLS, json_type, b"{\"args\": [", 400),
        ("not an object", "POST", CALLS, json_type, b"[\"a\"]", 400),
        ("an empty array", "POST", CALLS, json_type, b"[]", 400),
        ("the fields as an array", "POST", CALLS, json_type, br#"[["a"], {}, false]"#, 400),
        ("null", "POST", CALLS, json_type, b"null", 400),
        ("args a string", "POST", CALLS, json_type, br#"{"args": "a b"}"#, 400),
        ("spawn a string", "POST", CALLS, json_type, br#"{"spawn": "true"}"#, 400),
        ("env a list", "POST", CALLS, json_type, br#"{"env": ["A=1"]}"#, 400),
        ("an env value a number", "POST", CALLS, json_type, br#"{"env": {"A": 1}}"#, 400),
        ("an unknown field", "POST", CALLS, json_type, br#"{"args": [], "argz": []}"#, 400),
        ("args not strings", "POST", CALLS, json_type, br#"{"args": [1, 2]}"#, 400),
        ("a NUL in an arg", "POST", CALLS, json_type, br#"{"args": ["a\u0000b"]}"#, 400),
        ("a NUL in an env value", "POST", CALLS, json_type, br#"{"env": {"A": "\u0000"}}"#, 400),
        ("an env name with =", "POST", CALLS, json_type, br#"{"env": {"A=B": "x"}}"#, 400),
        ("an empty env name", "POST", CALLS, json_type, br#"{"env": {"": "x"}}"#, 400),
        ("invalid UTF-8", "POST", CALLS, json_type, b"{\"args\": [\"\xff\"]}", 400),
        ("an unknown app", "POST", "/v1/apps/nope/functions/hello/calls", json_type, b"{}", 404),
        ("an unknown function", "POST", "/v1/apps/greet/functions/nope/calls", json_type, b"{}", 404),
        ("a stopped app", "POST", "/v1/apps/gone/functions/hello/calls", json_type, b"{}", 404),
        ("invalid UTF-8 in an app name", "POST", "/v1/apps/%FF/functions/hello/calls", json_type, b"{}", 400),
        ("a text body", "POST", CALLS, Some("text/plain"), b"{}", 415),
        ("no content type", "POST", CALLS, None, b"{}", 415),
        ("an unknown route", "GET", "/v1/nothing", None, b"", 404),
        ("an unknown route under a known one", "GET", "/v1/apps/greet", None, b"", 404),
        ("a wrong method", "PUT", "/v1/apps", None, b"", 405),
        ("GET on calls", "GET", CALLS, None, b"", 405),
        ("DELETE on health", "DELETE", "/v1/health", None, b"", 405),
        ("an unknown call", "GET", "/v1/calls/ca-nope", None, b"", 404),
        ("invalid UTF-8 in a call id", "GET", "/v1/calls/%FF", None, b"", 400),
        ("cancelling an unknown call", "DELETE", "/v1/calls/ca-nope", None, b"", 404),
        ("invalid UTF-8 in a cancelled id", "DELETE", "/v1/calls/ca-%FF", None, b"", 400),
        ("logs of an unknown app", "GET", "/v1/apps/nope/logs", None, b"", 404),
        ("invalid UTF-8 in a logged app", "GET", "/v1/apps/%C3/logs", None, b"", 400),
        ("logs with a bad since", "GET", "/v1/apps/greet/logs?since=yesterday", None, b"", 400),
        ("logs with an empty since", "GET", "/v1/apps/greet/logs?since=", None, b"", 400),
        ("logs with since in invalid UTF-8", "GET", "/v1/apps/greet/logs?since=%FF", None, b"", 400),
        ("logs with follow=maybe", "GET", "/v1/apps/greet/logs?follow=maybe", None, b"", 400),
        ("logs with an unknown parameter", "GET", "/v1/apps/greet/logs?tail=5", None, b"", 400),
    ];
    let before = recorded_calls(&env);
    for (what, method, route, content_type, body, status) in cases {
        let reply = node.send(method, route, Auth::Token, *content_type, body);
        let message = assert_error(what, *status, &reply);
        assert!(!message.contains(&node.token), "{what}: the token leaked");
        assert_eq!(recorded_calls(&env), before, "{what}: a call was recorded");
        assert_healthy(&node, what);
    }

    // 100 MB: refused with 413 as it arrives; the answer comes even if the
    // node closes the connection before reading it all.
    let answer = send_huge_body(&node, 100 << 20);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    let body = &answer[answer.find("\r\n\r\n").expect("a whole answer") + 4..];
    let error: Value = serde_json::from_str(body).expect("the 413 is JSON");
    assert!(error["error"].is_string(), "{error}");
    assert_eq!(
        recorded_calls(&env),
        before,
        "a 100 MB body recorded a call"
    );
    assert_healthy(&node, "a 100 MB body");

    // And good requests still work.
    call_ok(&node, CALLS, json!({"args": ["still"]}));
    assert_eq!(recorded_calls(&env), before + 1);
}

/// POSTs `size` bytes of JSON whitespace to the calls route, reading the
/// answer while sending (as a client must, since the node answers before
/// the body ends); returns what was read.
fn send_huge_body(node: &Node, size: usize) -> String {
    let mut stream = TcpStream::connect(node.addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 8192];
        // Until EOF, an error (a reset after the answer) or a timeout.
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
        let _ = tx.send(answer);
    });
    let head = format!(
        "POST {CALLS} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n",
        node.addr, node.token
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0;
    while sent < size {
        // The node may stop reading and close: that ends the sending.
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let answer = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the answer to a 100 MB body within 60s");
    String::from_utf8_lossy(&answer).into_owned()
}
