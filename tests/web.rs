//! Web endpoints (SPEC section 7): a deployed app's functions with `http`
//! routes answered by `wasmhost serve` at `/web/{app}/route` and with
//! `Host: {app}.localhost`, through real HTTP: a wasi:http component that
//! keeps values in a volume, a WAGI (CGI) wasip1 module, 200 requests at
//! once, a trap (500), a timeout (504) while others are answered, unknown
//! apps and routes (404), a stopped app (404), and each request recorded.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::node::Node;
use common::{AppToml, TestEnv, path};
use serde_json::Value;

/// `site`: the key-value component at /kv/..., the same component at
/// /boom/... (its `/trap` path panics) and /slow/... (its `/sleep` path
/// outlives the 5 s `timeout`), the WAGI module at /cgi/..., and `reader`,
/// a command mounting the same volume.
fn site() -> AppToml {
    AppToml::new("site")
        .volume("data", |v| v.persist("site-data"))
        .function("kv", |f| {
            f.guest2("web_kv").http("/kv/...").mount("/data", "data")
        })
        .function("boom", |f| f.guest2("web_kv").http("/boom/..."))
        .function("slow", |f| {
            f.guest2("web_kv").http("/slow/...").timeout("5s")
        })
        .function("cgi", |f| {
            f.guest("wagi").http("/cgi/...").env("GREETING", "hi")
        })
        .function("reader", |f| f.guest("fsops").mount("/data", "data"))
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_redirects(0)
        .build()
        .into()
}

/// `method` on `http://NODE{path}`, with `Host: host` if given.
#[track_caller]
fn request(node: &Node, method: &str, path: &str, host: Option<&str>, body: &[u8]) -> Answer {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(node.url(path))
        .header("User-Agent", "web-test");
    if let Some(host) = host {
        request = request.header("Host", host);
    }
    let request = request.body(body.to_vec()).unwrap();
    let mut answer = agent()
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}\n{}", node.stderr()));
    Answer {
        status: answer.status().as_u16(),
        headers: answer.headers().clone(),
        body: answer.body_mut().read_to_string().unwrap(),
    }
}

fn deploy_site(env: &TestEnv) {
    let app = site().write(env);
    env.run(&["deploy", path(&app)]).success();
}

