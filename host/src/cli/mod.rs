//! The `wasmhost` command line: one module per command group, each holding
//! its clap arguments and an `execute` over the library.

mod app;
mod cache;
mod call;
mod calls;
mod confirm;
mod deploy;
mod invoke;
mod logging;
mod nodes;
pub mod output;
mod remote;
mod run;
mod secret;
mod serve;
mod volume;

use std::path::Path;

use anyhow::Result;
use clap::{Parser, Subcommand};
use wasmhost::error::{ErrorKind, Refusal};
use wasmhost::home::Home;
use wasmhost::housekeeping;
use wasmhost::manifest::{self, FunctionKey, FunctionSpec};
use wasmhost::registry::Registry;
use wasmhost::runtime::{BadModule, Program, Runtime};
use wasmhost::volumes;

/// Serverless WebAssembly functions with shared, lockable volumes.
#[derive(Parser)]
#[command(name = "wasmhost", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where state lives; the same on every machine of a cluster, but for
/// `--volumes`, which is where this machine mounts the shared file system.
#[derive(clap::Args)]
pub struct StateArgs {
    /// This machine's state directory [env: WASMHOST_HOME; default ~/.wasmhost].
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<std::path::PathBuf>,
    /// The registry: a postgres://USER@HOST:PORT/DATABASE URL for a cluster
    /// [env: WASMHOST_DB; default SQLite in the home].
    #[arg(long, global = true, value_name = "URL")]
    db: Option<String>,
    /// Where the cluster's shared file system is mounted on this machine,
    /// which holds the volumes [env: WASMHOST_VOLUMES; default the home].
    #[arg(long, global = true, value_name = "DIR")]
    volumes: Option<std::path::PathBuf>,
}

impl StateArgs {
    /// Passes the options on as the variables they stand for, which the
    /// library reads (`Home::locate`) and the processes it starts inherit.
    pub fn export(self) {
        // SAFETY: called first thing in `main`, before any thread starts.
        unsafe {
            if let Some(home) = self.home {
                std::env::set_var("WASMHOST_HOME", home);
            }
            if let Some(db) = self.db {
                std::env::set_var("WASMHOST_DB", db);
            }
            if let Some(volumes) = self.volumes {
                std::env::set_var("WASMHOST_VOLUMES", volumes);
            }
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Start an ephemeral app, invoke one function, stop the app.
    Run(run::RunArgs),
    /// Register (or update) a deployed app that stays until `app stop`.
    Deploy(deploy::DeployArgs),
    /// Invoke a function of a deployed app.
    Call(call::CallArgs),
    /// List, show and cancel the recorded calls of deployed apps.
    #[command(subcommand)]
    Calls(calls::CallsCommand),
    /// List and stop apps; show their calls' output.
    #[command(subcommand)]
    App(app::AppCommand),
    /// Manage named volumes and their files.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Named sets of environment variables, sealed at rest, for functions' `secrets`.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Run a node: serve deployed apps' queued calls and the HTTP API.
    Serve(serve::ServeArgs),
    /// The nodes serving this home, or every machine's in a cluster.
    #[command(subcommand)]
    Nodes(nodes::NodesCommand),
    /// The compiled-module cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Empties the trash; started in the background by other commands.
    #[command(hide = true)]
    InternalPurgeTrash,
}

/// Sends the library's diagnostics where `command`'s reader wants them.
pub fn install_logging(command: &Command) {
    match command {
        Command::Serve(args) => logging::install_for_node(args.log_format()),
        _ => logging::install_for_command(),
    }
}

/// Runs a command; returns the process exit code.
pub fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::InternalPurgeTrash => {
            volumes::purge_trash(&Home::from_env()?)?;
            Ok(0)
        }
        Command::Run(args) => run::execute(args),
        Command::Deploy(args) => deploy::execute(args),
        Command::Call(args) => call::execute(args),
        Command::Calls(command) => calls::execute(command),
        Command::App(command) => app::execute(command),
        Command::Volume(command) => volume::execute(command),
        Command::Cache(command) => cache::execute(command),
        Command::Secret(command) => secret::execute(command),
        Command::Serve(args) => serve::execute(args),
        Command::Nodes(command) => nodes::execute(command),
    }
}

fn usage(message: String) -> anyhow::Error {
    Refusal::new(ErrorKind::Invalid, message).into()
}

/// Opens `$WASMHOST_HOME` and its registry, after cleaning up what dead
/// processes left behind.
fn open_state() -> Result<(Home, Registry)> {
    let home = Home::from_env()?;
    let mut registry = Registry::open(&home.registry())?;
    for app in housekeeping::run(&home, &mut registry)? {
        eprintln!(
            "note: cleaned up app `{}` ({}), whose process died",
            app.name, app.id
        );
    }
    Ok((home, registry))
}

/// Compiles a function's module from `file` (a deployed app's snapshot of
/// its `module`, or `module` itself). A module wasmtime refuses is bad input,
/// reported at the function's `module` (or `entry`) in `app_toml` (app.toml,
/// function) when there is one at hand; failing to store it in the cache is
/// not.
fn load_program(
    runtime: &Runtime,
    file: &Path,
    spec: &FunctionSpec,
    app_toml: Option<(&Path, &str)>,
) -> Result<Program> {
    runtime.load(file, spec).map_err(|e| {
        let Some(bad) = e.downcast_ref::<BadModule>() else {
            return e;
        };
        let problem = format!("module {} {}", spec.module.display(), bad.problem);
        match app_toml {
            Some((file, function)) if bad.at_entry => {
                manifest::key_error(file, function, FunctionKey::Entry, problem, &bad.fix).into()
            }
            Some((file, function)) => {
                manifest::module_error(file, function, problem, &bad.fix).into()
            }
            None => usage(format!("{problem}; fix: {}", bad.fix)),
        }
    })
}
