//! Web endpoints on the node: requests to `/web/{app}/route…`, and to any
//! path with `Host: {app}.localhost`, are translated into a
//! `triggers::http` request for the app (the guest sees `/route…`) and
//! answered on a thread where an instance may block. No token is asked
//! for: an endpoint is its app's public face.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::api::Api;
use crate::triggers::http::{Connection, MAX_REQUEST_BODY, text_response};

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
    let Some(app) = app_of_host(&request) else {
        return next.run(request).await;
    };
    let guest = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    serve(&api, remote, app, &guest, request).await
}

/// `app` of a `Host: app.localhost[:port]` header (or of an absolute
/// request URI).
fn app_of_host(request: &Request) -> Option<String> {
    let host = match request.uri().host() {
        Some(host) => host,
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let app = name.strip_suffix(".localhost")?;
    (!app.is_empty()).then(|| app.to_ascii_lowercase())
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
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let line = format!(
                "the request body is larger than {MAX_REQUEST_BODY} bytes, the most an endpoint is given (or it could not be read)"
            );
            return text(StatusCode::PAYLOAD_TOO_LARGE, &line);
        }
    };
    parts.uri = uri;
    let request = http::Request::from_parts(parts, body);
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
