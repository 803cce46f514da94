//! What `run` and `call` share: the invocation flags, `--map` inputs, and
//! running invocations on a worker thread while this one watches for a stop.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wasmhost::apps::LiveApp;
use wasmhost::home::Home;
use wasmhost::invoke::{
    MapInput, MapRecording, MapReport, MapSink, StopCause, Target, map_lines, stop_cause_now,
    watch_for_stop,
};
use wasmhost::manifest::{self, FunctionSpec};
use wasmhost::registry::{AppKind, Registry};
use wasmhost::runtime::{Finished, Outcome, OutputLog, Program};
use wasmhost::secrets;
use wasmhost::slots::Slots;
use wasmhost::text::escape_control;

use super::usage;

/// How long a stopped process waits for its instances to notice.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct InvokeArgs {
    /// One invocation per line of FILE (`-` for stdin), the line as the last argument.
    #[arg(long, value_name = "FILE|-")]
    map: Option<String>,
    /// Most invocations at once with --map (default, and most: the function's `concurrency`; else the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Option<u32>,
    /// An environment variable for the function, over its `env` from app.toml (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Arguments for the function, after its `args` from app.toml.
    #[arg(last = true)]
    args: Vec<String>,
}

impl InvokeArgs {
    pub fn env(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn concurrency(&self) -> Option<u32> {
        self.concurrency
    }

    pub fn map(&self) -> Option<&str> {
        self.map.as_deref()
    }
}

/// `K=V`, split at the first `=`, as app.toml's `env` would take it.
fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or("expected K=V, e.g. --env LOG_LEVEL=debug")?;
    if !manifest::valid_env_name(key) {
        return Err(format!(
            "environment variable name `{}` is invalid: use a non-empty name without `=` or NUL",
            key.escape_debug()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "the value of `{key}` holds a NUL byte, which WASI cannot pass to a guest"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// `--map` inputs, read as invocations start.
pub struct MapInputs {
    pub lines: Box<dyn Iterator<Item = MapInput> + Send>,
    /// How many there are, when that is known (a regular file).
    count: Option<usize>,
}

pub fn open_map_inputs(invoke: &InvokeArgs) -> Result<Option<MapInputs>> {
    let Some(source) = &invoke.map else {
        return Ok(None);
    };
    if source == "-" {
        return Ok(Some(MapInputs {
            lines: Box::new(map_lines(BufReader::new(std::io::stdin()))),
            count: None,
        }));
    }
    let cannot = |e: std::io::Error| usage(format!("cannot read --map file {source}: {e}"));
    let mut file = File::open(source).map_err(cannot)?;
    let count = if file.metadata().map_err(cannot)?.is_file() {
        let count = count_lines(&mut file).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        Some(count)
    } else {
        None
    };
    Ok(Some(MapInputs {
        lines: Box::new(map_lines(BufReader::new(file))),
        count,
    }))
}

/// Lines as `map_lines` reads them: a last line needs no newline.
fn count_lines(file: &mut File) -> std::io::Result<usize> {
    let (mut lines, mut last) = (0, b'\n');
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines + usize::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        last = buf[n - 1];
    }
}

/// How many instances of the function run at once: one, or with `--map` the
/// `--concurrency` (default: the function's `concurrency`, else the number
/// of cores), never more than there are inputs when that is known, nor than
/// the function's `concurrency` (see [`note_lowered_concurrency`]).
pub fn instances_at_once(
    invoke: &InvokeArgs,
    inputs: Option<&MapInputs>,
    spec: &FunctionSpec,
) -> usize {
    let Some(inputs) = inputs else { return 1 };
    let concurrency = match (invoke.concurrency, spec.concurrency) {
        (Some(asked), Some(most)) => asked.min(most) as usize,
        (Some(n), None) | (None, Some(n)) => n as usize,
        (None, None) => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    concurrency.min(inputs.count.unwrap_or(usize::MAX)).max(1)
}

/// `--map` outputs on the process's stdout and stderr, under a progress bar
/// on a terminal.
struct Terminal {
    progress: ProgressBar,
}

impl Terminal {
    /// A bar (of unknown length for stdin) on a terminal; nothing at all
    /// when stderr is piped.
    fn new(inputs: Option<usize>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                progress: ProgressBar::hidden(),
            };
        }
        let (progress, template) = match inputs {
            Some(len) => (
                ProgressBar::new(len as u64),
                "{bar:40} {pos}/{len} {per_sec} eta {eta}",
            ),
            None => (ProgressBar::no_length(), "{spinner} {pos} {per_sec}"),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            progress.set_style(style);
        }
        Self { progress }
    }
}

impl MapSink for Terminal {
    fn output(&mut self, finished: &Finished) -> std::io::Result<()> {
        let written = self.progress.suspend(|| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&finished.stdout)?;
            stdout.flush()?;
            // Only stdout's reader going away stops the map.
            let _ = std::io::stderr().lock().write_all(&finished.stderr);
            Ok(())
        });
        self.progress.inc(1);
        written
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.progress.finish_and_clear();
    }
}

