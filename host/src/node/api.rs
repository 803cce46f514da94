//! The node's HTTP API (SPEC section 6): each handler parses a request,
//! makes the library call the matching CLI command makes, and answers
//! JSON. Bad input gets a 4xx and `{"error": "one line"}`, never a 500 or
//! a dropped connection; nothing is recorded for a refused request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::token::authorized;
use super::web;
use super::worker::Worker;
use crate::calls;
use crate::error;
use crate::manifest::{self, units};
use crate::registry::Registries;
use crate::registry::{CallState, LogFilter, now_ms};
use crate::views::{FullCall, app_json, volume_json};

/// The largest request body: a call's arguments and environment.
const MAX_BODY: usize = 1 << 20;
/// How often `logs?follow=1` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Log lines per registry query.
const LOG_PAGE: usize = 1000;

const OPENAPI: &str = include_str!("openapi.json");

pub(super) struct Api {
    pub(super) worker: Arc<Worker>,
    token: String,
    registries: Registries,
    /// The address the node listens on (CGI's `SERVER_PORT`).
    pub(super) local: SocketAddr,
    /// Bytes of web request bodies the node may hold at once (see `web`).
    pub(super) bodies: Arc<tokio::sync::Semaphore>,
}

type Shared = State<Arc<Api>>;

pub fn router(worker: Arc<Worker>, token: String, local: SocketAddr) -> Router {
    let api = Arc::new(Api {
        bodies: Arc::new(tokio::sync::Semaphore::new(
            crate::triggers::http::BODIES_HELD,
        )),
        registries: worker.registries().clone(),
        worker,
        token,
        local,
    });
    let protected = Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/apps", get(list_apps))
        .route("/v1/volumes", get(list_volumes))
        .route(
            "/v1/apps/{app}/functions/{function}/calls",
            post(create_call),
        )
        .route("/v1/calls/{id}", get(get_call).delete(cancel_call))
        .route("/v1/apps/{app}/logs", get(logs))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token));
    // Web endpoints take no token: each is its app's public face.
    let web = Router::new()
        .route("/web/{app}", any(web::by_path))
        .route("/web/{app}/", any(web::by_path))
        .route("/web/{app}/{*path}", any(web::by_path));
    Router::new()
        .route("/v1/health", get(health))
        .merge(protected)
        .merge(web)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(api.clone(), web::by_host))
        .with_state(api)
}

/// An error answer: its status and one line.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let line = self.1.replace('\n', " ");
        (self.0, Json(json!({ "error": line }))).into_response()
    }
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    /// A library error, answered with the status its kind maps to
    /// (`error::http_status`): a refusal is the client's fault, anything
    /// else the node's.
    fn from_library(e: anyhow::Error) -> Self {
        Self(error::http_status(&e), format!("{e:#}"))
    }
}

type Answer = Result<Response, ApiError>;

