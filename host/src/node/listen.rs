//! Accepting the node's connections, with the limits a node on the
//! internet keeps (SPEC section 10): at most `max_connections` open at once
//! (one more is closed as soon as it is accepted, rather than queued while
//! it holds a descriptor), and a request's head read within
//! [`HEADER_TIMEOUT`] of the connection asking for one, so a client that
//! sends a header line every few seconds (slowloris) or opens a
//! connection and waits holds it only that long; and a response's writes
//! must make progress within [`WRITE_STALL`], so a client that stops
//! reading holds its connection (and a streaming guest) only that long.
//! Bodies are the handlers' to read, when and if they want them (see
//! `web`).
//!
//! axum's own `serve` sets neither limit, so this is its loop with them:
//! hyper's HTTP/1 connection with a timer, and hyper-util's graceful
//! shutdown, which waits for the connections' requests in flight.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower_service::Service;

/// How long a client has to send a request's head, counted from when the
/// node is ready to read one (a new connection, or the end of the last
/// response on a kept-alive one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a response's write may wait for the client to read.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// How long the loop rests when accepting fails (out of descriptors), so
/// that it does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener on `address` whose queue of connections not yet accepted
/// holds up to `max_connections` (as the kernel's `somaxconn` allows):
/// tokio's default of 128 drops the connections of a burst past it, which
/// their clients then retry a second later.
pub fn bind(address: SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(u32::try_from(max_connections).unwrap_or(u32::MAX))
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for
/// the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let room = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::debug!("refused a connection from {remote}: {max_connections} are open");
            continue;
        };
        // A web endpoint's response goes out as its guest writes it: its
        // head and body in separate writes, which Nagle's algorithm would
        // hold back for the client's delayed ACK (40 ms a request).
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().call(request)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(Writes::new(tcp)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {remote}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection whose writes fail once one has waited [`WRITE_STALL`] for
/// the client to read: hyper then closes it.
struct Writes {
    tcp: TcpStream,
    /// Armed while a write waits.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Writes {
    fn new(tcp: TcpStream) -> Self {
        Writes { tcp, stalled: None }
    }

    /// `polled`'s outcome, or a timeout once it has been pending too long.
    fn within<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Writes {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Writes {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.within(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.within(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_flush(cx);
        this.within(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// `wanted` descriptors as this process's soft limit if its hard limit
/// allows (else the hard limit): a node's connections, calls and volumes
/// all take descriptors, and the usual soft limit of 1024 is below what
/// `--max-connections` lets in.
pub fn raise_descriptor_limit(wanted: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let want = wanted.min(hard);
    if limit.current.is_some_and(|soft| soft < want) {
        limit.current = Some(want);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the descriptor limit to {want}: {e}");
        }
    }
}
