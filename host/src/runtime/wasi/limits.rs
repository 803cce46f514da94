//! The limits on what an instance holds of the host (`max_open_files`, the
//! handle table, the process's descriptor limit), and the shims between
//! guests and wasmtime-wasi's file system that enforce what wasmtime-wasi
//! leaves open: an open past `max_open_files` fails with an error the guest
//! can handle (wasmtime-wasi would trap at a full handle table), and a path
//! longer than `PATH_MAX` is refused before the host resolves it (resolving
//! a path takes several times its length in host memory, and wasmtime lets
//! one call pass up to 128 MiB).
//!
//! Each shim replaces one import and, when it lets the call through, calls
//! wasmtime-wasi's own implementation with the same arguments.

use anyhow::Result;
use wasmtime::component::{self, Resource, ResourceTable};
use wasmtime::{AsContextMut, Caller, Extern, Linker, StoreContextMut};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p1::types::Errno;
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self, WasiSnapshotPreview1};
use wasmtime_wasi::p2::FsResult;
use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor};
use wiggle::GuestMemory;

use crate::manifest::FunctionSpec;
use crate::runtime::component::ComponentState;
use crate::runtime::core::CoreState;
use crate::runtime::instance::Limits;

/// The longest path a guest may hand the file system, in bytes: Linux's
/// `PATH_MAX`, past which the kernel refuses a path anyway.
pub const MAX_PATH: usize = libc::PATH_MAX as usize;

/// Handles past `max_open_files` that an instance may still create other
/// than by opening (a stream to read a file it has open, a pollable), so a
/// guest at its file limit can go on using its files. Past these the
/// handle table is full and the instance traps.
const HANDLE_RESERVE: usize = 256;

pub(super) const P1: &str = "wasi_snapshot_preview1";
/// wasmtime-wasi's filesystem interface as its linker defines it.
pub(super) const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Descriptors kept for wasmhost itself, whatever its instances hold: the
/// registry, leases, slots, compiled-code maps, stdio, its threads' pipes.
const HOST_DESCRIPTORS: usize = 512;

/// The fewest open files (and locks) an instance is lowered to: room for
/// its stdio, its mounts and a few files of its own.
const MIN_SHARE: usize = 32;

/// The count limits one instance runs under: the function's `max_open_files`
/// and `max_locks`, lowered when that many instances at once could together
/// hold more descriptors than the process may open. Each open file and each
/// lock is a host descriptor; without the share, a few hoarding instances
/// under `--map` would leave their siblings none (a failure for a limit the
/// user never set).
#[derive(Debug, Clone, Copy)]
pub struct CountLimits {
    pub open_files: usize,
    pub locks: usize,
    /// Set when a limit was lowered: (the process's descriptor limit,
    /// instances at once), for the message of a guest that hits it.
    pub shared: Option<(usize, usize)>,
}

impl CountLimits {
    pub fn new(function: &FunctionSpec, process: usize, instances: usize) -> Self {
        // Files and locks each get half of an instance's share.
        let half = (process.saturating_sub(HOST_DESCRIPTORS) / instances.max(1) / 2).max(MIN_SHARE);
        let open_files = (function.max_open_files as usize).min(half);
        let locks = (function.max_locks as usize).min(half);
        let lowered =
            open_files < function.max_open_files as usize || locks < function.max_locks as usize;
        Self {
            open_files,
            locks,
            shared: lowered.then_some((process, instances)),
        }
    }
}

/// Bounds everything an instance keeps in its handle table (files,
/// directories, streams, pollables: each may hold a host descriptor or
/// host memory): a guest cannot run the process out of descriptors that
/// the other instances need.
pub fn limit_table(table: &mut ResourceTable, limits: &CountLimits) {
    table.set_max_capacity(limits.open_files + HANDLE_RESERVE);
}

/// Raises the process's soft limit on open descriptors to its hard limit,
/// and returns the limit: instances are bounded by their share of it, and a
/// soft limit of 1024 (a common default) would make that share small for
/// no reason.
pub fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// Whether an open may add one more handle: not once the table holds
/// `max_open_files`. wasmtime-wasi would trap at a full table; asking first
/// lets the open fail with an error the guest can handle.
fn may_open(table: &mut ResourceTable, limits: &mut Limits) -> bool {
    let capacity = table.max_capacity();
    table.set_max_capacity(limits.max_open_files);
    // A slot for a new handle is free exactly when a probe fits.
    let room = table
        .push(())
        .is_ok_and(|probe| table.delete(probe).is_ok());
    table.set_max_capacity(capacity);
    limits.open_files_hit |= !room;
    room
}

/// Calls wasmtime-wasi's p1 `$name` on the guest's behalf, as wiggle's
/// generated import does: with the guest's memory and its hostcall fuel.
macro_rules! stock_p1 {
    ($caller:ident, $name:ident, $($arg:ident),*) => {{
        let fuel = $caller.as_context_mut().hostcall_fuel();
        let Some(Extern::Memory(memory)) = $caller.get_export("memory") else {
            wasmtime::bail!("missing required memory export");
        };
        let (memory, state) = memory.data_and_store_mut(&mut $caller);
        state.wasi.set_hostcall_fuel(fuel);
        wasi_snapshot_preview1::$name(&mut state.wasi, &mut GuestMemory::Unshared(memory), $($arg),*)
            .await
    }};
}
pub(super) use stock_p1;

