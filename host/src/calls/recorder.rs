//! Writes call records in batches, from one thread with its own registry
//! connection: a `--map` of thousands of tiny calls, or a node answering
//! many requests at once, costs a transaction per batch rather than several
//! per call (group commit). What someone waits for (an HTTP answer, a
//! flush) is written at once, with whatever else has arrived; the rest at
//! most every [`COMMIT_EVERY`].
//!
//! The output of running calls is drained into the registry every
//! [`LOG_INTERVAL`], which is how `app logs --follow` sees lines as a call
//! prints them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::Ending;
use crate::home::Home;
use crate::registry::{CallEnd, CallKind, NewCall, Registry};
use crate::runtime::{Lines, OutputLog};

/// How often the output of running calls is recorded.
pub const LOG_INTERVAL: Duration = Duration::from_millis(100);
/// Most operations in one transaction.
const MAX_BATCH: usize = 4096;
/// How long operations nobody waits for may gather before they are written.
const COMMIT_EVERY: Duration = Duration::from_millis(20);
/// How long a call started in this process goes unrecorded, so that one
/// that ends within it (most do) is written once, as it ended, rather than
/// inserted and then updated. `calls list` and a cancel see it that much
/// later; its output is kept meanwhile.
const HOLD: Duration = Duration::from_millis(50);

/// A call that starts running now, in this process.
pub struct CallStart {
    pub id: String,
    pub app_id: String,
    pub function: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub module: Option<String>,
    pub holder: String,
    pub node: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    pub kind: CallKind,
}

/// Told when the operation it was given with has been written (or not).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Op {
    Start(CallStart, Arc<OutputLog>),
    /// Output of a call recorded elsewhere, from attempt `attempt`.
    Watch {
        id: String,
        app_id: String,
        attempt: u32,
        log: Arc<OutputLog>,
    },
    Finish {
        id: String,
        ending: Ending,
        done: Option<Done>,
    },
    Flush(Done),
}

/// A call whose output is being recorded.
struct Live {
    app_id: String,
    attempt: u32,
    log: Arc<OutputLog>,
}

#[derive(Clone)]
pub struct Recorder {
    queue: Arc<Queue>,
}

/// Operations on their way to the recorder's thread. A sender wakes the
/// thread only for what someone waits for; the rest is picked up at its
/// next pass, so a `--map` of thousands of calls a second does not wake it
/// (and preempt an instance) thousands of times.
#[derive(Default)]
struct Queue {
    state: Mutex<Queued>,
    waited_on: Condvar,
}

#[derive(Default)]
struct Queued {
    ops: Vec<Op>,
    /// Whether one of `ops` is waited on.
    urgent: bool,
}

impl Recorder {
    pub fn new(home: &Home) -> Result<Self> {
        let registry = Registry::open(&home.registry())?;
        let queue = Arc::new(Queue::default());
        let thread_queue = queue.clone();
        std::thread::spawn(move || run(registry, thread_queue));
        Ok(Self { queue })
    }

    fn send(&self, op: Op) {
        let urgent = op.waited_on();
        let mut queued = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        queued.ops.push(op);
        if urgent {
            queued.urgent = true;
            self.queue.waited_on.notify_one();
        }
    }

    /// Records a call started in this process; its output goes to `log`.
    pub fn start(&self, call: CallStart, log: Arc<OutputLog>) {
        self.send(Op::Start(call, log));
    }

    /// Records the output of attempt `attempt` of call `id`, already
    /// recorded as running, as it is written to `log`.
    pub fn watch(&self, id: &str, app_id: &str, attempt: u32, log: Arc<OutputLog>) {
        self.send(Op::Watch {
            id: id.to_owned(),
            app_id: app_id.to_owned(),
            attempt,
            log,
        });
    }

    /// Records the end of an attempt of call `id`, after the last of its
    /// output; `done` is told once that is written.
    pub fn finish(&self, id: &str, ending: Ending, done: Option<Done>) {
        self.send(Op::Finish {
            id: id.to_owned(),
            ending,
            done,
        });
    }

