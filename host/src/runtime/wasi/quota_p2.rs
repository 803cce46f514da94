//! The quota shims for wasip2 components (see `quota` for what they keep):
//! `descriptor` methods that write, resize, create and remove; the output
//! streams a descriptor hands out for writing (what wasi-libc's `write`
//! uses) are `quota_p2_streams`'.
//!
//! A stream write past the quota fails with `last-operation-failed`, its
//! error's `filesystem-error-code` being `insufficient-space`; but the
//! wasi-libc that Rust's and C's wasip2 programs link today reports every
//! failed stream write as EIO, so such a program sees EIO for a plain
//! `write` (and ENOSPC for `pwrite`, `ftruncate` and creates).
//!
//! `add_to_linker` is one long list, one registration a shimmed method,
//! each a few lines that hand over to its shim: split up, it would read
//! no better.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::StoreContextMut;
use wasmtime::component::{self, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor};

use super::limits::{FILESYSTEM_TYPES, MAX_PATH, p2_result};
use super::quota::{FileTurn, Refusal, freed_by, growth};
use crate::runtime::component::ComponentState;

fn error_code(refusal: Refusal) -> fs::ErrorCode {
    match refusal {
        Refusal::NoSpace => fs::ErrorCode::InsufficientSpace,
        Refusal::CrossVolume => fs::ErrorCode::CrossDevice,
    }
}

fn borrow(fd: &Resource<fs::Descriptor>) -> Resource<fs::Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// The host file or directory behind a descriptor.
fn host_file(state: &ComponentState, fd: &Resource<fs::Descriptor>) -> Option<Arc<std::fs::File>> {
    match state.table.get(fd).ok()? {
        Descriptor::File(file) => Some(file.file.clone()),
        Descriptor::Dir(dir) => Some(dir.dir.clone()),
    }
}

/// Whether a descriptor may change what it is or holds: not one opened
/// beneath a read-only mount, whose calls wasmtime-wasi refuses first.
fn writable(state: &ComponentState, fd: &Resource<fs::Descriptor>) -> bool {
    match state.table.get(fd) {
        Ok(Descriptor::File(file)) => !file.perms.write_not_permitted(),
        Ok(Descriptor::Dir(dir)) => !dir.perms.write_not_permitted(),
        Err(_) => false,
    }
}

/// The mount of a descriptor, if it may write one that keeps usage.
pub(super) fn quota_mount(state: &ComponentState, fd: &Resource<fs::Descriptor>) -> Option<usize> {
    if !writable(state, fd) {
        return None;
    }
    let file = host_file(state, fd)?;
    let mount = state.host.quotas.mount_of(file.as_fd())?;
    state.host.quotas.usage(mount).map(|_| mount)
}

pub(super) fn reserve(
    state: &ComponentState,
    mount: usize,
    bytes: u64,
    files: u64,
) -> Result<(), Refusal> {
    match state.host.quotas.usage(mount) {
        Some(usage) => Ok(usage.reserve(bytes, files)?),
        None => Ok(()),
    }
}

fn release(state: &ComponentState, mount: Option<usize>, (bytes, files): (u64, u64)) {
    if let Some(usage) = mount.and_then(|m| state.host.quotas.usage(m)) {
        usage.release(bytes, files);
    }
}

/// The size of the file behind `fd`, measured in its turn (see
/// `VolumeQuotas::file_turn`) when it is in `mount`, with whether it is
/// unlinked.
fn size_in_turn(
    state: &ComponentState,
    fd: &Resource<fs::Descriptor>,
    mount: Option<usize>,
) -> impl Future<Output = (u64, bool, Option<FileTurn>)> + Send + use<> {
    let file = host_file(state, fd);
    let meta = move || file.as_ref().and_then(|f| f.metadata().ok());
    let turn = match (mount, meta()) {
        (Some(mount), Some(first)) => Some(state.host.quotas.file_turn(mount, first.ino())),
        _ => None,
    };
    async move {
        let turn = match turn {
            Some(turn) => turn.await,
            None => None,
        };
        // Within the turn: another writer may have changed it before.
        let meta = meta();
        let size = meta.as_ref().map_or(0, |m| m.len());
        (size, meta.is_some_and(|m| m.nlink() == 0), turn)
    }
}

/// What removing or replacing `path` under `dir` gives back, if it exists.
async fn freed_at(
    state: &mut ComponentState,
    dir: &Resource<fs::Descriptor>,
    path: &str,
) -> Option<(u64, u64)> {
    let stat = state
        .filesystem()
        .stat_at(borrow(dir), fs::PathFlags::empty(), path.to_owned())
        .await
        .ok()?;
    Some(freed_by(
        stat.type_ == fs::DescriptorType::RegularFile,
        stat.link_count,
        stat.size,
    ))
}

