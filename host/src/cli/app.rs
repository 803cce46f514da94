//! `wasmhost app list|stop`.

use anyhow::Result;
use clap::Subcommand;
use wasmhost::apps;
use wasmhost::home::Home;
use wasmhost::registry::{AppKind, Registry};

use super::confirm::confirm;
use super::open_state;
use super::output::{app_json, outln, table, timestamp};

#[derive(Subcommand)]
pub enum AppCommand {
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

pub fn execute(command: AppCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    app_command(&home, &mut registry, command)
}

fn app_command(home: &Home, registry: &mut Registry, command: AppCommand) -> Result<u8> {
    match command {
        AppCommand::List { all, json } => {
            let apps = registry.read(|tx| tx.list_apps(all))?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&apps.iter().map(app_json).collect::<Vec<_>>())?
                )?;
            } else {
                let rows: Vec<Vec<String>> = apps
                    .iter()
                    .map(|a| {
                        let json = app_json(a);
                        vec![
                            a.id.clone(),
                            a.name.clone(),
                            json["kind"].as_str().unwrap_or_default().to_owned(),
                            json["state"].as_str().unwrap_or_default().to_owned(),
                            timestamp(a.created_at),
                            a.stopped_at.map(timestamp).unwrap_or_default(),
                        ]
                    })
                    .collect();
                outln!(
                    "{}",
                    table(
                        &["ID", "NAME", "KIND", "STATE", "CREATED", "STOPPED"],
                        &rows
                    )
                )?;
            }
            Ok(0)
        }
        AppCommand::Stop { app, yes } => {
            let record = apps::find_running_app(registry, &app)?;
            let what = match record.kind {
                AppKind::Volume => format!(
                    "Delete volume `{}` ({}) and all its data?",
                    record.name, record.id
                ),
                _ => format!(
                    "Stop app `{}` ({}) and delete its ephemeral volumes?",
                    record.name, record.id
                ),
            };
            confirm(&what, yes)?;
            apps::stop(home, registry, &record.id, false)?;
            outln!("stopped app `{}` ({})", record.name, record.id)?;
            Ok(0)
        }
    }
}
