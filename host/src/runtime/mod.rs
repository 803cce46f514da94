//! The engine, the module cache, linking and instance limits.
//!
//! One engine per process; one compiled, pre-linked program per function,
//! shared by every invocation of it; one store and instance per invocation.

mod cache;
mod component;
mod core;
mod instance;
mod p1_sleep;
mod wasi_limits;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, InstancePre, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;

pub use cache::CacheInfo;
use cache::{Compiled, ModuleCache};
use instance::StopReason;

use crate::apps::Mount;
use crate::home::Home;
use crate::manifest::FunctionSpec;
use crate::manifest::units::{format_duration, format_size};

/// How often the epoch advances: the granularity of timeouts and stops.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A module wasmtime refuses to compile or link: bad input (exit 2), not a
/// runtime failure. Reads after the module's name: "does not compile: ...".
#[derive(Debug)]
pub struct BadModule(pub String);

impl std::fmt::Display for BadModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadModule {}

pub struct Runtime {
    engine: Engine,
    cache: ModuleCache,
}

/// The most instances at once that get the pooling allocator: its slots
/// reserve address space up front, 4 GiB and more for each memory.
const MAX_POOLED_INSTANCES: usize = 256;

impl Runtime {
    /// An engine for up to `instances_at_once` concurrent instances: with
    /// more than one (`--map`), instances come from a pool of slots whose
    /// memory stays mapped between invocations.
    pub fn new(home: &Home, instances_at_once: usize) -> Result<Self> {
        wasi_limits::raise_descriptor_limit();
        let mut config = Config::new();
        config.epoch_interruption(true);
        if (2..=MAX_POOLED_INSTANCES).contains(&instances_at_once) {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
                instances_at_once as u32,
            )));
        }
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;
        let ticker = engine.weak();
        std::thread::spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
        let cache = ModuleCache::new(home.cache_dir(), &engine);
        Ok(Self { engine, cache })
    }

    /// Compiles (or loads from the cache) and pre-links a module.
    pub fn load(&self, module: &Path) -> Result<Program> {
        let argv0 = module
            .file_name()
            .map_or_else(|| "main.wasm".into(), |n| n.to_string_lossy().into_owned());
        let bad = |e: anyhow::Error| BadModule(format!("cannot be linked: {e:#}"));
        let linked = match self.cache.load(&self.engine, module)? {
            Compiled::Core(module) => {
                Linked::Core(core::prelink(&self.engine, &module).map_err(bad)?)
            }
            Compiled::Component(component) => {
                Linked::Component(component::prelink(&self.engine, &component).map_err(bad)?)
            }
        };
        Ok(Program { linked, argv0 })
    }

    pub fn cache_info(&self) -> Result<CacheInfo> {
        self.cache.info()
    }

    pub fn clear_cache(&self) -> Result<usize> {
        self.cache.clear()
    }
}

/// Slots for `n` instances at once. A component instance holds several core
/// instances, memories and tables (the program, the WASI adapter, shims),
/// hence the multipliers. Resetting the first pages of a memory or stack
/// with memset, keeping them resident, rather than madvise and fault them
/// in again is what makes tiny invocations cheap (3x faster `--map`).
fn pool(n: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(8 * n)
        .total_memories(2 * n)
        .total_tables(8 * n)
        .total_stacks(n)
        .table_elements(instance::MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(2 << 20)
        .async_stack_keep_resident(512 << 10)
        .table_keep_resident(64 << 10);
    pool
}

enum Linked {
    Core(InstancePre<core::CoreState>),
    Component(CommandPre<component::ComponentState>),
}

/// A compiled, linked function ready to instantiate any number of times,
/// from any number of threads.
pub struct Program {
    linked: Linked,
    argv0: String,
}

/// Where an invocation's stdout and stderr go.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// Streamed to wasmhost's own stdout and stderr (and stdin passed in).
    Inherit,
    /// Kept in memory, at most `limit` bytes each; past that the guest's
    /// writes fail, so a flooding guest cannot exhaust host memory.
    Capture { limit: usize },
}

/// One call of a function.
pub struct Invocation<'a> {
    pub home: &'a Home,
    pub function: &'a FunctionSpec,
    pub mounts: &'a [Mount],
    /// The invocation's own arguments, after the function's `args`.
    pub args: &'a [String],
    pub output: Output,
    /// Set to stop the instance (app stopped, Ctrl-C).
    pub cancelled: Arc<AtomicBool>,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited with this code (0 when `_start` returned).
    Exited(i32),
    /// The guest did not finish: a one-line reason.
    Failed(String),
    /// Stopped from outside (app stopped, Ctrl-C).
    Interrupted,
}

