//! A guest's stdout and stderr streamed to the process's own, in a way a
//! timeout or a stop can abandon.
//!
//! Written directly, a guest's output blocks its instance's thread in
//! write(2) while the reader is not reading (a full pipe, `| less`, a paused
//! terminal): no timeout or `app stop` can reach it there, and it keeps its
//! locks. Here the guest hands its bytes to one writer thread per process
//! and, when too many are still unwritten, waits for room as a future, which
//! `instance::until_stopped` can drop. Writes are handed over at once, not
//! buffered, and stdout and stderr share the writer's queue, so the output
//! of an invocation appears as soon as it is written and in the order it was
//! written. A small write that cannot block, with nothing queued before it,
//! skips the handoff (see [`write_now`]).

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use wasmtime_wasi::async_trait;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::OutputLog;
use crate::registry::Stream;

/// Most bytes of an invocation handed to the writer and not yet written:
/// what a blocked reader makes the host hold.
const IN_FLIGHT: usize = 64 << 10;

#[derive(Clone, Copy, Debug)]
enum Fd {
    Stdout = 0,
    Stderr = 1,
}

/// One invocation's streamed output, shared by its stdout and stderr and
/// by the writer thread.
pub struct Streamed {
    state: Mutex<State>,
    /// Where what is written is also kept, for a call's record.
    copy: Option<Arc<OutputLog>>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    /// The first write that failed, per stream (by [`Fd`]); later writes
    /// to that stream fail the same way. Each stream fails on its own: a
    /// reader of stdout that goes away leaves stderr working, for the
    /// guest to say so (Rust's `eprintln!` aborts on a failed stderr).
    failed: [Option<io::ErrorKind>; 2],
    /// Futures waiting for room or for everything to be written.
    waiting: Vec<Waker>,
}

impl State {
    fn check(&self, fd: Fd) -> StreamResult<()> {
        match self.failed[fd as usize] {
            None => Ok(()),
            Some(io::ErrorKind::BrokenPipe) => Err(StreamError::Closed),
            Some(kind) => Err(StreamError::LastOperationFailed(
                io::Error::from(kind).into(),
            )),
        }
    }

    fn room(&self) -> usize {
        IN_FLIGHT - self.in_flight
    }

    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiting.push(cx.waker().clone());
        }
    }
}

struct Chunk {
    fd: Fd,
    bytes: Bytes,
    owner: Arc<Streamed>,
}