/// `open-at` past the open-files check: counts a file it creates and gives
/// back what `truncate` frees.
pub async fn open_at(
    state: &mut ComponentState,
    dir: Resource<fs::Descriptor>,
    path_flags: fs::PathFlags,
    path: String,
    open_flags: fs::OpenFlags,
    flags: fs::DescriptorFlags,
) -> wasmtime::Result<(Result<Resource<fs::Descriptor>, fs::ErrorCode>,)> {
    let mount = quota_mount(state, &dir);
    let mut created = None;
    let mut freed = (0, 0);
    if mount.is_some() && open_flags.intersects(fs::OpenFlags::CREATE | fs::OpenFlags::TRUNCATE) {
        let existing = state
            .filesystem()
            .stat_at(borrow(&dir), path_flags, path.clone())
            .await;
        match existing {
            Err(_) if open_flags.contains(fs::OpenFlags::CREATE) => {
                if let Err(refusal) = reserve(state, mount.unwrap_or_default(), 0, 1) {
                    return Ok((Err(error_code(refusal)),));
                }
                created = mount;
            }
            Ok(stat)
                if open_flags.contains(fs::OpenFlags::TRUNCATE)
                    && stat.type_ == fs::DescriptorType::RegularFile =>
            {
                freed = (stat.size, 0);
            }
            _ => {}
        }
    }
    let result = p2_result(
        state
            .filesystem()
            .open_at(dir, path_flags, path, open_flags, flags)
            .await,
    )?;
    match &result.0 {
        Ok(_) => release(state, mount, freed),
        Err(_) => release(state, created, (0, 1)),
    }
    Ok(result)
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
    fn finish(self, state: &ComponentState, succeeded: bool) {
        release(
            state,
            self.mount,
            if succeeded { self.freed } else { self.reserved },
        );
    }
}

/// A new entry under `dir`: one file reserved.
fn created(state: &ComponentState, dir: &Resource<fs::Descriptor>) -> Result<EntryChange, Refusal> {
    Ok(EntryChange {
        mount: reserve_new(state, dir)?,
        reserved: (0, 1),
        freed: (0, 0),
    })
}

/// `path` under `dir` removed: what it held comes back.
async fn removed(
    state: &mut ComponentState,
    dir: &Resource<fs::Descriptor>,
    path: &str,
) -> EntryChange {
    let mount = quota_mount(state, dir);
    let freed = match mount {
        Some(_) => freed_at(state, dir, path).await.unwrap_or_default(),
        None => (0, 0),
    };
    EntryChange {
        mount,
        reserved: (0, 0),
        freed,
    }
}

/// `old` renamed to `new`: what `new` held comes back (unless it is
/// another name of the same file, which makes the rename change nothing).
async fn renamed(
    state: &mut ComponentState,
    dir: &Resource<fs::Descriptor>,
    old: &str,
    new_dir: &Resource<fs::Descriptor>,
    new: &str,
) -> Result<EntryChange, Refusal> {
    if crosses_volumes(state, dir, new_dir) {
        return Err(Refusal::CrossVolume);
    }
    let mut change = removed(state, new_dir, new).await;
    if change.freed == (0, 1) && same_file(state, dir, old, new_dir, new).await {
        change.freed = (0, 0);
    }
    Ok(change)
}

/// Replaces `[method]descriptor.$wit`, which adds or removes an entry:
/// `name-too-long` for a path past `MAX_PATH`, then `$prepare` (an
/// [`EntryChange`], or the refusal), wasmtime-wasi's own `$method`, and the
/// change settled by how it went.
macro_rules! entry_change {
    ($types:ident, $wit:literal, $method:ident, $dir:ident, ($($arg:ident: $ty:ty),*),
     [$($path:ident),+], |$state:ident| $prepare:expr) => {
        $types.func_wrap_async(
            concat!("[method]descriptor.", $wit),
            |mut store: StoreContextMut<'_, ComponentState>,
             ($dir, $($arg,)*): (Resource<fs::Descriptor>, $($ty,)*)| {
                Box::new(async move {
                    if $($path.len() > MAX_PATH)||+ {
                        return Ok((Err(fs::ErrorCode::NameTooLong),));
                    }
                    let $state = store.data_mut();
                    let change = match $prepare {
                        Ok(change) => change,
                        Err(refusal) => return Ok((Err(error_code(refusal)),)),
                    };
                    let result = p2_result($state.filesystem().$method($dir, $($arg),*).await)?;
                    change.finish($state, result.0.is_ok());
                    Ok(result)
                })
            },
        )?;
    };
}

