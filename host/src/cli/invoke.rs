//! What `run` and `call` share: the invocation flags, `--map` inputs,
//! running invocations on a worker thread while this one watches for a
//! stop, and translating how they ended into an exit code or an error.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Seek, Write};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wasmhost::apps::LiveApp;
use wasmhost::home::Home;
use wasmhost::invoke::map::{Map, MapInput, MapRecording, MapReport, MapSink, map_lines};
use wasmhost::invoke::{Call, Ended, Prepared, RegistryAccess, Stop, Supervisor};
use wasmhost::manifest::{self, FunctionSpec};
use wasmhost::registry::Registry;
use wasmhost::runtime::{OutputLog, Program};
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
    fn output(&mut self, stdout: &[u8], stderr: &[u8]) -> std::io::Result<()> {
        let written = self.progress.suspend(|| {
            let mut out = std::io::stdout().lock();
            out.write_all(stdout)?;
            out.flush()?;
            // Only stdout's reader going away stops the map.
            let _ = std::io::stderr().lock().write_all(stderr);
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
    /// A stop was asked for (the stop flag says why).
    Stop,
    Ran(Ran),
}

/// What `serve` ran: one invocation, or a `--map`.
pub enum Ran {
    One(Ended),
    Map(MapReport),
}

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

/// Runs the invocation(s) on a worker thread while this one watches for a
/// stop, so a guest stuck in a host call cannot keep the process alive. A
/// stop, whatever the invocation did meanwhile, ends it as stopped.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    home: &Home,
    registry: &mut Registry,
    live: Arc<LiveApp>,
    function: &str,
    recording: Recording,
    program: Program,
    invoke: &InvokeArgs,
    inputs: Option<MapInputs>,
) -> Result<Ran> {
    let (call_id, copy, record) = match recording {
        Recording::None => (None, None, None),
        Recording::One { call_id, copy } => (Some(call_id), Some(copy), None),
        Recording::Map(record) => (None, None, Some(record)),
    };
    let supervisor = Supervisor::new();
    // Watched until this returns.
    let watch = supervisor.watch(&live.record.id, call_id.as_deref());
    let stop = watch.stop().clone();
    let (events_tx, events) = mpsc::channel();
    let on_signal = (stop.clone(), events_tx.clone());
    ctrlc::set_handler(move || {
        on_signal.0.stop(Stop::Signal);
        let _ = on_signal.1.send(Event::Stop);
    })?;
    let on_stop = events_tx.clone();
    supervisor.watch_registry(home, move |_| {
        let _ = on_stop.send(Event::Stop);
    })?;

    let spec = &live.manifest.functions[function];
    let concurrency = instances_at_once(invoke, inputs.as_ref(), spec);
    let access = RegistryAccess::Own(registry);
    start_gate();
    let prepared = Prepared::new(home, live.clone(), function, Arc::new(program), access)?;
    let (args, env, worker_stop) = (invoke.args.clone(), invoke.env(), stop.clone());
    std::thread::spawn(move || {
        let ran = match inputs {
            None => {
                let call = Call {
                    args: &args,
                    env: &env,
                    stop: &worker_stop,
                };
                Ran::One(prepared.run_streamed(&call, copy))
            }
            Some(inputs) => {
                let mut terminal = Terminal::new(inputs.count);
                let map = Map {
                    prepared: &prepared,
                    args: &args,
                    env: &env,
                    stop: &worker_stop,
                    record,
                };
                Ran::Map(map.run(inputs.lines, concurrency, &mut terminal))
            }
        };
        let _ = events_tx.send(Event::Ran(ran));
    });

    let first = events
        .recv()
        .context("the invocation thread ended without a result")?;
    // A result that comes after a stop was asked for is the stop's doing,
    // whatever it says; the stop's cause is what the user needs to hear.
    let stopped = match &first {
        Event::Stop => {
            // Give instances a moment to unwind, then stop regardless.
            let _ = events.recv_timeout(STOP_GRACE);
            Some(stop.cause().unwrap_or(Stop::Signal))
        }
        _ if stop.is_stopped() => Some(stop.cause().unwrap_or(Stop::Signal)),
        // The watcher polls, so a failure a stop caused (the volumes trashed
        // under a starting instance) can arrive before it has seen the stop.
        Event::Ran(Ran::One(Ended::Failed(_) | Ended::TimedOut(_) | Ended::Stopped(_))) => {
            supervisor.look_now(home)
        }
        Event::Ran(Ran::Map(report)) if report.failed > 0 => supervisor.look_now(home),
        _ => None,
    };
    Ok(match (stopped, first) {
        (Some(why), _) => Ran::One(Ended::Stopped(why)),
        (None, Event::Ran(ran)) => ran,
        (None, Event::Stop) => unreachable!("a stop event is always a stop"),
    })
}

/// How what `serve` ran ends the command: the guest's exit code, a `--map`
/// summary, or an error saying why there is no exit code. `call_id` is the
/// call's, for a deployed app's single call.
pub fn exit(
    ran: &Ran,
    home: &Home,
    live: &LiveApp,
    function: &str,
    call_id: Option<&str>,
) -> Result<u8> {
    let app = format!("`{}` ({})", live.record.name, live.record.id);
    match ran {
        Ran::One(Ended::Stopped(Stop::AppStopped)) => Err(anyhow::anyhow!(
            "app {app} was stopped (`wasmhost app stop`); its invocations were interrupted"
        )),
        Ran::One(Ended::Stopped(Stop::CallCancelled)) => Err(anyhow::anyhow!(
            "call {} of app {app} was cancelled: {}",
            call_id.unwrap_or_default(),
            wasmhost::calls::why_cancelled(home, call_id.unwrap_or_default())
        )),
        // A call's Ctrl-C ends the call; the deployed app stays.
        Ran::One(Ended::Stopped(Stop::Signal | Stop::Drain)) => Err(match call_id {
            Some(id) => anyhow::anyhow!("interrupted; call {id} of app {app} ended"),
            None => anyhow::anyhow!("interrupted; stopping app {app}"),
        }),
        Ran::One(Ended::Exited(code)) => Ok(*code as u8),
        Ran::One(Ended::Failed(reason) | Ended::TimedOut(reason)) => Err(anyhow::anyhow!(
            "function `{function}` of app {app} {reason}"
        )),
        // A closed stdout ends the map quietly: its reader had enough.
        Ran::Map(report) if report.failed == 0 => Ok(0),
        Ran::Map(report) => {
            // Reasons quote the module (trap messages name its functions);
            // the summary's own lines stay lines.
            let summary: Vec<String> = report.summary().lines().map(escape_control).collect();
            eprintln!("error: {}", summary.join("\n"));
            Ok(1)
        }
    }
}

/// In a debug build, holds a run or call between its app's start and its
/// instance's until the file `WASMHOST_TEST_START_GATE` names exists: the
/// only way a test can land a stop in that window for certain.
fn start_gate() {
    #[cfg(debug_assertions)]
    if let Some(gate) = std::env::var_os("WASMHOST_TEST_START_GATE") {
        while !std::path::Path::new(&gate).exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
