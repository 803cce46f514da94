//! wasip2 components: WASI preview 2 plus `wasmhost:host/lock`, and
//! `wasi:http/outgoing-handler` (see `http_view`).

use std::time::Duration;

use anyhow::Result;
use wasmtime::component::{Component, ComponentType, Linker, Lower, ResourceTable, WasmStr};
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::http_view::{self, HttpState};
use super::instance::{
    HasHost, HostState, Outputs, StopWatch, configure_store, until_stopped, wasi_builder,
};
use super::outbound::Outbound;
use super::wasi::limits::{CountLimits, limit_table};
use super::wasi::quota_p2_streams::FileStreams;
use super::{BadModule, Invocation, RunResult};
use crate::locks::{LockError, MAX_LOCK_PATH};
use crate::manifest::FunctionSpec;

wasmtime::component::bindgen!({ path: "../wit", world: "guest" });

use self::wasmhost::host::lock;

pub struct ComponentState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) host: HostState,
    pub(super) http: HttpState,
    pub(super) streams: FileStreams,
}

impl HasHost for ComponentState {
    fn host(&mut self) -> &mut HostState {
        &mut self.host
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn wit_error(error: LockError) -> lock::Error {
    match error {
        LockError::Timeout => lock::Error::Timeout,
        LockError::NotInMount => lock::Error::NotInMount,
        LockError::ReadOnly => lock::Error::ReadOnly,
        LockError::NotHeld => lock::Error::NotHeld,
        LockError::AlreadyHeld => lock::Error::AlreadyHeld,
        LockError::InvalidPath => lock::Error::InvalidPath,
        LockError::Io => lock::Error::Io,
        LockError::TooManyLocks => lock::Error::TooManyLocks,
    }
}

/// The first version of the lock interface (`wit/v0.1.0`), still served to
/// components built against it: wasmtime links an enum only if its cases
/// match exactly, so theirs cannot grow.
mod v0_1 {
    wasmtime::component::bindgen!({ path: "../wit/v0.1.0", world: "guest" });

    pub use self::wasmhost::host::lock::Error;
    use crate::locks::LockError;

    pub fn wit_error(error: LockError) -> Error {
        match error {
            LockError::Timeout => Error::Timeout,
            LockError::NotInMount => Error::NotInMount,
            LockError::ReadOnly => Error::ReadOnly,
            LockError::NotHeld => Error::NotHeld,
            LockError::AlreadyHeld => Error::AlreadyHeld,
            LockError::InvalidPath => Error::InvalidPath,
            // It has no `too-many-locks`; the failure's summary says which
            // limit it hit.
            LockError::Io | LockError::TooManyLocks => Error::Io,
        }
    }
}

/// Links a component once; every invocation instantiates from the result.
pub fn prelink(
    engine: &Engine,
    component: &Component,
    function: &FunctionSpec,
) -> Result<CommandPre<ComponentState>> {
    let pre = link(engine, component, function)?;
    CommandPre::new(pre).map_err(|e| {
        BadModule::new(
            format!("does not export `wasi:cli/run`: {e:#}"),
            "build it as a WASI command (a `main` program for wasm32-wasip2)",
        )
        .into()
    })
}

/// Links a web endpoint's component (a `wasi:http/proxy`) once; every
/// request instantiates from the result.
pub fn prelink_proxy(
    engine: &Engine,
    component: &Component,
    function: &FunctionSpec,
) -> Result<ProxyPre<ComponentState>> {
    let pre = link(engine, component, function)?;
    ProxyPre::new(pre).map_err(|e| {
        BadModule::new(
            format!("does not export `wasi:http/incoming-handler`: {e:#}"),
            "build it as a wasi:http proxy (as `wasmtime serve` runs), or remove `http` and run it as a command",
        )
        .into()
    })
}

/// WASI 0.2 with `wasi:http` (see `http_view`), the lock interface, the
/// count limits and quotas, linked to `component`.
fn link(
    engine: &Engine,
    component: &Component,
    function: &FunctionSpec,
) -> Result<wasmtime::component::InstancePre<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    http_view::add_to_linker(&mut linker)?;
    add_lock_to_linker(&mut linker, "wasmhost:host/lock@0.2.0", wit_error)?;
    add_lock_to_linker(&mut linker, "wasmhost:host/lock@0.1.0", v0_1::wit_error)?;
    super::wasi::limits::add_to_p2_linker(&mut linker)?;
    super::wasi::quota_p2::add_to_linker(&mut linker)?;
    super::wasi::quota_p2_streams::add_to_linker(&mut linker)?;
    if function.trap_unknown_imports {
        linker.define_unknown_imports_as_traps(component)?;
    }
    Ok(linker
        .instantiate_pre(component)
        .map_err(BadModule::unlinkable)?)
}

/// `wasmhost:host/lock` as `interface` names it, its errors in that
/// version's enum. By hand rather than through bindgen's `Host` trait: a
/// path is taken as a view of guest memory ([`WasmStr`]), so a huge one is
/// refused without the host ever copying it, and the waits are futures
/// that a stop abandons.
fn add_lock_to_linker<E>(
    linker: &mut Linker<ComponentState>,
    interface: &str,
    to_wit: fn(LockError) -> E,
) -> Result<()>
where
    E: ComponentType + Lower + Send + Sync + 'static,
{
    let mut lock = linker.instance(interface)?;
    lock.func_wrap_async(
        "acquire",
        move |mut store: StoreContextMut<'_, ComponentState>,
              (path, timeout_ms): (WasmStr, u64)| {
            Box::new(async move {
                let result = match lock_path(&store, &path) {
                    Ok(path) => {
                        let timeout = Duration::from_millis(timeout_ms);
                        store.data_mut().host.locks.acquire(&path, timeout).await
                    }
                    Err(e) => Err(e),
                };
                Ok((result.map_err(to_wit),))
            })
        },
    )?;
    lock.func_wrap_async(
        "try-acquire",
        move |mut store: StoreContextMut<'_, ComponentState>, (path,): (WasmStr,)| {
            Box::new(async move {
                let result = match lock_path(&store, &path) {
                    Ok(path) => store.data_mut().host.locks.try_acquire(&path).await,
                    Err(e) => Err(e),
                };
                Ok((result.map_err(to_wit),))
            })
        },
    )?;
    lock.func_wrap(
        "release",
        move |mut store: StoreContextMut<'_, ComponentState>, (path,): (WasmStr,)| {
            let result = lock_path(&store, &path)
                .and_then(|path| store.data_mut().host.locks.release(&path));
            Ok((result.map_err(to_wit),))
        },
    )?;
    Ok(())
}

