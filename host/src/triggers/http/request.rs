//! Answering one web request on a node, after axum has turned it into a
//! [`WebRequest`]: find the app and the function whose route it is, wait
//! for room (the node's `--max-calls`, the function's `concurrency`),
//! record the request as a call, run it, and record how it ended. What the
//! node itself keeps (its apps and programs as recently read, its call
//! records, the calls it runs) it lends through [`Host`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::{ArrivingRequest, Connection, Endpoint, Response, WebRequest, refuse, route};
use crate::apps::LiveApp;
use crate::calls::Ending;
use crate::error;
use crate::invoke::{NoSlot, Prepared, Room, StopFlag, Watch};
use crate::manifest::units::format_duration;
use crate::manifest::{Record, Route};
use crate::registry::{CallState, now_ms};
use crate::runtime::OutputLog;

/// How long a web request waits for room (the node's `--max-calls`, the
/// function's `concurrency`) before it is answered 503.
pub const WEB_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Most bytes of a web request's stdout and stderr its record keeps (a
/// WAGI script's stdout is its response: the record keeps its head and the
/// start of its body, not every page served).
pub const WEB_KEPT_PER_STREAM: usize = 64 << 10;

/// What answering a web request needs of the node that received it.
pub trait Host {
    /// The running deployed app `app`, as recently read as the node likes.
    fn web_app(&self, app: &str) -> anyhow::Result<Arc<LiveApp>>;
    /// `function` of `live`, prepared to run on this node.
    fn prepare(&self, live: &Arc<LiveApp>, function: &str) -> anyhow::Result<Prepared>;
    /// Room for one more call of `live` on this node, waited for no later
    /// than `deadline`; None if there is none by then (or the node drains).
    fn admit(&self, live: &LiveApp, deadline: Instant) -> Option<Watch>;
    /// The most calls this node runs at once, in all and of one app.
    fn room(&self) -> Room;
    /// Records call `watch` of `function` of `live` as running here now,
    /// its output going to `log`.
    fn begin(
        &self,
        live: &LiveApp,
        function: &str,
        args: Vec<String>,
        log: Arc<OutputLog>,
        watch: &Watch,
    );
    /// Records how call `id` ended (nobody waits for a web request's
    /// record: it goes with the recorder's next batch).
    fn end(&self, id: &str, ending: Ending);
}

/// Answers a web request to app `app` on the calling thread (one where
/// blocking is fine): `respond` gets the response as soon as there is one.
/// The request is recorded as a call of the function whose route it is,
/// its args the method and the path, its exit code the HTTP status it was
/// answered with; a 5xx is a failed call.
pub fn serve(
    host: &impl Host,
    app: &str,
    request: ArrivingRequest,
    connection: Connection,
    respond: impl FnOnce(Response) + Send + Sync + 'static,
) {
    let live = match host.web_app(app) {
        Ok(live) => live,
        Err(e) => {
            refuse(respond, error::http_status(&e), &format!("{e:#}"));
            return;
        }
    };
    let Some((function, route)) = route(&live.manifest, request.uri().path()) else {
        let line = format!(
            "app `{app}` has no web endpoint at {}; its functions' `http` keys are its routes",
            request.uri().path()
        );
        refuse(respond, StatusCode::NOT_FOUND, &line);
        return;
    };
    let (head, body) = request.into_parts();
    let request = match body() {
        Ok(body) => WebRequest::from_parts(head, body),
        Err(refused) => {
            let (status, line) = refused.answer();
            refuse(respond, status, &line);
            return;
        }
    };
    let deadline = Instant::now() + WEB_QUEUE_WAIT;
    let Some(watch) = host.admit(&live, deadline) else {
        let room = host.room();
        let line = format!(
            "the node is busy (it runs at most {} calls at once, its --max-calls, and {} of one app, its --max-calls-per-app) or shutting down; try again",
            room.most, room.per_app
        );
        refuse(respond, StatusCode::SERVICE_UNAVAILABLE, &line);
        return;
    };
    let args = vec![
        request.method().to_string(),
        request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
    ];
    let log = OutputLog::capped(match live.manifest.functions[function].record {
        Record::Output => WEB_KEPT_PER_STREAM,
        Record::Metadata => 0,
    });
    host.begin(&live, function, args, log.clone(), &watch);
    let recorded = Recorded {
        host,
        id: watch.id().to_owned(),
        ended: false,
    };
    let endpoint = Request {
        live: &live,
        function,
        route,
        stop: watch.stop(),
        log,
        deadline,
    };
    let ending = endpoint.run(host, request, connection, respond);
    recorded.end(ending);
    drop(watch);
}

/// A request recorded as running, until its end is: if the thread that
/// answers it unwinds first (a bug in the node), its record says so
/// rather than showing it running for ever.
struct Recorded<'h, H: Host> {
    host: &'h H,
    id: String,
    ended: bool,
}

impl<H: Host> Recorded<'_, H> {
    fn end(mut self, ending: Ending) {
        self.ended = true;
        self.host.end(&self.id, ending);
    }
}

impl<H: Host> Drop for Recorded<'_, H> {
    fn drop(&mut self) {
        if !self.ended {
            let why = "the node failed while answering this request (a panic: see its log)";
            tracing::error!("web request {}: {why}", self.id);
            let ending = Ending::Finished {
                state: CallState::Failed,
                exit_code: Some(500),
                error: Some(why.to_owned()),
                at: now_ms(),
            };
            self.host.end(&self.id, ending);
        }
    }
}

/// A request recorded as a call, not yet run.
struct Request<'a> {
    live: &'a Arc<LiveApp>,
    function: &'a str,
    route: &'a Route,
    stop: &'a StopFlag,
    log: Arc<OutputLog>,
    /// When it stops waiting for one of the function's `concurrency` slots.
    deadline: Instant,
}

impl Request<'_> {
    /// Runs the endpoint once one of its function's slots is free.
    fn run(
        self,
        host: &impl Host,
        request: WebRequest,
        connection: Connection,
        respond: impl FnOnce(Response) + Send + Sync + 'static,
    ) -> Ending {
        let prepared = match host.prepare(self.live, self.function) {
            Ok(prepared) => prepared,
            Err(e) => {
                let line = format!("{e:#}");
                return refuse(respond, StatusCode::INTERNAL_SERVER_ERROR, &line);
            }
        };
        let held = match prepared.acquire(self.stop, Some(self.deadline)) {
            Ok(held) => held,
            Err(NoSlot::Stopped(_)) => {
                let line = "the endpoint was stopped before it started (its app was stopped, or the node is shutting down)";
                return refuse(respond, StatusCode::SERVICE_UNAVAILABLE, line);
            }
            Err(NoSlot::Busy) => {
                let line = format!(
                    "all {} of the function's `concurrency` slots stayed busy for {}",
                    prepared.spec().concurrency.unwrap_or_default(),
                    format_duration(WEB_QUEUE_WAIT)
                );
                return refuse(respond, StatusCode::SERVICE_UNAVAILABLE, &line);
            }
            Err(NoSlot::Failed(e)) => {
                let line = format!("cannot wait for a concurrency slot: {e:#}");
                return refuse(respond, StatusCode::INTERNAL_SERVER_ERROR, &line);
            }
        };
        let endpoint = Endpoint {
            prepared: &prepared,
            route: self.route,
            stop: self.stop,
            log: self.log,
        };
        endpoint.serve(held, request, &connection, respond)
    }
}
