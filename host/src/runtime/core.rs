//! wasip1 core modules: WASI preview 1 plus the `wasmhost` lock imports.

use std::time::Duration;

use anyhow::Result;
use wasmtime::{Caller, Engine, ExternType, InstancePre, Linker, Module, Store, ValType};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p1::{self, WasiP1Ctx};

use super::instance::{HasHost, HostState, Outputs, configure_store, until_stopped, wasi_builder};
use super::wasi::limits::{CountLimits, limit_table};
use super::wasi::quota_p1::P1Mounts;
use super::{BadModule, Invocation, RunResult};
use crate::locks::{LockError, MAX_LOCK_PATH};
use crate::manifest::FunctionSpec;

pub struct CoreState {
    pub(super) wasi: WasiP1Ctx,
    pub(super) host: HostState,
    pub(super) p1_mounts: P1Mounts,
}

impl HasHost for CoreState {
    fn host(&mut self) -> &mut HostState {
        &mut self.host
    }
}

/// A module linked once, with the export it runs; every invocation
/// instantiates from it.
pub struct Prelinked {
    pre: InstancePre<CoreState>,
    entry: Entry,
}

/// How an instance is started: a command's `_start`, or a reactor's
/// `_initialize` (when it has one) and then its `entry` export.
struct Entry {
    name: String,
    initialize: bool,
    /// The export returns an i32 exit code (as reactors' `run` do).
    returns_code: bool,
}

/// Links a module once, refusing (with a [`BadModule`]) imports wasmhost
/// does not provide and an `entry` the module does not export.
pub fn prelink(engine: &Engine, module: &Module, function: &FunctionSpec) -> Result<Prelinked> {
    let entry = entry(module, function.entry.as_deref())?;
    let mut linker = Linker::new(engine);
    p1::add_to_linker_async(&mut linker, |state: &mut CoreState| &mut state.wasi)?;
    super::wasi::p1_sleep::add_to_linker(&mut linker)?;
    super::wasi::limits::add_to_p1_linker(&mut linker)?;
    super::wasi::quota_p1::add_to_linker(&mut linker)?;
    add_locks_to_linker(&mut linker)?;
    if function.trap_unknown_imports {
        linker.define_unknown_imports_as_traps(module)?;
    }
    let pre = linker
        .instantiate_pre(module)
        .map_err(BadModule::unlinkable)?;
    Ok(Prelinked { pre, entry })
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

/// The export to run: `entry`, else `_start`, checked against the module's
/// exports so that a wrong one is reported before anything runs.
fn entry(module: &Module, entry: Option<&str>) -> Result<Entry, BadModule> {
    let runnable = |name: &str| match module.get_export(name) {
        Some(ExternType::Func(ty)) if ty.params().len() == 0 => {
            match ty.results().collect::<Vec<_>>()[..] {
                [] => Some(false),
                [ValType::I32] => Some(true),
                _ => None,
            }
        }
        _ => None,
    };
    let name = entry.unwrap_or("_start");
    if let Some(returns_code) = runnable(name) {
        return Ok(Entry {
            name: name.to_owned(),
            initialize: name != "_start" && runnable("_initialize") == Some(false),
            returns_code,
        });
    }
    let candidates: Vec<String> = module
        .exports()
        .map(|e| e.name())
        .filter(|name| *name != "_initialize" && runnable(name).is_some())
        .map(|name| format!("`{name}`"))
        .collect();
    let choose = if candidates.is_empty() {
        "build it as a WASI command (a program with `main`), or export a function without parameters that returns nothing or an i32 exit code and name it in `entry`".to_owned()
    } else {
        format!("set `entry` to one of {}", candidates.join(", "))
    };
    Err(match entry {
        Some(name) => BadModule {
            problem: match module.get_export(name) {
                Some(_) => format!(
                    "exports `{name}`, but not as a function without parameters that returns nothing or an i32 exit code"
                ),
                None => format!("has no export `{name}`"),
            },
            fix: choose,
            at_entry: true,
        },
        None if runnable("_initialize").is_some() => BadModule::new(
            "exports no `_start`: it is a reactor (it exports `_initialize`), not a command",
            format!("{choose} under the function in app.toml, to run after `_initialize`"),
        ),
        None => BadModule::new("exports no `_start` function", choose),
    })
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

/// Runs the module's entry in a fresh instance.
pub async fn run(
    prelinked: &Prelinked,
    invocation: &Invocation<'_>,
    argv0: &str,
    limits: &CountLimits,
) -> Result<(RunResult, Outputs)> {
    let host = HostState::new(invocation, limits)?;
    let (mut builder, outputs) = wasi_builder(invocation, argv0, &host.quotas)?;
    let mut state = CoreState {
        wasi: builder.build_p1(),
        host,
        p1_mounts: P1Mounts::new(invocation.mounts.len()),
    };
    let (pre, entry) = (&prelinked.pre, &prelinked.entry);
    limit_table(WasiView::ctx(&mut state.wasi).table, limits);
    let mut store = Store::new(pre.module().engine(), state);
    let stop = configure_store(&mut store);
    let (result, stopped) = until_stopped(&stop, async {
        let instance = pre.instantiate_async(&mut store).await?;
        if entry.initialize {
            let initialize = instance.get_typed_func::<(), ()>(&mut store, "_initialize")?;
            initialize.call_async(&mut store, ()).await?;
        }
        let code = if entry.returns_code {
            let run = instance.get_typed_func::<(), i32>(&mut store, &entry.name)?;
            run.call_async(&mut store, ()).await?
        } else {
            let run = instance.get_typed_func::<(), ()>(&mut store, &entry.name)?;
            run.call_async(&mut store, ()).await?;
            0
        };
        match code {
            0 => Ok(()),
            code => Err(wasmtime_wasi::I32Exit(code).into()),
        }
    })
    .await;
    let ran = outputs.end(store, &stop, result, stopped).await;
    Ok((ran, outputs))
}
