//! What every instance has, whatever its kind: WASI context, limits, locks,
//! and the reason it was stopped, if it was.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::fair::CpuTime;
use super::stdio::Streamed;
use super::wasi::limits::CountLimits;
use super::wasi::quota::VolumeQuotas;
use super::{EPOCH_TICK, Invocation, Output, RunResult};
use crate::locks::InstanceLocks;

/// The most table elements an instance may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

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
    pub quotas: VolumeQuotas,
    watch: StopWatch,
    pub stopped: Option<StopReason>,
    /// How long it has run wasm, for its share of the CPU.
    cpu: CpuTime,
}

/// Store data that carries a [`HostState`].
pub trait HasHost: Send + 'static {
    fn host(&mut self) -> &mut HostState;
}

/// The memory cap and the open-files limit, remembering whether the guest
/// ran into them so a failure that follows can be reported as what it is.
pub struct Limits {
    pub memory_cap: Option<u64>,
    pub memory_cap_hit: bool,
    pub max_open_files: usize,
    pub open_files_hit: bool,
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

/// Where an invocation's output went.
pub enum Outputs {
    /// To the process's stdout and stderr, through the writer thread.
    Streamed(Arc<Streamed>),
    /// Kept in memory.
    Captured {
        stdout: MemoryOutputPipe,
        stderr: MemoryOutputPipe,
    },
    /// To an `OutputLog`, which never makes the guest wait.
    Logged,
}

impl Outputs {
    /// Ends an instance whose call has returned: its store goes first, and
    /// with it its locks; then, within the same deadline, the process waits
    /// for what the guest wrote to be written out.
    pub async fn end<T: HasHost>(
        &self,
        mut store: Store<T>,
        watch: &StopWatch,
        result: wasmtime::Result<()>,
        stopped: Option<StopReason>,
    ) -> RunResult {
        let ran = store.data_mut().host().finish(result, stopped);
        drop(store);
        let Self::Streamed(streamed) = self else {
            return ran;
        };
        if ran.stopped.is_some() {
            return ran;
        }
        match until_stopped(watch, async {
            streamed.written().await;
            Ok(())
        })
        .await
        {
            (_, None) => ran,
            (_, Some(reason)) => RunResult {
                result: Err(wasmtime::format_err!("stopped while writing its output")),
                stopped: Some(reason),
                ..ran
            },
        }
    }
}

impl HostState {
    pub fn new(invocation: &Invocation, counts: &CountLimits) -> Result<Self> {
        let deadline = Instant::now() + invocation.function.timeout;
        Ok(Self {
            limits: Limits {
                memory_cap: invocation.function.memory,
                memory_cap_hit: false,
                max_open_files: counts.open_files,
                open_files_hit: false,
            },
            locks: InstanceLocks::new(invocation.home, invocation.mounts, counts.locks),
            quotas: VolumeQuotas::open(invocation)?,
            watch: StopWatch {
                cancelled: invocation.cancelled.clone(),
                deadline,
            },
            stopped: None,
            cpu: CpuTime::default(),
        })
    }
}

/// The WASI context of an invocation: args, env, mounts as preopens (the
/// directories a `sub_path` makes counted in `quotas`), stdio.
pub fn wasi_builder(
    invocation: &Invocation,
    argv0: &str,
    quotas: &VolumeQuotas,
) -> Result<(WasiCtxBuilder, Outputs)> {
    let mut builder = WasiCtxBuilder::new();
    builder.allow_blocking_current_thread(true);
    // No network unless the function's `allowed_hosts` grant it (to
    // components, in `component::run`; wasip1 has no sockets to grant).
    builder.allow_tcp(false).allow_udp(false);
    // WASI passes each as a C string: a wasip1 guest would see one cut at
    // a NUL, a wasip2 guest whole.
    let args = invocation.function.args.iter().chain(invocation.args);
    if let Some(arg) = args.clone().find(|arg| arg.contains('\0')) {
        anyhow::bail!(
            "argument `{}` holds a NUL byte, which WASI cannot pass to a guest",
            arg.escape_debug()
        );
    }
    if let Some((key, _)) = invocation.environment().find(|(_, v)| v.contains('\0')) {
        anyhow::bail!("the value of `{key}` holds a NUL byte, which WASI cannot pass to a guest");
    }
    builder.arg(argv0);
    for arg in args {
        builder.arg(arg);
    }
    for (key, value) in invocation.environment() {
        builder.env(key, value);
    }
    for (index, mount) in invocation.mounts.iter().enumerate() {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        match &mount.sub_path {
            None => builder.preopened_dir(&mount.host_dir, &mount.guest_path, perms)?,
            Some(sub_path) => {
                // Opened by descriptor, then preopened through the
                // descriptor's own /proc entry: the directory already
                // reached, not a path resolved again.
                let dir = mount.open_sub_path(sub_path, quotas.volume_usage(index))?;
                let path = format!("/proc/self/fd/{}", dir.fd().as_raw_fd());
                builder.preopened_dir(path, &mount.guest_path, perms)?
            }
        };
    }
    if let Some(stdin) = &invocation.stdin {
        builder.stdin(stdin.clone());
    }
    let outputs = match &invocation.output {
        Output::Inherit { copy } => {
            let streamed = Streamed::new(copy.clone());
            let (stdout, stderr) = streamed.streams();
            builder.inherit_stdin().stdout(stdout).stderr(stderr);
            Outputs::Streamed(streamed)
        }
        Output::Capture { limit } => {
            let (stdout, stderr) = (MemoryOutputPipe::new(*limit), MemoryOutputPipe::new(*limit));
            builder.stdout(stdout.clone()).stderr(stderr.clone());
            Outputs::Captured { stdout, stderr }
        }
        Output::Log(log) => {
            let (stdout, stderr) = log.streams();
            builder.stdout(stdout).stderr(stderr);
            Outputs::Logged
        }
    };
    Ok((builder, outputs))
}

/// When an instance must stop: its app was stopped, or its deadline passed.
#[derive(Clone)]
pub struct StopWatch {
    cancelled: Arc<AtomicBool>,
    deadline: Instant,
}

impl StopWatch {
    fn reason(&self) -> Option<StopReason> {
        if self.cancelled.load(Ordering::Relaxed) {
            Some(StopReason::Interrupted)
        } else if Instant::now() >= self.deadline {
            Some(StopReason::Timeout)
        } else {
            None
        }
    }

