//! wasip2 components: WASI preview 2 plus `wasmhost:host/lock`.

use std::time::Duration;

use anyhow::Result;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::instance::{HasHost, HostState, Outputs, configure_store, until_stopped, wasi_builder};
use super::{Invocation, RunResult};
use crate::locks::LockError;

wasmtime::component::bindgen!({ path: "../wit", world: "guest" });

use self::wasmhost::host::lock;

pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    host: HostState,
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

impl lock::Host for ComponentState {
    fn acquire(&mut self, path: String, timeout_ms: u64) -> Result<(), lock::Error> {
        self.host
            .locks
            .acquire(&path, Duration::from_millis(timeout_ms))
            .map_err(wit_error)
    }

    fn try_acquire(&mut self, path: String) -> Result<bool, lock::Error> {
        self.host.locks.try_acquire(&path).map_err(wit_error)
    }

    fn release(&mut self, path: String) -> Result<(), lock::Error> {
        self.host.locks.release(&path).map_err(wit_error)
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
    }
}

/// Links a component once; every invocation instantiates from the result.
pub fn prelink(engine: &Engine, component: &Component) -> Result<CommandPre<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    lock::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
    Ok(CommandPre::new(linker.instantiate_pre(component)?)?)
}

/// Runs `wasi:cli/run` in a fresh instance.
pub async fn run(
    pre: &CommandPre<ComponentState>,
    invocation: &Invocation<'_>,
    argv0: &str,
) -> Result<(RunResult, Outputs)> {
    let (mut builder, outputs) = wasi_builder(invocation, argv0)?;
    let state = ComponentState {
        wasi: builder.build(),
        table: ResourceTable::new(),
        host: HostState::new(invocation),
    };
    let mut store = Store::new(pre.engine(), state);
    let stop = configure_store(&mut store);
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
    Ok((ran, outputs))
}
