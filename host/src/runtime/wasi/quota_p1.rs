//! The quota shims for wasip1 modules (see `quota` for what they keep).
//!
//! wasmtime-wasi keeps which host file a p1 descriptor is to itself, so
//! these learn what they need through its own methods: the mount from the
//! descriptor a file was opened under (preopens start as descriptors 3, 4,
//! … in mount order, and move with `fd_renumber` like any other), and a
//! file's size, position and flags from its `fd_filestat_get`, `fd_tell`
//! and `fd_fdstat_get`.
//!
//! `add_to_linker` is one long list, one registration a shimmed call,
//! each a few lines that hand over to its shim: split up, it would read
//! no better.

use std::collections::HashMap;

use anyhow::Result;
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{self, Errno};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self, WasiSnapshotPreview1};
use wiggle::{GuestMemory, GuestPtr};

use super::limits::{P1, p1_paths_capped, stock_p1, too_long_p1};
use super::quota::{FileTurn, Refusal, freed_by, growth};
use crate::runtime::core::CoreState;

/// The first p1 descriptor of a preopen (0-2 are stdio).
const FIRST_PREOPEN: u32 = 3;
const OFLAGS_CREAT: i32 = 1;
const OFLAGS_TRUNC: i32 = 8;
const ERRNO_SUCCESS: i32 = 0;

/// Which mount each open p1 descriptor is in, preopens included: a guest
/// may renumber or close a preopen, and whatever descriptor then holds it
/// must still be known as the mount, or its writes would escape the quota.
pub struct P1Mounts {
    opened: HashMap<u32, usize>,
}

impl P1Mounts {
    /// The descriptors of an instance with `mounts` preopens.
    pub fn new(mounts: usize) -> Self {
        Self {
            opened: (0..mounts)
                .map(|mount| (FIRST_PREOPEN + mount as u32, mount))
                .collect(),
        }
    }

    fn of(&self, fd: i32) -> Option<usize> {
        self.opened.get(&(fd as u32)).copied()
    }
}

fn refused(refusal: Refusal) -> i32 {
    match refusal {
        Refusal::NoSpace => Errno::Nospc as i32,
        Refusal::CrossVolume => Errno::Xdev as i32,
    }
}

/// The mount of p1 descriptor `fd`, if it is in one that keeps usage.
fn quota_mount(caller: &Caller<'_, CoreState>, fd: i32) -> Option<usize> {
    let state = caller.data();
    let mount = state.p1_mounts.of(fd)?;
    state.host.quotas.usage(mount).map(|_| mount)
}

fn memory(caller: &mut Caller<'_, CoreState>) -> Option<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Some(memory),
        _ => None,
    }
}

