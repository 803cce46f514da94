//! The `wasmhost` command line: clap types and a thin layer over the library.

mod commands;
mod confirm;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wasmhost::error::UsageError;
use wasmhost::manifest::{self, ManifestError};
use wasmhost::text::escape_control;

/// Serverless WebAssembly functions with shared, lockable volumes.
#[derive(Parser)]
#[command(name = "wasmhost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an ephemeral app, invoke one function, stop the app.
    Run {
        /// The app's app.toml.
        app: PathBuf,
        /// The function to invoke (default: `entrypoint`, else the only one).
        function: Option<String>,
        #[command(flatten)]
        invoke: InvokeArgs,
    },
    /// Register (or update) a deployed app that stays until `app stop`.
    Deploy {
        /// The app's app.toml.
        app: PathBuf,
        /// Interrupt running calls that use a volume the update deletes.
        #[arg(long)]
        force: bool,
        /// Do not ask before discarding the data of volumes the update deletes.
        #[arg(long, short)]
        yes: bool,
    },
    /// Invoke a function of a deployed app.
    Call {
        /// Id or name of a deployed app.
        app: String,
        function: String,
        #[command(flatten)]
        invoke: InvokeArgs,
    },
    /// List and stop apps.
    #[command(subcommand)]
    App(AppCommand),
    /// Manage named volumes and their files.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// The compiled-module cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Empties the trash; started in the background by other commands.
    #[command(hide = true)]
    InternalPurgeTrash,
}

#[derive(Args)]
struct InvokeArgs {
    /// One invocation per line of FILE (`-` for stdin), the line as the last argument.
    #[arg(long, value_name = "FILE|-")]
    map: Option<String>,
    /// Most invocations at once with --map (default, and most: the function's `concurrency`; else the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Option<u32>,
    /// An environment variable for the function, over its `env` from app.toml (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Arguments for the function, after its `args` from app.toml.
    #[arg(last = true)]
    args: Vec<String>,
}

/// `K=V`, split at the first `=`, as app.toml's `env` would take it.
fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or("expected K=V, e.g. --env LOG_LEVEL=debug")?;
    if !manifest::valid_env_name(key) {
        return Err(format!(
            "environment variable name `{}` is invalid: use a non-empty name without `=` or NUL",
            key.escape_debug()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "the value of `{key}` holds a NUL byte, which WASI cannot pass to a guest"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[derive(Subcommand)]
enum AppCommand {
    /// List running apps (with --all, stopped ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop an app: interrupt its instances and delete its ephemeral volumes.
    Stop {
        /// App id, or the name of exactly one running app.
        app: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create an empty named volume.
    Create { name: String },
    /// List named volumes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// List files in a volume. Names are shown with control characters,
    /// backslashes and bytes that are not UTF-8 escaped as in bash's `$'…'`;
    /// give such a name back as `$'…'` to address it.
    Ls {
        name: String,
        #[arg(default_value = "/")]
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy a local file or directory into a volume.
    Put {
        name: String,
        local: PathBuf,
        /// Destination in the volume (default: /NAME-OF-LOCAL; a trailing `/` puts it inside).
        remote: Option<PathBuf>,
        /// Overwrite what is there.
        #[arg(long)]
        force: bool,
    },
    /// Copy a file or directory out of a volume (`-` writes a file to stdout).
    Get {
        name: String,
        remote: PathBuf,
        /// Destination (default: the remote's own name, here).
        local: Option<PathBuf>,
        /// Overwrite what is there.
        #[arg(long)]
        force: bool,
    },
    /// Remove a file (or, with --recursive, a directory) from a volume.
    Rm {
        name: String,
        path: PathBuf,
        #[arg(long, short)]
        recursive: bool,
    },
    /// Delete a named volume and all its data.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        /// Stop the running apps that mount it first.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Show the compiled-module cache's entries and size.
    Info,
    /// Empty the compiled-module cache.
    Clear,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match commands::dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) if output::stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote names a guest or a module chose: escaped, so
            // they cannot forge output or act on the terminal.
            eprintln!(
                "error: {}",
                escape_control(&format!("{e:#}").replace('\n', " "))
            );
            let usage = e
                .chain()
                .any(|c| c.is::<UsageError>() || c.is::<ManifestError>());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
