//! A web request's body as the guest reads it: streamed from the client,
//! not buffered whole. Its first [`READ_AHEAD`] bytes are read before the
//! request takes room (a small body is then read whole, and a client that
//! sends headers and stalls holds no call's room); the rest reaches the
//! guest as the guest reads it, so a node holds no more of any body than
//! one read ahead, whatever its size.
//!
//! What the client may do is bounded: at most [`MAX_REQUEST_BODY`] bytes,
//! at most [`BODY_IDLE`] between two parts, and, past a grace of
//! [`BODY_IDLE`], on average at least [`MIN_BODY_RATE`] bytes a second, so
//! that a client trickling a large body cannot hold a call's room for long.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::BodyRefused;

/// The most bytes of a request body an endpoint is given.
pub const MAX_REQUEST_BODY: u64 = 16 << 20;

/// How much of a body is read before its request takes room.
pub const READ_AHEAD: usize = 64 << 10;

/// The longest a request body may pause before the request is refused.
pub const BODY_IDLE: Duration = Duration::from_secs(10);

/// The slowest a body may arrive on average, past its first [`BODY_IDLE`].
pub const MIN_BODY_RATE: u64 = 16 << 10;

/// The most bytes of request bodies a node holds at once, read ahead and
/// not yet read by their guests: past it a request is answered 503 rather
/// than the node growing with every client that sends a body slowly.
pub const BODIES_HELD: usize = 256 << 20;

/// A body as the client sends it.
pub type ClientBody =
    Pin<Box<dyn Body<Data = Bytes, Error = Box<dyn std::error::Error + Send + Sync>> + Send>>;

/// A request's body: what was read ahead, then the rest as it arrives.
pub struct RequestBody {
    read: VecDeque<Bytes>,
    /// None once the client's body has ended.
    rest: Option<ClientBody>,
    /// Bytes received from the client so far.
    received: u64,
    /// Its `Content-Length`, if it gave one.
    declared: Option<u64>,
    started: Instant,
    last_part: Instant,
    /// When the wait for the next part ends; made where it is first
    /// awaited, on that executor's clock.
    wait: Option<Pin<Box<Sleep>>>,
    /// What the bytes read ahead hold of the node's budget for bodies.
    held: Option<OwnedSemaphorePermit>,
}

impl RequestBody {
    /// A body arriving as `body`, its declared length `declared`; refused
    /// at once if that is more than an endpoint is given.
    pub fn new(body: ClientBody, declared: Option<u64>) -> Result<Self, BodyRefused> {
        if declared.is_some_and(|length| length > MAX_REQUEST_BODY) {
            return Err(BodyRefused::TooLarge);
        }
        let now = Instant::now();
        Ok(RequestBody {
            read: VecDeque::new(),
            rest: Some(body),
            received: 0,
            declared,
            started: now,
            last_part: now,
            wait: None,
            held: None,
        })
    }

    /// A body already in memory.
    pub fn full(bytes: Bytes) -> Self {
        let now = Instant::now();
        RequestBody {
            received: bytes.len() as u64,
            declared: Some(bytes.len() as u64),
            read: VecDeque::from([bytes]),
            rest: None,
            started: now,
            last_part: now,
            wait: None,
            held: None,
        }
    }

    /// Reads the body until it ends or [`READ_AHEAD`] bytes are read,
    /// each taken from `budget` until the guest has read them.
    pub async fn read_ahead(&mut self, budget: &Arc<Semaphore>) -> Result<(), BodyRefused> {
        let mut ahead = 0;
        while ahead < READ_AHEAD {
            let Some(part) = std::future::poll_fn(|cx| self.poll_client(cx)).await else {
                break;
            };
            let part = part?;
            let more = u32::try_from(part.len()).unwrap_or(u32::MAX);
            let more = (budget.clone().try_acquire_many_owned(more))
                .map_err(|_| BodyRefused::Busy(BODIES_HELD))?;
            match &mut self.held {
                Some(held) => held.merge(more),
                None => self.held = Some(more),
            }
            ahead += part.len();
            self.read.push_back(part);
        }
        // The rest is awaited where the guest reads it.
        self.wait = None;
        Ok(())
    }

    /// Its length, if known: declared by the client, or read whole.
    pub fn length(&self) -> Option<u64> {
        match &self.rest {
            None => Some(self.received),
            Some(_) => self.declared,
        }
    }

    /// The body as a reader, for a WAGI script's stdin.
    pub fn into_reader(self) -> BodyReader {
        BodyReader(Mutex::new(Reading {
            body: self,
            part: Bytes::new(),
        }))
    }

    /// The next part: one read ahead, else the client's next.
    fn poll_part(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyRefused>>> {
        if let Some(part) = self.read.pop_front() {
            if self.read.is_empty() {
                self.held = None;
            }
            return Poll::Ready(Some(Ok(part)));
        }
        self.poll_client(cx)
    }

    /// The client's next part of data, within the body's bounds.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyRefused>>> {
        loop {
            let Some(rest) = &mut self.rest else {
                return Poll::Ready(None);
            };
            match rest.as_mut().poll_frame(cx) {
                Poll::Ready(None) => {
                    self.rest = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.rest = None;
                    return Poll::Ready(Some(Err(BodyRefused::Broken(e.to_string()))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.received += data.len() as u64;
                    self.last_part = Instant::now();
                    self.wait = None;
                    if self.received > MAX_REQUEST_BODY {
                        self.rest = None;
                        return Poll::Ready(Some(Err(BodyRefused::TooLarge)));
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Pending => {
                    let until = self.next_part_due();
                    let wait = self
                        .wait
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    ready!(wait.as_mut().poll(cx));
                    self.rest = None;
                    return Poll::Ready(Some(Err(BodyRefused::Stalled(BODY_IDLE))));
                }
            }
        }
    }

    /// When the client's next part must have arrived: [`BODY_IDLE`] after
    /// its last, and no later than its average rate allows.
    fn next_part_due(&self) -> Instant {
        let paced = self.started
            + BODY_IDLE
            + Duration::from_secs_f64(self.received as f64 / MIN_BODY_RATE as f64);
        (self.last_part + BODY_IDLE).min(paced)
    }
}

/// A `wasi:http` component reads the body as its incoming body.
impl Body for RequestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let part = ready!(self.get_mut().poll_part(cx));
        Poll::Ready(part.map(|part| part.map(Frame::data).map_err(BodyRefused::into_wasi)))
    }
}

/// A body read as bytes; `Sync` as wasmtime's stdin wants, though it is
/// only ever read through `&mut`.
pub struct BodyReader(Mutex<Reading>);

struct Reading {
    body: RequestBody,
    /// What is left of the part being read.
    part: Bytes,
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let reading = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        while reading.part.is_empty() {
            match ready!(reading.body.poll_part(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(part)) => reading.part = part,
                Some(Err(refused)) => {
                    return Poll::Ready(Err(io::Error::other(refused.answer().1)));
                }
            }
        }
        let n = buf.remaining().min(reading.part.len());
        buf.put_slice(&reading.part[..n]);
        reading.part.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl BodyRefused {
    fn into_wasi(self) -> wasmtime_wasi_http::Error {
        match self {
            BodyRefused::TooLarge => {
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(MAX_REQUEST_BODY))
            }
            BodyRefused::Stalled(_) => wasmtime_wasi_http::Error::ConnectionReadTimeout,
            BodyRefused::Broken(_) => wasmtime_wasi_http::Error::ConnectionTerminated,
            BodyRefused::Busy(_) => wasmtime_wasi_http::Error::ConnectionLimitReached,
        }
    }
}
