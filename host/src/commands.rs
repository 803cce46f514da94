//! One function per command; each returns the process exit code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use wasmhost::apps::{self, LiveApp};
use wasmhost::error::UsageError;
use wasmhost::home::Home;
use wasmhost::invoke::{MapReport, StopCause, Target, app_was_stopped, watch_for_stop};
use wasmhost::manifest::{self, AppManifest, FunctionSpec};
use wasmhost::registry::{AppKind, Registry};
use wasmhost::runtime::{BadModule, Outcome, Program, Runtime};
use wasmhost::volume_files::VolumeFiles;
use wasmhost::volumes;

use crate::confirm::confirm;
use crate::output::{app_json, table, timestamp};
use crate::{AppCommand, CacheCommand, Command, InvokeArgs, VolumeCommand};

/// How long a stopped process waits for its instances to notice.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn usage(message: String) -> anyhow::Error {
    UsageError(message).into()
}

pub fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::InternalPurgeTrash => {
            volumes::purge_trash(&Home::from_env()?)?;
            Ok(0)
        }
        // app.toml is validated before any state is touched: a bad one
        // creates nothing, not even `$WASMHOST_HOME`.
        Command::Run {
            app,
            function,
            invoke,
        } => {
            let (manifest, function) = load_manifest(&app, function.as_deref())?;
            let inputs = read_map_inputs(&invoke)?;
            let spec = &manifest.functions[&function];
            // Compiled before `$WASMHOST_HOME` is opened, so that a module
            // wasmtime refuses creates nothing either.
            let runtime = Runtime::new(
                &Home::locate()?,
                instances_at_once(&invoke, inputs.as_deref(), spec),
            )?;
            let module = &spec.module;
            let program = load_program(&runtime, module, Some((&app, &function)))?;
            let (home, mut registry) = open_state()?;
            run(
                &home,
                &mut registry,
                &manifest,
                &function,
                &invoke,
                inputs,
                program,
            )
        }
        Command::Deploy { app } => {
            let manifest = manifest::load(&app)?;
            let runtime = Runtime::new(&Home::locate()?, 1)?;
            for (function, spec) in &manifest.functions {
                load_program(&runtime, &spec.module, Some((&app, function)))?;
            }
            let (home, mut registry) = open_state()?;
            deploy(&home, &mut registry, &manifest)
        }
        Command::Call {
            app,
            function,
            invoke,
        } => {
            let (home, mut registry) = open_state()?;
            call(&home, &mut registry, &app, &function, &invoke)
        }
        Command::App(command) => {
            let (home, mut registry) = open_state()?;
            app_command(&home, &mut registry, command)
        }
        Command::Volume(command) => {
            let (home, mut registry) = open_state()?;
            volume_command(&home, &mut registry, command)
        }
        Command::Cache(command) => cache_command(&Home::from_env()?, command),
    }
}

/// Opens `$WASMHOST_HOME` and its registry, after cleaning up what dead
/// processes left behind.
fn open_state() -> Result<(Home, Registry)> {
    let home = Home::from_env()?;
    let mut registry = Registry::open(&home.registry_file())?;
    for app in apps::housekeeping(&home, &mut registry)? {
        eprintln!(
            "note: cleaned up app `{}` ({}), whose process died",
            app.name, app.id
        );
    }
    Ok((home, registry))
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

/// Compiles a function's module. A module wasmtime refuses is bad input,
/// reported at the function's `module` in `app_toml` (app.toml, function)
/// when there is one at hand; failing to store it in the cache is not.
fn load_program(
    runtime: &Runtime,
    module: &Path,
    app_toml: Option<(&Path, &str)>,
) -> Result<Program> {
    runtime.load(module).map_err(|e| {
        let Some(bad) = e.downcast_ref::<BadModule>() else {
            return e;
        };
        let problem = format!("module {} {bad}", module.display());
        let fix = "rebuild it for wasm32-wasip1 or wasm32-wasip2 (wasmhost provides WASI and its own `wasmhost` imports, nothing else)";
        match app_toml {
            Some((file, function)) => manifest::module_error(file, function, problem, fix).into(),
            None => usage(format!("{problem}; fix: {fix}")),
        }
    })
}

fn read_map_inputs(invoke: &InvokeArgs) -> Result<Option<Vec<String>>> {
    let Some(source) = &invoke.map else {
        return Ok(None);
    };
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read --map inputs from stdin")?;
    } else {
        text = std::fs::read_to_string(source)
            .map_err(|e| usage(format!("cannot read --map file {source}: {e}")))?;
    }
    Ok(Some(text.lines().map(str::to_owned).collect()))
}