pub struct Finished {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

struct RunResult {
    result: wasmtime::Result<()>,
    stopped: Option<StopReason>,
    memory_cap_hit: bool,
    /// The guest was refused an open for `max_open_files`.
    open_files_hit: bool,
    /// The guest was refused a lock for `max_locks`.
    locks_hit: bool,
}

impl RunResult {
    /// ", after it hit its limit of …" for each count limit the guest ran
    /// into, to follow a failure that the refusal likely caused.
    fn limits_note(&self, function: &FunctionSpec) -> String {
        let hit: Vec<String> = [
            (
                self.open_files_hit,
                function.max_open_files,
                "open files",
                "max_open_files",
            ),
            (self.locks_hit, function.max_locks, "locks", "max_locks"),
        ]
        .into_iter()
        .filter(|(hit, ..)| *hit)
        .map(|(_, limit, what, key)| {
            format!("its limit of {limit} {what} (the function's `{key}`)")
        })
        .collect();
        if hit.is_empty() {
            String::new()
        } else {
            format!(", after it hit {}", hit.join(" and "))
        }
    }
}

thread_local! {
    /// Each thread that invokes drives its instances on its own
    /// single-threaded executor: instances are futures only so that a stop
    /// or timeout can abandon a host call (see `instance::until_stopped`).
    static EXECUTOR: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start an executor for WebAssembly instances");
}

impl Program {
    /// Runs one invocation to its end on the calling thread.
    pub fn invoke(&self, invocation: &Invocation) -> Finished {
        let ran = EXECUTOR.with(|executor| {
            executor.block_on(async {
                match &self.linked {
                    Linked::Core(pre) => core::run(pre, invocation, &self.argv0).await,
                    Linked::Component(pre) => component::run(pre, invocation, &self.argv0).await,
                }
            })
        });
        let (outcome, captured) = match ran {
            Ok((run, captured)) => {
                let note = run.limits_note(invocation.function);
                let outcome = match (outcome(run, invocation.function), invocation.output) {
                    // Under --map the exit code goes no further than the
                    // summary, which can say why: a guest refused a file or
                    // a lock often exits non-zero over it.
                    (Outcome::Exited(code), Output::Capture { .. })
                        if code != 0 && !note.is_empty() =>
                    {
                        Outcome::Failed(format!("exited with code {code}{note}"))
                    }
                    (Outcome::Failed(reason), _) => Outcome::Failed(format!("{reason}{note}")),
                    (outcome, _) => outcome,
                };
                (outcome, captured)
            }
            Err(e) => (
                Outcome::Failed(format!("cannot start the instance: {e:#}")),
                None,
            ),
        };
        let (stdout, stderr) = captured.map_or_else(Default::default, |c| {
            (c.stdout.contents().to_vec(), c.stderr.contents().to_vec())
        });
        // A guest whose writes start failing at the cap often dies of it (a
        // Rust guest panics); say so, or the reason reads like a plain bug.
        let outcome = match (outcome, invocation.output) {
            (Outcome::Failed(reason), Output::Capture { limit })
                if stdout.len() >= limit || stderr.len() >= limit =>
            {
                Outcome::Failed(format!(
                    "{reason}, after its output reached the {} that --map keeps of each invocation's stdout and stderr",
                    format_size(limit as u64)
                ))
            }
            (outcome, _) => outcome,
        };
        Finished {
            outcome,
            stdout,
            stderr,
        }
    }
}

fn outcome(run: RunResult, function: &FunctionSpec) -> Outcome {
    let error = match run.result {
        Ok(()) => return Outcome::Exited(0),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Outcome::Exited(exit.0);
    }
    let cause = error.root_cause().to_string();
    let cause = cause.lines().next().unwrap_or_default();
    match run.stopped {
        Some(StopReason::Interrupted) => Outcome::Interrupted,
        Some(StopReason::Timeout) => Outcome::Failed(format!(
            "timed out after {} (the function's `timeout`)",
            format_duration(function.timeout)
        )),
        None if run.memory_cap_hit => Outcome::Failed(format!(
            "ran out of memory: it hit its limit of {} (the function's `memory`) and then {cause}",
            format_size(function.memory.unwrap_or_default())
        )),
        None => Outcome::Failed(format!("trapped: {cause}")),
    }
}
