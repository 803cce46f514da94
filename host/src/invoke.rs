//! Running invocations: one streamed, or many (`--map`) in parallel with
//! their output printed whole and in input order.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::apps::Mount;
use crate::home::Home;
use crate::manifest::FunctionSpec;
use crate::registry::{AppState, CallState, Registry};
use crate::runtime::{Finished, Invocation, Outcome, Output, Program};
use crate::slots::Slots;

/// Most bytes of stdout (and of stderr) kept per `--map` invocation.
const CAPTURE_LIMIT: usize = 16 << 20;
/// How often a running process checks whether its app was stopped elsewhere.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Everything invocations of one function share.
pub struct Target<'a> {
    pub home: &'a Home,
    pub program: &'a Program,
    pub function: &'a FunctionSpec,
    pub mounts: &'a [Mount],
    pub cancelled: Arc<AtomicBool>,
    /// The function's `concurrency` across processes, for a deployed app.
    pub slots: Option<Slots>,
}

impl Target<'_> {
    fn invocation<'b>(&'b self, args: &'b [String], output: Output) -> Invocation<'b> {
        Invocation {
            home: self.home,
            function: self.function,
            mounts: self.mounts,
            args,
            output,
            cancelled: self.cancelled.clone(),
        }
    }

    /// One invocation, once a concurrency slot is free: the one place an
    /// instance starts.
    fn invoke(&self, args: &[String], output: Output) -> Finished {
        let _slot = match self.slots.as_ref().map(|s| s.acquire(&self.cancelled)) {
            Some(Ok(None)) => return ended(Outcome::Interrupted),
            Some(Err(e)) => {
                return ended(Outcome::Failed(format!(
                    "could not wait for a concurrency slot: {e:#}"
                )));
            }
            Some(Ok(slot)) => slot,
            None => None,
        };
        self.program.invoke(&self.invocation(args, output))
    }

    /// One invocation with stdio streamed.
    pub fn run_one(&self, args: &[String]) -> Outcome {
        self.invoke(args, Output::Inherit).outcome
    }

    /// One invocation per input, at most `concurrency` at once (the runtime
    /// must have been made for that many). Each output is written whole, in
    /// input order, as soon as all before it are written.
    pub fn run_map(&self, args: &[String], inputs: &[String], concurrency: usize) -> MapReport {
        let next = AtomicUsize::new(0);
        let (done_tx, done_rx) = mpsc::channel::<(usize, Finished)>();
        let progress = progress_bar(inputs.len());
        let mut failures = Vec::new();
        std::thread::scope(|scope| {
            for _ in 0..concurrency.max(1) {
                let done_tx = done_tx.clone();
                let next = &next;
                scope.spawn(move || {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= inputs.len() || self.cancelled.load(Ordering::Relaxed) {
                            break;
                        }
                        let mut all_args = args.to_vec();
                        all_args.push(inputs[index].clone());
                        let finished = self.invoke(
                            &all_args,
                            Output::Capture {
                                limit: CAPTURE_LIMIT,
                            },
                        );
                        if done_tx.send((index, finished)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut pending = BTreeMap::new();
            let mut head = 0;
            for (index, finished) in done_rx {
                pending.insert(index, finished);
                while let Some(finished) = pending.remove(&head) {
                    progress.suspend(|| write_output(&finished));
                    progress.inc(1);
                    if finished.outcome != Outcome::Exited(0) {
                        failures.push((head, inputs[head].clone(), finished.outcome));
                    }
                    head += 1;
                }
            }
        });
        progress.finish_and_clear();
        MapReport {
            total: inputs.len(),
            completed: next.load(Ordering::Relaxed).min(inputs.len()),
            failures,
        }
    }
}

/// How an invocation that never started ended.
fn ended(outcome: Outcome) -> Finished {
    Finished {
        outcome,
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

fn write_output(finished: &Finished) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&finished.stdout);
    let _ = stdout.flush();
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(&finished.stderr);
}

/// A bar on a terminal; nothing at all when stderr is piped.
fn progress_bar(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    bar
}

/// What a `--map` run did.
pub struct MapReport {
    pub total: usize,
    pub completed: usize,
    /// (input index, input line, outcome) of each failed invocation.
    pub failures: Vec<(usize, String, Outcome)>,
}

impl MapReport {
    /// The summary printed after a `--map` with failures.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} of {} invocations failed:",
            self.failures.len(),
            self.total
        );
        for (index, input, outcome) in &self.failures {
            let why = match outcome {
                Outcome::Exited(code) => format!("exit code {code}"),
                Outcome::Failed(reason) => reason.clone(),
                Outcome::Interrupted => "interrupted".into(),
            };
            text.push_str(&format!(
                "\n  input {} `{}`: {why}",
                index + 1,
                input.escape_debug()
            ));
        }
        text
    }
}

/// Why a process stopped its invocations early.
#[derive(Debug, Clone, Copy)]
pub enum StopCause {
    Signal,
    AppStopped,
    /// The call was cancelled from elsewhere (`deploy --force`); the
    /// registry holds why.
    CallCancelled,
}

/// Sets `cancelled` and reports on `events` when Ctrl-C or SIGTERM arrives,
/// or when `app_id` is stopped, or call `call_id` cancelled, from another
/// process.
pub fn watch_for_stop(
    home: &Home,
    app_id: &str,
    call_id: Option<&str>,
    cancelled: Arc<AtomicBool>,
    events: mpsc::Sender<StopCause>,
) -> Result<()> {
    let on_signal = (cancelled.clone(), events.clone());
    ctrlc::set_handler(move || {
        on_signal.0.store(true, Ordering::SeqCst);
        let _ = on_signal.1.send(StopCause::Signal);
    })?;
    let mut registry = Registry::open(&home.registry_file())?;
    let (app_id, call_id) = (app_id.to_owned(), call_id.map(str::to_owned));
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(STOP_POLL);
            if let Some(cause) = stopped_from_elsewhere(&mut registry, &app_id, call_id.as_deref())
            {
                cancelled.store(true, Ordering::SeqCst);
                let _ = events.send(cause);
                return;
            }
        }
    });
    Ok(())
}

/// Whether `app_id` has been stopped (or call `call_id` cancelled), asked of
/// the registry now rather than at the watcher's next poll: an invocation
/// can fail because of a stop (its volumes trashed under it) before the
/// watcher has seen it.
pub fn stop_cause_now(home: &Home, app_id: &str, call_id: Option<&str>) -> Option<StopCause> {
    let mut registry = Registry::open(&home.registry_file()).ok()?;
    stopped_from_elsewhere(&mut registry, app_id, call_id)
}

fn stopped_from_elsewhere(
    registry: &mut Registry,
    app_id: &str,
    call_id: Option<&str>,
) -> Option<StopCause> {
    registry
        .read(|tx| {
            if tx
                .app(app_id)?
                .is_some_and(|app| app.state == AppState::Stopped)
            {
                return Ok(Some(StopCause::AppStopped));
            }
            let cancelled = match call_id {
                Some(id) => tx
                    .call(id)?
                    .is_some_and(|call| call.state == CallState::Cancelled),
                None => false,
            };
            Ok(cancelled.then_some(StopCause::CallCancelled))
        })
        .ok()
        .flatten()
}