fn run(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    function: &str,
    invoke: &InvokeArgs,
    inputs: Option<Vec<String>>,
    program: Program,
) -> Result<u8> {
    let (live, lease) = apps::start_ephemeral(home, registry, manifest)?;
    let served = serve(home, &live, function, program, invoke, inputs);
    apps::stop_owned(home, registry, &live.record.id, lease)?;
    served
}

fn deploy(home: &Home, registry: &mut Registry, manifest: &AppManifest) -> Result<u8> {
    let (live, updated) = apps::deploy(home, registry, manifest)?;
    let verb = if updated { "updated" } else { "deployed" };
    println!("{verb} app `{}` ({})", live.record.name, live.record.id);
    Ok(0)
}

fn call(
    home: &Home,
    registry: &mut Registry,
    app: &str,
    function: &str,
    invoke: &InvokeArgs,
) -> Result<u8> {
    let live = apps::load_deployed(registry, app)?;
    let function = live
        .manifest
        .select_function(Some(function))
        .map_err(usage)?
        .to_owned();
    let inputs = read_map_inputs(invoke)?;
    let spec = &live.manifest.functions[&function];
    let runtime = Runtime::new(home, instances_at_once(invoke, inputs.as_deref(), spec))?;
    let program = load_program(&runtime, &spec.module, None)?;
    serve(home, &live, &function, program, invoke, inputs)
}

/// How many instances of the function run at once: one, or with `--map` the
/// `--concurrency` (default: the function's `concurrency`, else the number
/// of cores), never more than there are inputs.
fn instances_at_once(invoke: &InvokeArgs, inputs: Option<&[String]>, spec: &FunctionSpec) -> usize {
    let Some(inputs) = inputs else { return 1 };
    let concurrency = invoke.concurrency.or(spec.concurrency).map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    concurrency.min(inputs.len()).max(1)
}

enum Event {
    Stop(StopCause),
    One(Outcome),
    Map(MapReport),
}

/// Runs the invocation(s) on a worker thread while this one watches for a
/// stop, so a guest stuck in a host call cannot keep the process alive.
fn serve(
    home: &Home,
    live: &LiveApp,
    function: &str,
    program: Program,
    invoke: &InvokeArgs,
    inputs: Option<Vec<String>>,
) -> Result<u8> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    watch_for_stop(home, &live.record.id, cancelled.clone(), stop_tx)?;
    let forward = events_tx.clone();
    std::thread::spawn(move || {
        for cause in stop_rx {
            let _ = forward.send(Event::Stop(cause));
        }
    });

    let spec = live.manifest.functions[function].clone();
    let mounts = live.mounts(home, function);
    let concurrency = instances_at_once(invoke, inputs.as_deref(), &spec);
    let (worker_home, args, worker_cancelled) =
        (home.clone(), invoke.args.clone(), cancelled.clone());
    std::thread::spawn(move || {
        let target = Target {
            home: &worker_home,
            program: &program,
            function: &spec,
            mounts: &mounts,
            cancelled: worker_cancelled,
        };
        let event = match inputs {
            None => Event::One(target.run_one(&args)),
            Some(inputs) => Event::Map(target.run_map(&args, &inputs, concurrency)),
        };
        let _ = events_tx.send(event);
    });

    let app = format!("`{}` ({})", live.record.name, live.record.id);
    let first = events
        .recv()
        .context("the invocation thread ended without a result")?;
    // A result that comes after a stop was asked for is the stop's doing,
    // whatever it says; the stop's cause is what the user needs to hear.
    let stopped = match &first {
        Event::Stop(cause) => {
            cancelled.store(true, Ordering::SeqCst);
            // Give instances a moment to unwind, then stop regardless.
            let _ = events.recv_timeout(STOP_GRACE);
            Some(*cause)
        }
        _ if cancelled.load(Ordering::SeqCst) => Some(
            std::iter::from_fn(|| events.recv_timeout(STOP_GRACE).ok())
                .find_map(|e| match e {
                    Event::Stop(cause) => Some(cause),
                    _ => None,
                })
                .unwrap_or(StopCause::Signal),
        ),
        // The watcher polls, so a failure a stop caused (the volumes trashed
        // under a starting instance) can arrive before it has seen the stop.
        Event::One(Outcome::Failed(_) | Outcome::Interrupted)
            if app_was_stopped(home, &live.record.id) =>
        {
            Some(StopCause::AppStopped)
        }
        Event::Map(report)
            if !report.failures.is_empty() && app_was_stopped(home, &live.record.id) =>
        {
            Some(StopCause::AppStopped)
        }
        _ => None,
    };
    match (stopped, first) {
        (Some(StopCause::AppStopped), _) => Err(anyhow::anyhow!(
            "app {app} was stopped (`wasmhost app stop`); its invocations were interrupted"
        )),
        (Some(StopCause::Signal), _) | (None, Event::One(Outcome::Interrupted)) => {
            Err(anyhow::anyhow!("interrupted; stopping app {app}"))
        }
        (None, Event::One(Outcome::Exited(code))) => Ok(code as u8),
        (None, Event::One(Outcome::Failed(reason))) => Err(anyhow::anyhow!(
            "function `{function}` of app {app} {reason}"
        )),
        (None, Event::Map(report)) if report.failures.is_empty() => Ok(0),
        (None, Event::Map(report)) => {
            eprintln!("error: {}", report.summary());
            Ok(1)
        }
        (None, Event::Stop(_)) => unreachable!("a stop event is always a stop"),
    }
}

