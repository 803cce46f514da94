//! The `wasmhost` binary: parse, dispatch, exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use wasmhost::error::UsageError;
use wasmhost::manifest::ManifestError;
use wasmhost::text::escape_control;

use cli::{Cli, output};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    cli.state.export();
    match cli::dispatch(cli.command) {
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
