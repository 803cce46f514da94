//! Web endpoints on the node: requests to `/web/{app}/route…`, and to any
//! path with `Host: {app}.localhost`, are translated into a
//! `triggers::http` request for the app (the guest sees `/route…`) and
//! answered on a thread where an instance may block. No token is asked
//! for: an endpoint is its app's public face.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::api::Api;
use crate::triggers::http::{Connection, RequestBody, UnreadBody, text_response};

/// `/web/{app}` and everything under it.
pub async fn by_path(
    State(api): State<Arc<Api>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let path = request.uri().path();
    let under = path.strip_prefix("/web/").unwrap_or_default();
    let (app, rest) = under.split_once('/').map_or((under, ""), |(a, r)| (a, r));
    let guest = match request.uri().query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    let app = app.to_owned();
    serve(&api, remote, app, &guest, request).await
}

/// Requests with `Host: {app}.localhost[:port]` go to that app's endpoints,
/// whatever their path; the rest to the API.
pub async fn by_host(
    State(api): State<Arc<Api>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let app = match app_of_host(&request) {
        Ok(Some(app)) => app,
        Ok(None) => return next.run(request).await,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let guest = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    serve(&api, remote, app, &guest, request).await
}

/// `app` of the request's one `Host: app.localhost[:port]` header, as
/// any client spells it (host names are case-insensitive, and may end
/// with the root's dot). A request is routed on its Host header alone: two
/// of them, or an absolute request URI naming another host, are refused,
/// so that nothing in front of the node routes it one way and the node
/// another.
fn app_of_host(request: &Request) -> Result<Option<String>, &'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return match request.headers().contains_key(header::HOST) {
            true => Err("the request has more than one Host header"),
            false => Ok(None),
        };
    };
    let host = host
        .to_str()
        .map_err(|_| "the request's Host header is not text")?
        .to_ascii_lowercase();
    if let Some(authority) = request.uri().authority()
        && !authority.as_str().eq_ignore_ascii_case(&host)
    {
        return Err("the request's URI names another host than its Host header");
    }
    let name = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(name, _)| name);
    let name = name.strip_suffix('.').unwrap_or(name);
    Ok(name
        .strip_suffix(".localhost")
        .filter(|app| !app.is_empty())
        .map(str::to_owned))
}

async fn serve(
    api: &Api,
    remote: SocketAddr,
    app: String,
    guest: &str,
    request: Request,
) -> Response {
    let Ok(uri) = guest.parse::<Uri>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "the request's path is not a valid URI path",
        );
    };
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    let executor = tokio::runtime::Handle::current();
    let budget = api.bodies.clone();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse().ok());
    let body = Box::pin(body.map_err(Into::into));
    let read: UnreadBody = Box::new(move || {
        let mut body = RequestBody::new(body, declared)?;
        executor.block_on(body.read_ahead(&budget))?;
        Ok(body)
    });
    let request = http::Request::from_parts(parts, read);
    let connection = Connection {
        remote,
        local: api.local,
    };
    let (tx, rx) = oneshot::channel();
    let worker = api.worker.clone();
    let answered = tokio::task::spawn_blocking(move || {
        crate::triggers::http::serve(&*worker, &app, request, connection, move |response| {
            let _ = tx.send(response);
        });
    });
    match rx.await {
        Ok(response) => response.map(Body::new),
        Err(_) => {
            let why = match answered.await {
                Err(e) => format!("the endpoint's thread failed: {e}"),
                Ok(()) => "the endpoint ended without an answer".to_owned(),
            };
            text(StatusCode::INTERNAL_SERVER_ERROR, &why)
        }
    }
}

fn text(status: StatusCode, line: &str) -> Response {
    text_response(status, line).map(Body::new).into_response()
}