/// Replaces wasmtime-wasi's calls that grow or shrink a volume in a
/// component linker (after `limits`, whose path checks these make too).
pub fn add_to_linker(linker: &mut component::Linker<ComponentState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, buffer, offset): (Resource<fs::Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let mount = quota_mount(state, &fd);
                let (size, unlinked, _turn) = size_in_turn(state, &fd, mount).await;
                let len = buffer.len() as u64;
                let grows = growth(size, offset, len);
                if let Some(mount) = mount {
                    if let Err(refusal) = reserve(state, mount, grows, 0) {
                        return Ok((Err(error_code(refusal)),));
                    }
                    if unlinked && let Some(usage) = state.host.quotas.usage(mount) {
                        usage.mark_stale();
                    }
                }
                let result = p2_result(state.filesystem().write(fd, buffer, offset).await)?;
                let written = result.0.as_ref().map_or(0, |n| *n);
                if let Some(usage) = mount.and_then(|m| state.host.quotas.usage(m)) {
                    usage.settle(grows, growth(size, offset, written));
                }
                Ok(result)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, size): (Resource<fs::Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let mount = quota_mount(state, &fd);
                let (old, _, _turn) = size_in_turn(state, &fd, mount).await;
                let grows = size.saturating_sub(old);
                if let Some(mount) = mount
                    && let Err(refusal) = reserve(state, mount, grows, 0)
                {
                    return Ok((Err(error_code(refusal)),));
                }
                let result = p2_result(state.filesystem().set_size(fd, size).await)?;
                match result.0 {
                    Ok(()) => release(state, mount, (old.saturating_sub(size), 0)),
                    Err(_) => release(state, mount, (grows, 0)),
                }
                Ok(result)
            })
        },
    )?;
    entry_change!(types, "create-directory-at", create_directory_at, dir, (path: String), [path],
        |state| created(state, &dir));
    entry_change!(types, "symlink-at", symlink_at, dir, (old: String, new: String), [old, new],
        |state| created(state, &dir));
    entry_change!(
        types,
        "link-at",
        link_at,
        dir,
        (flags: fs::PathFlags, old: String, new_dir: Resource<fs::Descriptor>, new: String),
        [old, new],
        |state| if crosses_volumes(state, &dir, &new_dir) {
            Err(Refusal::CrossVolume)
        } else {
            created(state, &new_dir)
        }
    );
    entry_change!(types, "unlink-file-at", unlink_file_at, dir, (path: String), [path],
        |state| Ok(removed(state, &dir, &path).await));
    entry_change!(types, "remove-directory-at", remove_directory_at, dir, (path: String), [path],
    |state| Ok(EntryChange {
        mount: quota_mount(state, &dir),
        freed: (0, 1),
        reserved: (0, 0),
    }));
    entry_change!(
        types,
        "rename-at",
        rename_at,
        dir,
        (old: String, new_dir: Resource<fs::Descriptor>, new: String),
        [old, new],
        |state| renamed(state, &dir, &old, &new_dir, &new).await
    );
    linker.allow_shadowing(false);
    Ok(())
}

/// Whether a rename or link between two descriptors is refused as
/// crossing volumes: only between writable ones (see
/// `VolumeQuotas::crosses_volumes`), told by the descriptors' own
/// permissions, since a read-only and a writable mount of one volume both
/// reach its files.
fn crosses_volumes(
    state: &ComponentState,
    a: &Resource<fs::Descriptor>,
    b: &Resource<fs::Descriptor>,
) -> bool {
    if !writable(state, a) || !writable(state, b) {
        return false;
    }
    let quotas = &state.host.quotas;
    let mount = |fd| host_file(state, fd).and_then(|f| quotas.mount_of(f.as_fd()));
    match (mount(a), mount(b)) {
        (Some(a), Some(b)) => quotas.crosses_volumes(a, b),
        _ => false,
    }
}

/// Reserves one new entry under `dir`.
fn reserve_new(
    state: &ComponentState,
    dir: &Resource<fs::Descriptor>,
) -> Result<Option<usize>, Refusal> {
    let Some(mount) = quota_mount(state, dir) else {
        return Ok(None);
    };
    reserve(state, mount, 0, 1).map(|()| Some(mount))
}

async fn same_file(
    state: &mut ComponentState,
    dir: &Resource<fs::Descriptor>,
    old: &str,
    new_dir: &Resource<fs::Descriptor>,
    new: &str,
) -> bool {
    let mut fs = state.filesystem();
    let flags = fs::PathFlags::empty();
    let a = fs
        .metadata_hash_at(borrow(dir), flags, old.to_owned())
        .await;
    let b = fs
        .metadata_hash_at(borrow(new_dir), flags, new.to_owned())
        .await;
    matches!((a, b), (Ok(a), Ok(b)) if a.lower == b.lower && a.upper == b.upper)
}
