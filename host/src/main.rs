//! The `wasmhost` binary: parse, dispatch, exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use wasmhost::error;
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
    cli::install_logging(&cli.command);
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
            ExitCode::from(error::exit_code(&e))
        }
    }
}