    /// Waits until everything handed over before has been written.
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(Box::new(move |result| {
            let _ = tx.send(result);
        })));
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the call recorder has stopped"))?
            .map_err(anyhow::Error::msg)
    }
}

/// Starts not yet written (see [`HOLD`]), by id and in the order they came.
#[derive(Default)]
struct Held {
    by_id: HashMap<String, CallStart>,
    /// Oldest first; may name starts that have since been taken.
    order: VecDeque<(Instant, String)>,
}

impl Held {
    fn push(&mut self, call: CallStart) {
        self.order.push_back((Instant::now(), call.id.clone()));
        self.by_id.insert(call.id.clone(), call);
    }

    fn take(&mut self, id: &str) -> Option<CallStart> {
        self.by_id.remove(id)
    }

    /// The starts held for [`HOLD`] (all of them, with `all`).
    fn due(&mut self, all: bool) -> Vec<CallStart> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.order.front() {
            if !all && at.elapsed() < HOLD {
                break;
            }
            let (_, id) = self.order.pop_front().expect("a front");
            due.extend(self.by_id.remove(&id));
        }
        due
    }

    /// How long until the oldest is due.
    fn wait(&self) -> Option<Duration> {
        let (at, _) = self.order.front()?;
        Some(
            HOLD.saturating_sub(at.elapsed())
                .max(Duration::from_millis(1)),
        )
    }
}

fn run(mut registry: Registry, queue: Arc<Queue>) {
    let mut live: BTreeMap<String, Live> = BTreeMap::new();
    let mut held = Held::default();
    let (mut drained, mut committed) = (Instant::now(), Instant::now());
    let mut pending: Vec<Op> = Vec::new();
    loop {
        let mut wait = held.wait().unwrap_or(LOG_INTERVAL).min(LOG_INTERVAL);
        if !pending.is_empty() {
            wait = wait.min(COMMIT_EVERY.saturating_sub(committed.elapsed()));
        }
        let queued = queue.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut queued, _) = queue
            .waited_on
            .wait_timeout_while(queued, wait, |q| !q.urgent)
            .unwrap_or_else(|e| e.into_inner());
        queued.urgent = false;
        pending.append(&mut queued.ops);
        drop(queued);
        // Every recorder has gone (only this thread holds the queue): write
        // what is held, then end.
        let ended = Arc::strong_count(&queue) == 1;
        if ended {
            pending.push(Op::Flush(Box::new(|_| {})));
        }
        // What nobody waits for is written with more, at most every
        // COMMIT_EVERY: a transaction costs the same for one call or many.
        let waited_on = pending.iter().any(Op::waited_on);
        let due = committed.elapsed() >= COMMIT_EVERY || pending.len() >= MAX_BATCH;
        if !(waited_on || due || ended) {
            continue;
        }
        if pending.is_empty() && live.is_empty() && held.by_id.is_empty() {
            if ended {
                return;
            }
            continue;
        }
        // Running calls' output is drained every LOG_INTERVAL, not at every
        // batch: a busy recorder writes many batches in that time.
        let drain = drained.elapsed() >= LOG_INTERVAL;
        if drain {
            drained = Instant::now();
        }
        let batch = Batch::gather(
            std::mem::take(&mut pending),
            &mut live,
            &mut held,
            drain || ended,
        );
        let result = match batch.is_empty() {
            true => Ok(()),
            // Each statement of a batch touches its own calls' rows only:
            // recorders of several nodes write side by side.
            false => registry
                .write_shared(|tx| batch.apply(tx))
                .map_err(|e| format!("cannot record calls in the registry: {e:#}")),
        };
        committed = Instant::now();
        if let Err(e) = &result {
            tracing::warn!("{e}");
        }
        for done in batch.done {
            done(result.clone());
        }
        if ended {
            return;
        }
    }
}

impl Op {
    /// Whether someone waits for this operation to be written.
    fn waited_on(&self) -> bool {
        matches!(self, Op::Flush(_) | Op::Finish { done: Some(_), .. })
    }
}

