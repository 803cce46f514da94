//! The quota shims of a wasip2 component's file output streams (see
//! `quota_p2`): a stream handed out by `write-via-stream` or
//! `append-via-stream` for a file in a volume that keeps usage is followed
//! from its creation to its drop, each write reserving what it grows the
//! file by.
//!
//! A stream writes in the background, after its call returns, so its
//! writes cannot be measured in their file's turn as a `write` is: two
//! instances streaming into one file at once may be counted high (never
//! low), marking the volume for a recount.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::StoreContextMut;
use wasmtime::component::{self, Resource, ResourceType};
use wasmtime_wasi::filesystem::{Descriptor, OpenMode, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor};
use wasmtime_wasi::p2::bindings::io::streams::{self, Host as _, HostOutputStream};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, StreamResult};

use super::limits::{FILESYSTEM_TYPES, p2_result};
use super::quota::growth;
use super::quota_p2::{quota_mount, reserve};
use crate::runtime::component::ComponentState;

const STREAMS: &str = "wasi:io/streams@0.2.12";

/// An output stream writing a file in a volume that keeps usage.
pub struct FileStream {
    mount: usize,
    file: Arc<std::fs::File>,
    /// Where the next write goes; `None` at the end (an append stream).
    position: Option<u64>,
    /// The file's size once the writes handed to the stream so far land
    /// (a stream writes in the background).
    end: u64,
}

/// The file streams of an instance, by resource index.
pub type FileStreams = HashMap<u32, FileStream>;

/// A stream write's reservation: where it starts, the file's size before
/// it, and the growth reserved.
type StreamReservation = Option<(u64, u64, u64)>;

/// Reserves what writing `len` bytes to stream `rep` grows its file by, if
/// it is a file stream: the reservation, or the refusal as a stream error
/// (ENOSPC, which wasi-libc reads back through `filesystem-error-code`).
fn reserve_stream(
    state: &mut ComponentState,
    rep: u32,
    len: u64,
) -> wasmtime::Result<Result<StreamReservation, streams::StreamError>> {
    let Some(entry) = state.streams.get(&rep) else {
        return Ok(Ok(None));
    };
    let meta = entry.file.metadata().ok();
    let size = meta.as_ref().map_or(0, |m| m.len()).max(entry.end);
    let unlinked = meta.is_some_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 0);
    let start = entry.position.unwrap_or(size);
    let grows = growth(size, start, len);
    let mount = entry.mount;
    if reserve(state, mount, grows, 0).is_err() {
        let error = wasmtime::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let error = state.table.push(error)?;
        return Ok(Err(streams::StreamError::LastOperationFailed(error)));
    }
    if unlinked
        && grows > 0
        && let Some(usage) = state.host.quotas.usage(mount)
    {
        usage.mark_stale();
    }
    Ok(Ok(Some((start, size, grows))))
}

/// After a stream write: moves the stream's position, settles the
/// reservation with what `written` says it wrote, and gives the guest the
/// stock result.
fn finish_stream<T>(
    state: &mut ComponentState,
    rep: u32,
    reserved: StreamReservation,
    len: u64,
    result: StreamResult<T>,
    written: impl Fn(&T, u64) -> u64,
) -> wasmtime::Result<(Result<T, streams::StreamError>,)> {
    let count = result.as_ref().map_or(0, |value| written(value, len));
    // A failure may be an earlier write's, made in the background after
    // it was counted: the count may be high.
    if result.is_err()
        && let Some(usage) = state
            .streams
            .get(&rep)
            .and_then(|e| state.host.quotas.usage(e.mount))
    {
        usage.mark_stale();
    }
    if let (Some((start, size, grows)), Some(entry)) = (reserved, state.streams.get_mut(&rep)) {
        if let Some(position) = &mut entry.position {
            *position += count;
        }
        entry.end = entry.end.max(start + count);
        let mount = entry.mount;
        if let Some(usage) = state.host.quotas.usage(mount) {
            usage.settle(grows, growth(size, start, count));
        }
    }
    Ok((match result {
        Ok(value) => Ok(value),
        Err(e) => Err(state.table.convert_stream_error(e)?),
    },))
}

