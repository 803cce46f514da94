//! Running invocations: one streamed, or many (`--map`) in parallel, each
//! input started as it arrives and each output handed whole, in input
//! order, to a sink the caller gives.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;

use crate::calls::recorder::CallStart;
use crate::calls::{Ending, Recorder};
use crate::home::Home;
use crate::manifest::FunctionSpec;
use crate::manifest::units::format_size;
use crate::mount::Mount;
use crate::registry::{AppState, CallState, Registry, Stream, new_call_id, now_ms};
use crate::runtime::{Finished, Invocation, Outcome, Output, OutputLog, Program, Respond};
use crate::slots::{Slot, Slots};

/// Most bytes of stdout (and of stderr) kept per `--map` invocation.
const CAPTURE_LIMIT: usize = 16 << 20;
/// How often a running process checks whether its app was stopped elsewhere,
/// and how often waiting `--map` workers check for a stop.
const STOP_POLL: Duration = Duration::from_millis(100);
/// The longest `--map` input line; a longer one fails as that input.
pub const MAX_LINE: usize = 1 << 20;
/// Finished outputs may wait behind a slower earlier input (they are written
/// in input order) up to these bounds; past them no invocation starts until
/// the head has finished, so a stuck input cannot make the host hold an
/// unbounded backlog.
const MAX_WAITING_BYTES: usize = 64 << 20;
const MAX_WAITING_OUTPUTS: usize = 1024;
/// Failures the summary lists one by one; the rest are counted.
const MAX_LISTED_FAILURES: usize = 100;
/// How much of a failed input the summary shows.
const SHOWN_INPUT_CHARS: usize = 200;

/// Everything invocations of one function share.
pub struct Target<'a> {
    pub home: &'a Home,
    pub program: &'a Program,
    pub function: &'a FunctionSpec,
    pub mounts: &'a [Mount],
    /// The variables of the function's `secrets` (never recorded).
    pub secrets: &'a BTreeMap<String, String>,
    /// Environment variables of every invocation, over the function's `env`
    /// and its secrets.
    pub env: &'a BTreeMap<String, String>,
    pub cancelled: Arc<AtomicBool>,
    /// The function's `concurrency` across processes, for a deployed app.
    pub slots: Option<Slots>,
    /// Where each `--map` input is recorded as a call, for a deployed app.
    pub record: Option<MapRecording>,
}

/// What recording each `--map` input as a call of its own takes.
pub struct MapRecording {
    pub recorder: Recorder,
    pub app_id: String,
    pub function: String,
    pub module: Option<String>,
    pub holder: String,
}

/// One `--map` input: a line, or why the line cannot be an argument.
pub type MapInput = Result<String, BadLine>;

/// A line that fails as its input without being invoked.
#[derive(Debug)]
pub struct BadLine {
    /// The start of the line, for the summary.
    pub start: String,
    pub problem: String,
}

/// Where `run_map` puts each invocation's output, in input order.
pub trait MapSink {
    /// An error (stdout closed) makes the map start no more invocations.
    fn output(&mut self, finished: &Finished) -> io::Result<()>;
}