    /// Resolves once the instance must stop.
    async fn requested(&self) -> StopReason {
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            tokio::time::sleep(EPOCH_TICK).await;
        }
    }
}

/// Applies limits and interruption to a fresh store. Epoch interruption
/// stops a guest running wasm code; the returned watch is for
/// [`until_stopped`], which stops one waiting in a host call.
pub fn configure_store<T: HasHost>(store: &mut Store<T>) -> StopWatch {
    store.limiter(|state| &mut state.host().limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        let host = context.data_mut().host();
        host.cpu.tick();
        match host.watch.reason() {
            Some(reason) => {
                host.stopped = Some(reason);
                Ok(UpdateDeadline::Interrupt)
            }
            None => Ok(UpdateDeadline::Continue(1)),
        }
    });
    store.data_mut().host().watch.clone()
}

/// Drives `call` until it ends or the instance must stop. A guest blocked in
/// a host call (a long sleep, a read of stdin) is not running wasm, so epoch
/// interruption cannot reach it; dropping its future here abandons the call,
/// and wasmtime unwinds the instance's fiber.
pub async fn until_stopped<T>(
    watch: &StopWatch,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> (wasmtime::Result<T>, Option<StopReason>) {
    tokio::select! {
        biased;
        result = call => (result, None),
        reason = watch.requested() => {
            (Err(wasmtime::format_err!("stopped while in a host call")), Some(reason))
        }
    }
}

impl HostState {
    /// How the instance ended: a stop seen by the epoch callback or by
    /// [`until_stopped`], and which of its limits it ran into.
    pub fn finish(&self, result: wasmtime::Result<()>, stopped: Option<StopReason>) -> RunResult {
        RunResult {
            result,
            stopped: self.stopped.or(stopped),
            memory_cap_hit: self.limits.memory_cap_hit,
            open_files_hit: self.limits.open_files_hit,
            locks_hit: self.locks.limit_hit(),
        }
    }
}
