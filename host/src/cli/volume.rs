//! `wasmhost volume …`: named volumes and their files, from the host. It
//! only translates arguments and output: lookups, quota accounting and
//! copies are the `volumes` room's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use wasmhost::apps;
use wasmhost::home::Home;
use wasmhost::manifest::Quota;
use wasmhost::manifest::units::{self, format_size};
use wasmhost::registry::Registry;
use wasmhost::text::escape_name;
use wasmhost::volumes::{self, CopyReport, Progress, Skipped, VolumeFiles};

use super::confirm::confirm;
use super::open_state;
use super::output::{app_json, outln, snapshot_json, table, timestamp, volume_json};
use super::usage;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create an empty named volume, or one forked from a snapshot.
    Create {
        name: String,
        /// A snapshot to copy, as VOLUME@SNAPSHOT: the new volume is
        /// independent of both.
        #[arg(long, value_name = "VOLUME@SNAPSHOT")]
        from: Option<String>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Change a named volume's quota (`none` removes a limit). A quota
    /// below what the volume holds refuses growth only.
    Set {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List named volumes, with what each holds.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one named volume: what it holds, its quota, the running apps
    /// that mount it.
    Info {
        name: String,
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
    /// Copy a file or directory inside a volume. Symbolic links are copied
    /// as links, never followed.
    Cp {
        name: String,
        src: PathBuf,
        /// Destination in the volume (a trailing `/` puts it inside).
        dst: PathBuf,
        /// Copy a directory and everything in it.
        #[arg(long, short)]
        recursive: bool,
        /// Replace what is at DST.
        #[arg(long)]
        force: bool,
    },
    /// Rename a named volume, keeping its data, locks and snapshots; the old
    /// name then names nothing.
    Rename {
        old: String,
        new: String,
        /// Rename it even while running apps mount it (they keep it).
        #[arg(long)]
        force: bool,
    },
    /// Read-only, point-in-time copies of a named volume.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
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
pub enum SnapshotCommand {
    /// Take a snapshot (refused while running apps mount the volume
    /// writable, unless --force).
    Create {
        volume: String,
        snapshot: String,
        /// Take it even while running apps may write the volume.
        #[arg(long)]
        force: bool,
    },
    /// List a volume's snapshots.
    List {
        volume: String,
        #[arg(long)]
        json: bool,
    },
    /// Put the volume back to a snapshot, discarding its files as they are
    /// now (refused while running apps mount the volume, unless --force).
    Restore {
        volume: String,
        snapshot: String,
        /// Restore it even while running apps mount the volume.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Delete a snapshot.
    Delete {
        volume: String,
        snapshot: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

/// `--max-size` and `--max-files`, as app.toml's `max_size` and `max_files`.
#[derive(clap::Args)]
pub struct QuotaArgs {
    /// Most bytes the volume may hold (e.g. 50GiB), or `none`.
    #[arg(long, value_parser = parse_max_size)]
    max_size: Option<Limit>,
    /// Most files, directories and links the volume may hold, or `none`.
    #[arg(long, value_parser = parse_max_files)]
    max_files: Option<Limit>,
}

/// A quota key on the command line: a limit, or `none` to remove it.
#[derive(Clone, Copy)]
struct Limit(Option<u64>);

fn parse_max_size(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(Limit(None));
    }
    units::parse_quota_size(text)
        .map(|bytes| Limit(Some(bytes)))
        .map_err(|p| {
            format!(
                "{p}; write a number and a unit ({}), e.g. 50GiB, or `none`",
                units::QUOTA_UNITS
            )
        })
}

fn parse_max_files(text: &str) -> Result<Limit, String> {
    match text {
        "none" => Ok(Limit(None)),
        _ => match text.parse::<u64>() {
            Ok(n) if (1..=i64::MAX as u64).contains(&n) => Ok(Limit(Some(n))),
            _ => Err(format!(
                "`{text}` is not a file count; write a whole number of at least 1, or `none`"
            )),
        },
    }
}

impl QuotaArgs {
    /// `quota` with the keys given here replaced.
    fn apply(&self, quota: Quota) -> Quota {
        Quota {
            max_bytes: self.max_size.map_or(quota.max_bytes, |l| l.0),
            max_files: self.max_files.map_or(quota.max_files, |l| l.0),
        }
    }
}

pub fn execute(command: VolumeCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    volume_command(&home, &mut registry, command)
}

fn volume_command(home: &Home, registry: &mut Registry, command: VolumeCommand) -> Result<u8> {
    match command {
        VolumeCommand::Create {
            name,
            from: None,
            quota,
        } => {
            let volume =
                volumes::create_named_volume(home, registry, &name, quota.apply(Quota::default()))?;
            outln!(
                "created volume `{name}` ({}, app {})",
                volume.id,
                volume.app_id
            )?;
        }
        VolumeCommand::Create {
            name,
            from: Some(from),
            quota,
        } => {
            let quota = quota.apply(Quota::default());
            let (volume, report) =
                with_progress(|p| volumes::fork_snapshot(home, registry, &name, &from, quota, p))?;
            outln!(
                "created volume `{name}` ({}) from `{from}`: {} file(s), {} bytes",
                volume.id,
                report.files,
                report.bytes
            )?;
        }
        VolumeCommand::Cp {
            name,
            src,
            dst,
            recursive,
            force,
        } => {
            let files = VolumeFiles::open(home, registry, &name)?;
            let report = with_progress(|p| files.cp(&src, &dst, recursive, force, p))?;
            report_skipped(&report.skipped);
            eprintln!(
                "copied {} file(s), {} bytes in volume `{name}`",
                report.files, report.bytes
            );
        }
        VolumeCommand::Rename { old, new, force } => {
            let volume = volumes::rename_named_volume(registry, &old, &new, force)?;
            outln!("renamed volume `{old}` ({}) to `{new}`", volume.id)?;
        }
        VolumeCommand::Snapshot(command) => snapshot_command(home, registry, command)?,
        VolumeCommand::Set { name, quota } => {
            if quota.max_size.is_none() && quota.max_files.is_none() {
                return Err(usage(
                    "give --max-size and/or --max-files (a limit, or `none` to remove it)".into(),
                ));
            }
            let volume = volumes::set_volume_quota(home, registry, &name, |q| quota.apply(q))?;
            outln!("volume `{name}`: {}", quota_text(volume.quota))?;
        }
        VolumeCommand::List { json } => list(home, registry, json)?,
        VolumeCommand::Info { name, json } => info(home, registry, &name, json)?,
        VolumeCommand::Ls { name, path, json } => ls(home, registry, &name, &path, json)?,
        VolumeCommand::Put {
            name,
            local,
            remote,
            force,
        } => {
            let remote = remote
                .unwrap_or_else(|| Path::new("/").join(local.file_name().unwrap_or_default()));
            let files = VolumeFiles::open(home, registry, &name)?;
            let report = files.put(&local, &remote, force)?;
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
        } => get(home, registry, &name, &remote, local, force)?,
        VolumeCommand::Rm {
            name,
            path,
            recursive,
        } => {
            VolumeFiles::open(home, registry, &name)?.rm(&path, recursive)?;
        }
        VolumeCommand::Delete { name, yes, force } => {
            let volume = volumes::named_volume(registry, &name)?;
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

/// `volume ls NAME [PATH]`.
fn ls(home: &Home, registry: &mut Registry, name: &str, path: &Path, json: bool) -> Result<()> {
    let entries = VolumeFiles::open(home, registry, name)?.ls(path)?;
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
    Ok(())
}

/// `volume get NAME REMOTE [LOCAL]`: a file or directory out of a volume,
/// or one file to stdout (`-`).
fn get(
    home: &Home,
    registry: &mut Registry,
    name: &str,
    remote: &Path,
    local: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    let files = VolumeFiles::open(home, registry, name)?;
    if local.as_deref() == Some(Path::new("-")) {
        files.cat(remote, std::io::stdout().lock())?;
        return Ok(());
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
    let report = files.get(remote, &local, force)?;
    report_skipped(&report.skipped);
    eprintln!(
        "copied {} file(s), {} bytes to {}",
        report.files,
        report.bytes,
        escape_name(local.as_os_str())
    );
    Ok(())
}

/// `volume list`: named volumes, with what each holds.
fn list(home: &Home, registry: &mut Registry, json: bool) -> Result<()> {
    let volumes = registry.read(|tx| tx.named_volumes())?;
    let counts = volumes
        .iter()
        .map(|v| volumes::counts_now(home, v))
        .collect::<Result<Vec<_>>>()?;
    if json {
        let list: Vec<_> = volumes
            .iter()
            .zip(&counts)
            .map(|(v, c)| volume_json(v, c))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?)?;
    } else {
        let rows: Vec<Vec<String>> = volumes
            .iter()
            .zip(&counts)
            .map(|(v, c)| {
                vec![
                    v.name.clone().unwrap_or_default(),
                    v.id.clone(),
                    v.app_id.clone(),
                    c.bytes.to_string(),
                    c.files.to_string(),
                    timestamp(v.created_at),
                ]
            })
            .collect();
        outln!(
            "{}",
            table(&["NAME", "ID", "APP", "BYTES", "FILES", "CREATED"], &rows)
        )?;
    }
    Ok(())
}

/// `volume info NAME`: what it holds, its quota, who mounts it, its
/// snapshots.
fn info(home: &Home, registry: &mut Registry, name: &str, json: bool) -> Result<()> {
    let volume = volumes::named_volume(registry, name)?;
    let users = registry.read(|tx| tx.apps_mounting(&volume.id))?;
    let counts = volumes::counts_now(home, &volume)?;
    let snaps = registry.read(|tx| tx.snapshots(Some(&volume.id)))?;
    if json {
        let mut info = volume_json(&volume, &counts);
        info["apps"] = users.iter().map(app_json).collect();
        info["snapshots"] = snaps.iter().map(snapshot_json).collect();
        outln!("{}", serde_json::to_string_pretty(&info)?)?;
    } else {
        let apps: Vec<String> = users
            .iter()
            .map(|a| format!("{} ({})", a.name, a.id))
            .collect();
        let rows = [
            ("name", name.to_owned()),
            ("id", volume.id.clone()),
            ("bytes", counts.bytes.to_string()),
            ("files", counts.files.to_string()),
            ("quota", quota_text(volume.quota)),
            (
                "mounted by",
                if apps.is_empty() {
                    "-".into()
                } else {
                    apps.join(", ")
                },
            ),
            ("created", timestamp(volume.created_at)),
            (
                "snapshots",
                if snaps.is_empty() {
                    "-".into()
                } else {
                    let shown: Vec<String> = snaps
                        .iter()
                        .map(|s| format!("{} ({} bytes, {} files)", s.name, s.bytes, s.files))
                        .collect();
                    shown.join(", ")
                },
            ),
        ];
        for (key, value) in rows {
            outln!("{key:<11} {value}")?;
        }
    }
    Ok(())
}

fn snapshot_command(home: &Home, registry: &mut Registry, command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Create {
            volume,
            snapshot,
            force,
        } => {
            let (record, report) = with_progress(|p| {
                volumes::create_snapshot(home, registry, &volume, &snapshot, force, p)
            })?;
            report_skipped(&report.skipped);
            outln!(
                "created snapshot `{snapshot}` of volume `{volume}` at {}: {} file(s), {} bytes",
                timestamp(record.created_at),
                report.files,
                report.bytes
            )?;
        }
        SnapshotCommand::List { volume, json } => {
            let list = volumes::list_snapshots(registry, &volume)?;
            if json {
                let list: Vec<_> = list.iter().map(snapshot_json).collect();
                outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            timestamp(s.created_at),
                            s.files.to_string(),
                            s.bytes.to_string(),
                        ]
                    })
                    .collect();
                outln!("{}", table(&["NAME", "CREATED", "FILES", "BYTES"], &rows))?;
            }
        }
        SnapshotCommand::Restore {
            volume,
            snapshot,
            force,
            yes,
        } => {
            let taken = volumes::find_snapshot(registry, &volume, &snapshot)?;
            confirm(
                &format!(
                    "Put volume `{volume}` back to snapshot `{snapshot}` (taken {}), discarding its files as they are now?",
                    timestamp(taken.created_at)
                ),
                yes,
            )?;
            let report = with_progress(|p| {
                volumes::restore_snapshot(home, registry, &volume, &snapshot, force, p)
            })?;
            outln!(
                "restored volume `{volume}` to snapshot `{snapshot}`: {} file(s), {} bytes",
                report.files,
                report.bytes
            )?;
        }
        SnapshotCommand::Delete {
            volume,
            snapshot,
            yes,
        } => {
            volumes::find_snapshot(registry, &volume, &snapshot)?;
            confirm(
                &format!("Delete snapshot `{snapshot}` of volume `{volume}`?"),
                yes,
            )?;
            volumes::delete_snapshot(home, registry, &volume, &snapshot)?;
            outln!("deleted snapshot `{snapshot}` of volume `{volume}`")?;
        }
    }
    Ok(())
}

/// Runs a copy under a spinner counting its files, on a terminal only.
fn with_progress<T>(copy: impl FnOnce(Progress) -> Result<T>) -> Result<T> {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::no_length()
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} files {msg} {per_sec}") {
        bar.set_style(style);
    }
    let result = copy(&mut |report: &CopyReport| {
        bar.set_position(report.files as u64);
        bar.set_message(format!("{} bytes", report.bytes));
    });
    bar.finish_and_clear();
    result
}

/// `max_size 20MiB, max_files none`.
fn quota_text(quota: Quota) -> String {
    let size = quota.max_bytes.map_or("none".into(), format_size);
    let files = quota.max_files.map_or("none".into(), |n| n.to_string());
    format!("max_size {size}, max_files {files}")
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
