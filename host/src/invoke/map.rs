//! `--map`: one invocation per input line, many in parallel, each input
//! started as it arrives and each output handed whole, in input order, to
//! a sink the caller gives (the CLI's terminal).

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use super::{Call, Ended, Prepared, STOP_POLL, StopFlag};
use crate::calls::Recorder;
use crate::calls::recorder::CallStart;
use crate::manifest::units::format_size;
use crate::registry::{CallKind, Stream, new_call_id, now_ms};
use crate::runtime::OutputLog;

/// The longest `--map` input line; a longer one fails as that input.
pub const MAX_LINE: usize = 1 << 20;
/// Finished outputs may wait to be written (behind a slower earlier input,
/// since they are written in input order, or behind a reader that stopped
/// reading) up to these bounds; past them no invocation starts until the
/// sink has taken some, so neither can make the host hold an unbounded
/// backlog. An output counts from the moment its invocation ends until
/// the sink has written it.
const MAX_WAITING_BYTES: usize = 64 << 20;
const MAX_WAITING_OUTPUTS: usize = 1024;
/// Failures the summary lists one by one; the rest are counted.
const MAX_LISTED_FAILURES: usize = 100;
/// How much of a failed input the summary shows.
const SHOWN_INPUT_CHARS: usize = 200;

/// One `--map` run of a prepared function.
pub struct Map<'a> {
    pub prepared: &'a Prepared,
    /// Every invocation's arguments, before its input line.
    pub args: &'a [String],
    /// Environment variables of every invocation.
    pub env: &'a BTreeMap<String, String>,
    pub stop: &'a StopFlag,
    /// Where each input is recorded as a call, for a deployed app.
    pub record: Option<MapRecording>,
}

/// What recording each `--map` input as a call of its own takes.
pub struct MapRecording {
    pub recorder: Recorder,
    /// The lease the calls run under.
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

/// Where [`Map::run`] puts each invocation's output, in input order.
pub trait MapSink {
    /// An error (stdout closed) makes the map start no more invocations.
    fn output(&mut self, stdout: &[u8], stderr: &[u8]) -> io::Result<()>;
}

/// One input's end, with its output.
type Done = (Ended, [Vec<u8>; 2]);

impl Map<'_> {
    /// One `--map` input's invocation, recorded as a call if the map is.
    fn invoke_input(&self, args: Vec<String>) -> Done {
        let call = Call {
            args: &args,
            env: self.env,
            stop: self.stop,
        };
        let invoke = || self.prepared.run_captured(None, &call, None);
        let Some(record) = &self.record else {
            return invoke();
        };
        let (id, log) = (new_call_id(), OutputLog::new());
        let (live, function) = (self.prepared.live(), self.prepared.function());
        record.recorder.start(
            CallStart {
                id: id.clone(),
                app_id: live.record.id.clone(),
                function: function.to_owned(),
                args: args.clone(),
                env: self.env.clone(),
                module: live.modules.get(function).cloned(),
                holder: record.holder.clone(),
                node: None,
                started_at: now_ms(),
                kind: CallKind::Call,
            },
            log.clone(),
        );
        let done = invoke();
        let (ended, [stdout, stderr]) = &done;
        log.write(Stream::Stdout, stdout);
        log.write(Stream::Stderr, stderr);
        let ending = ended.ending(1, 1, self.prepared.spec());
        record.recorder.finish(&id, ending, None);
        done
    }

    /// One invocation per input, each started as it arrives, at most
    /// `concurrency` at once (the runtime must have been made for that
    /// many). Each output goes to `sink` whole, in input order, as soon as
    /// all before it have; once the sink fails, no more inputs are started.
    pub fn run(
        &self,
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
        // Bounded, like everything else here: while the sink blocks (a
        // reader that stopped reading), finished workers wait to hand over.
        let (done_tx, done_rx) = mpsc::sync_channel::<(usize, MapInput, Done)>(concurrency);
        let mut report = MapReport::default();
        std::thread::scope(|scope| {
            for _ in 0..concurrency {
                let done_tx = done_tx.clone();
                let shared = &shared;
                scope.spawn(move || {
                    while let Some((index, input)) = self.next_input(shared) {
                        let done = match &input {
                            Ok(line) => {
                                let mut all_args = self.args.to_vec();
                                all_args.push(line.clone());
                                self.invoke_input(all_args)
                            }
                            Err(bad) => (Ended::Failed(bad.problem.clone()), Default::default()),
                        };
                        shared.waiting().add(size(&input, &done.1));
                        if done_tx.send((index, input, done)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut pending = BTreeMap::new();
            for (index, input, done) in done_rx {
                pending.insert(index, (input, done));
                while let Some((input, (ended, output))) = pending.remove(&report.total) {
                    if !shared.sink_failed.load(Ordering::Relaxed)
                        && sink.output(&output[0], &output[1]).is_err()
                    {
                        shared.sink_failed.store(true, Ordering::Relaxed);
                        report.output_closed = true;
                    }
                    shared.waiting().remove(size(&input, &output));
                    shared.room.notify_all();
                    report.record(input, ended);
                }
            }
        });
        report
    }

    /// The next input to start, once outputs waiting to be written leave
    /// room for it; None once there are no more or the map is stopping.
    fn next_input(&self, shared: &MapState) -> Option<(usize, MapInput)> {
        let stopping = || self.stop.is_stopped() || shared.sink_failed.load(Ordering::Relaxed);
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

/// Finished outputs not yet written: behind a slower earlier input, on
/// their way to the sink, or in it.
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
fn size(input: &MapInput, [stdout, stderr]: &[Vec<u8>; 2]) -> usize {
    let input = input
        .as_ref()
        .map_or_else(|bad| bad.start.len(), String::len);
    input + stdout.len() + stderr.len()
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
    /// The first failed inputs: (input index, the start of its line, how
    /// it ended).
    pub failures: Vec<(usize, String, Ended)>,
    /// The sink failed (stdout was closed): inputs after it were not started.
    pub output_closed: bool,
}

impl MapReport {
    pub fn record(&mut self, input: MapInput, ended: Ended) {
        let index = self.total;
        self.total += 1;
        if ended.succeeded() {
            return;
        }
        self.failed += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            let line = input.unwrap_or_else(|bad| bad.start);
            let shown = line.chars().take(SHOWN_INPUT_CHARS).collect();
            self.failures.push((index, shown, ended));
        }
    }

    /// The summary printed after a `--map` with failures.
    pub fn summary(&self) -> String {
        let mut text = format!("{} of {} invocations failed:", self.failed, self.total);
        for (index, input, ended) in &self.failures {
            let why = match ended {
                Ended::Exited(code) => format!("exit code {code}"),
                Ended::Failed(reason) | Ended::TimedOut(reason) => reason.clone(),
                Ended::Stopped(_) => "interrupted".into(),
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
