//! `wasmhost deploy`: register or update an app that stays until `app stop`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use wasmhost::apps;
use wasmhost::file_store;
use wasmhost::file_store::Shipped;
use wasmhost::home::Home;
use wasmhost::manifest::{self, AppManifest, FunctionKey};
use wasmhost::module_store::Snapshot;
use wasmhost::registry::Registry;
use wasmhost::runtime::{InitContext, PreinitFailed, Program, Runtime};
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
    let files = Shipped::collect(&mut manifest, &Home::locate()?.cache_dir())?;
    // Read once: what is checked here is what is snapshotted.
    let mut snapshots = BTreeMap::new();
    for (function, spec) in &manifest.functions {
        snapshots.insert(function.clone(), Snapshot::read(&spec.module)?);
    }
    let runtime = Runtime::new(&Home::locate()?, 1)?;
    let mut programs = BTreeMap::new();
    for (function, spec) in &manifest.functions {
        let program = load_program(&runtime, &spec.module, spec, Some((&app, function)))?;
        programs.insert(function.clone(), Arc::new(program));
    }
    let (home, mut registry) = open_state()?;
    registry.read(|tx| secrets::check_declared(tx, &manifest, &app))?;
    for (function, program) in &programs {
        preinitialize(&home, &mut registry, (&manifest, &files), function, program)
            .map_err(|e| preinit_error(e, &app, function))?;
    }
    deploy(
        &home,
        &mut registry,
        &manifest,
        (&snapshots, &files),
        force,
        yes,
    )
}

/// Runs `function`'s `preinit`, if it has one, before the deploy changes
/// anything, so that an init that fails or is refused fails the deploy and
/// leaves the app as it was: with the function's secrets, its `files`
/// (stored, and held while the init runs) and its volumes as they are now.
/// The snapshot is cached for the calls that follow.
fn preinitialize(
    home: &Home,
    registry: &mut Registry,
    (manifest, files): (&AppManifest, &Shipped),
    function: &str,
    program: &Arc<Program>,
) -> Result<()> {
    let spec = &manifest.functions[function];
    if spec.preinit.is_none() {
        return Ok(());
    }
    registry.write(|tx| files.store(home, tx))?;
    let mut trees = Vec::new();
    for tree in spec.files.iter().filter_map(|f| f.tree.as_ref()) {
        let store = || registry.write(|tx| files.store(home, tx));
        trees.push(file_store::hold(home, tree, store)?);
    }
    let mounts = apps::mounts_before_deploy(home, registry, manifest, function)?;
    let secrets = secrets::environment(home, registry, &spec.secrets)?;
    program.initialized(&InitContext {
        home,
        function: spec,
        mounts: &mounts,
        secrets: &secrets,
    })?;
    Ok(())
}

/// A failed or refused init, reported at the function's `preinit` line.
fn preinit_error(e: anyhow::Error, app: &Path, function: &str) -> anyhow::Error {
    match e.downcast::<PreinitFailed>() {
        Ok(failed) => manifest::key_error(
            app,
            function,
            FunctionKey::Preinit,
            format!("`preinit` of function `{function}`: {}", failed.problem),
            failed.fix,
        )
        .into(),
        Err(e) => e.context(format!("cannot pre-initialize function `{function}`")),
    }
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