/// Says so when `--map --concurrency` asks for more than the function's
/// `concurrency`, which is the most instances of it at once (SPEC section 3).
pub fn note_lowered_concurrency(invoke: &InvokeArgs, spec: &FunctionSpec) {
    if let (Some(_), Some(asked), Some(most)) = (&invoke.map, invoke.concurrency, spec.concurrency)
        && asked > most
    {
        eprintln!(
            "note: running at most {most} at once, the function's `concurrency`, not --concurrency {asked}"
        );
    }
}

enum Event {
    Stop(StopCause),
    One(Outcome),
    Map(MapReport),
}

/// Runs the invocation(s) on a worker thread while this one watches for a
/// stop, so a guest stuck in a host call cannot keep the process alive.
/// How the call(s) are recorded, for a deployed app.
pub enum Recording {
    /// Not at all (an ephemeral app).
    None,
    /// One call, recorded already, whose output is copied to a log.
    One {
        call_id: String,
        copy: Arc<OutputLog>,
    },
    /// One call per `--map` input.
    Map(MapRecording),
}

/// An invocation that ended without an exit code (a trap, a timeout): `what`
/// failed, `reason` says how, which is what a call's record keeps.
#[derive(Debug, thiserror::Error)]
#[error("{what} {reason}")]
pub struct InvocationFailed {
    pub what: String,
    pub reason: String,
}

