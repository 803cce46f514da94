//! Preparing a call once, whoever makes it (`wasmhost run` and `call`, a
//! node's claimed and immediate calls, a web request): the function of a
//! live app, its program, its mounts, its secrets and its concurrency
//! slots, gathered here into one [`Prepared`], which then runs any number
//! of invocations, each ending in one [`Ended`].
//!
//! Where the program comes from is the caller's: the CLI compiles one for
//! the process and says what is wrong with a bad module in app.toml's
//! terms, a node keeps one per module in a cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::slots::{Slot, Slots};
use super::{Ended, Stop, StopFlag};
use crate::apps::LiveApp;
use crate::file_store;
use crate::home::Home;
use crate::manifest::FunctionSpec;
use crate::mount::Mount;
use crate::registry::{AppKind, Registries, Registry};
use crate::runtime::{
    Finished, InitContext, Invocation, Output, OutputLog, Program, Respond, Stdin,
};
use crate::secrets;

/// Most bytes of stdout (and of stderr) kept of an invocation whose output
/// is captured: a `--map` input, a WAGI request.
pub const CAPTURE_LIMIT: usize = 16 << 20;

/// Where preparing a call reads the registry, only when it must (most
/// functions have no secrets): a process's own connection, or a node's
/// pool.
pub enum RegistryAccess<'a> {
    Own(&'a mut Registry),
    Pool(&'a Registries),
}

impl RegistryAccess<'_> {
    fn with<T>(&mut self, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        match self {
            RegistryAccess::Own(registry) => f(registry),
            RegistryAccess::Pool(registries) => registries.with_sync(f),
        }
    }
}

/// A function of a live app, ready to invoke: everything its invocations
/// share.
pub struct Prepared {
    home: Home,
    live: Arc<LiveApp>,
    function: String,
    program: Arc<Program>,
    mounts: Vec<Mount>,
    /// The variables of the function's `secrets` (never recorded).
    secrets: BTreeMap<String, String>,
    /// The function's `concurrency` across processes, for a deployed app
    /// (only a deployed app is called from several processes).
    slots: Option<Slots>,
    /// The `files` trees its mounts show, held so that no clean-up removes
    /// them while it may start instances (see `file_store::hold`).
    _trees: Vec<std::fs::File>,
}

/// Why a call got no concurrency slot.
pub enum NoSlot {
    Stopped(Stop),
    /// They stayed busy until the deadline.
    Busy,
    /// Waiting failed (a slot file could not be opened).
    Failed(anyhow::Error),
}

/// A concurrency slot held for one invocation (or none, for a function
/// without a `concurrency`), given back when dropped.
pub struct Held {
    _slot: Option<Slot>,
}

impl Prepared {
    pub fn new(
        home: &Home,
        live: Arc<LiveApp>,
        function: &str,
        program: Arc<Program>,
        mut registry: RegistryAccess,
    ) -> Result<Self> {
        let spec = &live.manifest.functions[function];
        let mut trees = Vec::new();
        for files in &spec.files {
            let Some(tree) = &files.tree else {
                anyhow::bail!(
                    "the files shipped at `{}` were never stored; deploy the app again",
                    files.guest_path
                );
            };
            let fetch = || registry.with(|r| file_store::fetch(home, r, tree));
            trees.push(file_store::hold(home, tree, fetch)?);
        }
        let secrets = match spec.secrets.is_empty() {
            true => BTreeMap::new(),
            false => registry.with(|r| secrets::environment(home, r, &spec.secrets))?,
        };
        let mounts = live.mounts(home, function);
        // A `preinit` runs here when its snapshot is not cached yet (the
        // first `run`, a cleared cache, another machine's deploy).
        let program = program.initialized(&InitContext {
            home,
            function: spec,
            mounts: &mounts,
            secrets: &secrets,
        })?;
        let slots = spec
            .concurrency
            .filter(|_| live.record.kind == AppKind::Deployed)
            .map(|n| Slots::new(home, &live.record.id, function, n))
            .transpose()?;
        Ok(Self {
            home: home.clone(),
            mounts,
            function: function.to_owned(),
            live,
            program,
            secrets,
            slots,
            _trees: trees,
        })
    }

