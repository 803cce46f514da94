//! wasip1 core modules: WASI preview 1 plus the `wasmhost` lock imports.

use std::time::Duration;

use anyhow::Result;
use wasmtime::{
    Caller, Engine, ExternType, Instance, InstancePre, Linker, Module, Store, Val, ValType,
};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wasmtime_wasi::p1::{self, WasiP1Ctx, types};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};
use wiggle::GuestMemory;

use super::instance::{HasHost, HostState, Outputs, configure_store, until_stopped, wasi_builder};
use super::preinit::PreinitFailed;
use super::wasi::limits::{CountLimits, limit_table};
use super::wasi::quota_p1::P1Mounts;
use super::{BadModule, Invocation, Outcome, RunResult};
use crate::locks::{LockError, MAX_LOCK_PATH};
use crate::manifest::FunctionSpec;
use crate::text::escape_control;

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
    let (mut store, outputs) = new_store(prelinked, invocation, argv0, limits)?;
    let stop = configure_store(&mut store);
    let (result, stopped) = until_stopped(&stop, async {
        let instance = prelinked.pre.instantiate_async(&mut store).await?;
        start(&mut store, instance, &prelinked.entry).await
    })
    .await;
    let ran = outputs.end(store, &stop, result, stopped).await;
    Ok((ran, outputs))
}

/// A store for one instance of `prelinked`, with the invocation's WASI
/// context and limits.
fn new_store(
    prelinked: &Prelinked,
    invocation: &Invocation<'_>,
    argv0: &str,
    limits: &CountLimits,
) -> Result<(Store<CoreState>, Outputs)> {
    let host = HostState::new(invocation, limits)?;
    let (mut builder, outputs) = wasi_builder(invocation, argv0, &host.quotas)?;
    let mut state = CoreState {
        wasi: builder.build_p1(),
        host,
        p1_mounts: P1Mounts::new(invocation.mounts.len()),
    };
    limit_table(WasiView::ctx(&mut state.wasi).table, limits);
    Ok((Store::new(prelinked.pre.module().engine(), state), outputs))
}

/// Runs a reactor's `_initialize` (when `entry` asks for it), then the
/// entry; a non-zero exit code it returns is an [`wasmtime_wasi::I32Exit`].
async fn start(
    store: &mut Store<CoreState>,
    instance: Instance,
    entry: &Entry,
) -> wasmtime::Result<()> {
    if entry.initialize {
        let initialize = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
        initialize.call_async(&mut *store, ()).await?;
    }
    let code = if entry.returns_code {
        let run = instance.get_typed_func::<(), i32>(&mut *store, &entry.name)?;
        run.call_async(&mut *store, ()).await?
    } else {
        let run = instance.get_typed_func::<(), ()>(&mut *store, &entry.name)?;
        run.call_async(&mut *store, ()).await?;
        0
    };
    match code {
        0 => Ok(()),
        code => Err(wasmtime_wasi::I32Exit(code).into()),
    }
}

