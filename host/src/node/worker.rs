//! The node's worker: claims queued calls of running deployed apps, at most
//! each function's `concurrency` at once across every caller and at most
//! `max_calls` on this node, runs each on a thread of its own, and
//! interrupts those whose call was cancelled or whose app was stopped.
//!
//! Claims are registry transactions (`BEGIN IMMEDIATE` on SQLite), so two
//! nodes never claim one call. The loop wakes when this node queues a call
//! or finishes one, and otherwise every [`POLL`], which is how it notices
//! what other shells did: a new call, a deploy, an update or a stop. Each
//! look also queues the calls of schedules whose tick has come (see
//! `schedule`), which the same look then claims like any other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::apps::{self, LiveApp};
use crate::calls::recorder::CallStart;
use crate::calls::{self, Ending, Holder, Recorder};
use crate::error;
use crate::home::Home;
use crate::invoke::Target;
use crate::manifest::FunctionSpec;
use crate::manifest::Route;
use crate::manifest::units::format_duration;
use crate::module_store;
use crate::registry::Registries;
use crate::registry::{
    AppState, Attempt, CallRecord, CallState, ENDED, QUEUED, Registry, Waiter, new_call_id, now_ms,
};
use crate::runtime::{Outcome, OutputLog, Program, Runtime};
use crate::secrets;
use crate::slots::Slots;
use crate::triggers::http::{self, Connection, Endpoint, Response, Served, WebRequest, refuse};
use crate::triggers::schedule;
use crate::views::FullCall;
use ::http::StatusCode;

/// How often the worker looks for queued calls and cancellations.
const POLL: Duration = Duration::from_millis(100);
/// How often it reaps what dead processes and nodes left (housekeeping
/// also prunes call records, when they are due).
const HOUSEKEEPING: Duration = Duration::from_secs(2);
/// How long an HTTP call may run from an app as read this long ago: how
/// soon the node's immediate calls see a deploy, an update or a stop made
/// elsewhere.
const LIVE_APP_TTL: Duration = Duration::from_millis(250);
/// How long a web request waits for room (the node's `--max-calls`, the
/// function's `concurrency`) before it is answered 503.
pub const WEB_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting web request looks for room on the node.
const ROOM_POLL: Duration = Duration::from_millis(5);

/// A call running on this node.
struct Running {
    app_id: String,
    cancelled: Arc<AtomicBool>,
}

pub struct Worker {
    home: Home,
    holder: Holder,
    runtime: Runtime,
    recorder: Recorder,
    max_calls: usize,
    programs: Mutex<HashMap<(String, String, Option<String>), Arc<Program>>>,
    /// (app, function) as a request named them -> the app, the function's
    /// name, and when they were read.
    live_apps: Cache<(String, String), (Arc<LiveApp>, String)>,
    /// Apps as web requests named them, and when they were read.
    web_apps: Cache<String, Arc<LiveApp>>,
    registries: Registries,
    running: Mutex<BTreeMap<String, Running>>,
    /// Calls whose end someone in this process waits for.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    wake: (Mutex<bool>, Condvar),
    /// Set once the node drains: the claim loop ends, and request handlers
    /// that wait (a call's end, a log's next line) give up.
    drained: tokio::sync::watch::Sender<bool>,
    /// Set once the grace period of a drain has passed.
    interrupting: AtomicBool,
}