#[test]
fn component_and_wagi_endpoints_answer_as_the_guest_chose() {
    let env = TestEnv::new();
    deploy_site(&env);
    let node = Node::start(&env);

    // The component: POST writes the volume, GET reads it back.
    let posted = request(&node, "POST", "/web/site/kv/greeting", None, b"hello there");
    assert_eq!(posted.status, 201, "{}", posted.body);
    assert_eq!(posted.body, "stored 11 bytes at greeting\n");
    assert_eq!(posted.header("x-kv-key"), "greeting");
    assert_eq!(
        posted.header("location"),
        "/kv/greeting",
        "the guest sees /route…"
    );
    let got = request(&node, "GET", "/web/site/kv/greeting", None, b"");
    assert_eq!((got.status, got.body.as_str()), (200, "hello there"));
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    let missing = request(&node, "GET", "/web/site/kv/nothing", None, b"");
    assert_eq!(missing.status, 404, "the guest's own 404: {}", missing.body);
    assert_eq!(missing.body, "no value for nothing\n");

    // The same endpoint by its app's host name.
    let by_host = request(&node, "GET", "/kv/greeting", Some("site.localhost"), b"");
    assert_eq!(
        (by_host.status, by_host.body.as_str()),
        (200, "hello there")
    );
    let port = node.addr.port();
    let host = format!("site.localhost:{port}");
    let by_host = request(&node, "GET", "/cgi/x", Some(&host), b"");
    assert_eq!(by_host.status, 200, "{}", by_host.body);
    assert!(
        by_host.body.contains("host=site.localhost"),
        "{}",
        by_host.body
    );

    // The component's write is in the volume for a later call.
    let read = env
        .run(&["call", "site", "reader", "--", "read", "/data/greeting"])
        .success();
    assert!(read.stdout().contains("hello there"), "{}", read.stdout());

    // WAGI: the request in CGI variables and stdin, the answer from stdout.
    let get = request(&node, "GET", "/web/site/cgi/some/where?x=1&y=2", None, b"");
    assert_eq!(get.status, 200, "{}", get.body);
    assert_eq!(
        get.header("x-wagi"),
        "hi",
        "the function's env reaches the script"
    );
    assert_eq!(get.header("content-type"), "text/plain");
    assert_eq!(
        get.body,
        "method=GET script=/cgi path=/some/where query=x=1&y=2 host=127.0.0.1 agent=web-test\n"
    );
    let post = request(&node, "POST", "/web/site/cgi/new", None, b"data");
    assert_eq!(post.status, 201, "{}", post.body);
    assert_eq!(post.header("location"), "/new");
    assert_eq!(post.header("x-wagi"), "posted");
    assert!(post.body.ends_with("length=4 body=data\n"), "{}", post.body);
    let bare = request(&node, "GET", "/web/site/cgi/x?bare", None, b"");
    assert_eq!(bare.status, 500, "{}", bare.body);
    assert!(bare.body.contains("not a CGI response"), "{}", bare.body);
    assert_eq!(bare.body.lines().count(), 1, "{}", bare.body);

    // No such app, no such route: 404, without a token.
    let no_app = request(&node, "GET", "/web/nosuch/kv/x", None, b"");
    assert_eq!(no_app.status, 404, "{}", no_app.body);
    assert!(no_app.body.contains("nosuch"), "{}", no_app.body);
    let no_route = request(&node, "GET", "/web/site/elsewhere", None, b"");
    assert_eq!(no_route.status, 404, "{}", no_route.body);
    assert!(
        no_route.body.contains("no web endpoint at /elsewhere"),
        "{}",
        no_route.body
    );
    let no_host_app = request(&node, "GET", "/kv/x", Some("nosuch.localhost"), b"");
    assert_eq!(no_host_app.status, 404, "{}", no_host_app.body);

    // Each request is a call: its method and path as args, its status as
    // the exit code, a 5xx failed.
    let calls = || -> Vec<Value> {
        let list = env
            .run(&["calls", "list", "site", "--json", "--kind", "web"])
            .success();
        serde_json::from_str(&list.stdout()).unwrap()
    };
    let ended = |function: &str, method: &str, path: &str| {
        calls().into_iter().find(|c| {
            c["function"] == function
                && c["args"] == serde_json::json!([method, path])
                && c["finished_at"].is_string()
        })
    };
    common::eventually(Duration::from_secs(10), "the requests' records", || {
        ended("kv", "POST", "/kv/greeting").is_some()
            && ended("cgi", "GET", "/cgi/x?bare").is_some()
    });
    let post_call = ended("kv", "POST", "/kv/greeting").unwrap();
    assert_eq!(post_call["state"], "succeeded");
    assert_eq!(post_call["exit_code"], 201);
    let bare_call = ended("cgi", "GET", "/cgi/x?bare").unwrap();
    assert_eq!(bare_call["state"], "failed");
    assert_eq!(bare_call["exit_code"], 500);
    assert!(bare_call["error"].as_str().unwrap().contains("CGI"));
    assert_eq!(bare_call["kind"], "web");
    // Without `--kind`, a listing leaves web requests out and sums them up
    // per endpoint instead, so a busy endpoint cannot drown the rest.
    let listed = env.run(&["calls", "list", "site", "--json"]).success();
    let listed: Vec<Value> = serde_json::from_str(&listed.stdout()).unwrap();
    assert!(listed.iter().all(|c| c["kind"] != "web"), "{listed:#?}");
    let table = env.run(&["calls", "list", "site"]).success().stdout();
    assert!(
        table.contains("web requests: site/cgi: ") && table.contains("(1 failed)"),
        "{table}"
    );

    // A stopped app answers no more.
    env.run(&["app", "stop", "site", "--yes"]).success();
    common::eventually(
        Duration::from_secs(10),
        "the stopped app to answer 404",
        || request(&node, "GET", "/web/site/kv/greeting", None, b"").status == 404,
    );
}

