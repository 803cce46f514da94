//! The node's worker: claims queued calls of running deployed apps, at most
//! each function's `concurrency` at once across every caller and at most
//! `max_calls` on this node, runs each on a thread of its own, and
//! interrupts those whose call was cancelled or whose app was stopped.
//!
//! This file holds what the worker is and its loop; its jobs have files of
//! their own: `claims` (taking queued calls), `chores` (due schedules,
//! housekeeping), `immediate` (HTTP calls run at once), `caches` (apps and
//! programs as recently read), `drain`; web requests are
//! `triggers::http`'s, which the worker serves as its [`http::Host`].
//!
//! The loop wakes when this node queues a call or finishes one, and
//! otherwise every [`POLL`], which is how it notices what other shells did:
//! a new call, a deploy, an update or a stop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::oneshot;

use super::caches::Caches;
use super::immediate::{Answer, ended_call};
use crate::apps::LiveApp;
use crate::calls::recorder::CallStart;
use crate::calls::{Ending, Holder, Recorder};
use crate::home::Home;
use crate::invoke::{Call, Ended, Room, Stop, Supervisor, Watch};
use crate::registry::{
    CallKind, CallRecord, CallState, ENDED, QUEUED, Registries, Registry, Waiter,
};
use crate::registry::{new_call_id, now_ms};
use crate::runtime::{OutputLog, Runtime};
use crate::triggers::http;

/// How often the worker looks for queued calls and cancellations.
pub(super) const POLL: Duration = Duration::from_millis(100);

pub struct Worker {
    pub(super) home: Home,
    pub(super) holder: Holder,
    pub(super) recorder: Recorder,
    /// Its `--max-calls` and `--max-calls-per-app`.
    pub(super) room: Room,
    pub(super) caches: Caches,
    pub(super) registries: Registries,
    /// The calls running on this node, claimed, immediate or web.
    pub(super) supervisor: Arc<Supervisor>,
    /// Calls whose end someone in this process waits for.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    wake: (Mutex<bool>, Condvar),
    /// Set once the node drains: the claim loop ends, and request handlers
    /// that wait (a call's end, a log's next line) give up.
    pub(super) drained: tokio::sync::watch::Sender<bool>,
}

impl Worker {
    pub fn new(home: &Home, holder: Holder, room: Room) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            home: home.clone(),
            holder,
            recorder: Recorder::new(home)?,
            room,
            caches: Caches::new(Runtime::new(home, room.most)?),
            registries: Registries::new(home.clone()),
            supervisor: Supervisor::new(),
            waiters: Mutex::default(),
            wake: (Mutex::new(false), Condvar::new()),
            drained: tokio::sync::watch::Sender::new(false),
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

    /// Forgets the waiters of call `id` (it had ended before they waited).
    pub fn forget_waiters(&self, id: &str) {
        lock(&self.waiters).remove(id);
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
            let wait = self.queue_due_schedules(&mut registry, POLL);
            self.claim_and_start(&mut registry);
            self.supervisor.look(&mut registry);
            self.housekeeping_if_due(&mut registry, &mut housekept);
            let woken = lock(&self.wake.0);
            let (mut woken, _) = self
                .wake
                .1
                .wait_timeout_while(woken, wait, |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *woken = false;
        }
        Ok(())
    }

    /// Records call `watch` of `function` of `live`, made by a `kind`
    /// with `(args, env)`, as running on this node now, its output going
    /// to `log`.
    pub(super) fn begin(
        &self,
        live: &LiveApp,
        function: &str,
        kind: CallKind,
        (args, env): (Vec<String>, BTreeMap<String, String>),
        log: Arc<OutputLog>,
        watch: &Watch,
    ) -> CallRecord {
        let now = now_ms();
        let call = CallRecord {
            id: watch.id().to_owned(),
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
            kind,
        };
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
                kind,
            },
            log,
        );
        call
    }

    /// Runs a call to its end and records it; `ended` (for a call run at
    /// once) gets its record once written, else the loop is woken for the
    /// room the call leaves.
    pub(super) fn run_call(
        self: Arc<Self>,
        call: CallRecord,
        live: &Arc<LiveApp>,
        watch: Watch,
        log: Arc<OutputLog>,
        ended: Option<oneshot::Sender<Answer>>,
    ) {
        let spec = &live.manifest.functions[&call.function];
        let how = match self.prepare(live, &call.function) {
            Ok(prepared) => {
                let args = Call {
                    args: &call.args,
                    env: &call.env,
                    stop: watch.stop(),
                };
                prepared.run_logged(&args, log.clone())
            }
            Err(e) => Ended::Failed(format!("{e:#}").replace('\n', " ")),
        };
        let ending = match how {
            Ended::Stopped(Stop::Drain) => Ending::failed(
                None,
                format!(
                    "interrupted: node {} shut down and its grace period ran out",
                    self.node_id()
                ),
                call.attempts,
                call.max_attempts,
                spec,
            ),
            how => how.ending(call.attempts, call.max_attempts, spec),
        };
        let answer = ended.map(|to| (to, ended_call(call.clone(), &ending, &log)));
        let worker = self.clone();
        let id = call.id.clone();
        self.recorder.finish(
            &call.id,
            ending,
            Some(Box::new(move |written| {
                drop(watch);
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
}

/// A web request is one more call of the node's (see `triggers::http`).
impl http::Host for Worker {
    fn web_app(&self, app: &str) -> Result<Arc<LiveApp>> {
        Worker::web_app(self, app)
    }

    fn prepare(&self, live: &Arc<LiveApp>, function: &str) -> Result<crate::invoke::Prepared> {
        Worker::prepare(self, live, function)
    }

    fn admit(&self, live: &LiveApp, deadline: Instant) -> Option<Watch> {
        let id = new_call_id();
        self.supervisor
            .admit(&live.record.id, &id, self.room, deadline)
    }

    fn room(&self) -> Room {
        self.room
    }

    fn begin(
        &self,
        live: &LiveApp,
        function: &str,
        args: Vec<String>,
        log: Arc<OutputLog>,
        watch: &Watch,
    ) {
        let input = (args, BTreeMap::new());
        Worker::begin(self, live, function, CallKind::Web, input, log, watch);
    }

    fn end(&self, id: &str, ending: Ending) {
        self.recorder.finish(id, ending, None);
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
