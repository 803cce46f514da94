//! wasip1 core modules: WASI preview 1 plus the `wasmhost` lock imports.

use std::time::Duration;

use anyhow::Result;
use wasmtime::{Caller, Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p1::{self, WasiP1Ctx};

use super::instance::{Captured, HasHost, HostState, configure_store, until_stopped, wasi_builder};
use super::wasi_limits::limit_table;
use super::{Invocation, RunResult};
use crate::locks::{LockError, MAX_LOCK_PATH};

pub struct CoreState {
    pub(super) wasi: WasiP1Ctx,
    pub(super) host: HostState,
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
    super::wasi_limits::add_to_p1_linker(&mut linker)?;
    add_locks_to_linker(&mut linker)?;
    Ok(linker.instantiate_pre(module)?)
}

/// The `wasmhost` lock imports. Waits are futures, so a stop or the
/// instance's timeout abandons them at once.
fn add_locks_to_linker(linker: &mut Linker<CoreState>) -> Result<()> {
    linker.func_wrap_async(
        "wasmhost",
        "lock_acquire",
        |mut caller: Caller<'_, CoreState>, (ptr, len, timeout_ms): (i32, i32, i64)| {
            Box::new(async move {
                let result = match guest_str(&mut caller, ptr, len) {
                    Ok(path) => {
                        let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
                        caller.data_mut().host.locks.acquire(&path, timeout).await
                    }
                    Err(e) => Err(e),
                };
                Ok(status(result))
            })
        },
    )?;
    linker.func_wrap_async(
        "wasmhost",
        "lock_try_acquire",
        |mut caller: Caller<'_, CoreState>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                let result = match guest_str(&mut caller, ptr, len) {
                    Ok(path) => caller.data_mut().host.locks.try_acquire(&path).await,
                    Err(e) => Err(e),
                };
                Ok(status(result.and_then(|taken| {
                    taken.then_some(()).ok_or(LockError::Timeout)
                })))
            })
        },
    )?;
    linker.func_wrap(
        "wasmhost",
        "lock_release",
        |mut caller: Caller<'_, CoreState>, ptr: i32, len: i32| {
            status(
                guest_str(&mut caller, ptr, len)
                    .and_then(|path| caller.data_mut().host.locks.release(&path)),
            )
        },
    )?;
    Ok(())
}

fn status(result: Result<(), LockError>) -> i32 {
    result.map_or_else(LockError::code, |()| 0)
}

/// The UTF-8 string at `ptr..ptr+len` of the guest's exported memory,
/// refused before it is copied if longer than a lock path may be.
fn guest_str(caller: &mut Caller<CoreState>, ptr: i32, len: i32) -> Result<String, LockError> {
    let len = len as u32 as usize;
    if len > MAX_LOCK_PATH {
        return Err(LockError::InvalidPath);
    }
    let memory = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or(LockError::InvalidPath)?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len).ok_or(LockError::InvalidPath)?;
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
) -> Result<(RunResult, Option<Captured>)> {
    let (mut builder, captured) = wasi_builder(invocation, argv0)?;
    let mut state = CoreState {
        wasi: builder.build_p1(),
        host: HostState::new(invocation),
        stock_poll_oneoff: None,
    };
    limit_table(WasiView::ctx(&mut state.wasi).table, invocation.function);
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
    Ok((store.data().host.finish(result, stopped), captured))
}