fn app_command(home: &Home, registry: &mut Registry, command: AppCommand) -> Result<u8> {
    match command {
        AppCommand::List { all, json } => {
            let apps = registry.read(|tx| tx.list_apps(all))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&apps.iter().map(app_json).collect::<Vec<_>>())?
                );
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
                println!(
                    "{}",
                    table(
                        &["ID", "NAME", "KIND", "STATE", "CREATED", "STOPPED"],
                        &rows
                    )
                );
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
            println!("stopped app `{}` ({})", record.name, record.id);
            Ok(0)
        }
    }
}

fn volume_command(home: &Home, registry: &mut Registry, command: VolumeCommand) -> Result<u8> {
    match command {
        VolumeCommand::Create { name } => {
            let volume = apps::create_named_volume(home, registry, &name)?;
            println!(
                "created volume `{name}` ({}, app {})",
                volume.id, volume.app_id
            );
        }
        VolumeCommand::List { json } => {
            let volumes = registry.read(|tx| tx.named_volumes())?;
            if json {
                let list: Vec<_> = volumes
                    .iter()
                    .map(|v| serde_json::json!({"name": v.name, "id": v.id, "app_id": v.app_id, "created_at": timestamp(v.created_at)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
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
                println!("{}", table(&["NAME", "ID", "APP", "CREATED"], &rows));
            }
        }
        VolumeCommand::Ls { name, path, json } => {
            let entries = open_volume(home, registry, &name)?.ls(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.kind.to_owned(),
                            e.size.to_string(),
                            e.modified.map(|m| timestamp(m as i64)).unwrap_or_default(),
                            e.path.clone(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["TYPE", "SIZE", "MODIFIED", "PATH"], &rows));
            }
        }
        VolumeCommand::Put {
            name,
            local,
            remote,
            force,
        } => {
            let remote = remote.unwrap_or_else(|| {
                let base = local
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("/{base}")
            });
            let report = open_volume(home, registry, &name)?.put(&local, &remote, force)?;
            report_links(&report.skipped_links);
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
                files.cat(&remote, &mut std::io::stdout().lock())?;
                return Ok(0);
            }
            let local = match local {
                Some(local) => local,
                None => {
                    let base = Path::new(&remote)
                        .file_name()
                        .ok_or_else(|| usage(format!("give a LOCAL path to copy `{remote}` to")))?;
                    PathBuf::from(base)
                }
            };
            let report = files.get(&remote, &local, force)?;
            report_links(&report.skipped_links);
            eprintln!(
                "copied {} file(s), {} bytes to {}",
                report.files,
                report.bytes,
                local.display()
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
            println!("deleted volume `{name}`");
        }
    }
    Ok(0)
}

fn open_volume(home: &Home, registry: &mut Registry, name: &str) -> Result<VolumeFiles> {
    let volume = apps::named_volume(registry, name)?;
    VolumeFiles::open(&home.volume_dir(&volume.id), name)
}

fn report_links(links: &[String]) {
    for link in links {
        eprintln!(
            "warning: skipped symbolic link {link}: wasmhost never follows or copies links between a volume and the host"
        );
    }
}

fn cache_command(home: &Home, command: CacheCommand) -> Result<u8> {
    let runtime = Runtime::new(home, 1)?;
    match command {
        CacheCommand::Info => {
            let info = runtime.cache_info()?;
            println!(
                "{} entries, {} bytes in {}",
                info.entries,
                info.bytes,
                info.dir.display()
            );
        }
        CacheCommand::Clear => {
            let removed = runtime.clear_cache()?;
            println!("removed {removed} entries");
        }
    }
    Ok(0)
}
