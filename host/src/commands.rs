//! One function per command; each returns the process exit code.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use wasmhost::apps::{self, LiveApp};
use wasmhost::error::UsageError;
use wasmhost::home::Home;
use wasmhost::invoke::{
    MapInput, MapReport, MapSink, StopCause, Target, map_lines, stop_cause_now, watch_for_stop,
};
use wasmhost::manifest::{self, AppManifest, FunctionSpec};
use wasmhost::module_store::Snapshot;
use wasmhost::registry::{AppKind, CallState, Registry};
use wasmhost::runtime::{BadModule, Finished, Outcome, Program, Runtime};
use wasmhost::slots::Slots;
use wasmhost::text::{escape_control, escape_name};
use wasmhost::volume_files::{Skipped, VolumeFiles};
use wasmhost::volumes;

use crate::confirm::confirm;
use crate::output::{app_json, outln, table, timestamp};
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
        Command::Deploy { app, force, yes } => {
            let manifest = manifest::load(&app)?;
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
            deploy(&home, &mut registry, &manifest, &snapshots, force, yes)
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

/// Compiles a function's module from `file` (a deployed app's snapshot of
/// its `module`, or `module` itself). A module wasmtime refuses is bad input,
/// reported at the function's `module` (or `entry`) in `app_toml` (app.toml,
/// function) when there is one at hand; failing to store it in the cache is
/// not.
fn load_program(
    runtime: &Runtime,
    file: &Path,
    spec: &FunctionSpec,
    app_toml: Option<(&Path, &str)>,
) -> Result<Program> {
    runtime.load(file, spec).map_err(|e| {
        let Some(bad) = e.downcast_ref::<BadModule>() else {
            return e;
        };
        let problem = format!("module {} {}", spec.module.display(), bad.problem);
        match app_toml {
            Some((file, function)) if bad.at_entry => {
                manifest::entry_error(file, function, problem, &bad.fix).into()
            }
            Some((file, function)) => {
                manifest::module_error(file, function, problem, &bad.fix).into()
            }
            None => usage(format!("{problem}; fix: {}", bad.fix)),
        }
    })
}

/// `--map` inputs, read as invocations start.
struct MapInputs {
    lines: Box<dyn Iterator<Item = MapInput> + Send>,
    /// How many there are, when that is known (a regular file).
    count: Option<usize>,
}

fn open_map_inputs(invoke: &InvokeArgs) -> Result<Option<MapInputs>> {
    let Some(source) = &invoke.map else {
        return Ok(None);
    };
    if source == "-" {
        return Ok(Some(MapInputs {
            lines: Box::new(map_lines(BufReader::new(std::io::stdin()))),
            count: None,
        }));
    }
    let cannot = |e: std::io::Error| usage(format!("cannot read --map file {source}: {e}"));
    let mut file = File::open(source).map_err(cannot)?;
    let count = if file.metadata().map_err(cannot)?.is_file() {
        let count = count_lines(&mut file).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        Some(count)
    } else {
        None
    };
    Ok(Some(MapInputs {
        lines: Box::new(map_lines(BufReader::new(file))),
        count,
    }))
}

/// Lines as `map_lines` reads them: a last line needs no newline.
fn count_lines(file: &mut File) -> std::io::Result<usize> {
    let (mut lines, mut last) = (0, b'\n');
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines + usize::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        last = buf[n - 1];
    }
}

fn run(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    function: &str,
    invoke: &InvokeArgs,
    inputs: Option<MapInputs>,
    program: Program,
) -> Result<u8> {
    let (live, lease) = apps::start_ephemeral(home, registry, manifest)?;
    let served = serve(home, &live, function, None, program, invoke, inputs);
    apps::stop_owned(home, registry, &live.record.id, lease)?;
    served
}

fn deploy(
    home: &Home,
    registry: &mut Registry,
    manifest: &AppManifest,
    snapshots: &BTreeMap<String, Snapshot>,
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
                let why = match manifest.volumes.get(&key) {
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
    let deployed = apps::deploy(home, registry, manifest, snapshots, &plan, force)?;
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

fn call(
    home: &Home,
    registry: &mut Registry,
    app: &str,
    function: &str,
    invoke: &InvokeArgs,
) -> Result<u8> {
    let (live, function, call) = apps::start_call(home, registry, app, function)?;
    let result = (|| {
        let inputs = open_map_inputs(invoke)?;
        let spec = &live.manifest.functions[&function];
        note_lowered_concurrency(invoke, spec);
        let runtime = Runtime::new(home, instances_at_once(invoke, inputs.as_ref(), spec))?;
        let program = load_program(&runtime, &live.module(home, &function), spec, None)?;
        serve(
            home,
            &live,
            &function,
            Some(&call.id),
            program,
            invoke,
            inputs,
        )
    })();
    let (state, error) = match &result {
        Ok(0) => (CallState::Succeeded, None),
        Ok(code) => (CallState::Failed, Some(format!("exited with code {code}"))),
        Err(e) => (CallState::Failed, Some(format!("{e:#}").replace('\n', " "))),
    };
    apps::finish_call(registry, call, state, error.as_deref())?;
    result
}

/// How many instances of the function run at once: one, or with `--map` the
/// `--concurrency` (default: the function's `concurrency`, else the number
/// of cores), never more than there are inputs when that is known, nor than
/// the function's `concurrency` (see [`note_lowered_concurrency`]).
fn instances_at_once(
    invoke: &InvokeArgs,
    inputs: Option<&MapInputs>,
    spec: &FunctionSpec,
) -> usize {
    let Some(inputs) = inputs else { return 1 };
    let concurrency = match (invoke.concurrency, spec.concurrency) {
        (Some(asked), Some(most)) => asked.min(most) as usize,
        (Some(n), None) | (None, Some(n)) => n as usize,
        (None, None) => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    concurrency.min(inputs.count.unwrap_or(usize::MAX)).max(1)
}

/// `--map` outputs on the process's stdout and stderr, under a progress bar
/// on a terminal.
struct Terminal {
    progress: ProgressBar,
}

impl Terminal {
    /// A bar (of unknown length for stdin) on a terminal; nothing at all
    /// when stderr is piped.
    fn new(inputs: Option<usize>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                progress: ProgressBar::hidden(),
            };
        }
        let (progress, template) = match inputs {
            Some(len) => (
                ProgressBar::new(len as u64),
                "{bar:40} {pos}/{len} {per_sec} eta {eta}",
            ),
            None => (ProgressBar::no_length(), "{spinner} {pos} {per_sec}"),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            progress.set_style(style);
        }
        Self { progress }
    }
}

impl MapSink for Terminal {
    fn output(&mut self, finished: &Finished) -> std::io::Result<()> {
        let written = self.progress.suspend(|| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&finished.stdout)?;
            stdout.flush()?;
            // Only stdout's reader going away stops the map.
            let _ = std::io::stderr().lock().write_all(&finished.stderr);
            Ok(())
        });
        self.progress.inc(1);
        written
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.progress.finish_and_clear();
    }
}