/// Replaces output-stream method `$wit`, which writes `$len` bytes: the
/// reservation first, then `$call` (the stock method, on `table` and
/// `stream`), then `$written` (what its result says it wrote).
macro_rules! stream_write {
    ($streams:ident, $wit:literal, ($($arg:ident: $ty:ty),*), $len:expr,
     |$table:ident, $stream:ident| $call:expr, $written:expr) => {
        $streams.func_wrap_async(
            concat!("[method]output-stream.", $wit),
            |mut store: StoreContextMut<'_, ComponentState>,
             ($stream, $($arg,)*): (Resource<DynOutputStream>, $($ty,)*)| {
                Box::new(async move {
                    let state = store.data_mut();
                    let rep = $stream.rep();
                    let len = $len;
                    let reserved = match reserve_stream(state, rep, len)? {
                        Ok(reserved) => reserved,
                        Err(refused) => return Ok((Err(refused),)),
                    };
                    let $table = &mut state.table;
                    let result = $call;
                    finish_stream(state, rep, reserved, len, result, $written)
                })
            },
        )?;
    };
}

/// The host file behind `fd` if it is open for writing: wasmtime-wasi
/// hands out a stream of a file open only for reading too, whose writes
/// then fail in the background, growing nothing, so it is not followed.
fn file_open_for_writing(
    state: &ComponentState,
    fd: &Resource<fs::Descriptor>,
) -> Option<Arc<std::fs::File>> {
    match state.table.get(fd).ok()? {
        Descriptor::File(file) if file.open_mode.contains(OpenMode::WRITE) => {
            Some(file.file.clone())
        }
        _ => None,
    }
}

/// `write-via-stream` or `append-via-stream` (`offset` `None`), followed
/// when the file is in a volume that keeps usage.
fn open_stream(
    state: &mut ComponentState,
    fd: Resource<fs::Descriptor>,
    offset: Option<u64>,
) -> wasmtime::Result<(Result<Resource<DynOutputStream>, fs::ErrorCode>,)> {
    let mount = quota_mount(state, &fd);
    let file = file_open_for_writing(state, &fd);
    let result = p2_result(match offset {
        Some(offset) => state.filesystem().write_via_stream(fd, offset),
        None => state.filesystem().append_via_stream(fd),
    })?;
    if let (Ok(stream), Some(mount), Some(file)) = (&result.0, mount, file) {
        let end = file.metadata().map_or(0, |m| m.len());
        state.streams.insert(
            stream.rep(),
            FileStream {
                mount,
                file,
                position: offset,
                end,
            },
        );
    }
    Ok(result)
}

/// Replaces the calls that make and write file output streams in a
/// component linker.
pub fn add_to_linker(linker: &mut component::Linker<ComponentState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, offset): (Resource<fs::Descriptor>, u64)| {
            let state = store.data_mut();
            open_stream(state, fd, Some(offset))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, ComponentState>, (fd,): (Resource<fs::Descriptor>,)| {
            let state = store.data_mut();
            open_stream(state, fd, None)
        },
    )?;
    let mut streams = linker.instance(STREAMS)?;
    stream_write!(
        streams,
        "write",
        (bytes: Vec<u8>),
        bytes.len() as u64,
        |table, stream| HostOutputStream::write(table, stream, bytes),
        |_: &(), len| len
    );
    stream_write!(
        streams,
        "blocking-write-and-flush",
        (bytes: Vec<u8>),
        bytes.len() as u64,
        |table, stream| HostOutputStream::blocking_write_and_flush(table, stream, bytes).await,
        |_: &(), len| len
    );
    stream_write!(
        streams,
        "write-zeroes",
        (len: u64),
        len,
        |table, stream| HostOutputStream::write_zeroes(table, stream, len),
        |_: &(), len| len
    );
    stream_write!(
        streams,
        "blocking-write-zeroes-and-flush",
        (len: u64),
        len,
        |table, stream| {
            HostOutputStream::blocking_write_zeroes_and_flush(table, stream, len).await
        },
        |_: &(), len| len
    );
    stream_write!(
        streams,
        "splice",
        (src: Resource<DynInputStream>, len: u64),
        len,
        |table, stream| HostOutputStream::splice(table, stream, src, len),
        |n: &u64, _| *n
    );
    stream_write!(
        streams,
        "blocking-splice",
        (src: Resource<DynInputStream>, len: u64),
        len,
        |table, stream| HostOutputStream::blocking_splice(table, stream, src, len).await,
        |n: &u64, _| *n
    );
    streams.resource_async(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut store, rep| {
            Box::new(async move {
                let state = store.data_mut();
                state.streams.remove(&rep);
                HostOutputStream::drop(&mut state.table, Resource::new_own(rep)).await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