#[allow(clippy::too_many_arguments)]
pub fn serve(
    home: &Home,
    registry: &mut Registry,
    live: &LiveApp,
    function: &str,
    recording: Recording,
    program: Program,
    invoke: &InvokeArgs,
    inputs: Option<MapInputs>,
) -> Result<u8> {
    let (call_id, copy, record) = match recording {
        Recording::None => (None, None, None),
        Recording::One { call_id, copy } => (Some(call_id), Some(copy), None),
        Recording::Map(record) => (None, None, Some(record)),
    };
    let call_id = call_id.as_deref();
    let cancelled = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let on_signal = (cancelled.clone(), stop_tx.clone());
    ctrlc::set_handler(move || {
        on_signal.0.store(true, Ordering::SeqCst);
        let _ = on_signal.1.send(StopCause::Signal);
    })?;
    watch_for_stop(home, &live.record.id, call_id, cancelled.clone(), stop_tx)?;
    let forward = events_tx.clone();
    std::thread::spawn(move || {
        for cause in stop_rx {
            let _ = forward.send(Event::Stop(cause));
        }
    });

    let spec = live.manifest.functions[function].clone();
    let mounts = live.mounts(home, function);
    let concurrency = instances_at_once(invoke, inputs.as_ref(), &spec);
    // Only a deployed app is called from several processes.
    let slots = spec
        .concurrency
        .filter(|_| live.record.kind == AppKind::Deployed)
        .map(|n| Slots::new(home, &live.record.id, function, n))
        .transpose()?;
    let secrets = secrets::environment(home, registry, &spec.secrets)?;
    let env: BTreeMap<String, String> = invoke.env.iter().cloned().collect();
    let (worker_home, args, worker_cancelled) =
        (home.clone(), invoke.args.clone(), cancelled.clone());
    std::thread::spawn(move || {
        let target = Target {
            home: &worker_home,
            program: &program,
            function: &spec,
            mounts: &mounts,
            secrets: &secrets,
            env: &env,
            cancelled: worker_cancelled,
            slots,
            record,
        };
        let event = match inputs {
            None => Event::One(target.run_one(&args, copy)),
            Some(inputs) => {
                let mut terminal = Terminal::new(inputs.count);
                Event::Map(target.run_map(&args, inputs.lines, concurrency, &mut terminal))
            }
        };
        let _ = events_tx.send(event);
    });

    let app = format!("`{}` ({})", live.record.name, live.record.id);
    let first = events
        .recv()
        .context("the invocation thread ended without a result")?;
    // A result that comes after a stop was asked for is the stop's doing,
    // whatever it says; the stop's cause is what the user needs to hear.
    let stopped = match &first {
        Event::Stop(cause) => {
            cancelled.store(true, Ordering::SeqCst);
            // Give instances a moment to unwind, then stop regardless.
            let _ = events.recv_timeout(STOP_GRACE);
            Some(*cause)
        }
        _ if cancelled.load(Ordering::SeqCst) => Some(
            std::iter::from_fn(|| events.recv_timeout(STOP_GRACE).ok())
                .find_map(|e| match e {
                    Event::Stop(cause) => Some(cause),
                    _ => None,
                })
                .unwrap_or(StopCause::Signal),
        ),
        // The watcher polls, so a failure a stop caused (the volumes trashed
        // under a starting instance) can arrive before it has seen the stop.
        Event::One(Outcome::Failed(_) | Outcome::Interrupted) => {
            stop_cause_now(home, &live.record.id, call_id)
        }
        Event::Map(report) if report.failed > 0 => stop_cause_now(home, &live.record.id, call_id),
        _ => None,
    };
    match (stopped, first) {
        (Some(StopCause::AppStopped), _) => Err(anyhow::anyhow!(
            "app {app} was stopped (`wasmhost app stop`); its invocations were interrupted"
        )),
        (Some(StopCause::CallCancelled), _) => Err(anyhow::anyhow!(
            "call {} of app {app} was cancelled: {}",
            call_id.unwrap_or_default(),
            wasmhost::calls::why_cancelled(home, call_id.unwrap_or_default())
        )),
        // A call's Ctrl-C ends the call; the deployed app stays.
        (Some(StopCause::Signal), _) | (None, Event::One(Outcome::Interrupted)) => {
            Err(match call_id {
                Some(id) => anyhow::anyhow!("interrupted; call {id} of app {app} ended"),
                None => anyhow::anyhow!("interrupted; stopping app {app}"),
            })
        }
        (None, Event::One(Outcome::Exited(code))) => Ok(code as u8),
        (None, Event::One(Outcome::Failed(reason))) => Err(InvocationFailed {
            what: format!("function `{function}` of app {app}"),
            reason,
        }
        .into()),
        // A closed stdout ends the map quietly: its reader had enough.
        (None, Event::Map(report)) if report.failed == 0 => Ok(0),
        (None, Event::Map(report)) => {
            // Reasons quote the module (trap messages name its functions);
            // the summary's own lines stay lines.
            let summary: Vec<String> = report.summary().lines().map(escape_control).collect();
            eprintln!("error: {}", summary.join("\n"));
            Ok(1)
        }
        (None, Event::Stop(_)) => unreachable!("a stop event is always a stop"),
    }
}