/// A lock path, refused if too long before it is copied out of the guest.
fn lock_path(
    store: &StoreContextMut<'_, ComponentState>,
    path: &WasmStr,
) -> Result<String, LockError> {
    let path = path.to_str(store).map_err(|_| LockError::InvalidPath)?;
    if path.len() > MAX_LOCK_PATH {
        return Err(LockError::InvalidPath);
    }
    Ok(path.into_owned())
}

/// A fresh store for one invocation, its limits applied.
fn store(
    engine: &Engine,
    invocation: &Invocation<'_>,
    argv0: &str,
    limits: &CountLimits,
) -> Result<(Store<ComponentState>, StopWatch, Outputs)> {
    let host = HostState::new(invocation, limits)?;
    let (mut builder, outputs) = wasi_builder(invocation, argv0, &host.quotas)?;
    let outbound = Outbound::new(&invocation.function.allowed_hosts);
    outbound.grant(&mut builder);
    let mut state = ComponentState {
        wasi: builder.build(),
        table: ResourceTable::new(),
        host,
        streams: FileStreams::default(),
        http: HttpState::new(outbound),
    };
    limit_table(&mut state.table, limits);
    let mut store = Store::new(engine, state);
    let stop = configure_store(&mut store);
    Ok((store, stop, outputs))
}

/// Runs `wasi:cli/run` in a fresh instance.
pub async fn run(
    pre: &CommandPre<ComponentState>,
    invocation: &Invocation<'_>,
    argv0: &str,
    limits: &CountLimits,
) -> Result<(RunResult, Outputs)> {
    let (mut store, stop, outputs) = store(pre.engine(), invocation, argv0, limits)?;
    let (result, stopped) = until_stopped(&stop, async {
        let command: Command = pre.instantiate_async(&mut store).await?;
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .await?
            .map_err(|()| wasmtime_wasi::I32Exit(1).into())
    })
    .await;
    let ran = outputs.end(store, &stop, result, stopped).await;
    // Dropping the store aborted the tasks its HTTP requests spawned on this
    // thread's executor; one turn of it lets them go, and their connections
    // with them, rather than at the thread's next invocation.
    tokio::task::yield_now().await;
    Ok((ran, outputs))
}

/// Where a web endpoint's response goes, once the guest has set it (or
/// failed to): called at most once.
pub type Respond =
    Box<dyn FnOnce(Result<http::Response<HyperOutgoingBody>, ErrorCode>) + Send + Sync>;

/// Runs `wasi:http/incoming-handler` on `request` in a fresh instance, as
/// `wasmtime serve` does; the response goes to `respond` as soon as the
/// guest sets it, and its body streams while the guest writes it.
pub async fn serve(
    pre: &ProxyPre<ComponentState>,
    invocation: &Invocation<'_>,
    argv0: &str,
    limits: &CountLimits,
    request: http::Request<HyperOutgoingBody>,
    respond: Respond,
) -> Result<(RunResult, Outputs)> {
    let (mut store, stop, outputs) = store(pre.engine(), invocation, argv0, limits)?;
    let (result, stopped) = until_stopped(&stop, async {
        let mut http = store.data_mut().http();
        let request = http.new_incoming_request(Scheme::Http, request)?;
        let out = http.new_response_outparam_from_callback(respond)?;
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, out)
            .await
    })
    .await;
    let ran = outputs.end(store, &stop, result, stopped).await;
    Ok((ran, outputs))
}
