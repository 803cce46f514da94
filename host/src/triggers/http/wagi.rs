//! A wasip1 module answers a request as a CGI 1.1 script (RFC 3875), as
//! WAGI runs one: the request line and headers in environment variables
//! (over the function's `env`), the body on stdin, and on stdout header
//! lines (`Status: 201 Created`, `Content-Type: …`, `Location: …`), a blank
//! line, then the body.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::body::READ_AHEAD;
use super::{
    Connection, Endpoint, Response, WebRequest, answered, failure, full, refuse, text_response,
};
use crate::calls::Ending;
use crate::invoke::{Call, Ended, Held};
use crate::registry::Stream;
use crate::runtime::Stdin;

pub fn serve(
    endpoint: &Endpoint,
    held: Held,
    request: WebRequest,
    connection: &Connection,
    respond: impl FnOnce(Response),
) -> Ending {
    let Some(length) = request.body().length() else {
        let line = format!(
            "a WAGI endpoint is given a body of over {READ_AHEAD} bytes only with a Content-Length (CGI passes it in CONTENT_LENGTH)"
        );
        return refuse(respond, StatusCode::LENGTH_REQUIRED, &line);
    };
    let env = environment(endpoint, &request, connection, length);
    let call = Call {
        args: &[],
        env: &env,
        stop: endpoint.stop,
    };
    let stdin = Some(Stdin::stream(request.into_body().into_reader()));
    let (ended, [stdout, stderr]) = endpoint.prepared.run_captured(Some(held), &call, stdin);
    endpoint.log.write(Stream::Stdout, &stdout);
    endpoint.log.write(Stream::Stderr, &stderr);
    let parsed = match ended {
        Ended::Exited(0) => response_held(stdout),
        _ => Err(failure(&ended)),
    };
    match parsed {
        Ok(response) => {
            let status = response.status();
            respond(response);
            answered(status, None)
        }
        Err((status, reason)) => {
            respond(text_response(status, &reason));
            answered(status, Some(reason))
        }
    }
}

/// The most bytes of CGI responses the node holds at once (a script's
/// output is its response, whole): a client that does not read its
/// response holds it until the node gives up on it (`node::listen`'s write
/// limit), and past this much held a response is a 503 rather than the
/// node growing with every such client.
pub const RESPONSES_HELD: usize = 256 << 20;

static RESPONSES: Semaphore = Semaphore::const_new(RESPONSES_HELD);

/// A response body's bytes with what they hold of [`RESPONSES_HELD`],
/// given back when the last of them is dropped: when the node has written
/// them, or given up on the client.
struct HeldBytes {
    bytes: Bytes,
    _held: SemaphorePermit<'static>,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The response of a script that printed `output`, its body holding its
/// bytes of [`RESPONSES_HELD`] until it is sent.
fn response_held(output: Vec<u8>) -> Result<Response, (StatusCode, String)> {
    let busy = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the node holds {RESPONSES_HELD} bytes of responses their clients have not read yet, the most it may; try again"
            ),
        )
    };
    let length = u32::try_from(output.len()).map_err(|_| busy())?;
    let held = RESPONSES.try_acquire_many(length).map_err(|_| busy())?;
    let output = Bytes::from_owner(HeldBytes {
        bytes: Bytes::from(output),
        _held: held,
    });
    parse(output).map_err(|problem| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the endpoint's output is not a CGI response: {problem}"),
        )
    })
}

