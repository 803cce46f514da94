//! Pre-initialized snapshots (`preinit`, SPEC section 5): a function's
//! init export runs once, and every call starts from a snapshot of the
//! instance it left (memory and globals, made by wasmtime's pre-initializer,
//! `wasmtime-wizer`), so start-up work is paid once rather than per call.
//!
//! The snapshot is a cached artifact, made where it is first needed (at
//! deploy, at the first `run`, or at a call that finds none) and keyed by
//! everything the init could have read: the module's bytes, the `preinit`
//! spec, the function's `args`, `env` and secrets, its mounts and the trees
//! of its `files`, and the engine. A change of any of them makes a new one;
//! volumes' contents are not in the key (an init that reads a volume sees
//! it as it was when the snapshot was made).
//!
//! The init runs as a call does, with these differences: every mount is
//! read-only (a write fails in the guest), it has no network (wasip1 has no
//! sockets to grant), no `--env` and no stdin, and it must leave no file
//! open (a descriptor in the snapshot would name nothing in the next
//! instance): one that does is refused, naming how many.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use wasmtime::Engine;

use super::cache::{Compiled, ModuleCache};
use super::wasi::limits::CountLimits;
use super::{EXECUTOR, Invocation, Linked, Output, Program, core};
use crate::digest::sha256_hex;
use crate::home::Home;
use crate::manifest::{FunctionSpec, Preinit};
use crate::mount::Mount;

/// Bumped when how a snapshot is made changes, so that older ones are
/// not used.
const FORMAT: u32 = 1;

/// Most bytes of stdout and of stderr kept of an init, for its error.
const INIT_OUTPUT_LIMIT: usize = 1 << 20;

/// What a function's init runs with: the function as deployed, its mounts
/// (volumes, then `files`) and the variables of its secrets.
pub struct InitContext<'a> {
    pub home: &'a Home,
    pub function: &'a FunctionSpec,
    pub mounts: &'a [Mount],
    pub secrets: &'a BTreeMap<String, String>,
}

/// An init that failed or was refused: what the guest did, and the fix.
#[derive(Debug)]
pub struct PreinitFailed {
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for PreinitFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for PreinitFailed {}

impl PreinitFailed {
    pub(super) fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// A function with a `preinit` before its snapshot is made: what making
/// it takes, and the last program made, by its key (one context per
/// prepared function, so one is enough).
pub(super) struct Pending {
    pub(super) engine: Engine,
    pub(super) cache: ModuleCache,
    pub(super) module: PathBuf,
    pub(super) argv0: String,
    pub(super) limits: CountLimits,
    pub(super) made: Mutex<Option<(String, Arc<Program>)>>,
}

impl Pending {
    /// The program that starts from the snapshot of `context`'s init:
    /// loaded from the cache, or made by running the init.
    pub(super) fn program(&self, context: &InitContext) -> Result<Arc<Program>> {
        let preinit = context
            .function
            .preinit
            .as_ref()
            .context("the function has no `preinit`")?;
        let key = self.key(context, preinit)?;
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_key, program)) = made.as_ref()
            && *made_key == key
        {
            return Ok(program.clone());
        }
        let snapshot = self
            .cache
            .snapshot(&key, || self.initialize(context, preinit))?;
        let Compiled::Core(module) = self.cache.load(&self.engine, &snapshot)? else {
            anyhow::bail!("the snapshot {} is not a core module", snapshot.display());
        };
        let program = Arc::new(Program {
            linked: Linked::Core(core::prelink(&self.engine, &module, context.function)?),
            argv0: self.argv0.clone(),
            limits: self.limits,
        });
        *made = Some((key, program.clone()));
        Ok(program)
    }

    /// Everything the init could have read, hashed: see the module header.
    fn key(&self, context: &InitContext, preinit: &Preinit) -> Result<String> {
        let function = context.function;
        let (module, _) = self.cache.digest(&self.module)?;
        let secrets: BTreeMap<&String, String> = context
            .secrets
            .iter()
            .map(|(name, value)| (name, sha256_hex(value.as_bytes())))
            .collect();
        // Which trees, not where they came from; volumes by their keys, as
        // each `run` makes its ephemeral volumes anew.
        let files: Vec<(&str, Option<&str>)> = function
            .files
            .iter()
            .map(|f| (f.guest_path.as_str(), f.tree.as_deref()))
            .collect();
        let what = serde_json::json!({
            "format": FORMAT,
            "module": module,
            "engine": self.cache.engine_hash(),
            "preinit": preinit,
            "args": function.args,
            "env": function.env,
            "secrets": secrets,
            "mounts": function.mounts,
            "files": files,
            "memory": function.memory,
            "trap_unknown_imports": function.trap_unknown_imports,
        });
        Ok(sha256_hex(what.to_string().as_bytes()))
    }

    /// Runs the init in an instance of the module and returns the
    /// snapshot of what it left.
    fn initialize(&self, context: &InitContext, preinit: &Preinit) -> Result<Vec<u8>> {
        tracing::info!(
            "pre-initializing {} (`{}`; once: later starts load the snapshot from the cache)",
            context.function.module.display(),
            preinit.export
        );
        let wasm = std::fs::read(&self.module)
            .with_context(|| format!("cannot read module {}", self.module.display()))?;
        let function = FunctionSpec {
            args: preinit
                .args
                .clone()
                .unwrap_or_else(|| context.function.args.clone()),
            ..context.function.clone()
        };
        let mounts: Vec<Mount> = context
            .mounts
            .iter()
            .map(|m| Mount {
                read_only: true,
                ..m.clone()
            })
            .collect();
        let no_env = BTreeMap::new();
        let invocation = Invocation {
            home: context.home,
            function: &function,
            mounts: &mounts,
            args: &[],
            secrets: context.secrets,
            env: &no_env,
            output: Output::Capture {
                limit: INIT_OUTPUT_LIMIT,
            },
            stdin: None,
            cancelled: Arc::new(AtomicBool::new(false)),
        };
        EXECUTOR.with(|executor| {
            executor.block_on(core::initialize(
                &self.engine,
                &wasm,
                &invocation,
                (&self.argv0, &self.limits),
                &preinit.export,
            ))
        })
    }
}

/// The fix to suggest for an init that failed in the guest.
pub(super) const FAILED_INIT_FIX: &str = "make the init succeed as it runs at deploy: with the function's env, args and secrets, every mount read-only, no network, no stdin";