fn read_u32(caller: &mut Caller<'_, CoreState>, at: i32) -> Option<u32> {
    let memory = memory(caller)?;
    let start = at as u32 as usize;
    let bytes = memory.data(&caller).get(start..start + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The length of the first non-empty buffer of an iovec array: what p1's
/// `fd_write` and `fd_pwrite` write (wasmtime-wasi writes only that one).
fn first_iovec_len(caller: &mut Caller<'_, CoreState>, iovs: i32, count: i32) -> Option<u64> {
    for i in 0..count.max(0) as u32 {
        let len = read_u32(caller, iovs.wrapping_add((i * 8 + 4) as i32))?;
        if len > 0 {
            return Some(len.into());
        }
    }
    Some(0)
}

/// A file's `filestat` as the shims need it.
struct Stat {
    regular: bool,
    directory: bool,
    links: u64,
    size: u64,
    inode: u64,
}

impl From<types::Filestat> for Stat {
    fn from(stat: types::Filestat) -> Self {
        Self {
            regular: stat.filetype == types::Filetype::RegularFile,
            directory: stat.filetype == types::Filetype::Directory,
            links: stat.nlink,
            size: stat.size,
            inode: stat.ino,
        }
    }
}

impl Stat {
    fn freed(&self) -> (u64, u64) {
        freed_by(self.regular, self.links, self.size)
    }
}

/// Calls wasmtime-wasi's own p1 `$method` (a Rust method, not the import:
/// its answer comes back here rather than into guest memory) with the
/// guest's memory and hostcall fuel.
macro_rules! stock_method {
    ($caller:ident, $method:ident, $($arg:expr),*) => {{
        let fuel = $caller.as_context_mut().hostcall_fuel();
        let memory = memory($caller)
            .ok_or_else(|| wasmtime::format_err!("missing required memory export"))?;
        let (memory, state) = memory.data_and_store_mut(&mut *$caller);
        state.wasi.set_hostcall_fuel(fuel);
        let mut memory = GuestMemory::Unshared(memory);
        state.wasi.$method(&mut memory, $($arg),*).await
    }};
}

fn p1_fd(fd: i32) -> types::Fd {
    types::Fd::from(fd as u32)
}

async fn fd_stat(caller: &mut Caller<'_, CoreState>, fd: i32) -> wasmtime::Result<Option<Stat>> {
    Ok(stock_method!(caller, fd_filestat_get, p1_fd(fd))
        .ok()
        .map(Stat::from))
}

/// `path` under `dir` (`flags`: its lookup flags), or `None` if it cannot be
/// stat'ed (missing, or an error the real call will report).
async fn path_stat(
    caller: &mut Caller<'_, CoreState>,
    dir: i32,
    flags: i32,
    path: i32,
    len: i32,
) -> wasmtime::Result<Option<Stat>> {
    let path = GuestPtr::new((path as u32, len as u32));
    let flags = types::Lookupflags::from_bits_truncate(flags as u32);
    Ok(
        stock_method!(caller, path_filestat_get, p1_fd(dir), flags, path)
            .ok()
            .map(Stat::from),
    )
}

/// Where a write on `fd` starts: at `offset`, or (`None`) its position; at
/// its end either way if it was opened to append.
async fn write_start(
    caller: &mut Caller<'_, CoreState>,
    fd: i32,
    offset: Option<u64>,
    size: u64,
) -> wasmtime::Result<u64> {
    let append = stock_method!(caller, fd_fdstat_get, p1_fd(fd))
        .is_ok_and(|stat| stat.fs_flags.contains(types::Fdflags::APPEND));
    if append {
        return Ok(size);
    }
    if let Some(offset) = offset {
        return Ok(offset);
    }
    let fuel = caller.as_context_mut().hostcall_fuel();
    let memory =
        memory(caller).ok_or_else(|| wasmtime::format_err!("missing required memory export"))?;
    let (memory, state) = memory.data_and_store_mut(&mut *caller);
    state.wasi.set_hostcall_fuel(fuel);
    Ok(state
        .wasi
        .fd_tell(&mut GuestMemory::Unshared(memory), p1_fd(fd))
        .unwrap_or(size))
}

/// A file of a volume that keeps usage, measured in its turn (see
/// `VolumeQuotas::file_turn`): what a change of its size starts from.
async fn stat_in_turn(
    caller: &mut Caller<'_, CoreState>,
    fd: i32,
    mount: usize,
) -> wasmtime::Result<Option<(Stat, Option<FileTurn>)>> {
    let Some(stat) = fd_stat(caller, fd).await? else {
        return Ok(None);
    };
    let turn = caller.data().host.quotas.file_turn(mount, stat.inode).await;
    if turn.is_none() {
        return Ok(Some((stat, None)));
    }
    // Again within the turn: another writer may have changed it before.
    Ok(fd_stat(caller, fd).await?.map(|stat| (stat, turn)))
}

/// A write's reservation, held in its file's turn until it is settled.
struct WriteReservation {
    mount: usize,
    size: u64,
    start: u64,
    grows: u64,
    _turn: Option<FileTurn>,
}

/// Reserves what a write of the first buffer of `iovs` at `offset` (or the
/// position) would grow its file by: `Ok(None)` when the file is in no
/// volume that keeps usage, `Err` with the errno when refused.
async fn reserve_write(
    caller: &mut Caller<'_, CoreState>,
    fd: i32,
    iovs: i32,
    count: i32,
    offset: Option<u64>,
) -> wasmtime::Result<Result<Option<WriteReservation>, i32>> {
    let Some(mount) = quota_mount(caller, fd) else {
        return Ok(Ok(None));
    };
    let Some((stat, turn)) = stat_in_turn(caller, fd, mount).await? else {
        return Ok(Ok(None));
    };
    let Some(len) = first_iovec_len(caller, iovs, count) else {
        return Ok(Ok(None));
    };
    let start = write_start(caller, fd, offset, stat.size).await?;
    let grows = growth(stat.size, start, len);
    let usage = caller.data().host.quotas.usage(mount).expect("a usage");
    if let Err(e) = usage.reserve(grows, 0) {
        return Ok(Err(refused(e.into())));
    }
    if stat.links == 0 && grows > 0 {
        usage.mark_stale();
    }
    Ok(Ok(Some(WriteReservation {
        mount,
        size: stat.size,
        start,
        grows,
        _turn: turn,
    })))
}

/// After a write: what it grew the file by, against what was reserved
/// (nothing, if it failed), settled before its file's turn ends.
fn settle_write(
    caller: &mut Caller<'_, CoreState>,
    reserved: Option<WriteReservation>,
    errno: i32,
    written_at: i32,
) {
    let Some(reserved) = reserved else {
        return;
    };
    let written = if errno == ERRNO_SUCCESS {
        read_u32(caller, written_at).unwrap_or(0).into()
    } else {
        0
    };
    let used = growth(reserved.size, reserved.start, written);
    if let Some(usage) = caller.data().host.quotas.usage(reserved.mount) {
        usage.settle(reserved.grows, used);
    }
}

/// Reserves one new file in the mount of `dir` (`Ok(None)`: none keeps
/// usage there; `Err`: the errno refusing it).
fn reserve_file(caller: &Caller<'_, CoreState>, dir: i32) -> Result<Option<usize>, i32> {
    let Some(mount) = quota_mount(caller, dir) else {
        return Ok(None);
    };
    let usage = caller.data().host.quotas.usage(mount).expect("a usage");
    usage
        .reserve(0, 1)
        .map(|()| Some(mount))
        .map_err(|e| refused(e.into()))
}

fn release(caller: &Caller<'_, CoreState>, mount: Option<usize>, (bytes, files): (u64, u64)) {
    if let Some(usage) = mount.and_then(|m| caller.data().host.quotas.usage(m)) {
        usage.release(bytes, files);
    }
}

/// Whether a rename or link between two descriptors is refused as
/// crossing volumes (see `VolumeQuotas::crosses_volumes`).
fn crosses_volumes(caller: &Caller<'_, CoreState>, a: i32, b: i32) -> bool {
    let state = caller.data();
    match (state.p1_mounts.of(a), state.p1_mounts.of(b)) {
        (Some(a), Some(b)) => state.host.quotas.crosses_volumes(a, b),
        _ => false,
    }
}

/// `path_open` past the open-files check: counts a file it creates, gives
/// back what `O_TRUNC` frees, and remembers the mount of the descriptor.
#[allow(clippy::too_many_arguments)]
pub async fn path_open(
    mut caller: &mut Caller<'_, CoreState>,
    dir: i32,
    lookup: i32,
    path: i32,
    path_len: i32,
    oflags: i32,
    base: i64,
    inheriting: i64,
    fdflags: i32,
    opened: i32,
) -> wasmtime::Result<i32> {
    let dir_mount = caller.data().p1_mounts.of(dir);
    let quota_mount = quota_mount(caller, dir);
    let mut created = None;
    let mut freed = (0, 0);
    if quota_mount.is_some() && oflags & (OFLAGS_CREAT | OFLAGS_TRUNC) != 0 {
        match path_stat(caller, dir, lookup, path, path_len).await? {
            None if oflags & OFLAGS_CREAT != 0 => match reserve_file(caller, dir) {
                Ok(mount) => created = mount,
                Err(errno) => return Ok(errno),
            },
            Some(stat) if oflags & OFLAGS_TRUNC != 0 && stat.regular => freed = (stat.size, 0),
            _ => {}
        }
    }
    let errno = stock_p1!(
        caller, path_open, dir, lookup, path, path_len, oflags, base, inheriting, fdflags, opened
    )?;
    if errno != ERRNO_SUCCESS {
        release(caller, created, (0, 1));
        return Ok(errno);
    }
    release(caller, quota_mount, freed);
    if let (Some(mount), Some(fd)) = (dir_mount, read_u32(caller, opened)) {
        caller.data_mut().p1_mounts.opened.insert(fd, mount);
    }
    Ok(errno)
}

/// What a call that adds or removes an entry does to its volume's usage:
/// `reserved` is taken before it and given back if it fails; `freed` is
/// given back if it succeeds.
struct EntryChange {
    mount: Option<usize>,
    reserved: (u64, u64),
    freed: (u64, u64),
}

impl EntryChange {
    /// Settles the change by the call's errno, and returns it.
    fn finish(self, caller: &Caller<'_, CoreState>, errno: i32) -> i32 {
        let back = if errno == ERRNO_SUCCESS {
            self.freed
        } else {
            self.reserved
        };
        release(caller, self.mount, back);
        errno
    }
}

/// A new entry under `dir`: one file reserved, or the errno refusing it.
fn created(caller: &Caller<'_, CoreState>, dir: i32) -> Result<EntryChange, i32> {
    Ok(EntryChange {
        mount: reserve_file(caller, dir)?,
        reserved: (0, 1),
        freed: (0, 0),
    })
}

/// `path` under `dir` removed: what it held comes back.
async fn removed(
    caller: &mut Caller<'_, CoreState>,
    dir: i32,
    path: i32,
    len: i32,
) -> wasmtime::Result<EntryChange> {
    let mount = quota_mount(caller, dir);
    let freed = match mount {
        Some(_) => path_stat(caller, dir, 0, path, len)
            .await?
            .map(|s| s.freed()),
        None => None,
    };
    Ok(EntryChange {
        mount,
        reserved: (0, 0),
        freed: freed.unwrap_or_default(),
    })
}

/// `old` renamed to `new`: what `new` held comes back, unless it is
/// another name of the same file (the rename then changes nothing).
async fn renamed(
    caller: &mut Caller<'_, CoreState>,
    (dir, old, old_len): (i32, i32, i32),
    (new_dir, new, new_len): (i32, i32, i32),
) -> wasmtime::Result<Result<EntryChange, i32>> {
    if crosses_volumes(caller, dir, new_dir) {
        return Ok(Err(refused(Refusal::CrossVolume)));
    }
    let mut change = removed(caller, new_dir, new, new_len).await?;
    if change.freed != (0, 0) && change.mount.is_some() {
        let target = path_stat(caller, new_dir, 0, new, new_len).await?;
        let source = path_stat(caller, dir, 0, old, old_len).await?;
        if let (Some(target), Some(source)) = (target, source)
            && source.inode == target.inode
            && !target.directory
        {
            change.freed = (0, 0);
        }
    }
    Ok(Ok(change))
}

/// Replaces `$name`, which adds or removes an entry: past the path-length
/// check, `$prepare` (an [`EntryChange`], or the errno refusing the call),
/// the stock function, and the change settled by how it went.
macro_rules! entry_change {
    ($linker:ident, $name:ident, ($($arg:ident: $ty:ty),*), [$($len:ident),+],
     |$caller:ident| $prepare:expr) => {
        p1_paths_capped!($linker, $name, ($($arg: $ty),*), [$($len),+], |$caller| {
            let change = match $prepare {
                Ok(change) => change,
                Err(errno) => return Ok(errno),
            };
            let errno = stock_p1!($caller, $name, $($arg),*)?;
            Ok(change.finish(&$caller, errno))
        })
    };
}

/// Replaces wasmtime-wasi's p1 calls that grow or shrink a volume in
/// `linker` (after `limits`, whose checks these make too).
pub fn add_to_linker(linker: &mut Linker<CoreState>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        P1,
        "fd_write",
        |mut caller: Caller<'_, CoreState>, (fd, iovs, count, written): (i32, i32, i32, i32)| {
            Box::new(async move {
                let reserved = match reserve_write(&mut caller, fd, iovs, count, None).await? {
                    Ok(reserved) => reserved,
                    Err(errno) => return Ok(errno),
                };
                let errno = stock_p1!(caller, fd_write, fd, iovs, count, written)?;
                settle_write(&mut caller, reserved, errno, written);
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "fd_pwrite",
        |mut caller: Caller<'_, CoreState>,
         (fd, iovs, count, offset, written): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                let at = Some(offset as u64);
                let reserved = match reserve_write(&mut caller, fd, iovs, count, at).await? {
                    Ok(reserved) => reserved,
                    Err(errno) => return Ok(errno),
                };
                let errno = stock_p1!(caller, fd_pwrite, fd, iovs, count, offset, written)?;
                settle_write(&mut caller, reserved, errno, written);
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, CoreState>, (fd, size): (i32, i64)| {
            Box::new(async move {
                let size = size as u64;
                let mount = quota_mount(&caller, fd);
                let (old, _turn) = match mount {
                    Some(mount) => match stat_in_turn(&mut caller, fd, mount).await? {
                        Some((stat, turn)) => (Some(stat.size), turn),
                        None => (None, None),
                    },
                    None => (None, None),
                };
                let grows = old.map_or(0, |old| size.saturating_sub(old));
                if let Some(usage) = mount.and_then(|m| caller.data().host.quotas.usage(m))
                    && let Err(e) = usage.reserve(grows, 0)
                {
                    return Ok(refused(e.into()));
                }
                let size_arg = size as i64;
                let errno = stock_p1!(caller, fd_filestat_set_size, fd, size_arg)?;
                let shrinks = old.map_or(0, |old| old.saturating_sub(size));
                if errno == ERRNO_SUCCESS {
                    release(&caller, mount, (shrinks, 0));
                } else {
                    release(&caller, mount, (grows, 0));
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "fd_close",
        |mut caller: Caller<'_, CoreState>, (fd,): (i32,)| {
            Box::new(async move {
                let errno = stock_p1!(caller, fd_close, fd)?;
                if errno == ERRNO_SUCCESS {
                    caller.data_mut().p1_mounts.opened.remove(&(fd as u32));
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "fd_renumber",
        |mut caller: Caller<'_, CoreState>, (from, to): (i32, i32)| {
            Box::new(async move {
                let errno = stock_p1!(caller, fd_renumber, from, to)?;
                if errno == ERRNO_SUCCESS && from != to {
                    let opened = &mut caller.data_mut().p1_mounts.opened;
                    opened.remove(&(to as u32));
                    if let Some(mount) = opened.remove(&(from as u32)) {
                        opened.insert(to as u32, mount);
                    }
                }
                Ok(errno)
            })
        },
    )?;
    entry_change!(linker, path_create_directory, (fd: i32, path: i32, len: i32), [len],
        |caller| created(&caller, fd));
    entry_change!(
        linker,
        path_symlink,
        (old: i32, old_len: i32, fd: i32, new: i32, new_len: i32),
        [old_len, new_len],
        |caller| created(&caller, fd)
    );
    entry_change!(
        linker,
        path_link,
        (old_fd: i32, flags: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32),
        [old_len, new_len],
        |caller| if crosses_volumes(&caller, old_fd, new_fd) {
            Err(refused(Refusal::CrossVolume))
        } else {
            created(&caller, new_fd)
        }
    );
    entry_change!(linker, path_unlink_file, (fd: i32, path: i32, len: i32), [len],
        |caller| Ok::<_, i32>(removed(&mut caller, fd, path, len).await?));
    entry_change!(linker, path_remove_directory, (fd: i32, path: i32, len: i32), [len],
    |caller| Ok::<_, i32>(EntryChange {
        mount: quota_mount(&caller, fd),
        reserved: (0, 0),
        freed: (0, 1),
    }));
    entry_change!(
        linker,
        path_rename,
        (fd: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32),
        [old_len, new_len],
        |caller| renamed(&mut caller, (fd, old, old_len), (new_fd, new, new_len)).await?
    );
    linker.allow_shadowing(false);
    Ok(())
}
