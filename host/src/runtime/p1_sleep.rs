//! wasip1's `poll_oneoff`, made abandonable when it is a plain sleep.
//!
//! wasmhost lets WASI block the instance's own thread, which makes volume
//! I/O about three times faster than hopping to a thread pool. But with that
//! allowed, wasmtime-wasi serves a lone relative-clock subscription (what a
//! guest's `sleep` compiles to) with `std::thread::sleep`, which no timeout
//! or `app stop` can cut short. This serves that one case with a timer future,
//! which `instance::until_stopped` can drop, and hands every other poll to
//! wasmtime-wasi's own `poll_oneoff`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use wasmtime::{Caller, Extern, Instance, Linker, Module, TypedFunc};

use super::core::CoreState;

const MODULE: &str = "wasi_snapshot_preview1";
const NAME: &str = "poll_oneoff";
/// Layout of `subscription` and `event` in wasi_snapshot_preview1.witx.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const TAG_CLOCK: u8 = 0;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;

/// wasmtime-wasi's own `poll_oneoff` reads the guest's memory through its
/// caller, so it cannot be called from the host directly; this module calls
/// it on the guest's behalf:
///
/// ```wat
/// (module
///   (import "env" "memory" (memory 0))
///   (import "wasi_snapshot_preview1" "poll_oneoff"
///     (func $poll (param i32 i32 i32 i32) (result i32)))
///   (export "memory" (memory 0))
///   (func (export "poll_oneoff") (param i32 i32 i32 i32) (result i32)
///     local.get 0 local.get 1 local.get 2 local.get 3 call $poll))
/// ```
const TRAMPOLINE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x09, 0x01, 0x60, 0x04, 0x7f, 0x7f, 0x7f,
    0x7f, 0x01, 0x7f, 0x02, 0x34, 0x02, 0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72,
    0x79, 0x02, 0x00, 0x00, 0x16, 0x77, 0x61, 0x73, 0x69, 0x5f, 0x73, 0x6e, 0x61, 0x70, 0x73, 0x68,
    0x6f, 0x74, 0x5f, 0x70, 0x72, 0x65, 0x76, 0x69, 0x65, 0x77, 0x31, 0x0b, 0x70, 0x6f, 0x6c, 0x6c,
    0x5f, 0x6f, 0x6e, 0x65, 0x6f, 0x66, 0x66, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00, 0x07, 0x18, 0x02,
    0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x0b, 0x70, 0x6f, 0x6c, 0x6c, 0x5f, 0x6f,
    0x6e, 0x65, 0x6f, 0x66, 0x66, 0x00, 0x01, 0x0a, 0x0e, 0x01, 0x0c, 0x00, 0x20, 0x00, 0x20, 0x01,
    0x20, 0x02, 0x20, 0x03, 0x10, 0x00, 0x0b,
];

/// `poll_oneoff` as the guest imports it.
pub type PollOneoff = TypedFunc<(i32, i32, i32, i32), i32>;

/// What the replacement needs to reach wasmtime-wasi's `poll_oneoff`: the
/// linker that defines it, and the trampoline, compiled on first use (most
/// guests only ever sleep).
struct Stock {
    linker: Linker<CoreState>,
    trampoline: OnceLock<Module>,
}

/// Replaces `poll_oneoff` in a linker that already has wasmtime-wasi's.
pub fn add_to_linker(linker: &mut Linker<CoreState>) -> Result<()> {
    let stock = Arc::new(Stock {
        linker: linker.clone(),
        trampoline: OnceLock::new(),
    });
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        NAME,
        move |mut caller: Caller<'_, CoreState>,
              (subs, events, count, nevents): (i32, i32, i32, i32)| {
            let stock = Arc::clone(&stock);
            Box::new(async move {
                let Some((userdata, duration)) = lone_relative_sleep(&mut caller, subs, count)
                else {
                    let poll = stock_poll_oneoff(&mut caller, &stock).await?;
                    return poll
                        .call_async(&mut caller, (subs, events, count, nevents))
                        .await;
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

/// wasmtime-wasi's `poll_oneoff`, reached through a trampoline instance
/// made once per store and bound to the guest's memory.
async fn stock_poll_oneoff(
    caller: &mut Caller<'_, CoreState>,
    stock: &Stock,
) -> wasmtime::Result<PollOneoff> {
    if let Some(poll) = &caller.data().stock_poll_oneoff {
        return Ok(poll.clone());
    }
    let memory = caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| wasmtime::format_err!("missing required memory export"))?;
    let poll = stock.linker.get(&mut *caller, MODULE, NAME)?;
    let engine = caller.engine().clone();
    let trampoline = stock.trampoline.get_or_init(|| {
        Module::new(&engine, TRAMPOLINE).expect("the poll_oneoff trampoline is valid wasm")
    });
    let instance = Instance::new_async(&mut *caller, trampoline, &[memory.into(), poll]).await?;
    let poll = instance.get_typed_func(&mut *caller, NAME)?;
    caller.data_mut().stock_poll_oneoff = Some(poll.clone());
    Ok(poll)
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
