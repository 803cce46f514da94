//! Writes call records in batches, from one thread with its own registry
//! connection: a `--map` of thousands of tiny calls, or a node answering
//! many requests at once, costs a transaction per batch rather than several
//! per call (group commit). A batch is whatever arrived while the previous
//! one was being written, so a lone call waits for no timer.
//!
//! The output of running calls is drained into the registry every
//! [`LOG_INTERVAL`], which is how `app logs --follow` sees lines as a call
//! prints them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::Result;

use super::Ending;
use crate::home::Home;
use crate::registry::{NewCall, Registry};
use crate::runtime::{Lines, OutputLog};

/// How often the output of running calls is recorded.
pub const LOG_INTERVAL: Duration = Duration::from_millis(100);
/// Most operations in one transaction.
const MAX_BATCH: usize = 4096;

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
    ops: mpsc::Sender<Op>,
}

impl Recorder {
    pub fn new(home: &Home) -> Result<Self> {
        let registry = Registry::open(&home.registry_file())?;
        let (ops, rx) = mpsc::channel();
        std::thread::spawn(move || run(registry, rx));
        Ok(Self { ops })
    }

    fn send(&self, op: Op) {
        // The thread ends only when every sender has gone.
        let _ = self.ops.send(op);
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

fn run(mut registry: Registry, rx: mpsc::Receiver<Op>) {
    let mut live: BTreeMap<String, Live> = BTreeMap::new();
    loop {
        let first = match rx.recv_timeout(LOG_INTERVAL) {
            Ok(op) => Some(op),
            Err(RecvTimeoutError::Timeout) if live.is_empty() => continue,
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let ops: Vec<Op> = first
            .into_iter()
            .chain(rx.try_iter().take(MAX_BATCH))
            .collect();
        let batch = Batch::gather(ops, &mut live);
        let result = registry
            .write(|tx| batch.apply(tx))
            .map_err(|e| format!("cannot record calls in the registry: {e:#}"));
        if let Err(e) = &result {
            eprintln!("warning: {e}");
        }
        for done in batch.done {
            done(result.clone());
        }
    }
}

/// What one transaction writes.
#[derive(Default)]
struct Batch {
    starts: Vec<CallStart>,
    /// (call, app, attempt, lines, dropped bytes per stream)
    output: Vec<(String, String, u32, Lines, [u64; 2])>,
    endings: Vec<(String, Ending)>,
    done: Vec<Done>,
}

impl Batch {
    fn gather(ops: Vec<Op>, live: &mut BTreeMap<String, Live>) -> Self {
        let mut batch = Batch::default();
        let mut ending = Vec::new();
        for op in ops {
            match op {
                Op::Start(call, log) => {
                    live.insert(
                        call.id.clone(),
                        Live {
                            app_id: call.app_id.clone(),
                            attempt: 1,
                            log,
                        },
                    );
                    batch.starts.push(call);
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
                Op::Finish {
                    id,
                    ending: e,
                    done,
                } => {
                    ending.push((id, e));
                    batch.done.extend(done);
                }
                Op::Flush(done) => batch.done.push(done),
            }
        }
        for (id, call) in live.iter() {
            let (lines, dropped) = call.log.take(false);
            batch.push_output(id, call, lines, dropped);
        }
        for (id, e) in ending {
            if let Some(call) = live.remove(&id) {
                let (lines, dropped) = call.log.take(true);
                batch.push_output(&id, &call, lines, dropped);
            }
            batch.endings.push((id, e));
        }
        batch
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
        for call in &self.starts {
            tx.insert_call(&NewCall {
                id: &call.id,
                app_id: &call.app_id,
                function: &call.function,
                args: &call.args,
                env: &call.env,
                module: call.module.as_deref(),
                max_attempts: 1,
                running: Some((&call.holder, call.node.as_deref())),
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
