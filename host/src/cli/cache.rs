//! `wasmhost cache info|clear`: the compiled-module cache.

use anyhow::Result;
use clap::Subcommand;
use wasmhost::home::Home;
use wasmhost::runtime::Runtime;

use super::output::outln;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Show the compiled-module cache's entries and size, and its
    /// pre-initialized snapshots'.
    Info,
    /// Empty the compiled-module cache, snapshots included.
    Clear,
}

pub fn execute(command: CacheCommand) -> Result<u8> {
    cache_command(&Home::from_env()?, command)
}

fn cache_command(home: &Home, command: CacheCommand) -> Result<u8> {
    let runtime = Runtime::new(home, 1)?;
    match command {
        CacheCommand::Info => {
            let info = runtime.cache_info()?;
            outln!(
                "{} entries, {} bytes in {}",
                info.entries,
                info.bytes,
                info.dir.display()
            )?;
            outln!(
                "{} pre-initialized snapshots (preinit), {} bytes",
                info.snapshots,
                info.snapshot_bytes
            )?;
        }
        CacheCommand::Clear => {
            let removed = runtime.clear_cache()?;
            outln!("removed {removed} entries")?;
        }
    }
    Ok(0)
}