/// Says so when `--map --concurrency` asks for more than the function's
/// `concurrency`, which is the most instances of it at once (SPEC section 3).
fn note_lowered_concurrency(invoke: &InvokeArgs, spec: &FunctionSpec) {
    if let (Some(_), Some(asked), Some(most)) = (&invoke.map, invoke.concurrency, spec.concurrency)
        && asked > most
    {
        eprintln!(
            "note: running at most {most} at once, the function's `concurrency`, not --concurrency {asked}"
        );
    }
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
    call_id: Option<&str>,
    program: Program,
    invoke: &InvokeArgs,
    inputs: Option<MapInputs>,
) -> Result<u8> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let on_signal = (cancelled.clone(), stop_tx.clone());
    ctrlc::set_handler(move || {
        on_signal.0.store(true, Ordering::SeqCst);
        let _ = on_signal.1.send(StopCause::Signal);
    })?;
    watch_for_stop(home, &live.record.id, call_id, cancelled.clone(), stop_tx)?;
    let forward = events_tx.clone();
    std::thread::spawn(move || {
        for cause in stop_rx {
            let _ = forward.send(Event::Stop(cause));
        }
    });

    let spec = live.manifest.functions[function].clone();
    let mounts = live.mounts(home, function);
    let concurrency = instances_at_once(invoke, inputs.as_ref(), &spec);
    // Only a deployed app is called from several processes.
    let slots = spec
        .concurrency
        .filter(|_| live.record.kind == AppKind::Deployed)
        .map(|n| Slots::new(home, &live.record.id, function, n));
    let env: BTreeMap<String, String> = invoke.env.iter().cloned().collect();
    let (worker_home, args, worker_cancelled) =
        (home.clone(), invoke.args.clone(), cancelled.clone());
    std::thread::spawn(move || {
        let target = Target {
            home: &worker_home,
            program: &program,
            function: &spec,
            mounts: &mounts,
            env: &env,
            cancelled: worker_cancelled,
            slots,
        };
        let event = match inputs {
            None => Event::One(target.run_one(&args)),
            Some(inputs) => {
                let mut terminal = Terminal::new(inputs.count);
                Event::Map(target.run_map(&args, inputs.lines, concurrency, &mut terminal))
            }
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
        Event::One(Outcome::Failed(_) | Outcome::Interrupted) => {
            stop_cause_now(home, &live.record.id, call_id)
        }
        Event::Map(report) if report.failed > 0 => {
            stop_cause_now(home, &live.record.id, call_id)
        }
        _ => None,
    };
    match (stopped, first) {
        (Some(StopCause::AppStopped), _) => Err(anyhow::anyhow!(
            "app {app} was stopped (`wasmhost app stop`); its invocations were interrupted"
        )),
        (Some(StopCause::CallCancelled), _) => Err(anyhow::anyhow!(
            "call {} of app {app} was cancelled: {}",
            call_id.unwrap_or_default(),
            apps::why_cancelled(home, call_id.unwrap_or_default())
        )),
        // A call's Ctrl-C ends the call; the deployed app stays.
        (Some(StopCause::Signal), _) | (None, Event::One(Outcome::Interrupted)) => {
            Err(match call_id {
                Some(id) => anyhow::anyhow!("interrupted; call {id} of app {app} ended"),
                None => anyhow::anyhow!("interrupted; stopping app {app}"),
            })
        }
        (None, Event::One(Outcome::Exited(code))) => Ok(code as u8),
        (None, Event::One(Outcome::Failed(reason))) => Err(anyhow::anyhow!(
            "function `{function}` of app {app} {reason}"
        )),
        // A closed stdout ends the map quietly: its reader had enough.
        (None, Event::Map(report)) if report.failed == 0 => Ok(0),
        (None, Event::Map(report)) => {
            // Reasons quote the module (trap messages name its functions);
            // the summary's own lines stay lines.
            let summary: Vec<String> = report.summary().lines().map(escape_control).collect();
            eprintln!("error: {}", summary.join("\n"));
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
                let list: Vec<_> = volumes
                    .iter()
                    .map(|v| serde_json::json!({"name": v.name, "id": v.id, "app_id": v.app_id, "created_at": timestamp(v.created_at)}))
                    .collect();
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
        }
        CacheCommand::Clear => {
            let removed = runtime.clear_cache()?;
            outln!("removed {removed} entries")?;
        }
    }
    Ok(0)
}
