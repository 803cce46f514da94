//! `wasmhost deploy`: register or update an app that stays until `app stop`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use wasmhost::apps;
use wasmhost::file_store::Shipped;
use wasmhost::home::Home;
use wasmhost::manifest::{self, AppManifest};
use wasmhost::module_store::Snapshot;
use wasmhost::registry::Registry;
use wasmhost::runtime::Runtime;
use wasmhost::secrets;

use super::confirm::confirm;
use super::output::outln;
use super::{load_program, open_state};

#[derive(Args)]
pub struct DeployArgs {
    /// The app's app.toml.
    app: PathBuf,
    /// Interrupt running calls that use a volume the update deletes.
    #[arg(long)]
    force: bool,
    /// Do not ask before discarding the data of volumes the update deletes.
    #[arg(long, short)]
    yes: bool,
}

pub fn execute(args: DeployArgs) -> Result<u8> {
    let DeployArgs { app, force, yes } = args;
    let mut manifest = manifest::load(&app)?;
    let files = Shipped::collect(&mut manifest)?;
    // Read once: what is checked here is what is snapshotted.
    let mut snapshots = BTreeMap::new();
    for (function, spec) in &manifest.functions {
        snapshots.insert(function.clone(), Snapshot::read(&spec.module)?);
    }
    let runtime = Runtime::new(&Home::locate()?, 1)?;
    for (function, spec) in &manifest.functions {
        load_program(&runtime, &spec.module, spec, Some((&app, function)))?;
    }
    let (home, mut registry) = open_state()?;
    registry.read(|tx| secrets::check_declared(tx, &manifest, &app))?;
    deploy(
        &home,
        &mut registry,
        &manifest,
        (&snapshots, &files),
        force,
        yes,
    )
}

fn deploy(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    shipped: (&BTreeMap<String, Snapshot>, &Shipped),
    force: bool,
    yes: bool,
) -> Result<u8> {
    let plan = apps::plan_deploy(home, registry, manifest)?;
    if !force {
        plan.refuse_busy_calls()?;
    }
    if !plan.discarded.is_empty() {
        let volumes: Vec<String> = plan
            .discarded
            .iter()
            .map(|v| {
                let key = v.key.clone().unwrap_or_default();
                let why = match manifest.volumes.get(&key).map(|v| &v.persist) {
                    Some(Some(name)) => format!("now the named volume `{name}`"),
                    _ => "no longer declared".to_owned(),
                };
                format!("`{key}` ({}, {why})", v.id)
            })
            .collect();
        confirm(
            &format!(
                "Updating app `{}` deletes its ephemeral volume(s) {} and all their data. Continue?",
                manifest.name,
                volumes.join(", ")
            ),
            yes,
        )?;
    }
    let deployed = apps::deploy(home, registry, manifest, shipped, &plan, force)?;
    for call in &deployed.interrupted {
        eprintln!(
            "note: interrupted call {} (function `{}`), which used a deleted volume",
            call.id, call.function
        );
    }
    let live = &deployed.live;
    let verb = if deployed.updated {
        "updated"
    } else {
        "deployed"
    };
    outln!("{verb} app `{}` ({})", live.record.name, live.record.id)?;
    Ok(0)
}
