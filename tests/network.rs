//! Outbound network under `allowed_hosts` (issue 11, "Network"; spec
//! section 7): components reach the hosts listed and nothing else, over
//! `wasi:http` and over `wasi:sockets` TCP. Servers are the test's own, on
//! 127.0.0.1 only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{AppToml, Run, TestEnv, path};

/// Bounds a guest run: its own `timeout` is 30 s.
const BOUND: Duration = Duration::from_secs(60);

/// A tiny HTTP server answering every request with `body`, counting the
/// connections it accepts; stopped when dropped.
struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (connections.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(stream) = stream {
                    let _ = answer(stream, &body);
                }
            }
        });
        Self {
            port,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request's head and answers it with `body`.
fn answer(mut stream: TcpStream, body: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listener nothing should reach: `reached` says whether anything did
/// (a connection the kernel completed waits in its backlog to be accepted).
struct Silent(TcpListener);

impl Silent {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn reached(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// About 190 KB of numbered lines: big enough to span many reads, easy to
/// compare.
fn body() -> Vec<u8> {
    (0..20_000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// The `fetch` guest with `allowed_hosts` the one pattern `allowed_host`,
/// or no `allowed_hosts` for none.
fn fetch_app(env: &TestEnv, allowed_host: Option<&str>) -> String {
    let app = AppToml::new("net")
        .function("fetch", |f| {
            let f = f.guest2("fetch").timeout("30s");
            match allowed_host {
                Some(host) => f.allowed_hosts(&[host]),
                None => f,
            }
        })
        .write(env);
    path(&app).to_owned()
}

fn fetch(env: &TestEnv, app: &str, args: &[&str]) -> Run {
    let mut all = vec!["run", app, "--"];
    all.extend(args);
    env.run_within(BOUND, &all)
}

/// How Rust's std reports a lookup wasmhost refused
/// (`permanent-resolver-failure`, `EAI_FAIL`).
const LOOKUP_REFUSED: &str = "failed to lookup address information: Non-recoverable error";

/// The guest's refusal, as it prints it.
#[track_caller]
fn refused(run: Run, error: &str) {
    let run = run.code_is(1);
    assert!(
        run.stderr().contains("fetch: ") && run.stderr().contains(error),
        "expected `{error}` from the guest; stderr: {}",
        run.stderr()
    );
    assert!(!run.stdout().contains("connected"), "{}", run.stdout());
}

#[test]
fn a_component_fetches_from_an_allowed_host_intact() {
    let env = TestEnv::new();
    let server = Server::start(body());
    let app = fetch_app(&env, Some(&format!("http://127.0.0.1:{}", server.port)));
    let run = fetch(&env, &app, &["http", &server.url("/file.bin")]).success();
    let mut expected = b"status 200\n".to_vec();
    expected.extend(body());
    assert!(run.0.stdout == expected, "body arrived altered");
    assert_eq!(server.connections(), 1);
}

#[test]
fn requests_to_other_ports_schemes_and_hosts_fail_in_the_guest() {
    let env = TestEnv::new();
    let server = Server::start(body());
    let other = Silent::new();
    let app = fetch_app(&env, Some(&format!("http://127.0.0.1:{}", server.port)));
    let other_port = format!("http://127.0.0.1:{}/file.bin", other.port());
    refused(
        fetch(&env, &app, &["http", &other_port]),
        "HttpRequestDenied",
    );
    assert!(!other.reached(), "a denied request reached its server");
    // The same server under another scheme or another name for its host.
    for url in [
        format!("https://127.0.0.1:{}/file.bin", server.port),
        format!("http://localhost:{}/file.bin", server.port),
    ] {
        refused(fetch(&env, &app, &["http", &url]), "HttpRequestDenied");
    }
    assert_eq!(
        server.connections(),
        0,
        "a denied request reached the server"
    );
}

#[test]
fn without_allowed_hosts_every_request_and_connection_fails() {
    let env = TestEnv::new();
    let server = Server::start(body());
    let app = fetch_app(&env, None);
    refused(
        fetch(&env, &app, &["http", &server.url("/file.bin")]),
        "HttpRequestDenied",
    );
    let addr = format!("127.0.0.1:{}", server.port);
    refused(fetch(&env, &app, &["tcp", &addr]), "PermissionDenied");
    refused(
        fetch(&env, &app, &["tcp", &format!("localhost:{}", server.port)]),
        LOOKUP_REFUSED,
    );
    assert_eq!(
        server.connections(),
        0,
        "a denied request reached the server"
    );
}

#[test]
fn tcp_connects_only_to_allowed_addresses_and_ports() {
    let env = TestEnv::new();
    let server = Server::start(body());
    let other = Silent::new();
    let app = fetch_app(&env, Some(&format!("http://127.0.0.1:{}", server.port)));
    let addr = format!("127.0.0.1:{}", server.port);
    let run = fetch(&env, &app, &["tcp", &addr]).success();
    assert!(run.stdout().starts_with("connected\nHTTP/1.1 200 OK\r\n"));
    assert!(run.stdout().ends_with("line 19999\n"));
    assert_eq!(server.connections(), 1);

    let denied = format!("127.0.0.1:{}", other.port());
    refused(fetch(&env, &app, &["tcp", &denied]), "PermissionDenied");
    assert!(
        !other.reached(),
        "a refused connection reached its listener"
    );
}

#[test]
fn only_allowed_names_resolve() {
    let env = TestEnv::new();
    let server = Server::start(body());
    let by_address = fetch_app(&env, Some(&format!("http://127.0.0.1:{}", server.port)));
    let by_name = format!("localhost:{}", server.port);
    refused(fetch(&env, &by_address, &["tcp", &by_name]), LOOKUP_REFUSED);
    assert_eq!(server.connections(), 0);

    // `localhost` allowed: the name resolves and its loopback addresses
    // may be connected to, by TCP and by HTTP.
    let by_name_app = fetch_app(&env, Some("http://localhost:*"));
    let run = fetch(&env, &by_name_app, &["tcp", &by_name]).success();
    assert!(run.stdout().starts_with("connected\n"), "{}", run.stdout());
    let url = format!("http://localhost:{}/file.bin", server.port);
    let run = fetch(&env, &by_name_app, &["http", &url]).success();
    assert!(run.stdout().ends_with("line 19999\n"));
    assert_eq!(server.connections(), 2);
}

#[test]
fn malformed_host_patterns_are_refused_at_their_line_and_column() {
    let env = TestEnv::new();
    for (pattern, problem) in [
        ("https://example.com/models", "has a path (`/models`)"),
        ("huggingface.co", "has no scheme"),
        ("ftp://example.com", "neither http nor https"),
        (
            "https://a.*.example.com",
            "other than as its whole first label",
        ),
        (
            "http://127.0.0.1:port",
            "not a number from 1 to 65535 or `*`",
        ),
    ] {
        let app = env.app(
            "bad",
            &format!(
                "name = \"bad\"\n\n[functions.f]\nmodule = \"{{guest2:fetch}}\"\nallowed_hosts = [\"http://127.0.0.1:8080\", \"{pattern}\"]\n"
            ),
        );
        let run = env.run(&["run", path(&app)]).code_is(2);
        let at = format!("error: {}:5:43: host pattern `{pattern}` ", path(&app));
        let stderr = run.stderr();
        assert!(stderr.starts_with(&at), "{stderr}");
        assert!(stderr.contains(problem), "{stderr}");
        assert!(
            stderr.contains("; fix: write it as SCHEME://HOST[:PORT]"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert!(!env.home().join("registry.db").exists());
}

#[test]
fn the_cache_download_example_fetches_once_then_serves_from_its_volume() {
    let env = TestEnv::new();
    let server = Server::start(body());
    let example = common::guest_dir().join("apps/cache/download.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{}", server.port))
        .replace(
            "../../target/wasm32-wasip2/release/cache_download.wasm",
            "{guest2:cache_download}",
        );
    let app = env.app("download", &text);
    let url = server.url("/model.bin");
    let size = body().len();
    let first = env
        .run_within(BOUND, &["run", path(&app), "--", &url])
        .success();
    assert_eq!(
        first.stdout(),
        format!("model.bin downloaded ({size} bytes)\n")
    );
    let second = env
        .run_within(BOUND, &["run", path(&app), "--", &url])
        .success();
    assert_eq!(
        second.stdout(),
        format!("model.bin cached ({size} bytes)\n")
    );
    assert_eq!(server.connections(), 1, "the file was downloaded twice");
    let kept = std::fs::read(env.volume_dir("cache-demo-downloads").join("model.bin")).unwrap();
    assert!(kept == body(), "the volume holds another file");
}