/// What one transaction writes.
#[derive(Default)]
struct Batch {
    /// Calls started, with how they ended if that came in the same batch:
    /// such a call is written once, as it ended.
    starts: Vec<(CallStart, Option<Ending>)>,
    /// (call, app, attempt, lines, dropped bytes per stream)
    output: Vec<(String, String, u32, Lines, [u64; 2])>,
    endings: Vec<(String, Ending)>,
    done: Vec<Done>,
}

impl Batch {
    /// The batch `ops` make, with the starts `held` back that have ended
    /// or been held long enough (all of them for a flush).
    fn gather(
        ops: Vec<Op>,
        live: &mut BTreeMap<String, Live>,
        held: &mut Held,
        drain: bool,
    ) -> Self {
        let mut batch = Batch::default();
        let mut ended = Vec::new();
        let mut flush = false;
        for op in ops {
            match op {
                Op::Start(call, log) => {
                    let (app_id, attempt) = (call.app_id.clone(), 1);
                    live.insert(
                        call.id.clone(),
                        Live {
                            app_id,
                            attempt,
                            log,
                        },
                    );
                    held.push(call);
                }
                Op::Watch {
                    id,
                    app_id,
                    attempt,
                    log,
                } => {
                    live.insert(
                        id,
                        Live {
                            app_id,
                            attempt,
                            log,
                        },
                    );
                }
                Op::Finish { id, ending, done } => {
                    ended.push(id.clone());
                    match (held.take(&id), &ending) {
                        (Some(start), Ending::Finished { .. }) => {
                            batch.starts.push((start, Some(ending)));
                        }
                        (Some(start), _) => {
                            batch.starts.push((start, None));
                            batch.endings.push((id, ending));
                        }
                        (None, _) => batch.endings.push((id, ending)),
                    }
                    batch.done.extend(done);
                }
                Op::Flush(done) => {
                    flush = true;
                    batch.done.push(done);
                }
            }
        }
        batch
            .starts
            .extend(held.due(flush).into_iter().map(|call| (call, None)));
        for id in ended {
            if let Some(call) = live.remove(&id) {
                let (lines, dropped) = call.log.take(true);
                batch.push_output(&id, &call, lines, dropped);
            }
        }
        // Output waits with its call's unwritten start.
        for (id, call) in live.iter().filter(|_| drain || flush) {
            if !held.by_id.contains_key(id) {
                let (lines, dropped) = call.log.take(false);
                batch.push_output(id, call, lines, dropped);
            }
        }
        batch
    }

    fn is_empty(&self) -> bool {
        self.starts.is_empty() && self.output.is_empty() && self.endings.is_empty()
    }

    fn push_output(&mut self, id: &str, call: &Live, lines: Lines, dropped: [u64; 2]) {
        if !lines.is_empty() || dropped != [0, 0] {
            self.output.push((
                id.to_owned(),
                call.app_id.clone(),
                call.attempt,
                lines,
                dropped,
            ));
        }
    }

    fn apply(&self, tx: &crate::registry::Tx) -> Result<()> {
        for (call, ended) in &self.starts {
            let ended = match ended {
                Some(Ending::Finished {
                    state,
                    exit_code,
                    error,
                    at,
                }) => Some(CallEnd {
                    state: *state,
                    exit_code: *exit_code,
                    error: error.as_deref(),
                    started_at: call.started_at,
                    finished_at: *at,
                }),
                _ => None,
            };
            tx.insert_call(&NewCall {
                id: &call.id,
                app_id: &call.app_id,
                function: &call.function,
                args: &call.args,
                env: &call.env,
                module: call.module.as_deref(),
                max_attempts: 1,
                running: Some((&call.holder, call.node.as_deref())),
                ended,
                tick: None,
                kind: call.kind,
            })?;
        }
        for (id, app_id, attempt, lines, dropped) in &self.output {
            tx.append_output(id, app_id, *attempt, lines, *dropped)?;
        }
        for (id, ending) in &self.endings {
            ending.record(tx, id)?;
        }
        Ok(())
    }
}
