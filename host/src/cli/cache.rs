//! `wasmhost cache info|clear`: the compiled-module cache, which a
//! cluster's machines share (see `Home::compiled_dir`).

use anyhow::Result;
use clap::Subcommand;
use wasmhost::home::Home;
use wasmhost::runtime::Runtime;

use super::output::outln;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Show where the compiled-module cache is, its entries and size, and
    /// its pre-initialized snapshots'.
    Info,
    /// Empty the compiled-module cache, snapshots included. In a cluster,
    /// forget only which shared entries this machine has checked, unless
    /// --cluster.
    Clear {
        /// In a cluster: also remove the shared entries and snapshots, for
        /// every machine (each compiles again on its next start).
        #[arg(long)]
        cluster: bool,
    },
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
            if let Some(stamps) = info.stamps {
                outln!(
                    "shared by the cluster's machines; this machine's checks of them in {}",
                    stamps.display()
                )?;
            }
        }
        CacheCommand::Clear { cluster } => {
            if cluster && !runtime.cache_is_shared() {
                return Err(super::usage(
                    "--cluster clears a cluster's shared cache, and this home's cache is its own; run `wasmhost cache clear`".into(),
                ));
            }
            let cleared = runtime.clear_cache(cluster)?;
            if runtime.cache_is_shared() && !cluster {
                outln!(
                    "forgot this machine's checks of {} files; the cluster's shared cache stays (`wasmhost cache clear --cluster` empties it for every machine)",
                    cleared.stamps
                )?;
            } else {
                outln!("removed {} entries", cleared.entries)?;
            }
        }
    }
    Ok(0)
}