/// Runs `export` (after `_initialize`, for a reactor) in an instance of
/// `wasm` instrumented by wasmtime's pre-initializer, and returns the
/// module that starts where the init left off (see `preinit`). The init
/// is a [`PreinitFailed`] when it fails, exits, or leaves files open.
pub async fn initialize(
    engine: &Engine,
    wasm: &[u8],
    invocation: &Invocation<'_>,
    (argv0, limits): (&str, &CountLimits),
    export: &str,
) -> Result<Vec<u8>> {
    let mut wizer = Wizer::new();
    wizer.init_func(export).keep_init_func(true);
    let (snapshot_context, instrumented) = wizer.instrument(wasm).map_err(|e| {
        PreinitFailed::new(
            format!("the module cannot be pre-initialized: {e:#}"),
            "remove `preinit`: wasmtime's pre-initializer takes modules that import no memory, table or global and do not change tables at run time",
        )
    })?;
    let module = Module::new(engine, &instrumented)?;
    let function = FunctionSpec {
        entry: Some(export.to_owned()),
        ..invocation.function.clone()
    };
    let prelinked =
        prelink(engine, &module, &function).map_err(|e| match e.downcast::<BadModule>() {
            Ok(bad) => PreinitFailed::new(
                bad.problem.replace("`entry`", "`preinit`"),
                bad.fix.replace("`entry`", "`preinit`"),
            )
            .into(),
            Err(e) => e,
        })?;
    let (mut store, outputs) = new_store(&prelinked, invocation, argv0, limits)?;
    let stop = configure_store(&mut store);
    let (result, stopped) = until_stopped(&stop, async {
        let instance = prelinked.pre.instantiate_async(&mut store).await?;
        let before = open_handles(&mut store).await;
        start(&mut store, instance, &prelinked.entry).await?;
        Ok((
            instance,
            open_handles(&mut store).await.saturating_sub(before),
        ))
    })
    .await;
    let (instance, left_open) = match result {
        Ok(ran) => ran,
        Err(e) => {
            let ran = outputs.end(store, &stop, Err(e), stopped).await;
            return Err(init_failed(super::outcome(ran, invocation.function), &outputs).into());
        }
    };
    if left_open > 0 {
        return Err(PreinitFailed::new(
            format!("the init left {left_open} file(s) or other handle(s) open, which a snapshot cannot keep"),
            "close every file the init opens before it returns",
        )
        .into());
    }
    let mut state = InitState {
        store: &mut store,
        instance,
    };
    Ok(wizer.snapshot(&snapshot_context, &mut state).await?)
}

/// How many handles (files, directories, streams) the instance holds,
/// its stdio and preopens among them: asking for fd 0's flags first makes
/// wasmtime-wasi open those, which it does lazily, at the first WASI call.
async fn open_handles(store: &mut Store<CoreState>) -> usize {
    let wasi = &mut store.data_mut().wasi;
    let _ = wasi
        .fd_fdstat_get(&mut GuestMemory::Unshared(&mut []), types::Fd::from(0))
        .await;
    WasiView::ctx(wasi).table.iter_mut().count()
}

/// The failure of an init that did not return, with the last line it
/// wrote to stderr (a Rust panic's message, say).
fn init_failed(outcome: Outcome, outputs: &Outputs) -> PreinitFailed {
    let problem = match outcome {
        Outcome::Exited(code) => format!("the init exited (code {code}) rather than return"),
        Outcome::Failed(reason) => format!("the init failed: {reason}"),
        Outcome::Interrupted => "the init was interrupted".to_owned(),
    };
    // A Rust panic's last lines: where, then what (its "note:" left out).
    let said = match outputs {
        Outputs::Captured { stderr, .. } => {
            let stderr = String::from_utf8_lossy(&stderr.contents()).into_owned();
            let mut last: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with("note: "))
                .rev()
                .take(2)
                .collect();
            last.reverse();
            match last.is_empty() {
                true => String::new(),
                false => format!("; its stderr ends: {}", escape_control(&last.join(" "))),
            }
        }
        _ => String::new(),
    };
    PreinitFailed::new(format!("{problem}{said}"), super::preinit::FAILED_INIT_FIX)
}

/// The initialized instance, as the pre-initializer reads it.
struct InitState<'a> {
    store: &'a mut Store<CoreState>,
    instance: Instance,
}

impl InstanceState for InitState<'_> {
    async fn global_get(&mut self, name: &str, _: wasmtime_wizer::ValType) -> SnapshotVal {
        let global = self.instance.get_global(&mut *self.store, name);
        match global.map(|g| g.get(&mut *self.store)) {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            // The instrumentation exports only globals of these types.
            _ => panic!("the pre-initializer asked for global `{name}`, which is not a number"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .unwrap_or_else(|| {
                panic!("the pre-initializer asked for memory `{name}`, which is not exported")
            });
        contents(memory.data(&*self.store))
    }
}
