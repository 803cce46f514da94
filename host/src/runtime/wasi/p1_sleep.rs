//! wasip1's `poll_oneoff`, made abandonable when it is a plain sleep.
//!
//! wasmhost lets WASI block the instance's own thread, which makes volume
//! I/O about three times faster than hopping to a thread pool. But with that
//! allowed, wasmtime-wasi serves a lone relative-clock subscription (what a
//! guest's `sleep` compiles to) with `std::thread::sleep`, which no timeout
//! or `app stop` can cut short. This serves that one case with a timer future,
//! which `instance::until_stopped` can drop, and hands every other poll to
//! wasmtime-wasi's own `poll_oneoff`.

use std::time::Duration;

use anyhow::Result;
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1 as _};
use wiggle::GuestMemory;

use crate::runtime::core::CoreState;

const MODULE: &str = "wasi_snapshot_preview1";
const NAME: &str = "poll_oneoff";
/// Layout of `subscription` and `event` in wasi_snapshot_preview1.witx.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const TAG_CLOCK: u8 = 0;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;

/// Replaces `poll_oneoff` in a linker that already has wasmtime-wasi's.
pub fn add_to_linker(linker: &mut Linker<CoreState>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        NAME,
        |mut caller: Caller<'_, CoreState>,
         (subs, events, count, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                let Some((userdata, duration)) = lone_relative_sleep(&mut caller, subs, count)
                else {
                    return stock_poll_oneoff(&mut caller, subs, events, count, nevents).await;
                };
                tokio::time::sleep(duration).await;
                let mut event = [0u8; EVENT_SIZE];
                event[..8].copy_from_slice(&userdata.to_le_bytes());
                // error = success (0), type = clock (0); nbytes = 1 as
                // wasmtime-wasi reports it.
                event[16..24].copy_from_slice(&1u64.to_le_bytes());
                let written = write(&mut caller, events, &event)
                    .and_then(|()| write(&mut caller, nevents, &1u32.to_le_bytes()));
                Ok(if written.is_some() {
                    ERRNO_SUCCESS
                } else {
                    ERRNO_FAULT
                })
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// wasmtime-wasi's own `poll_oneoff`, called as its linker entry calls it:
/// on the guest's memory, with the store's host-call fuel (which bounds what
/// the host copies on the guest's behalf).
async fn stock_poll_oneoff(
    caller: &mut Caller<'_, CoreState>,
    subs: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let export = caller.get_export("memory");
    let (mut memory, state) = match &export {
        Some(Extern::Memory(memory)) => {
            let (data, state) = memory.data_and_store_mut(&mut *caller);
            (GuestMemory::Unshared(data), state)
        }
        Some(Extern::SharedMemory(memory)) => {
            (GuestMemory::Shared(memory.data()), caller.data_mut())
        }
        _ => wasmtime::bail!("missing required memory export"),
    };
    state.wasi.set_hostcall_fuel(fuel);
    p1::poll_oneoff(&mut state.wasi, &mut memory, subs, events, count, nevents).await
}

/// The userdata and length of a poll that is exactly one relative clock.
fn lone_relative_sleep(
    caller: &mut Caller<'_, CoreState>,
    subs: i32,
    count: i32,
) -> Option<(u64, Duration)> {
    if count != 1 {
        return None;
    }
    let memory = caller.get_export("memory")?.into_memory()?;
    let start = subs as u32 as usize;
    let sub = memory
        .data(&caller)
        .get(start..start.checked_add(SUBSCRIPTION_SIZE)?)?;
    let u64_at = |at: usize| u64::from_le_bytes(sub[at..at + 8].try_into().unwrap());
    let flags = u16::from_le_bytes([sub[40], sub[41]]);
    (sub[8] == TAG_CLOCK && flags & SUBCLOCKFLAGS_ABSTIME == 0)
        .then(|| (u64_at(0), Duration::from_nanos(u64_at(24))))
}

fn write(caller: &mut Caller<'_, CoreState>, at: i32, bytes: &[u8]) -> Option<()> {
    let memory = caller.get_export("memory")?.into_memory()?;
    memory.write(caller, at as u32 as usize, bytes).ok()
}
