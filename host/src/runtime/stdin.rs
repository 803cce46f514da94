//! What a guest reads on stdin when it is not wasmhost's own: a stream
//! the guest reads as it arrives (a WAGI request's body), so the host
//! never holds the whole of it.

use std::sync::Arc;

use tokio::io::AsyncRead;
use wasmtime_wasi::cli::{AsyncStdinStream, IsTerminal, StdinStream};
use wasmtime_wasi::p2::InputStream;

/// One stream, however many handles to it the guest opens.
#[derive(Clone)]
pub struct Stdin(Arc<AsyncStdinStream>);

impl Stdin {
    /// Stdin read from `reader` as the guest reads it.
    pub fn stream(reader: impl AsyncRead + Send + Sync + 'static) -> Self {
        Stdin(Arc::new(AsyncStdinStream::new(reader)))
    }
}

impl IsTerminal for Stdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for Stdin {
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        self.0.async_stream()
    }

    fn p2_stream(&self) -> Box<dyn InputStream> {
        self.0.p2_stream()
    }
}