impl Target<'_> {
    /// One invocation, once a concurrency slot is free: where every
    /// instance starts, alone or under `--map`.
    fn invoke(&self, args: &[String], output: Output, stdin: Option<Bytes>) -> Finished {
        let _slot = match self.slot() {
            Ok(slot) => slot,
            Err(finished) => return finished,
        };
        self.program.invoke(&self.invocation(args, output, stdin))
    }

    /// The function's concurrency slot, once free; or how the invocation
    /// ended without one.
    fn slot(&self) -> Result<Option<Slot>, Finished> {
        match self.slots.as_ref().map(|s| s.acquire(&self.cancelled)) {
            Some(Ok(None)) => Err(ended(Outcome::Interrupted)),
            Some(Err(e)) => Err(ended(Outcome::Failed(format!(
                "could not wait for a concurrency slot: {e:#}"
            )))),
            Some(Ok(slot)) => Ok(slot),
            None => Ok(None),
        }
    }

    fn invocation<'b>(
        &'b self,
        args: &'b [String],
        output: Output,
        stdin: Option<Bytes>,
    ) -> Invocation<'b> {
        Invocation {
            home: self.home,
            function: self.function,
            mounts: self.mounts,
            args,
            secrets: self.secrets,
            env: self.env,
            output,
            stdin,
            cancelled: self.cancelled.clone(),
        }
    }

    /// One invocation reading `stdin`, its output kept in memory: a WAGI
    /// request.
    pub fn run_captured(&self, args: &[String], stdin: Bytes) -> Finished {
        let output = Output::Capture {
            limit: CAPTURE_LIMIT,
        };
        self.invoke(args, output, Some(stdin))
    }

    /// One web request to a `wasi:http` component, its stdout and stderr
    /// going to `log` (see `Program::serve_http`).
    pub fn serve_http(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        respond: Respond,
        log: Arc<OutputLog>,
    ) -> Finished {
        let _slot = match self.slot() {
            Ok(slot) => slot,
            Err(finished) => return finished,
        };
        let invocation = self.invocation(&[], Output::Log(log), None);
        self.program.serve_http(&invocation, request, respond)
    }

    /// One invocation with stdio streamed, and copied to `copy`.
    pub fn run_one(&self, args: &[String], copy: Option<Arc<OutputLog>>) -> Outcome {
        self.invoke(args, Output::Inherit { copy }, None).outcome
    }

    /// One invocation whose output goes only to `log`.
    pub fn run_logged(&self, args: &[String], log: Arc<OutputLog>) -> Outcome {
        self.invoke(args, Output::Log(log), None).outcome
    }

    /// One `--map` input's invocation, recorded as a call if the map is.
    fn invoke_input(&self, args: Vec<String>) -> Finished {
        let output = Output::Capture {
            limit: CAPTURE_LIMIT,
        };
        let Some(record) = &self.record else {
            return self.invoke(&args, output, None);
        };
        let (id, log) = (new_call_id(), OutputLog::new());
        record.recorder.start(
            CallStart {
                id: id.clone(),
                app_id: record.app_id.clone(),
                function: record.function.clone(),
                args: args.clone(),
                env: self.env.clone(),
                module: record.module.clone(),
                holder: record.holder.clone(),
                node: None,
                started_at: now_ms(),
            },
            log.clone(),
        );
        let finished = self.invoke(&args, output, None);
        log.write(Stream::Stdout, &finished.stdout);
        log.write(Stream::Stderr, &finished.stderr);
        let ending = Ending::of(&finished.outcome, 1, 1, self.function);
        record.recorder.finish(&id, ending, None);
        finished
    }

    /// One invocation per input, each started as it arrives, at most
    /// `concurrency` at once (the runtime must have been made for that
    /// many). Each output goes to `sink` whole, in input order, as soon as
    /// all before it have; once the sink fails, no more inputs are started.
    pub fn run_map(
        &self,
        args: &[String],
        inputs: impl Iterator<Item = MapInput> + Send + 'static,
        concurrency: usize,
        sink: &mut dyn MapSink,
    ) -> MapReport {
        let concurrency = concurrency.max(1);
        let (input_tx, input_rx) = mpsc::sync_channel(concurrency);
        // Reading blocks for as long as a pipe's writer likes, so it has a
        // thread of its own, left behind when the map ends first.
        std::thread::spawn(move || {
            for input in inputs {
                if input_tx.send(input).is_err() {
                    return;
                }
            }
        });
        let shared = MapState {
            inputs: Mutex::new((0, input_rx)),
            waiting: Mutex::new(Waiting::default()),
            room: Condvar::new(),
            sink_failed: AtomicBool::new(false),
        };
        let (done_tx, done_rx) = mpsc::channel::<(usize, MapInput, Finished)>();
        let mut report = MapReport::default();
        std::thread::scope(|scope| {
            for _ in 0..concurrency {
                let done_tx = done_tx.clone();
                let shared = &shared;
                scope.spawn(move || {
                    while let Some((index, input)) = self.next_input(shared) {
                        let finished = match &input {
                            Ok(line) => {
                                let mut all_args = args.to_vec();
                                all_args.push(line.clone());
                                self.invoke_input(all_args)
                            }
                            Err(bad) => ended(Outcome::Failed(bad.problem.clone())),
                        };
                        if done_tx.send((index, input, finished)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut pending = BTreeMap::new();
            for (index, input, finished) in done_rx {
                shared.waiting().add(size(&input, &finished));
                pending.insert(index, (input, finished));
                while let Some((input, finished)) = pending.remove(&report.total) {
                    shared.waiting().remove(size(&input, &finished));
                    if !shared.sink_failed.load(Ordering::Relaxed)
                        && sink.output(&finished).is_err()
                    {
                        shared.sink_failed.store(true, Ordering::Relaxed);
                        report.output_closed = true;
                    }
                    report.record(input, finished.outcome);
                }
                shared.room.notify_all();
            }
        });
        report
    }

    /// The next input to start, once outputs waiting to be written leave
    /// room for it; None once there are no more or the map is stopping.
    fn next_input(&self, shared: &MapState) -> Option<(usize, MapInput)> {
        let stopping =
            || self.cancelled.load(Ordering::Relaxed) || shared.sink_failed.load(Ordering::Relaxed);
        let mut waiting = shared.waiting();
        while !waiting.has_room() {
            if stopping() {
                return None;
            }
            waiting = shared
                .room
                .wait_timeout(waiting, STOP_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(waiting);
        let mut inputs = shared.inputs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if stopping() {
                return None;
            }
            match inputs.1.recv_timeout(STOP_POLL) {
                Ok(input) => {
                    let index = inputs.0;
                    inputs.0 += 1;
                    return Some((index, input));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// How an invocation that never started ended.
fn ended(outcome: Outcome) -> Finished {
    Finished {
        outcome,
        timed_out: false,
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

/// What the workers of one `--map` share.
struct MapState {
    /// The next input's index, and the inputs.
    inputs: Mutex<(usize, mpsc::Receiver<MapInput>)>,
    waiting: Mutex<Waiting>,
    /// Signalled when outputs were written.
    room: Condvar,
    sink_failed: AtomicBool,
}

impl MapState {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Finished outputs not yet written, behind a slower earlier input.
#[derive(Default)]
struct Waiting {
    bytes: usize,
    count: usize,
}

impl Waiting {
    fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.count += 1;
    }

    fn remove(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.count -= 1;
    }

    fn has_room(&self) -> bool {
        self.bytes < MAX_WAITING_BYTES && self.count < MAX_WAITING_OUTPUTS
    }
}

/// What a finished input holds in memory.
fn size(input: &MapInput, finished: &Finished) -> usize {
    let input = input
        .as_ref()
        .map_or_else(|bad| bad.start.len(), String::len);
    input + finished.stdout.len() + finished.stderr.len()
}

/// The lines of `reader` as `--map` inputs, read as they are asked for. A
/// line longer than [`MAX_LINE`], not UTF-8 or holding a NUL (which WASI
/// would cut for a wasip1 guest and pass whole to a wasip2 one) fails as
/// that input only; a read error fails as the last input.
pub fn map_lines(mut reader: impl BufRead) -> impl Iterator<Item = MapInput> {
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        match read_line(&mut reader) {
            Ok(line) => line,
            Err(e) => {
                ended = true;
                Some(Err(BadLine {
                    start: String::new(),
                    problem: format!("cannot read the input: {e}"),
                }))
            }
        }
    })
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Option<MapInput>> {
    // Room for the line and its `\r\n`, then one byte to tell it is too long.
    let keep = MAX_LINE + 3;
    let mut line = Vec::new();
    let mut read_any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        read_any = true;
        let (take, ends) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        let room = keep.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        reader.consume(take);
        if ends {
            break;
        }
    }
    if !read_any {
        return Ok(None);
    }
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
    let bad = |line: &[u8], problem: String| {
        let start = String::from_utf8_lossy(line)
            .chars()
            .take(SHOWN_INPUT_CHARS)
            .collect();
        Ok(Some(Err(BadLine { start, problem })))
    };
    if line.len() > MAX_LINE {
        return bad(
            &line,
            format!(
                "the line is longer than {}, the most --map takes",
                format_size(MAX_LINE as u64)
            ),
        );
    }
    if line.contains(&0) {
        return bad(
            &line,
            "the line holds a NUL byte, which WASI cannot pass to a guest in an argument".into(),
        );
    }
    match String::from_utf8(line) {
        Ok(text) => Ok(Some(Ok(text))),
        Err(e) => bad(e.as_bytes(), "the line is not UTF-8".into()),
    }
}

/// What a `--map` run did.
#[derive(Default)]
pub struct MapReport {
    /// Inputs taken (all of them, unless the map stopped early).
    pub total: usize,
    pub failed: usize,
    /// The first failed inputs: (input index, the start of its line, outcome).
    pub failures: Vec<(usize, String, Outcome)>,
    /// The sink failed (stdout was closed): inputs after it were not started.
    pub output_closed: bool,
}

impl MapReport {
    pub fn record(&mut self, input: MapInput, outcome: Outcome) {
        let index = self.total;
        self.total += 1;
        if outcome == Outcome::Exited(0) {
            return;
        }
        self.failed += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            let line = input.unwrap_or_else(|bad| bad.start);
            let shown = line.chars().take(SHOWN_INPUT_CHARS).collect();
            self.failures.push((index, shown, outcome));
        }
    }

    /// The summary printed after a `--map` with failures.
    pub fn summary(&self) -> String {
        let mut text = format!("{} of {} invocations failed:", self.failed, self.total);
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
        if self.failed > self.failures.len() {
            text.push_str(&format!(
                "\n  and {} more",
                self.failed - self.failures.len()
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

/// Sets `cancelled` and reports on `events` when `app_id` is stopped, or
/// call `call_id` cancelled, from another process. Signals are the
/// caller's to watch.
pub fn watch_for_stop(
    home: &Home,
    app_id: &str,
    call_id: Option<&str>,
    cancelled: Arc<AtomicBool>,
    events: mpsc::Sender<StopCause>,
) -> Result<()> {
    let mut registry = Registry::open(&home.registry())?;
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
    let mut registry = Registry::open(&home.registry()).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Vec<Result<String, String>> {
        map_lines(bytes)
            .map(|input| input.map_err(|bad| bad.problem))
            .collect()
    }

    #[test]
    fn map_lines_splits_as_str_lines_does() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(lines(b"a\nb\r\n\nc"), [ok("a"), ok("b"), ok(""), ok("c")]);
        assert_eq!(lines(b"a\n"), [ok("a")]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn map_lines_fails_a_bad_line_alone() {
        let mut text = b"a\n".to_vec();
        text.extend(vec![b'x'; MAX_LINE + 1]);
        text.extend(b"\nb\0c\n\xff\nd\n");
        let got = lines(&text);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Ok("a".to_owned()));
        assert!(got[1].as_ref().unwrap_err().contains("longer than 1MiB"));
        assert!(got[2].as_ref().unwrap_err().contains("NUL byte"));
        assert!(got[3].as_ref().unwrap_err().contains("not UTF-8"));
        assert_eq!(got[4], Ok("d".to_owned()));
        // A line of exactly the most is taken, even with a `\r\n`.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.extend(b"\r\n");
        assert_eq!(lines(&exact), [Ok("y".repeat(MAX_LINE))]);
    }
}
