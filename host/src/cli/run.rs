//! `wasmhost run`: an ephemeral app for one invocation (or one `--map`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use wasmhost::apps;
use wasmhost::file_store::Shipped;
use wasmhost::home::Home;
use wasmhost::manifest::{self, AppManifest};
use wasmhost::registry::Registry;
use wasmhost::runtime::{Program, Runtime};
use wasmhost::secrets;

use super::invoke::{
    InvokeArgs, MapInputs, Recording, exit, instances_at_once, note_lowered_concurrency,
    open_map_inputs, serve,
};
use super::{load_program, open_state, usage};

#[derive(Args)]
pub struct RunArgs {
    /// The app's app.toml.
    app: PathBuf,
    /// The function to invoke (default: `entrypoint`, else the only one).
    function: Option<String>,
    #[command(flatten)]
    invoke: InvokeArgs,
}

/// app.toml is validated before any state is touched: a bad one creates
/// nothing, not even `$WASMHOST_HOME`.
pub fn execute(args: RunArgs) -> Result<u8> {
    let RunArgs {
        app,
        function,
        invoke,
    } = args;
    let (mut manifest, function) = load_manifest(&app, function.as_deref())?;
    // Read before anything is created, as app.toml is: what is shipped.
    let files = Shipped::collect(&mut manifest, &Home::locate()?.cache_dir())?;
    let inputs = open_map_inputs(&invoke)?;
    let spec = &manifest.functions[&function];
    note_lowered_concurrency(&invoke, spec);
    // Compiled before `$WASMHOST_HOME` is opened, so that a module
    // wasmtime refuses creates nothing either.
    let runtime = Runtime::new(
        &Home::locate()?,
        instances_at_once(&invoke, inputs.as_ref(), spec),
    )?;
    let program = load_program(&runtime, &spec.module, spec, Some((&app, &function)))?;
    let (home, mut registry) = open_state()?;
    registry.read(|tx| secrets::check_declared(tx, &manifest, &app))?;
    run(
        &home,
        &mut registry,
        (&manifest, &files),
        &function,
        &invoke,
        inputs,
        program,
    )
}

/// Loads and validates app.toml, refusing an unknown function.
fn load_manifest(path: &Path, function: Option<&str>) -> Result<(AppManifest, String)> {
    let manifest = manifest::load(path)?;
    let function = manifest
        .select_function(function)
        .map_err(|problem| usage(format!("{}: {problem}", path.display())))?
        .to_owned();
    Ok((manifest, function))
}

fn run(
    home: &Home,
    registry: &mut Registry,
    (manifest, files): (&AppManifest, &Shipped),
    function: &str,
    invoke: &InvokeArgs,
    inputs: Option<MapInputs>,
    program: Program,
) -> Result<u8> {
    let (live, lease) = apps::start_ephemeral(home, registry, manifest, files)?;
    let live = Arc::new(live);
    let ran = serve(
        home,
        registry,
        live.clone(),
        function,
        Recording::None,
        program,
        invoke,
        inputs,
    );
    let code = ran.and_then(|ran| exit(&ran, home, &live, function, None));
    apps::stop_owned(home, registry, &live.record.id, lease)?;
    code
}
