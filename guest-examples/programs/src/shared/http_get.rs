//! A GET over `wasi:http/outgoing-handler`, for the wasip2 guests that
//! download (`fetch`, `cache_download`), which take it in by `#[path]` on
//! wasip2 only: wasip1 has no `wasi:http`.

use std::io::Write;

use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, IncomingBody, OutgoingRequest, Scheme};

/// Sends `GET url` and copies the response body into `out`; returns the
/// status. The error is one line saying what failed.
pub fn get(url: &str, out: &mut impl Write) -> Result<u16, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url}: not an http:// or https:// URL"))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |what: &str| format!("{url}: invalid {what}");
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("host"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| invalid("path"))?;
    let failed = |e: ErrorCode| format!("{url}: {e:?}");
    let pending = outgoing_handler::handle(request, None).map_err(failed)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .expect("the response is ready after its pollable")
        .expect("the response is taken once")
        .map_err(failed)?;
    let status = response.status();
    let body = response.consume().expect("the body is taken once");
    let mut stream = body.stream().expect("the stream is taken once");
    std::io::copy(&mut stream, out).map_err(|e| format!("{url}: reading the body: {e}"))?;
    drop(stream);
    IncomingBody::finish(body);
    Ok(status)
}
