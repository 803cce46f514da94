//! wasip1 core modules: WASI preview 1 plus the `wasmhost` lock imports.

use std::time::Duration;

use anyhow::Result;
use wasmtime::{Caller, Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};

use super::instance::{HasHost, HostState, Outputs, configure_store, until_stopped, wasi_builder};
use super::{Invocation, RunResult};
use crate::locks::LockError;

pub struct CoreState {
    wasi: WasiP1Ctx,
    host: HostState,
    /// wasmtime-wasi's own `poll_oneoff`, for the polls `p1_sleep` does not
    /// serve itself.
    pub(super) stock_poll_oneoff: Option<super::p1_sleep::PollOneoff>,
}

impl HasHost for CoreState {
    fn host(&mut self) -> &mut HostState {
        &mut self.host
    }
}

/// Links a module once; every invocation instantiates from the result.
pub fn prelink(engine: &Engine, module: &Module) -> Result<InstancePre<CoreState>> {
    let mut linker = Linker::new(engine);
    p1::add_to_linker_async(&mut linker, |state: &mut CoreState| &mut state.wasi)?;
    super::p1_sleep::add_to_linker(&mut linker)?;
    linker.func_wrap(
        "wasmhost",
        "lock_acquire",
        |mut caller: Caller<CoreState>, ptr: i32, len: i32, timeout_ms: i64| {
            status(guest_str(&mut caller, ptr, len).and_then(|path| {
                let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
                caller.data_mut().host.locks.acquire(&path, timeout)
            }))
        },
    )?;
    linker.func_wrap(
        "wasmhost",
        "lock_try_acquire",
        |mut caller: Caller<CoreState>, ptr: i32, len: i32| {
            status(guest_str(&mut caller, ptr, len).and_then(|path| {
                match caller.data_mut().host.locks.try_acquire(&path) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(LockError::Timeout),
                    Err(e) => Err(e),
                }
            }))
        },
    )?;
    linker.func_wrap(
        "wasmhost",
        "lock_release",
        |mut caller: Caller<CoreState>, ptr: i32, len: i32| {
            status(
                guest_str(&mut caller, ptr, len)
                    .and_then(|path| caller.data_mut().host.locks.release(&path)),
            )
        },
    )?;
    Ok(linker.instantiate_pre(module)?)
}

fn status(result: Result<(), LockError>) -> i32 {
    result.map_or_else(LockError::code, |()| 0)
}

/// The UTF-8 string at `ptr..ptr+len` of the guest's exported memory.
fn guest_str(caller: &mut Caller<CoreState>, ptr: i32, len: i32) -> Result<String, LockError> {
    let memory = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or(LockError::InvalidPath)?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or(LockError::InvalidPath)?;
    let bytes = memory
        .data(&caller)
        .get(start..end)
        .ok_or(LockError::InvalidPath)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| LockError::InvalidPath)
}

/// Runs `_start` in a fresh instance.
pub async fn run(
    pre: &InstancePre<CoreState>,
    invocation: &Invocation<'_>,
    argv0: &str,
) -> Result<(RunResult, Outputs)> {
    let (mut builder, outputs) = wasi_builder(invocation, argv0)?;
    let state = CoreState {
        wasi: builder.build_p1(),
        host: HostState::new(invocation),
        stock_poll_oneoff: None,
    };
    let mut store = Store::new(pre.module().engine(), state);
    let stop = configure_store(&mut store);
    let (result, stopped) = until_stopped(&stop, async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|_| {
                wasmtime::format_err!(
                    "the module exports no `_start` function; wasmhost runs WASI commands"
                )
            })?;
        start.call_async(&mut store, ()).await
    })
    .await;
    let ran = outputs.end(store, &stop, result, stopped).await;
    Ok((ran, outputs))
}
