//! A call's output kept for its record: whole lines, timestamped as they
//! are written, up to a cap per stream, for the registry to store and for
//! `app logs --follow` to show while the call runs.
//!
//! Writes never block the guest: what is past the cap is counted, not kept,
//! and the guest goes on as if it had been written, so a recorded call runs
//! as fast as a discarded one and cannot make the host hold more than the
//! cap.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use wasmtime_wasi::async_trait;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::registry::{Stream, now_ms};

/// Most bytes of each stream kept per call (SPEC section 6, "capped").
pub const KEPT_PER_STREAM: usize = 1 << 20;
/// A line longer than this is recorded in pieces of this size.
const LONGEST_LINE: usize = 64 << 10;

/// Lines not yet recorded: (unix ms, stream, text with its newline).
pub type Lines = Vec<(i64, Stream, String)>;

#[derive(Default)]
pub struct OutputLog {
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    /// Most bytes of each stream kept, if not [`KEPT_PER_STREAM`].
    cap: Option<usize>,
    /// A copy of what is kept, for a caller that answers with it (an HTTP
    /// call) without reading the record back.
    retained: Option<[Vec<u8>; 2]>,
    dropped_in_all: [u64; 2],
    kept: [usize; 2],
    /// Bytes not kept, since the last `take`.
    dropped: [u64; 2],
    /// The start of a line not yet ended.
    open: [Vec<u8>; 2],
    ready: Lines,
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl OutputLog {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A log that keeps at most `cap` bytes of each stream (none at all:
    /// a call recorded without its output).
    pub fn capped(cap: usize) -> Arc<Self> {
        let log = Self::default();
        log.state().cap = Some(cap.min(KEPT_PER_STREAM));
        Arc::new(log)
    }

    /// A log that also keeps a copy of what it keeps (see [`Self::retained`]).
    pub fn retaining() -> Arc<Self> {
        let log = Self::default();
        log.state().retained = Some(Default::default());
        Arc::new(log)
    }

    /// Everything kept of stdout and stderr (UTF-8, invalid bytes
    /// replaced), and the bytes of each not kept; empty unless made by
    /// [`Self::retaining`].
    pub fn retained(&self) -> ([String; 2], [u64; 2]) {
        let state = self.state();
        let text = |at: usize| {
            state
                .retained
                .as_ref()
                .map(|r| String::from_utf8_lossy(&r[at]).into_owned())
                .unwrap_or_default()
        };
        ([text(0), text(1)], state.dropped_in_all)
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let at = index(stream);
        let mut state = self.state();
        let room = state.cap.unwrap_or(KEPT_PER_STREAM) - state.kept[at];
        if bytes.len() > room {
            state.dropped[at] += (bytes.len() - room) as u64;
            state.dropped_in_all[at] += (bytes.len() - room) as u64;
            bytes = &bytes[..room];
        }
        state.kept[at] += bytes.len();
        if let Some(retained) = &mut state.retained {
            retained[at].extend_from_slice(bytes);
        }
        let now = now_ms();
        while !bytes.is_empty() {
            let (line, ends) = match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => (&bytes[..=end], true),
                None => (bytes, false),
            };
            bytes = &bytes[line.len()..];
            state.open[at].extend_from_slice(line);
            if ends || state.open[at].len() >= LONGEST_LINE {
                let text =
                    String::from_utf8_lossy(&std::mem::take(&mut state.open[at])).into_owned();
                state.ready.push((now, stream, text));
            }
        }
    }

    /// The lines written since the last take, and the bytes dropped since
    /// then; at the `end` of the call, with the lines it left open.
    pub fn take(&self, end: bool) -> (Lines, [u64; 2]) {
        let mut state = self.state();
        if end {
            let now = now_ms();
            for (at, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
                if !state.open[at].is_empty() {
                    let text =
                        String::from_utf8_lossy(&std::mem::take(&mut state.open[at])).into_owned();
                    state.ready.push((now, stream, text));
                }
            }
        }
        (
            std::mem::take(&mut state.ready),
            std::mem::take(&mut state.dropped),
        )
    }

    /// The guest's stdout and stderr, writing here.
    pub fn streams(self: &Arc<Self>) -> (LogOutput, LogOutput) {
        let stream = |stream| LogOutput {
            stream,
            log: self.clone(),
        };
        (stream(Stream::Stdout), stream(Stream::Stderr))
    }
}

/// The guest's end of a stream into an [`OutputLog`].
#[derive(Clone)]
pub struct LogOutput {
    stream: Stream,
    log: Arc<OutputLog>,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LONGEST_LINE)
    }
}

impl tokio::io::AsyncWrite for LogOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_capped_and_counted() {
        let log = OutputLog::new();
        log.write(Stream::Stdout, b"one\ntw");
        log.write(Stream::Stdout, b"o\nthree");
        log.write(Stream::Stderr, b"err\n");
        let (lines, dropped) = log.take(false);
        let texts: Vec<_> = lines.iter().map(|l| (l.1, l.2.as_str())).collect();
        assert_eq!(
            texts,
            [
                (Stream::Stdout, "one\n"),
                (Stream::Stdout, "two\n"),
                (Stream::Stderr, "err\n")
            ]
        );
        assert_eq!(dropped, [0, 0]);
        let (lines, _) = log.take(true);
        assert_eq!(lines[0].2, "three");
        log.write(Stream::Stdout, &vec![b'x'; KEPT_PER_STREAM]);
        let (lines, dropped) = log.take(true);
        let kept: usize = lines.iter().map(|l| l.2.len()).sum();
        assert_eq!(kept + "one\ntwo\nthree".len(), KEPT_PER_STREAM);
        assert_eq!(dropped, [("one\ntwo\nthree".len()) as u64, 0]);
    }
}