/// The CGI meta-variables of `request`, over the function's `env`.
fn environment(
    endpoint: &Endpoint,
    request: &WebRequest,
    connection: &Connection,
    length: u64,
) -> BTreeMap<String, String> {
    let path = request.uri().path();
    // SCRIPT_NAME is the route; PATH_INFO what follows it under a prefix
    // route (RFC 3875 4.1.5, 4.1.13).
    let script = match (endpoint.route.prefix, endpoint.route.path.as_str()) {
        (true, "/") => "",
        (_, route) => route,
    };
    let path_info = path.strip_prefix(script).unwrap_or(path);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':').map_or(Some(h), |(name, _)| Some(name)))
        .map_or_else(|| connection.local.ip().to_string(), str::to_owned);
    let mut env: BTreeMap<String, String> = [
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        (
            "SERVER_SOFTWARE",
            concat!("wasmhost/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
        ("SERVER_PROTOCOL", format!("{:?}", request.version())),
        ("REQUEST_METHOD", request.method().as_str().to_owned()),
        ("SCRIPT_NAME", script.to_owned()),
        ("PATH_INFO", path_info.to_owned()),
        (
            "QUERY_STRING",
            request.uri().query().unwrap_or("").to_owned(),
        ),
        (
            "REQUEST_URI",
            request
                .uri()
                .path_and_query()
                .map_or(path, |p| p.as_str())
                .to_owned(),
        ),
        ("SERVER_NAME", host),
        ("SERVER_PORT", connection.local.port().to_string()),
        ("REMOTE_ADDR", connection.remote.ip().to_string()),
        ("CONTENT_LENGTH", length.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in request.headers() {
        let Ok(value) = value.to_str() else { continue };
        let key = match name {
            n if n == header::CONTENT_TYPE => "CONTENT_TYPE".to_owned(),
            n if n == header::CONTENT_LENGTH => continue,
            n => format!("HTTP_{}", n.as_str().to_ascii_uppercase().replace('-', "_")),
        };
        env.entry(key)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    env
}

/// The most header lines a script's response may have, and the most bytes
/// they may take: a guest must not make the node build a header map past
/// what a client accepts (or past the map's own limit, where it panics).
pub const MAX_RESPONSE_HEADERS: usize = 100;
pub const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// Headers that frame the message or the connection. The node owns
/// framing: a script's `Content-Length` could end its response early and
/// have the rest of its body read as the next response on the connection
/// (RFC 3875 6.3.4, RFC 9112 6 and 9.6); they are dropped.
fn frames_the_message(name: &HeaderName) -> bool {
    [header::CONTENT_LENGTH, header::TE, header::TRAILER].contains(name)
        || wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

/// A CGI script's output as a response: header lines up to the first
/// blank one, then the body. `Status` sets the status (200 without it); a
/// `Location` without a `Status` redirects (302). Headers that frame the
/// message are the node's, and dropped; a 1xx status is refused (the
/// script has answered once the node sends its response).
fn parse(output: Bytes) -> Result<Response, String> {
    let (head, body) = split_head(&output).ok_or(
        "it printed no header lines and blank line before its body: print e.g. `Content-Type: text/plain`, an empty line, then the body",
    )?;
    if head.len() > MAX_RESPONSE_HEAD {
        return Err(format!(
            "its header lines take more than {MAX_RESPONSE_HEAD} bytes, the most a response's head may"
        ));
    }
    let head = std::str::from_utf8(head).map_err(|_| "its header lines are not UTF-8")?;
    if head.lines().count() > MAX_RESPONSE_HEADERS {
        return Err(format!(
            "it printed more than {MAX_RESPONSE_HEADERS} header lines, the most a response may have"
        ));
    }
    let mut response = http::Response::new(full(output.slice_ref(body)));
    let mut status = None;
    for line in head.lines() {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line `{}` has no `:`", line.escape_debug()))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|c| !c.is_informational())
                    .ok_or_else(|| {
                        format!(
                            "`Status: {}` is not a final status code (200 to 599)",
                            value.escape_debug()
                        )
                    })?,
            );
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.escape_debug()))?;
        if frames_the_message(&name) {
            tracing::debug!("dropped a CGI script's `{name}` header: framing is the node's");
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{name}` is not a header value"))?;
        response.headers_mut().append(name, value);
    }
    let redirect = response.headers().contains_key(header::LOCATION);
    *response.status_mut() = status.unwrap_or(if redirect {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(response)
}

/// The header lines and the body, split at the first empty line (`\n` or
/// `\r\n` line ends); None if there is no header line or no empty line.
fn split_head(output: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut start = 0;
    while start < output.len() {
        let end = output[start..].iter().position(|&b| b == b'\n')? + start;
        let line = &output[start..end];
        if line.is_empty() || line == b"\r" {
            return (start > 0).then(|| (&output[..start], &output[end + 1..]));
        }
        start = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn parse(output: &[u8]) -> Result<Response, String> {
        super::parse(Bytes::copy_from_slice(output))
    }

    fn body(response: Response) -> Vec<u8> {
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect());
        collected.ok().unwrap().to_bytes().to_vec()
    }

    #[test]
    fn status_headers_and_body() {
        let out = b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nmade\n";
        let response = parse(out).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(body(response), b"made\n");
        let response = parse(b"Content-Type: text/html\n\n<p>").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response), b"<p>");
    }

    #[test]
    fn location_without_status_redirects() {
        let response = parse(b"Location: /elsewhere\n\n").unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()["location"], "/elsewhere");
        let response = parse(b"Status: 301\nLocation: /x\n\n").unwrap();
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    }

    #[test]
    fn output_without_headers_is_refused() {
        assert!(parse(b"hello world\n").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"\nbody").is_err());
        assert!(parse(b"Content-Type: text/plain\n").is_err());
        assert!(parse(b"Status: abc\n\n").is_err());
    }

    #[test]
    fn the_node_owns_framing() {
        let out = b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nKeep-Alive: 5\r\nUpgrade: h2c\r\nX-Kept: 1\r\n\r\nhello";
        let response = parse(out).unwrap();
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(body(response), b"hello");
        for informational in ["100", "101 Switching Protocols", "103"] {
            let out = format!("Status: {informational}\n\n");
            assert!(parse(out.as_bytes()).is_err(), "{informational}");
        }
    }

    #[test]
    fn too_many_or_too_long_header_lines_are_refused() {
        let many: String = (0..=MAX_RESPONSE_HEADERS)
            .map(|i| format!("X-{i}: v\n"))
            .collect();
        let error = parse(format!("{many}\nbody").as_bytes()).unwrap_err();
        assert!(error.contains("more than 100 header lines"), "{error}");
        let long = format!("X-Long: {}\n\n", "v".repeat(MAX_RESPONSE_HEAD));
        let error = parse(long.as_bytes()).unwrap_err();
        assert!(error.contains("more than 65536 bytes"), "{error}");
        let enough: String = (0..MAX_RESPONSE_HEADERS)
            .map(|i| format!("X-{i}: v\n"))
            .collect();
        assert!(parse(format!("{enough}\nbody").as_bytes()).is_ok());
    }
}