async fn require_token(State(api): Shared, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if authorized(header, &api.token) {
        next.run(request).await
    } else {
        let mut answer = ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer TOKEN` with the token in $WASMHOST_HOME/token".into(),
        )
        .into_response();
        answer.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("a valid header"),
        );
        answer
    }
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such route; see /v1/openapi.json".into(),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method; see /v1/openapi.json".into(),
    )
}

async fn health(State(api): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "node": api.worker.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_apps(State(api): Shared) -> Answer {
    let apps = api
        .registries
        .with(|registry| registry.read(|tx| tx.list_apps(false)))
        .await
        .map_err(ApiError::from_library)?;
    Ok(Json(apps.iter().map(app_json).collect::<Vec<_>>()).into_response())
}

async fn list_volumes(State(api): Shared) -> Answer {
    let home = api.registries.home().clone();
    let volumes = api
        .registries
        .with(move |registry| {
            let volumes = registry.read(|tx| tx.named_volumes())?;
            volumes
                .iter()
                .map(|v| Ok(volume_json(v, &crate::volumes::counts_now(&home, v)?)))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .map_err(ApiError::from_library)?;
    Ok(Json(volumes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct CallFields {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    spawn: bool,
}

/// A call's request body: a JSON object only (serde's derived structs
/// also take an array, `[args, env, spawn]`, which the document does not).
struct CallRequest(CallFields);

impl<'de> Deserialize<'de> for CallRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CallFields::deserialize(ObjectOnly(deserializer)).map(CallRequest)
    }
}

/// Deserializes a struct from a JSON object, refusing an array.
struct ObjectOnly<D>(D);

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

impl CallFields {
    /// What WASI cannot pass to a guest is refused here, before anything
    /// is recorded.
    fn check(&self) -> Result<(), ApiError> {
        if let Some(arg) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(ApiError::bad(format!(
                "argument `{}` holds a NUL byte, which WASI cannot pass to a guest",
                arg.escape_debug()
            )));
        }
        for (key, value) in &self.env {
            if !manifest::valid_env_name(key) {
                return Err(ApiError::bad(format!(
                    "environment variable name `{}` is invalid: use a non-empty name without `=` or NUL",
                    key.escape_debug()
                )));
            }
            if value.contains('\0') {
                return Err(ApiError::bad(format!(
                    "the value of `{key}` holds a NUL byte, which WASI cannot pass to a guest"
                )));
            }
        }
        Ok(())
    }
}

/// axum's words for a path it cannot decode (`%FF`), as a JSON error.
fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad(rejection.body_text())
}

/// serde's and axum's words for a body that is not the request asked for.
fn body_error(rejection: JsonRejection) -> ApiError {
    let status = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than {MAX_BODY} bytes")
        }
        _ => rejection.body_text(),
    };
    ApiError(
        status,
        format!(
            "{detail}; expected JSON {{\"args\": [strings], \"env\": {{name: string}}, \"spawn\": bool}}"
        ),
    )
}

async fn create_call(
    State(api): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<CallRequest>, JsonRejection>,
) -> Answer {
    let Path((app, function)) = path.map_err(path_error)?;
    let Json(CallRequest(request)) = body.map_err(body_error)?;
    request.check()?;
    let CallFields { args, env, spawn } = request;
    if !spawn
        && let Some(answer) = call_at_once(
            &api,
            app.clone(),
            function.clone(),
            args.clone(),
            env.clone(),
        )
        .await?
    {
        return Ok(answer);
    }
    let id = api
        .registries
        .with(move |registry| {
            let mut ids = Vec::new();
            calls::queue_calls(
                registry,
                &app,
                &function,
                std::iter::once(args),
                &env,
                |id| {
                    ids.push(id.to_owned());
                    Ok(())
                },
            )?;
            Ok(ids.pop().unwrap_or_default())
        })
        .await
        .map_err(ApiError::from_library)?;
    api.worker.wake();
    if spawn {
        let queued = json!({ "id": id, "state": CallState::Queued });
        return Ok((StatusCode::ACCEPTED, Json(queued)).into_response());
    }
    let ended = api.worker.when_ended(&id);
    let id_now = id.clone();
    let final_now = api
        .registries
        .with(move |registry| {
            registry.read(|tx| Ok(tx.call(&id_now)?.is_some_and(|c| c.state.is_final())))
        })
        .await
        .map_err(ApiError::from_library)?;
    if final_now {
        api.worker.forget_waiters(&id);
    } else {
        tokio::select! {
            _ = ended => {}
            () = api.worker.draining() => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the node is shutting down; call {id} stays queued for the next node (`wasmhost calls get {id} --wait`)"),
                ));
            }
        }
    }
    call_answer(&api, id).await
}

/// Runs the call in this request if the node may (see
/// `Worker::call_now`); None if it must go through the queue.
async fn call_at_once(
    api: &Api,
    app: String,
    function: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
) -> Result<Option<Response>, ApiError> {
    let worker = api.worker.clone();
    let now = tokio::task::spawn_blocking(move || worker.call_now(&app, &function, args, env))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from_library)?;
    let Some(ended) = now else {
        return Ok(None);
    };
    match ended.await {
        Ok(Ok(call)) => Ok(Some(Json(call).into_response())),
        Ok(Err(e)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the node stopped before the call ended".into(),
        )),
    }
}

async fn call_answer(api: &Api, id: String) -> Answer {
    let call = api
        .registries
        .with(move |registry| {
            registry.read(|tx| match tx.call(&id)? {
                Some(call) => Ok(Some(FullCall::read(tx, call)?)),
                None => Ok(None),
            })
        })
        .await
        .map_err(ApiError::from_library)?;
    match call {
        Some(call) => Ok(Json(call).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "no call has that id".into(),
        )),
    }
}

async fn get_call(State(api): Shared, path: Result<Path<String>, PathRejection>) -> Answer {
    let Path(id) = path.map_err(path_error)?;
    call_answer(&api, id).await
}

async fn cancel_call(State(api): Shared, path: Result<Path<String>, PathRejection>) -> Answer {
    let Path(id) = path.map_err(path_error)?;
    let (state, was) = api
        .registries
        .with(move |registry| {
            let call = calls::find(registry, &id)?;
            if call.state.is_final() {
                return Ok((call.state, None));
            }
            let was = calls::cancel(registry, &id, "DELETE /v1/calls/{id} on the node API")?;
            Ok((CallState::Cancelled, Some((was.id, was.state))))
        })
        .await
        .map_err(ApiError::from_library)?;
    match was {
        Some((id, was)) => {
            Ok(Json(json!({ "id": id, "state": state, "was": was })).into_response())
        }
        None => Err(ApiError(
            StatusCode::CONFLICT,
            format!("the call has already ended ({})", state.as_str()),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    function: Option<String>,
    call: Option<String>,
    /// A duration (`10m`, `0s`, `72h`): lines newer than this long ago.
    since: Option<String>,
    #[serde(default)]
    follow: Option<String>,
}

async fn logs(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Answer {
    let Path(app) = path.map_err(path_error)?;
    let Query(query) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let since = match &query.since {
        Some(text) => {
            let back =
                units::parse_lookback(text).map_err(|e| ApiError::bad(format!("since: {e}")))?;
            let back = i64::try_from(back.as_millis()).unwrap_or(i64::MAX);
            Some(now_ms().saturating_sub(back))
        }
        None => None,
    };
    let follow = match query.follow.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "follow: `{}` is not 1, true, 0 or false",
                other.escape_debug()
            )));
        }
    };
    let app_id = api
        .registries
        .with(move |registry| Ok(calls::logs_app(registry, &app)?.id))
        .await
        .map_err(ApiError::from_library)?;
    let filter = LogFilter {
        function: query.function,
        call: query.call,
        since,
        after: 0,
    };
    let pages = futures_util::stream::unfold(
        (api.clone(), filter, app_id, false),
        move |(api, mut filter, app_id, done)| async move {
            if done {
                return None;
            }
            loop {
                let (query_app, query_filter) = (app_id.clone(), filter.clone());
                let lines = api
                    .registries
                    .with(move |registry| {
                        registry.read(|tx| tx.log_lines(&query_app, &query_filter, LOG_PAGE, false))
                    })
                    .await;
                let lines = match lines {
                    Ok(lines) => lines,
                    Err(e) => {
                        let error = json!({ "error": format!("{e:#}") }).to_string() + "\n";
                        return Some((Ok::<_, std::io::Error>(error), (api, filter, app_id, true)));
                    }
                };
                if let Some(last) = lines.last() {
                    filter.after = last.seq;
                    let mut text = String::new();
                    for line in &lines {
                        text.push_str(&serde_json::to_string(line).unwrap_or_default());
                        text.push('\n');
                    }
                    return Some((Ok(text), (api, filter, app_id, false)));
                }
                if !follow {
                    return None;
                }
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                    () = api.worker.draining() => return None,
                }
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response())
}