/// Replaces p1 import `$name`: `ENAMETOOLONG` if any of the `$len`
/// arguments (path lengths) is past [`MAX_PATH`], else `$body` (by default
/// the stock function), which has the guest's arguments and `$caller`.
macro_rules! p1_paths_capped {
    ($linker:ident, $name:ident, ($($arg:ident: $ty:ty),*), [$($len:ident),+]) => {
        p1_paths_capped!($linker, $name, ($($arg: $ty),*), [$($len),+], |caller| {
            stock_p1!(caller, $name, $($arg),*)
        })
    };
    ($linker:ident, $name:ident, ($($arg:ident: $ty:ty),*), [$($len:ident),+],
     |$caller:ident| $body:expr) => {
        $linker.func_wrap_async(
            P1,
            stringify!($name),
            |mut $caller: Caller<'_, CoreState>, ($($arg,)*): ($($ty,)*)| {
                Box::new(async move {
                    if $(too_long_p1($len))||+ {
                        return Ok(Errno::Nametoolong as i32);
                    }
                    $body
                })
            },
        )?;
    };
}
pub(super) use p1_paths_capped;

pub(super) fn too_long_p1(len: i32) -> bool {
    len as u32 as usize > MAX_PATH
}

/// Replaces wasmtime-wasi's p1 `path_*` imports in `linker` (those that
/// create or remove entries are `quota_p1`'s, which check paths too).
pub fn add_to_p1_linker(linker: &mut Linker<CoreState>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        P1,
        "path_open",
        |mut caller: Caller<'_, CoreState>,
         (dir, lookup, path, path_len, oflags, base, inheriting, fdflags, opened): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i64,
            i64,
            i32,
            i32,
        )| {
            Box::new(async move {
                if too_long_p1(path_len) {
                    return Ok(Errno::Nametoolong as i32);
                }
                let state = caller.data_mut();
                if !may_open(WasiView::ctx(&mut state.wasi).table, &mut state.host.limits) {
                    return Ok(Errno::Mfile as i32);
                }
                super::quota_p1::path_open(
                    &mut caller,
                    dir,
                    lookup,
                    path,
                    path_len,
                    oflags,
                    base,
                    inheriting,
                    fdflags,
                    opened,
                )
                .await
            })
        },
    )?;
    p1_paths_capped!(
        linker,
        path_filestat_get,
        (fd: i32, flags: i32, path: i32, len: i32, stat: i32),
        [len]
    );
    p1_paths_capped!(
        linker,
        path_filestat_set_times,
        (fd: i32, flags: i32, path: i32, len: i32, atim: i64, mtim: i64, set: i32),
        [len]
    );
    p1_paths_capped!(
        linker,
        path_readlink,
        (fd: i32, path: i32, len: i32, buf: i32, buf_len: i32, used: i32),
        [len]
    );
    linker.allow_shadowing(false);
    Ok(())
}

/// The result a component gets: wasmtime-wasi's error code, or its trap.
pub(super) fn p2_result<T>(result: FsResult<T>) -> wasmtime::Result<(Result<T, fs::ErrorCode>,)> {
    Ok((match result {
        Ok(value) => Ok(value),
        Err(e) => Err(e.downcast()?),
    },))
}

/// Replaces `[method]descriptor.$wit`: `name-too-long` if any of the
/// `$path` arguments is past [`MAX_PATH`] (checked as soon as the canonical
/// ABI has lifted it), else wasmtime-wasi's own `$method`.
macro_rules! p2_paths_capped {
    ($types:ident, $wit:literal, $method:ident, ($($arg:ident: $ty:ty),*), [$($path:ident),+]) => {
        $types.func_wrap_async(
            concat!("[method]descriptor.", $wit),
            |mut store: StoreContextMut<'_, ComponentState>,
             (dir, $($arg,)*): (Resource<fs::Descriptor>, $($ty,)*)| {
                Box::new(async move {
                    if $($path.len() > MAX_PATH)||+ {
                        return Ok((Err(fs::ErrorCode::NameTooLong),));
                    }
                    p2_result(store.data_mut().filesystem().$method(dir, $($arg),*).await)
                })
            },
        )?;
    };
}

/// Replaces wasmtime-wasi's path-taking `descriptor` methods in `linker`
/// (those that create or remove entries are `quota_p2`'s, which check
/// paths too).
pub fn add_to_p2_linker(linker: &mut component::Linker<ComponentState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, ComponentState>,
         (dir, path_flags, path, open_flags, flags): (
            Resource<fs::Descriptor>,
            fs::PathFlags,
            String,
            fs::OpenFlags,
            fs::DescriptorFlags,
        )| {
            Box::new(async move {
                if path.len() > MAX_PATH {
                    return Ok((Err(fs::ErrorCode::NameTooLong),));
                }
                let state = store.data_mut();
                // wasi:filesystem has no "too many open files"; `quota` is
                // what wasi-libc reports as EDQUOT.
                if !may_open(&mut state.table, &mut state.host.limits) {
                    return Ok((Err(fs::ErrorCode::Quota),));
                }
                super::quota_p2::open_at(state, dir, path_flags, path, open_flags, flags).await
            })
        },
    )?;
    p2_paths_capped!(types, "stat-at", stat_at, (flags: fs::PathFlags, path: String), [path]);
    p2_paths_capped!(
        types,
        "set-times-at",
        set_times_at,
        (flags: fs::PathFlags, path: String, atim: fs::NewTimestamp, mtim: fs::NewTimestamp),
        [path]
    );
    p2_paths_capped!(types, "readlink-at", readlink_at, (path: String), [path]);
    p2_paths_capped!(
        types,
        "metadata-hash-at",
        metadata_hash_at,
        (flags: fs::PathFlags, path: String),
        [path]
    );
    linker.allow_shadowing(false);
    Ok(())
}