impl Worker {
    pub fn new(home: &Home, holder: Holder, max_calls: usize) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            home: home.clone(),
            holder,
            runtime: Runtime::new(home, max_calls)?,
            recorder: Recorder::new(home)?,
            max_calls,
            programs: Mutex::default(),
            live_apps: Mutex::default(),
            web_apps: Mutex::default(),
            registries: Registries::new(home.clone()),
            running: Mutex::default(),
            waiters: Mutex::default(),
            wake: (Mutex::new(false), Condvar::new()),
            drained: tokio::sync::watch::Sender::new(false),
            interrupting: AtomicBool::new(false),
        }))
    }

    /// Registry connections for the node's request handlers.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    pub fn node_id(&self) -> &str {
        &self.holder.id
    }

    /// Makes the loop look at the queue now.
    pub fn wake(&self) {
        *lock(&self.wake.0) = true;
        self.wake.1.notify_one();
    }

    /// A receiver told when call `id` has ended and its record is written;
    /// the caller checks the registry after asking, in case it already had.
    pub fn when_ended(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters)
            .entry(id.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Stops claiming; running calls go on.
    pub fn drain(&self) {
        self.drained.send_replace(true);
        self.wake();
    }

    fn is_draining(&self) -> bool {
        *self.drained.borrow()
    }

    /// Resolves once the node drains.
    pub async fn draining(&self) {
        let mut drained = self.drained.subscribe();
        let _ = drained.wait_for(|d| *d).await;
    }

    /// Forgets the waiters of call `id` (it had ended before they waited).
    pub fn forget_waiters(&self, id: &str) {
        lock(&self.waiters).remove(id);
    }

    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    /// Interrupts every running call (the drain's grace period is over).
    pub fn interrupt_all(&self) {
        self.interrupting.store(true, Ordering::SeqCst);
        for running in lock(&self.running).values() {
            running.cancelled.store(true, Ordering::SeqCst);
        }
    }

    /// Writes what is left to record and gives up the node's lease.
    pub fn finish(self: Arc<Self>) -> Result<()> {
        self.recorder.flush()?;
        Registry::open(&self.home.registry())?.write(|tx| tx.node_stopped(self.node_id()))?;
        // If a call thread still holds the worker, the lease goes with the
        // process.
        if let Ok(worker) = Arc::try_unwrap(self) {
            worker.holder.release();
        }
        Ok(())
    }

    /// The claim loop; returns once draining.
    pub fn run(self: Arc<Self>) -> Result<()> {
        let mut registry = Registry::open(&self.home.registry())?;
        if self.home.is_shared() {
            // Other machines queue and cancel calls: the registry tells.
            let mut waiter = Waiter::open(&self.home.registry(), &[QUEUED, ENDED])?;
            let worker = self.clone();
            std::thread::spawn(move || {
                while !worker.is_draining() && waiter.wait(POLL).is_ok() {
                    worker.wake();
                }
            });
        }
        let mut housekept = Instant::now();
        self.housekeeping(&mut registry);
        while !self.is_draining() {
            if let Err(e) = schedule::run_due(&mut registry) {
                tracing::warn!("cannot queue the calls of due schedules: {e:#}");
            }
            let free = self.max_calls.saturating_sub(self.running_count());
            if free > 0 {
                match self.claim(&mut registry, free) {
                    Ok(claimed) => {
                        for (call, live) in claimed {
                            self.start(call, live);
                        }
                    }
                    Err(e) => tracing::warn!("cannot claim queued calls: {e:#}"),
                }
            }
            self.interrupt_stopped(&mut registry);
            if housekept.elapsed() >= HOUSEKEEPING {
                self.housekeeping(&mut registry);
                housekept = Instant::now();
            }
            let woken = lock(&self.wake.0);
            let (mut woken, _) = self
                .wake
                .1
                .wait_timeout_while(woken, POLL, |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *woken = false;
        }
        Ok(())
    }

    fn housekeeping(&self, registry: &mut Registry) {
        if let Err(e) = crate::housekeeping::run(&self.home, registry) {
            tracing::warn!("housekeeping failed: {e:#}");
        }
    }

    /// Claims up to `free` queued calls that their function's
    /// `concurrency` leaves room for.
    fn claim(
        &self,
        registry: &mut Registry,
        free: usize,
    ) -> Result<Vec<(CallRecord, Arc<LiveApp>)>> {
        // Most looks find nothing: a read, not a write lock, tells.
        if registry.read(|tx| tx.claimable_calls(1, false))?.is_empty() {
            return Ok(Vec::new());
        }
        let holder = &self.holder;
        // Claims of several nodes run side by side, each skipping the calls
        // another has locked; only counting a `concurrency` needs them to
        // take turns, per function.
        registry.write_shared(|tx| {
            let candidates = tx.claimable_calls(free.max(64) * 4, true)?;
            let mut apps: HashMap<String, Option<Arc<LiveApp>>> = HashMap::new();
            for call in &candidates {
                if !apps.contains_key(&call.app_id) {
                    let live = apps::deployed_app_in(tx, &call.app_id).ok().map(Arc::new);
                    apps.insert(call.app_id.clone(), live);
                }
            }
            let spec_of = |call: &CallRecord| {
                apps[&call.app_id]
                    .as_ref()
                    .and_then(|l| l.manifest.functions.get(&call.function))
            };
            // In one order, so that two claims never wait on each other.
            let limited: BTreeSet<(&str, &str)> = candidates
                .iter()
                .filter(|call| spec_of(call).is_some_and(|spec| spec.concurrency.is_some()))
                .map(|call| (call.app_id.as_str(), call.function.as_str()))
                .collect();
            for (app_id, function) in &limited {
                tx.lock_key(&format!("{app_id}/{function}"))?;
            }
            let mut claimed = Vec::new();
            let mut counts: HashMap<(String, String), u32> = HashMap::new();
            for call in &candidates {
                if claimed.len() == free {
                    break;
                }
                let Some(spec) = spec_of(call) else {
                    tx.finish_call(
                        &call.id,
                        CallState::Failed,
                        None,
                        Some("its function is no longer in the app (it was updated)"),
                        now_ms(),
                    )?;
                    continue;
                };
                let key = (call.app_id.clone(), call.function.clone());
                let count = match counts.get(&key) {
                    Some(count) => *count,
                    None => tx.running_count(&call.app_id, &call.function)?,
                };
                if spec.concurrency.is_some_and(|most| count >= most) {
                    counts.insert(key, count);
                    continue;
                }
                if tx.claim_call(&call.id, &holder.id, holder.node.as_deref())? {
                    counts.insert(key, count + 1);
                    let call = tx.call(&call.id)?.context("a claimed call vanished")?;
                    let live = apps[&call.app_id].clone().expect("checked above");
                    claimed.push((call, live));
                }
            }
            Ok(claimed)
        })
    }

    /// Runs a claimed call on a thread of its own.
    fn start(self: &Arc<Self>, call: CallRecord, live: Arc<LiveApp>) {
        let cancelled = self.track(&call);
        let worker = self.clone();
        std::thread::spawn(move || {
            let log = OutputLog::new();
            worker
                .recorder
                .watch(&call.id, &call.app_id, call.attempts, log.clone());
            worker.run_call(call, &live, cancelled, log, None);
        });
    }

    /// Counts `call` as running here; returns its stop flag.
    fn track(&self, call: &CallRecord) -> Arc<AtomicBool> {
        let cancelled = Arc::new(AtomicBool::new(self.interrupting.load(Ordering::SeqCst)));
        lock(&self.running).insert(
            call.id.clone(),
            Running {
                app_id: call.app_id.clone(),
                cancelled: cancelled.clone(),
            },
        );
        cancelled
    }

    /// Runs a call of a deployed app at once, on the calling thread, if the
    /// node has room and nothing makes it wait its turn (a `concurrency`)
    /// or come back (`retries`): what most HTTP calls are. Records it
    /// without a transaction of its own (the recorder writes it with
    /// others, once, as it ended). Returns where its record comes once it
    /// is written, or None if the call must be queued instead.
    pub fn call_now(
        self: &Arc<Self>,
        app: &str,
        function: &str,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<Option<oneshot::Receiver<Answer>>> {
        if self.is_draining() || self.running_count() >= self.max_calls {
            return Ok(None);
        }
        let (live, function) = self.live_app(app, function)?;
        let spec = &live.manifest.functions[&function];
        if spec.concurrency.is_some() || spec.retries.max > 0 {
            return Ok(None);
        }
        let log = OutputLog::retaining();
        let (call, cancelled) = self.begin(&live, &function, args, env, log.clone());
        let (tx, rx) = oneshot::channel();
        self.clone().run_call(call, &live, cancelled, log, Some(tx));
        Ok(Some(rx))
    }

    /// Records a call of `function` of `live` as running on this node now,
    /// its output going to `log`; returns it and its stop flag.
    fn begin(
        &self,
        live: &LiveApp,
        function: &str,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        log: Arc<OutputLog>,
    ) -> (CallRecord, Arc<AtomicBool>) {
        let now = now_ms();
        let call = CallRecord {
            id: new_call_id(),
            app: live.record.name.clone(),
            app_id: live.record.id.clone(),
            function: function.to_owned(),
            args,
            env,
            state: CallState::Running,
            attempts: 1,
            max_attempts: 1,
            node: self.holder.node.clone(),
            exit_code: None,
            error: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            holder: Some(self.holder.id.clone()),
            module: live.modules.get(function).cloned(),
            tick: None,
        };
        let cancelled = self.track(&call);
        self.recorder.start(
            CallStart {
                id: call.id.clone(),
                app_id: call.app_id.clone(),
                function: call.function.clone(),
                args: call.args.clone(),
                env: call.env.clone(),
                module: call.module.clone(),
                holder: self.holder.id.clone(),
                node: self.holder.node.clone(),
                started_at: now,
            },
            log,
        );
        (call, cancelled)
    }

    /// The running deployed app `app` and its function `function`, read
    /// from the registry at most every [`LIVE_APP_TTL`].
    fn live_app(&self, app: &str, function: &str) -> Result<(Arc<LiveApp>, String)> {
        let key = (app.to_owned(), function.to_owned());
        cached(&self.live_apps, key, || {
            let (live, function) = self
                .registries
                .with_sync(|registry| calls::find_function(registry, app, function))?;
            Ok((Arc::new(live), function))
        })
    }

    /// The running deployed app `app`, for a web request, read from the
    /// registry at most every [`LIVE_APP_TTL`].
    fn web_app(&self, app: &str) -> Result<Arc<LiveApp>> {
        cached(&self.web_apps, app.to_owned(), || {
            let live = self
                .registries
                .with_sync(|registry| registry.read(|tx| apps::deployed_app_in(tx, app)))?;
            Ok(Arc::new(live))
        })
    }

    /// Answers a web request to app `app` on the calling thread (one where
    /// blocking is fine): `respond` gets the response as soon as there is
    /// one. The request is recorded as a call of the function whose route
    /// it is, its args the method and the path, its exit code the HTTP
    /// status it was answered with; a 5xx is a failed call.
    pub fn serve_web(
        self: &Arc<Self>,
        app: &str,
        request: WebRequest,
        connection: Connection,
        respond: impl FnOnce(Response) + Send + Sync + 'static,
    ) {
        let live = match self.web_app(app) {
            Ok(live) => live,
            Err(e) => {
                refuse(respond, error::http_status(&e), &format!("{e:#}"));
                return;
            }
        };
        let Some((function, route)) = http::route(&live.manifest, request.uri().path()) else {
            let line = format!(
                "app `{app}` has no web endpoint at {}; its functions' `http` keys are its routes",
                request.uri().path()
            );
            refuse(respond, StatusCode::NOT_FOUND, &line);
            return;
        };
        let deadline = Instant::now() + WEB_QUEUE_WAIT;
        if !self.wait_for_room(deadline) {
            let line = format!(
                "the node is busy (it runs at most {} calls at once, its --max-calls) or shutting down; try again",
                self.max_calls
            );
            refuse(respond, StatusCode::SERVICE_UNAVAILABLE, &line);
            return;
        }
        let args = vec![
            request.method().to_string(),
            request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        ];
        let log = OutputLog::new();
        let (call, cancelled) = self.begin(&live, function, args, BTreeMap::new(), log.clone());
        let served = self.run_endpoint(
            &live, function, route, cancelled, log, request, connection, respond, deadline,
        );
        let ending = Ending::Finished {
            // A guest that failed after it answered failed too.
            state: match served.status.is_server_error() || served.error.is_some() {
                true => CallState::Failed,
                false => CallState::Succeeded,
            },
            exit_code: Some(i32::from(served.status.as_u16())),
            error: served.error,
            at: now_ms(),
        };
        // Nobody waits for a web request's record: it goes with the
        // recorder's next batch rather than in a transaction of its own.
        lock(&self.running).remove(&call.id);
        self.recorder.finish(&call.id, ending, None);
    }

    /// Runs the endpoint `function` once one of its `concurrency` slots is
    /// free, waiting no later than `deadline`.
    #[allow(clippy::too_many_arguments)]
    fn run_endpoint(
        &self,
        live: &LiveApp,
        function: &str,
        route: &Route,
        cancelled: Arc<AtomicBool>,
        log: Arc<OutputLog>,
        request: WebRequest,
        connection: Connection,
        respond: impl FnOnce(Response) + Send + Sync + 'static,
        deadline: Instant,
    ) -> Served {
        let spec = &live.manifest.functions[function];
        let slot = spec
            .concurrency
            .map(|n| {
                Slots::new(&self.home, &live.record.id, function, n)
                    .and_then(|slots| slots.acquire_until(&cancelled, Some(deadline)))
            })
            .transpose();
        let _slot = match slot {
            Ok(Some(None)) => {
                let line = match cancelled.load(Ordering::SeqCst) {
                    true => "the endpoint was stopped before it started (its app was stopped, or the node is shutting down)".to_owned(),
                    false => format!(
                        "all {} of the function's `concurrency` slots stayed busy for {}",
                        spec.concurrency.unwrap_or_default(),
                        format_duration(WEB_QUEUE_WAIT)
                    ),
                };
                return refuse(respond, StatusCode::SERVICE_UNAVAILABLE, &line);
            }
            Ok(slot) => slot.flatten(),
            Err(e) => {
                let line = format!("cannot wait for a concurrency slot: {e:#}");
                return refuse(respond, StatusCode::INTERNAL_SERVER_ERROR, &line);
            }
        };
        let program = match self.program(live, function) {
            Ok(program) => program,
            Err(e) => {
                return refuse(
                    respond,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("{e:#}"),
                );
            }
        };
        let secrets = match self.secrets(spec) {
            Ok(secrets) => secrets,
            Err(e) => {
                let line = format!("{e:#}");
                return refuse(respond, StatusCode::INTERNAL_SERVER_ERROR, &line);
            }
        };
        let mounts = live.mounts(&self.home, function);
        let endpoint = Endpoint {
            home: &self.home,
            program: &program,
            function: spec,
            route,
            mounts: &mounts,
            secrets: &secrets,
            cancelled,
            log,
        };
        endpoint.serve(request, &connection, respond)
    }

    /// Waits until the node runs fewer than `max_calls` calls, no later
    /// than `deadline`; false if it is still full then, or draining.
    fn wait_for_room(&self, deadline: Instant) -> bool {
        loop {
            if self.is_draining() {
                return false;
            }
            if self.running_count() < self.max_calls {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(ROOM_POLL);
        }
    }

    fn run_call(
        self: Arc<Self>,
        call: CallRecord,
        live: &LiveApp,
        cancelled: Arc<AtomicBool>,
        log: Arc<OutputLog>,
        ended: Option<oneshot::Sender<Answer>>,
    ) {
        let spec = &live.manifest.functions[&call.function];
        let outcome = self
            .invoke(live, &call, cancelled, log.clone())
            .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}").replace('\n', " ")));
        let ending = match outcome {
            Outcome::Interrupted if self.interrupting.load(Ordering::SeqCst) => Ending::failed(
                None,
                format!(
                    "interrupted: node {} shut down and its grace period ran out",
                    self.node_id()
                ),
                call.attempts,
                call.max_attempts,
                spec,
            ),
            outcome => Ending::of(&outcome, call.attempts, call.max_attempts, spec),
        };
        let answer = ended.map(|to| (to, ended_call(call.clone(), &ending, &log)));
        let worker = self.clone();
        let id = call.id.clone();
        self.recorder.finish(
            &call.id,
            ending,
            Some(Box::new(move |written| {
                lock(&worker.running).remove(&id);
                for waiter in lock(&worker.waiters).remove(&id).unwrap_or_default() {
                    let _ = waiter.send(());
                }
                match answer {
                    Some((to, answer)) => {
                        let _ = to.send(written.map(|()| answer));
                    }
                    // Room for a queued call (an immediate one makes none
                    // that the next look would not find).
                    None => worker.wake(),
                }
            })),
        );
    }

    fn invoke(
        &self,
        live: &LiveApp,
        call: &CallRecord,
        cancelled: Arc<AtomicBool>,
        log: Arc<OutputLog>,
    ) -> Result<Outcome> {
        let spec = &live.manifest.functions[&call.function];
        let program = self.program(live, &call.function)?;
        let mounts = live.mounts(&self.home, &call.function);
        let slots = spec
            .concurrency
            .map(|n| Slots::new(&self.home, &live.record.id, &call.function, n))
            .transpose()?;
        let secrets = self.secrets(spec)?;
        let target = Target {
            home: &self.home,
            program: &program,
            function: spec,
            mounts: &mounts,
            secrets: &secrets,
            env: &call.env,
            cancelled,
            slots,
            record: None,
        };
        Ok(target.run_logged(&call.args, log))
    }

    /// The variables of the function's secrets (see `secrets::environment`).
    /// A function without secrets (most) takes no registry from the pool.
    fn secrets(&self, spec: &FunctionSpec) -> Result<BTreeMap<String, String>> {
        if spec.secrets.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.registries
            .with_sync(|registry| secrets::environment(&self.home, registry, &spec.secrets))
    }

    /// The function's compiled, linked program, made once per module.
    fn program(&self, live: &LiveApp, function: &str) -> Result<Arc<Program>> {
        let key = (
            live.record.id.clone(),
            function.to_owned(),
            live.modules.get(function).cloned(),
        );
        if let Some(program) = lock(&self.programs).get(&key) {
            return Ok(program.clone());
        }
        let spec = &live.manifest.functions[function];
        let module = live.module(&self.home, function, |digest| {
            self.registries
                .with_sync(|registry| module_store::fetch(&self.home, registry, digest))
        })?;
        let program = Arc::new(
            self.runtime
                .load(&module, spec)
                .with_context(|| format!("cannot load the module of function `{function}`"))?,
        );
        let mut programs = lock(&self.programs);
        // An update replaced what the function runs: its old program goes.
        programs.retain(|(app, f, _), _| (app, f) != (&key.0, &key.1));
        programs.insert(key, program.clone());
        Ok(program)
    }

    /// Interrupts running calls that were cancelled, or whose app was
    /// stopped, from anywhere.
    fn interrupt_stopped(&self, registry: &mut Registry) {
        let ids: Vec<(String, String)> = lock(&self.running)
            .iter()
            .map(|(id, r)| (id.clone(), r.app_id.clone()))
            .collect();
        if ids.is_empty() {
            return;
        }
        let stopped = registry.read(|tx| {
            let mut stopped = Vec::new();
            for (id, app_id) in &ids {
                let cancelled = tx
                    .call(id)?
                    .is_some_and(|c| c.state == CallState::Cancelled);
                let app_stopped = tx.app(app_id)?.is_none_or(|a| a.state == AppState::Stopped);
                if cancelled || app_stopped {
                    stopped.push(id.clone());
                }
            }
            Ok(stopped)
        });
        if let Ok(stopped) = stopped {
            let running = lock(&self.running);
            for id in stopped {
                if let Some(call) = running.get(&id) {
                    call.cancelled.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A call run at once, as it ended: or why its record could not be written.
pub type Answer = Result<FullCall, String>;

/// The record of a call run at once, as it ended with `ending`, built
/// from what this node saw rather than read back from the registry.
fn ended_call(mut call: CallRecord, ending: &Ending, log: &OutputLog) -> FullCall {
    let mut finished_at = now_ms();
    if let Ending::Finished {
        state,
        exit_code,
        error,
        at,
    } = ending
    {
        (call.state, call.exit_code, call.error) = (*state, *exit_code, error.clone());
        finished_at = *at;
        call.finished_at = Some(finished_at);
    }
    let ([stdout, stderr], [dropped_stdout, dropped_stderr]) = log.retained();
    let attempt = Attempt {
        attempt: call.attempts,
        node: call.node.clone(),
        started_at: call.started_at.unwrap_or(finished_at),
        finished_at: call.finished_at,
        exit_code: call.exit_code,
        error: call.error.clone(),
    };
    FullCall {
        call,
        stdout,
        stderr,
        dropped_stdout,
        dropped_stderr,
        attempt_history: vec![attempt],
    }
}

/// Values read from the registry, and when.
type Cache<K, V> = Mutex<HashMap<K, (V, Instant)>>;

/// `key`'s value in `cache` if read less than [`LIVE_APP_TTL`] ago, else
/// `load`ed again.
fn cached<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Cache<K, V>,
    key: K,
    load: impl FnOnce() -> Result<V>,
) -> Result<V> {
    if let Some((value, read)) = lock(cache).get(&key)
        && read.elapsed() < LIVE_APP_TTL
    {
        return Ok(value.clone());
    }
    let value = load()?;
    lock(cache).insert(key, (value.clone(), Instant::now()));
    Ok(value)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
