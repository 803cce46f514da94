//! A running `wasmhost serve` for the node tests: started on a free port,
//! its address read from the line it prints once it listens, its token
//! read from `$WASMHOST_HOME/token`, a small blocking HTTP client for its
//! API, and SIGTERM (then SIGKILL after a bound) when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TestEnv;

/// How long a node gets to print its address and answer /v1/health.
const START_BOUND: Duration = Duration::from_secs(60);
/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_BOUND: Duration = Duration::from_secs(15);
/// The default bound on one HTTP exchange.
const REQUEST_BOUND: Duration = Duration::from_secs(60);

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

impl Reply {
    /// The body as JSON, or a panic naming it.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {:?}",
                self.status, self.body
            )
        })
    }
}

/// Which `Authorization` header a request carries.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// The node's own token.
    Token,
    /// No header at all.
    None,
    /// `Bearer` with this text.
    Bearer(&'a str),
}

pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    /// The node's id, from the line it printed.
    pub id: String,
    pub token: String,
    pub home: PathBuf,
    stderr: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Node {
    /// `wasmhost serve --listen 127.0.0.1:0` in `env`'s home (on a
    /// cluster's machine, its own address), answering /v1/health.
    pub fn start(env: &TestEnv) -> Node {
        Self::start_with(env, &[])
    }

    /// As `start`, with more arguments for `serve` (`--grace 1s`, `--max-calls 2`).
    pub fn start_with(env: &TestEnv, extra: &[&str]) -> Node {
        Node::start_logging(env, extra, "info")
    }

    /// A node started with `extra` arguments, logging at `level`
    /// (`WASMHOST_LOG`).
    pub fn start_logging(env: &TestEnv, extra: &[&str], level: &str) -> Node {
        let mut child = env
            .command()
            .args(["serve", "--listen", &env.listen_addr()])
            .args(extra)
            .env("WASMHOST_LOG", level)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wasmhost serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready, listening) = mpsc::channel();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("node ") && line.contains(" serving ") {
                        let _ = ready.send(line.clone());
                    }
                    let mut all = stderr.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_BOUND))
            .max_redirects(0)
            .build()
            .into();
        // Until its line is read, the node is killed on any failure.
        let mut guard = super::KillOnDrop(Some(child));
        let line = match listening.recv_timeout(START_BOUND) {
            Ok(line) => line,
            Err(_) => {
                let status = guard.0.as_mut().unwrap().try_wait().unwrap();
                panic!(
                    "wasmhost serve printed no `serving` line within {START_BOUND:?} (exit: {status:?})\nstderr: {}",
                    stderr.lock().unwrap()
                );
            }
        };
        // `node ID serving HOME on http://ADDR (token in FILE)`
        let id = line.split_whitespace().nth(1).unwrap().to_owned();
        let addr: SocketAddr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let home = env.home().to_owned();
        let token = std::fs::read_to_string(home.join("token"))
            .expect("serve made $WASMHOST_HOME/token")
            .trim()
            .to_owned();
        let node = Node {
            child: guard.0.take().unwrap(),
            addr,
            id,
            token,
            home,
            stderr,
            agent,
        };
        node.wait_healthy();
        node
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (bounded) until /v1/health answers 200.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            let answer = self
                .agent
                .get(self.url("/v1/health"))
                .config()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .call();
            if let Ok(answer) = answer
                && answer.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node at {} did not answer /v1/health within {START_BOUND:?}\nstderr: {}",
                self.addr,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Any request: `method` on `path`, with `auth`, a `Content-Type` if
    /// given, and `body` (empty for none). Panics on a transport error
    /// (a refused or dropped connection, a timeout), which the API must
    /// never cause.
    #[track_caller]
    pub fn send(
        &self,
        method: &str,
        path: &str,
        auth: Auth,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Reply {
        self.try_send(method, path, auth, content_type, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: no answer: {e}\nnode stderr: {}",
                    self.stderr()
                )
            })
    }

    /// As `send`, returning a transport error instead of panicking.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        auth: Auth,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Reply, ureq::Error> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        let bearer = match auth {
            Auth::Token => Some(format!("Bearer {}", self.token)),
            Auth::None => None,
            Auth::Bearer(text) => Some(format!("Bearer {text}")),
        };
        if let Some(bearer) = bearer {
            request = request.header("Authorization", bearer);
        }
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let request = request.body(body.to_vec()).expect("a valid request");
        let mut answer = self.agent.run(request)?;
        let content_type = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = answer.status().as_u16();
        let body = answer
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .lossy_utf8(true)
            .read_to_string()?;
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    /// GET with the token: (status, body).
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_as(path, Auth::Token)
    }

    /// GET with `auth`: (status, body).
    #[track_caller]
    pub fn get_as(&self, path: &str, auth: Auth) -> (u16, String) {
        self.bodiless("GET", path, auth)
    }

    /// POST of a JSON text with the token: (status, body).
    #[track_caller]
    pub fn post_json(&self, path: &str, body: &str) -> (u16, String) {
        self.post_json_as(path, body, Auth::Token)
    }

    /// POST of a JSON text with `auth`: (status, body).
    #[track_caller]
    pub fn post_json_as(&self, path: &str, body: &str, auth: Auth) -> (u16, String) {
        let r = self.send(
            "POST",
            path,
            auth,
            Some("application/json"),
            body.as_bytes(),
        );
        (r.status, r.body)
    }

    /// DELETE with the token: (status, body).
    #[track_caller]
    pub fn delete(&self, path: &str) -> (u16, String) {
        self.delete_as(path, Auth::Token)
    }

    /// DELETE with `auth`: (status, body).
    #[track_caller]
    pub fn delete_as(&self, path: &str, auth: Auth) -> (u16, String) {
        self.bodiless("DELETE", path, auth)
    }

    /// A request without a body: (status, body).
    #[track_caller]
    pub fn bodiless(&self, method: &str, path: &str, auth: Auth) -> (u16, String) {
        let r = self.send(method, path, auth, None, b"");
        (r.status, r.body)
    }

    /// GET with the token, the body parsed as JSON after asserting `status`.
    #[track_caller]
    pub fn get_json(&self, path: &str, status: u16) -> serde_json::Value {
        let r = self.send("GET", path, Auth::Token, None, b"");
        assert_eq!(r.status, status, "GET {path}: {}", r.body);
        r.json()
    }

    /// Starts a GET with the token and returns its body as a reader, for
    /// streamed answers (`logs?follow=1`); each read waits at most `bound`.
    pub fn get_stream(&self, path: &str, bound: Duration) -> (u16, impl std::io::Read + 'static) {
        let answer = self
            .agent
            .get(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .config()
            .timeout_global(None)
            .timeout_recv_body(None)
            .timeout_per_read(Some(bound))
            .build()
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: no answer: {e}"));
        let status = answer.status().as_u16();
        (status, answer.into_body().into_reader())
    }

    /// Waits (bounded) for the call `id` to reach a final state and returns it.
    #[track_caller]
    pub fn wait_call(&self, id: &str, bound: Duration) -> serde_json::Value {
        let deadline = Instant::now() + bound;
        loop {
            let call = self.get_json(&format!("/v1/calls/{id}"), 200);
            let state = call["state"].as_str().unwrap_or_default().to_owned();
            if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
                return call;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} still {state} after {bound:?}: {call}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the node printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (libc::SIGTERM, SIGKILL, …) to the node.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Whether the node has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits at most `bound` for the node to exit; panics past it (and kills it).
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        super::wait_with_timeout(&mut self.child, bound)
    }

    /// SIGTERM, then SIGKILL if it has not exited within the bound.
    /// Returns how it ended.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().unwrap() {
            return status;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's home.
    pub fn home(&self) -> &Path {
        &self.home
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
