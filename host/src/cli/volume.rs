//! `wasmhost volume …`: named volumes and their files, from the host.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use wasmhost::apps;
use wasmhost::home::Home;
use wasmhost::registry::Registry;
use wasmhost::text::escape_name;
use wasmhost::volume_files::{Skipped, VolumeFiles};

use super::confirm::confirm;
use super::open_state;
use super::output::{outln, table, timestamp, volume_json};
use super::usage;

#[derive(Subcommand)]
pub enum VolumeCommand {
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

pub fn execute(command: VolumeCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    volume_command(&home, &mut registry, command)
}

fn volume_command(home: &Home, registry: &mut Registry, command: VolumeCommand) -> Result<u8> {
    match command {
        VolumeCommand::Create { name } => {
            let volume = apps::create_named_volume(home, registry, &name)?;
            outln!(
                "created volume `{name}` ({}, app {})",
                volume.id,
                volume.app_id
            )?;
        }
        VolumeCommand::List { json } => {
            let volumes = registry.read(|tx| tx.named_volumes())?;
            if json {
                let list: Vec<_> = volumes.iter().map(volume_json).collect();
                outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                let rows: Vec<Vec<String>> = volumes
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone().unwrap_or_default(),
                            v.id.clone(),
                            v.app_id.clone(),
                            timestamp(v.created_at),
                        ]
                    })
                    .collect();
                outln!("{}", table(&["NAME", "ID", "APP", "CREATED"], &rows))?;
            }
        }
        VolumeCommand::Ls { name, path, json } => {
            let entries = open_volume(home, registry, &name)?.ls(&path)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&entries)?)?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.kind.to_owned(),
                            e.size.to_string(),
                            e.modified.map(|m| timestamp(m as i64)).unwrap_or_default(),
                            escape_name(e.raw_path.as_os_str()),
                        ]
                    })
                    .collect();
                outln!("{}", table(&["TYPE", "SIZE", "MODIFIED", "PATH"], &rows))?;
            }
        }
        VolumeCommand::Put {
            name,
            local,
            remote,
            force,
        } => {
            let remote = remote
                .unwrap_or_else(|| Path::new("/").join(local.file_name().unwrap_or_default()));
            let report = open_volume(home, registry, &name)?.put(&local, &remote, force)?;
            report_skipped(&report.skipped);
            eprintln!(
                "copied {} file(s), {} bytes into volume `{name}`",
                report.files, report.bytes
            );
        }
        VolumeCommand::Get {
            name,
            remote,
            local,
            force,
        } => {
            let files = open_volume(home, registry, &name)?;
            if local.as_deref() == Some(Path::new("-")) {
                files.cat(&remote, std::io::stdout().lock())?;
                return Ok(0);
            }
            let local = match local {
                Some(local) => local,
                None => {
                    let base = remote.file_name().ok_or_else(|| {
                        usage(format!(
                            "give a LOCAL path to copy `{}` to",
                            escape_name(remote.as_os_str())
                        ))
                    })?;
                    PathBuf::from(base)
                }
            };
            let report = files.get(&remote, &local, force)?;
            report_skipped(&report.skipped);
            eprintln!(
                "copied {} file(s), {} bytes to {}",
                report.files,
                report.bytes,
                escape_name(local.as_os_str())
            );
        }
        VolumeCommand::Rm {
            name,
            path,
            recursive,
        } => {
            open_volume(home, registry, &name)?.rm(&path, recursive)?;
        }
        VolumeCommand::Delete { name, yes, force } => {
            let volume = apps::named_volume(registry, &name)?;
            confirm(
                &format!("Delete volume `{name}` ({}) and all its data?", volume.id),
                yes,
            )?;
            apps::stop(home, registry, &volume.app_id, force)?;
            outln!("deleted volume `{name}`")?;
        }
    }
    Ok(0)
}

fn open_volume(home: &Home, registry: &mut Registry, name: &str) -> Result<VolumeFiles> {
    let volume = apps::named_volume(registry, name)?;
    VolumeFiles::open(&home.volume_dir(&volume.id), name)
}

fn report_skipped(skipped: &[Skipped]) {
    for Skipped { path, kind } in skipped {
        let path = escape_name(path.as_os_str());
        if *kind == "symlink" {
            eprintln!(
                "warning: skipped symbolic link {path}: wasmhost never follows or copies links between a volume and the host"
            );
        } else {
            eprintln!(
                "warning: skipped {kind} {path}: wasmhost copies only regular files and directories"
            );
        }
    }
}