    pub fn live(&self) -> &LiveApp {
        &self.live
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.live.manifest.functions[&self.function]
    }

    /// Whether the function is a web endpoint's `wasi:http` component (see
    /// [`Prepared::serve_http`]).
    pub fn is_http_component(&self) -> bool {
        self.program.is_http_component()
    }

    /// A concurrency slot, waiting for one until `deadline` (or as long as
    /// it takes) unless the call is stopped first.
    pub fn acquire(&self, stop: &StopFlag, deadline: Option<Instant>) -> Result<Held, NoSlot> {
        let Some(slots) = &self.slots else {
            return Ok(Held { _slot: None });
        };
        match slots.acquire_until(stop.flag(), deadline) {
            Ok(Some(slot)) => Ok(Held { _slot: Some(slot) }),
            Ok(None) => match stop.cause() {
                Some(why) => Err(NoSlot::Stopped(why)),
                None if stop.is_stopped() => Err(NoSlot::Stopped(Stop::Signal)),
                None => Err(NoSlot::Busy),
            },
            Err(e) => Err(NoSlot::Failed(e)),
        }
    }

    /// One invocation, with `held` or once a slot is free: where every
    /// instance starts, whoever asked for it.
    fn invoke(
        &self,
        held: Option<Held>,
        call: &Call,
        output: Output,
        stdin: Option<Stdin>,
        run: impl FnOnce(&Program, &Invocation) -> Finished,
    ) -> (Ended, [Vec<u8>; 2]) {
        let _held = match held.map_or_else(|| self.acquire(call.stop, None), Ok) {
            Ok(held) => held,
            Err(no) => {
                let ended = match no {
                    NoSlot::Stopped(why) => Ended::Stopped(why),
                    NoSlot::Busy => Ended::Stopped(Stop::Signal),
                    NoSlot::Failed(e) => {
                        Ended::Failed(format!("could not wait for a concurrency slot: {e:#}"))
                    }
                };
                return (ended, Default::default());
            }
        };
        let invocation = Invocation {
            home: &self.home,
            function: self.spec(),
            mounts: &self.mounts,
            args: call.args,
            secrets: &self.secrets,
            env: call.env,
            output,
            stdin,
            cancelled: call.stop.flag().clone(),
        };
        let finished = run(&self.program, &invocation);
        let ended = Ended::of(&finished, call.stop.cause());
        (ended, [finished.stdout, finished.stderr])
    }

    /// One invocation with stdio streamed, and copied to `copy`.
    pub fn run_streamed(&self, call: &Call, copy: Option<Arc<OutputLog>>) -> Ended {
        let output = Output::Inherit { copy };
        self.invoke(None, call, output, None, Program::invoke).0
    }

    /// One invocation whose output goes only to `log`.
    pub fn run_logged(&self, call: &Call, log: Arc<OutputLog>) -> Ended {
        self.invoke(None, call, Output::Log(log), None, Program::invoke)
            .0
    }

    /// One invocation reading `stdin`, its stdout and stderr kept in memory
    /// up to [`CAPTURE_LIMIT`] bytes each: a `--map` input, a WAGI request.
    pub fn run_captured(
        &self,
        held: Option<Held>,
        call: &Call,
        stdin: Option<Stdin>,
    ) -> (Ended, [Vec<u8>; 2]) {
        let output = Output::Capture {
            limit: CAPTURE_LIMIT,
        };
        self.invoke(held, call, output, stdin, Program::invoke)
    }

    /// One web request to a `wasi:http` component, its stdout and stderr
    /// going to `log` (see `Program::serve_http`).
    pub fn serve_http(
        &self,
        held: Option<Held>,
        call: &Call,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        respond: Respond,
        log: Arc<OutputLog>,
    ) -> Ended {
        let serve = |program: &Program, invocation: &Invocation| {
            program.serve_http(invocation, request, respond)
        };
        self.invoke(held, call, Output::Log(log), None, serve).0
    }
}

/// What one invocation has of its own.
pub struct Call<'a> {
    /// After the function's `args`.
    pub args: &'a [String],
    /// Over the function's `env` and its secrets.
    pub env: &'a BTreeMap<String, String>,
    pub stop: &'a StopFlag,
}
