//! Web endpoints (SPEC section 7): a function with `http = "/route"` answers
//! the requests a node receives for its route, a `wasi:http` component as
//! `wasmtime serve` runs it (see `component`), a wasip1 module as a CGI
//! script (WAGI, see `wagi`). Each request is one invocation, with the
//! function's volumes, memory cap and timeout.
//!
//! The node only translates HTTP into a [`WebRequest`] and back; routing,
//! running and turning how an invocation ended into a status live here.
//! What the guest did not answer itself is answered with one line of text:
//! a trap is a 500, a timeout a 504, a stop (app stopped, node shutting
//! down) a 503.

mod body;
mod component;
mod request;
mod wagi;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::calls::Ending;
use crate::invoke::{Ended, Held, Prepared, StopFlag};
use crate::manifest::units::format_duration;
use crate::manifest::{AppManifest, Route};
use crate::registry::{CallState, now_ms};
use crate::runtime::OutputLog;

pub use body::{BODIES_HELD, BodyReader, ClientBody, MAX_REQUEST_BODY, RequestBody};
pub use request::{Host, serve};

/// A response body: the guest's, streamed, or one of ours.
pub type Body = wasmtime_wasi_http::WasiBody;
pub type Response = http::Response<Body>;

/// A request as the guest sees it: its URI is the path under the app
/// (`/route…`, without `/web/{app}`) and the query; its body arrives as
/// the guest reads it.
pub type WebRequest = http::Request<RequestBody>;

/// A request whose body is not read ahead yet: that is done only once the
/// request has an endpoint, so that a body sent to no endpoint costs the
/// node nothing, and before it takes room, so that a client that stops
/// sending its body holds no call's room meanwhile.
pub type ArrivingRequest = http::Request<UnreadBody>;

/// Reads the start of a request's body (see [`RequestBody::read_ahead`]),
/// on a thread where blocking is fine.
pub type UnreadBody = Box<dyn FnOnce() -> Result<RequestBody, BodyRefused> + Send>;

/// Why a request's body was not read.
#[derive(Debug)]
pub enum BodyRefused {
    /// More than [`MAX_REQUEST_BODY`] bytes.
    TooLarge,
    /// The client stopped sending it.
    Stalled(Duration),
    /// The connection failed.
    Broken(String),
    /// The node holds as many bytes of request bodies as it may.
    Busy(usize),
}

impl BodyRefused {
    /// The status and line the client is answered with.
    fn answer(&self) -> (StatusCode, String) {
        match self {
            BodyRefused::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {MAX_REQUEST_BODY} bytes, the most an endpoint is given"
                ),
            ),
            BodyRefused::Stalled(idle) => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stopped arriving for {}",
                    format_duration(*idle)
                ),
            ),
            BodyRefused::Broken(why) => (
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {why}"),
            ),
            BodyRefused::Busy(most) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the node holds {most} bytes of request bodies, the most it may at once; try again"
                ),
            ),
        }
    }
}

/// The connection a request came on, for CGI's `REMOTE_ADDR`,
/// `SERVER_NAME` and `SERVER_PORT`.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// The function of `manifest` whose route `path` is: an exact route
/// first, else the longest prefix route.
pub fn route<'m>(manifest: &'m AppManifest, path: &str) -> Option<(&'m str, &'m Route)> {
    let mut best: Option<(&str, &Route)> = None;
    for (name, spec) in &manifest.functions {
        let Some(route) = &spec.http else { continue };
        if !route.matches(path) {
            continue;
        }
        if !route.prefix {
            return Some((name, route));
        }
        if best.is_none_or(|(_, b)| b.path.len() < route.path.len()) {
            best = Some((name, route));
        }
    }
    best
}

/// What an endpoint runs with: the function, prepared, and what its call
/// has.
pub struct Endpoint<'a> {
    pub prepared: &'a Prepared,
    pub route: &'a Route,
    pub stop: &'a StopFlag,
    /// The call record's stdout and stderr.
    pub log: Arc<OutputLog>,
}

impl Endpoint<'_> {
    /// Answers `request` in the concurrency slot `held`: `respond` gets
    /// the response as soon as there is one (a component's body then
    /// streams), and this returns how the request's call ended, once the
    /// instance has.
    pub fn serve(
        &self,
        held: Held,
        request: WebRequest,
        connection: &Connection,
        respond: impl FnOnce(Response) + Send + Sync + 'static,
    ) -> Ending {
        if self.prepared.is_http_component() {
            component::serve(self, held, request, respond)
        } else {
            wagi::serve(self, held, request, connection, respond)
        }
    }
}

/// The status and one-line reason for an invocation that did not answer:
/// a timeout is a 504, a stop a 503, anything else a 500.
fn failure(ended: &Ended) -> (StatusCode, String) {
    let status = match ended {
        Ended::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
        Ended::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let reason = match ended {
        Ended::Exited(code) => format!("the endpoint exited with code {code} without answering"),
        Ended::Failed(reason) | Ended::TimedOut(reason) => format!("the endpoint failed: {reason}"),
        Ended::Stopped(_) => {
            "the endpoint was stopped (its app was stopped, or the node is shutting down)".into()
        }
    };
    (status, reason)
}

/// The record of a request answered with `status`: its exit code is the
/// status; a 5xx, or a guest that failed after it answered, is a failed
/// call. `error` says why, in one line.
fn answered(status: StatusCode, error: Option<String>) -> Ending {
    let failed = status.is_server_error() || error.is_some();
    Ending::Finished {
        state: if failed {
            CallState::Failed
        } else {
            CallState::Succeeded
        },
        exit_code: Some(i32::from(status.as_u16())),
        error,
        at: now_ms(),
    }
}

/// Answers with one line of text, for a request no guest answered.
pub fn refuse(respond: impl FnOnce(Response), status: StatusCode, line: &str) -> Ending {
    respond(text_response(status, line));
    answered(status, Some(line.replace('\n', " ")))
}

/// A response of one line of plain text.
pub fn text_response(status: StatusCode, line: &str) -> Response {
    let body = format!("{}\n", line.replace('\n', " "));
    let mut response = http::Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A body of bytes already in memory.
fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(routes: &[(&str, &str)]) -> AppManifest {
        let mut text = "name = \"a\"\n".to_owned();
        for (name, route) in routes {
            text += &format!("[functions.{name}]\nmodule = \"m.wasm\"\nhttp = \"{route}\"\n");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wasm"), b"\0asm\x01\0\0\0").unwrap();
        crate::manifest::parse(&dir.path().join("app.toml"), &text, dir.path()).unwrap()
    }

    #[test]
    fn exact_routes_win_then_the_longest_prefix() {
        let m = manifest(&[("all", "/..."), ("api", "/api/..."), ("one", "/api/one")]);
        let at = |path| route(&m, path).map(|(f, _)| f.to_owned());
        assert_eq!(at("/api/one").as_deref(), Some("one"));
        assert_eq!(at("/api/one/x").as_deref(), Some("api"));
        assert_eq!(at("/api").as_deref(), Some("api"));
        assert_eq!(at("/apis").as_deref(), Some("all"));
        assert_eq!(at("/").as_deref(), Some("all"));
        let m = manifest(&[("one", "/one")]);
        assert_eq!(route(&m, "/one/x"), None);
        assert_eq!(route(&m, "/"), None);
    }
}