impl Streamed {
    pub fn new(copy: Option<Arc<OutputLog>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            copy,
        })
    }

    /// The guest's stdout and stderr.
    pub fn streams(self: &Arc<Self>) -> (StreamedOutput, StreamedOutput) {
        let stream = |fd| StreamedOutput {
            fd,
            owner: self.clone(),
        };
        (stream(Fd::Stdout), stream(Fd::Stderr))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once `ready` holds of the state.
    async fn until(&self, ready: impl Fn(&State) -> bool) {
        std::future::poll_fn(|cx| {
            let mut state = self.state();
            if ready(&state) {
                Poll::Ready(())
            } else {
                state.wait(cx);
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once everything handed over is written (or both streams
    /// failed).
    pub async fn written(&self) {
        self.until(|s| s.in_flight == 0 || s.failed.iter().all(Option::is_some))
            .await
    }

    /// Writes `bytes` now if that cannot block, else hands them to the
    /// writer; the caller has checked there is room.
    fn send(self: &Arc<Self>, fd: Fd, bytes: Bytes) {
        if let Some(copy) = &self.copy {
            let stream = match fd {
                Fd::Stdout => Stream::Stdout,
                Fd::Stderr => Stream::Stderr,
            };
            copy.write(stream, &bytes);
        }
        let mut state = self.state();
        if state.in_flight == 0
            && let Some(written) = write_now(fd, &bytes)
        {
            if let Err(e) = written {
                state.failed[fd as usize].get_or_insert(e.kind());
            }
            return;
        }
        state.in_flight += bytes.len();
        drop(state);
        let chunk = Chunk {
            fd,
            bytes,
            owner: self.clone(),
        };
        if let Err(mpsc::SendError(chunk)) = writer().send(chunk) {
            chunk
                .owner
                .wrote(chunk.fd, chunk.bytes.len(), Err(io::ErrorKind::BrokenPipe));
        }
    }

    /// Called by the writer for each chunk.
    fn wrote(&self, fd: Fd, len: usize, result: Result<(), io::ErrorKind>) {
        let mut state = self.state();
        state.in_flight -= len;
        if let Err(kind) = result {
            state.failed[fd as usize].get_or_insert(kind);
        }
        for waker in state.waiting.drain(..) {
            waker.wake();
        }
    }
}

/// The one thread that writes guests' output to the process's stdout and
/// stderr; it may block on a reader for as long as the reader likes.
fn writer() -> &'static mpsc::Sender<Chunk> {
    static WRITER: OnceLock<mpsc::Sender<Chunk>> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Chunk>();
        std::thread::spawn(move || {
            for chunk in rx {
                let failed = chunk.owner.state().failed[chunk.fd as usize];
                let result = match failed {
                    Some(kind) => Err(kind),
                    None => write_out(chunk.fd, &chunk.bytes).map_err(|e| e.kind()),
                };
                chunk.owner.wrote(chunk.fd, chunk.bytes.len(), result);
            }
        });
        tx
    })
}

/// Writes `bytes` on this thread if the write cannot block: to a regular
/// file or `/dev/null`, or to a pipe that poll(2) says has room, which for a
/// write of at most PIPE_BUF bytes means room for all of it (a writer in
/// another process filling the pipe in between could still make it wait).
/// A terminal always goes through the writer thread: poll does not say how
/// much room it has. The
/// handoff costs a thread wake-up per write, which halves the throughput of
/// small writes (a guest's `println!`).
fn write_now(fd: Fd, bytes: &[u8]) -> Option<io::Result<()>> {
    static KINDS: OnceLock<[bool; 2]> = OnceLock::new();
    let raw = fd as usize + 1;
    let direct = KINDS.get_or_init(|| {
        [1, 2].map(|raw| {
            // SAFETY: `stat` is plain data, all zeroes is a valid value,
            // and fstat only writes the struct it is given.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            let kind = match unsafe { libc::fstat(raw, &mut stat) } {
                0 => stat.st_mode & libc::S_IFMT,
                _ => 0,
            };
            // SAFETY: isatty takes any descriptor number.
            let terminal = unsafe { libc::isatty(raw) } == 1;
            kind == libc::S_IFIFO || kind == libc::S_IFREG || (kind == libc::S_IFCHR && !terminal)
        })
    })[raw - 1];
    if !direct || bytes.len() > libc::PIPE_BUF {
        return None;
    }
    let mut poll = libc::pollfd {
        fd: raw as i32,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) } == 1 && poll.revents & libc::POLLOUT != 0;
    ready.then(|| write_out(fd, bytes))
}

fn write_out(fd: Fd, bytes: &[u8]) -> io::Result<()> {
    match fd {
        Fd::Stdout => {
            let mut stdout = io::stdout().lock();
            stdout.write_all(bytes)?;
            stdout.flush()
        }
        Fd::Stderr => io::stderr().lock().write_all(bytes),
    }
}

/// The guest's end of one of the two streams.
#[derive(Clone)]
pub struct StreamedOutput {
    fd: Fd,
    owner: Arc<Streamed>,
}

impl StreamedOutput {
    /// Takes up to the room there is of `buf`, or waits for room.
    fn reserve(&self, cx: &Context<'_>, want: usize) -> Poll<StreamResult<usize>> {
        let mut state = self.owner.state();
        state.check(self.fd)?;
        if state.room() == 0 {
            state.wait(cx);
            return Poll::Pending;
        }
        Poll::Ready(Ok(state.room().min(want)))
    }
}

impl IsTerminal for StreamedOutput {
    fn is_terminal(&self) -> bool {
        match self.fd {
            Fd::Stdout => io::stdout().is_terminal(),
            Fd::Stderr => io::stderr().is_terminal(),
        }
    }
}

impl StdoutStream for StreamedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl Pollable for StreamedOutput {
    async fn ready(&mut self) {
        let fd = self.fd;
        self.owner
            .until(|s| s.failed[fd as usize].is_some() || s.room() > 0)
            .await
    }
}

impl OutputStream for StreamedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let state = self.owner.state();
        state.check(self.fd)?;
        if bytes.len() > state.room() {
            return Err(StreamError::trap(
                "write exceeded the permit of check-write",
            ));
        }
        drop(state);
        self.owner.send(self.fd, bytes);
        Ok(())
    }

    /// Nothing is buffered on this side of the writer.
    fn flush(&mut self) -> StreamResult<()> {
        self.owner.state().check(self.fd)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let state = self.owner.state();
        state.check(self.fd)?;
        Ok(state.room())
    }
}

impl tokio::io::AsyncWrite for StreamedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.reserve(cx, buf.len()).map(|reserved| {
            let n = reserved.map_err(io::Error::other)?;
            self.owner.send(self.fd, Bytes::copy_from_slice(&buf[..n]));
            Ok(n)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