#[test]
fn two_hundred_requests_at_once_are_all_answered() {
    let env = TestEnv::new();
    deploy_site(&env);
    let node = Node::start(&env);
    let posted = request(&node, "POST", "/web/site/kv/k", None, b"value");
    assert_eq!(posted.status, 201, "{}", posted.body);
    // Each of 200 threads opens its connection, and none sends its request
    // before all 200 are open: 200 requests in flight at once.
    let all_open = std::sync::Barrier::new(200);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..200)
            .map(|i| {
                let (node, all_open) = (&node, &all_open);
                scope.spawn(move || {
                    let mut tcp = std::net::TcpStream::connect(node.addr).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    all_open.wait();
                    let path = match i % 2 {
                        0 => "/web/site/kv/k".to_owned(),
                        _ => format!("/web/site/cgi/i{i}"),
                    };
                    let head =
                        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
                    tcp.write_all(head.as_bytes()).unwrap();
                    let mut answer = String::new();
                    tcp.read_to_string(&mut answer).unwrap();
                    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
                    let body = answer.split_once("\r\n\r\n").unwrap().1;
                    match i % 2 {
                        // The component's body comes in chunks.
                        0 => assert!(body.contains("value"), "{body}"),
                        _ => assert!(body.contains(&format!("path=/i{i} ")), "{body}"),
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("every answer was right");
        }
    });
}

#[test]
fn a_trap_is_500_a_timeout_504_and_others_are_answered_meanwhile() {
    let env = TestEnv::new();
    deploy_site(&env);
    let node = Node::start(&env);
    let warm = request(&node, "GET", "/web/site/kv/none", None, b"");
    assert_eq!(warm.status, 404, "{}", warm.body);

    let trap = request(&node, "GET", "/web/site/boom/trap", None, b"");
    assert_eq!(trap.status, 500, "{}", trap.body);
    assert_eq!(trap.body.lines().count(), 1, "one line: {}", trap.body);
    assert!(trap.body.contains("trapped"), "{}", trap.body);

    std::thread::scope(|scope| {
        let slow = scope.spawn(|| request(&node, "GET", "/web/site/slow/sleep", None, b""));
        common::eventually(Duration::from_secs(30), "the slow call to run", || {
            let list = env
                .run(&["calls", "list", "site", "--json", "--kind", "web"])
                .success();
            let calls: Vec<Value> = serde_json::from_str(&list.stdout()).unwrap();
            calls
                .iter()
                .any(|c| c["function"] == "slow" && c["state"] == "running")
        });
        for _ in 0..10 {
            let got = request(&node, "GET", "/web/site/kv/none", None, b"");
            assert_eq!(got.status, 404, "{}", got.body);
            let got = request(&node, "GET", "/web/site/cgi/x", None, b"");
            assert_eq!(got.status, 200, "{}", got.body);
        }
        assert!(
            !slow.is_finished(),
            "the slow request ended before its 5 s timeout"
        );
        let slow = slow.join().unwrap();
        assert_eq!(slow.status, 504, "{}", slow.body);
        assert!(slow.body.contains("timed out after 5s"), "{}", slow.body);
    });
    common::eventually(Duration::from_secs(10), "the slow call's record", || {
        let list = env
            .run(&["calls", "list", "site", "--json", "--kind", "web"])
            .success();
        let calls: Vec<Value> = serde_json::from_str(&list.stdout()).unwrap();
        calls
            .iter()
            .any(|c| c["function"] == "slow" && c["state"] == "failed" && c["exit_code"] == 504)
    });
}

#[test]
fn a_request_over_concurrency_waits_then_gets_503() {
    let env = TestEnv::new();
    let app = AppToml::new("single")
        .function("one", |f| {
            f.guest2("web_kv")
                .http("/...")
                .concurrency(1)
                .timeout("60s")
        })
        .write(&env);
    env.run(&["deploy", path(&app)]).success();
    let node = Node::start(&env);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| request(&node, "GET", "/web/single/sleep", None, b""));
        common::eventually(Duration::from_secs(30), "the first call to run", || {
            let list = env
                .run(&["calls", "list", "single", "--json", "--kind", "web"])
                .success();
            let calls: Vec<Value> = serde_json::from_str(&list.stdout()).unwrap();
            calls.iter().any(|c| c["state"] == "running")
        });
        // The one slot is taken: this one waits its 10 s, then gives up.
        let asked = std::time::Instant::now();
        let second = request(&node, "GET", "/web/single/sleep", None, b"");
        let waited = asked.elapsed();
        assert_eq!(second.status, 503, "{}", second.body);
        assert!(second.body.contains("`concurrency`"), "{}", second.body);
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
            "answered 503 after {waited:?}, not after its 10 s wait"
        );
        // Stopping the app ends the first: 503 too, saying why.
        env.run(&["app", "stop", "single", "--yes"]).success();
        let first = first.join().unwrap();
        assert_eq!(first.status, 503, "{}", first.body);
        assert!(first.body.contains("stopped"), "{}", first.body);
    });
}
