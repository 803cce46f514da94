//! `wasmhost call`: invoke a deployed app's function in this process, or
//! queue it for the nodes (`--spawn`, `--remote`).

use anyhow::Result;
use clap::Args;
use wasmhost::calls::{self, Ending, Holder, Recorder};
use wasmhost::home::Home;
use wasmhost::invoke::MapRecording;
use wasmhost::module_store;
use wasmhost::registry::{CallState, Registry};
use wasmhost::runtime::{OutputLog, Runtime};

use super::invoke::{
    InvocationFailed, InvokeArgs, Recording, instances_at_once, note_lowered_concurrency,
    open_map_inputs, serve,
};
use super::{load_program, open_state, remote};

#[derive(Args)]
pub struct CallArgs {
    /// Id or name of a deployed app.
    app: String,
    function: String,
    #[command(flatten)]
    invoke: InvokeArgs,
    /// Queue the call (with --map, one per input) for the nodes and print its id at once.
    #[arg(long, conflicts_with = "remote")]
    spawn: bool,
    /// Queue the call(s) for the nodes and wait: output and exit code as a call in this process.
    #[arg(long)]
    remote: bool,
}

pub fn execute(args: CallArgs) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    if args.spawn || args.remote {
        return remote::queue(
            &home,
            &mut registry,
            &args.app,
            &args.function,
            &args.invoke,
            args.remote,
        );
    }
    let holder = Holder::caller(&home)?;
    let recorder = Recorder::new(&home)?;
    let called = call(
        &home,
        &mut registry,
        &holder,
        &recorder,
        &args.app,
        &args.function,
        &args.invoke,
    );
    let recorded = recorder.flush();
    holder.release();
    let code = called?;
    recorded?;
    Ok(code)
}

fn call(
    home: &Home,
    registry: &mut Registry,
    holder: &Holder,
    recorder: &Recorder,
    app: &str,
    function: &str,
    invoke: &InvokeArgs,
) -> Result<u8> {
    let inputs = open_map_inputs(invoke)?;
    let (live, function, call_id) = match &inputs {
        // Each input is a call, recorded as it starts.
        Some(_) => {
            let (live, function) = calls::find_function(registry, app, function)?;
            (live, function, None)
        }
        None => {
            let (live, function, id) = calls::start_call(
                registry,
                holder,
                app,
                function,
                invoke.args(),
                &invoke.env(),
            )?;
            (live, function, Some(id))
        }
    };
    let spec = &live.manifest.functions[&function];
    let result = (|| {
        note_lowered_concurrency(invoke, spec);
        let runtime = Runtime::new(home, instances_at_once(invoke, inputs.as_ref(), spec))?;
        let module = live.module(home, &function, |digest| {
            module_store::fetch(home, registry, digest)
        })?;
        let program = load_program(&runtime, &module, spec, None)?;
        let recording = match &call_id {
            Some(id) => {
                let copy = OutputLog::new();
                recorder.watch(id, &live.record.id, 1, copy.clone());
                Recording::One {
                    call_id: id.clone(),
                    copy,
                }
            }
            None => Recording::Map(MapRecording {
                recorder: recorder.clone(),
                app_id: live.record.id.clone(),
                function: function.clone(),
                module: live.modules.get(&function).cloned(),
                holder: holder.id.clone(),
            }),
        };
        serve(
            home, registry, &live, &function, recording, program, invoke, inputs,
        )
    })();
    if let Some(id) = call_id {
        let (state, exit_code, error) = match &result {
            Ok(0) => (CallState::Succeeded, Some(0), None),
            Ok(code) => (
                CallState::Failed,
                Some(i32::from(*code)),
                Some(format!("exited with code {code}")),
            ),
            // The record names the call's function and app already.
            Err(e) => (
                CallState::Failed,
                None,
                Some(
                    match e.downcast_ref::<InvocationFailed>() {
                        Some(failed) => failed.reason.clone(),
                        None => format!("{e:#}"),
                    }
                    .replace('\n', " "),
                ),
            ),
        };
        let ending = Ending::Finished {
            state,
            exit_code,
            error,
            at: wasmhost::registry::now_ms(),
        };
        recorder.finish(&id, ending, None);
    }
    result
}
