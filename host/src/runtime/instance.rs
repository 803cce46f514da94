//! What every instance has, whatever its kind: WASI context, limits, locks,
//! and the reason it was stopped, if it was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{Invocation, Output};
use crate::locks::InstanceLocks;

/// The most table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Why the host ended an instance early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Timeout,
    Interrupted,
}

/// Host-side state of one instance.
pub struct HostState {
    pub limits: Limits,
    pub locks: InstanceLocks,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
    pub stopped: Option<StopReason>,
}

/// Store data that carries a [`HostState`].
pub trait HasHost: Send + 'static {
    fn host(&mut self) -> &mut HostState;
}

/// The memory cap, remembering whether the guest ran into it so a trap that
/// follows a failed allocation can be reported as what it is.
pub struct Limits {
    pub memory_cap: Option<u64>,
    pub memory_cap_hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.memory_cap.is_some_and(|cap| desired as u64 > cap) {
            self.memory_cap_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Captured output of one invocation, when it is not streamed.
pub struct Captured {
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

impl HostState {
    pub fn new(invocation: &Invocation) -> Self {
        let deadline = Instant::now() + invocation.function.timeout;
        Self {
            limits: Limits {
                memory_cap: invocation.function.memory,
                memory_cap_hit: false,
            },
            locks: InstanceLocks::new(
                invocation.home,
                invocation.mounts,
                invocation.cancelled.clone(),
                deadline,
            ),
            deadline,
            cancelled: invocation.cancelled.clone(),
            stopped: None,
        }
    }
}

/// The WASI context of an invocation: args, env, mounts as preopens, stdio.
pub fn wasi_builder(
    invocation: &Invocation,
    argv0: &str,
) -> Result<(WasiCtxBuilder, Option<Captured>)> {
    let mut builder = WasiCtxBuilder::new();
    builder.allow_blocking_current_thread(true);
    builder.arg(argv0);
    builder.args(&invocation.function.args);
    builder.args(invocation.args);
    for (key, value) in &invocation.function.env {
        builder.env(key, value);
    }
    for mount in invocation.mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder.preopened_dir(&mount.host_dir, &mount.guest_path, perms)?;
    }
    let captured = match invocation.output {
        Output::Inherit => {
            builder.inherit_stdio();
            None
        }
        Output::Capture { limit } => {
            let captured = Captured {
                stdout: MemoryOutputPipe::new(limit),
                stderr: MemoryOutputPipe::new(limit),
            };
            builder.stdout(captured.stdout.clone());
            builder.stderr(captured.stderr.clone());
            Some(captured)
        }
    };
    Ok((builder, captured))
}

/// Applies limits and interruption to a fresh store.
pub fn configure_store<T: HasHost>(store: &mut Store<T>) {
    store.limiter(|state| &mut state.host().limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        let host = context.data_mut().host();
        if host.cancelled.load(Ordering::Relaxed) {
            host.stopped = Some(StopReason::Interrupted);
            Ok(UpdateDeadline::Interrupt)
        } else if Instant::now() >= host.deadline {
            host.stopped = Some(StopReason::Timeout);
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Continue(1))
        }
    });
}
