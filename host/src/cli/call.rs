//! `wasmhost call`: invoke a deployed app's function in this process, or
//! queue it for the nodes (`--spawn`, `--remote`).

use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use wasmhost::calls::{self, Ending, Holder, Recorder};
use wasmhost::home::Home;
use wasmhost::invoke::Ended;
use wasmhost::invoke::map::MapRecording;
use wasmhost::module_store;
use wasmhost::registry::Registry;
use wasmhost::runtime::{OutputLog, Runtime};

use super::invoke::{
    InvokeArgs, Ran, Recording, exit, instances_at_once, note_lowered_concurrency, open_map_inputs,
    serve,
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
    let live = Arc::new(live);
    let spec = &live.manifest.functions[&function];
    let ran = (|| {
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
                holder: holder.id.clone(),
            }),
        };
        serve(
            home,
            registry,
            live.clone(),
            &function,
            recording,
            program,
            invoke,
            inputs,
        )
    })();
    // A stop ends the call as what the user is told, not as the guest did.
    let (code, ended) = match ran {
        Ok(ran) => {
            let code = exit(&ran, home, &live, &function, call_id.as_deref());
            match ran {
                Ran::One(ended) if !matches!(ended, Ended::Stopped(_)) => (code, Some(ended)),
                _ => (code, None),
            }
        }
        Err(e) => (Err(e), None),
    };
    if let Some(id) = call_id {
        // The record names the call's function and app already.
        let ending = match (ended, &code) {
            (Some(ended), _) => ended.ending(1, 1, spec),
            (None, Err(e)) => Ending::failed(None, format!("{e:#}"), 1, 1, spec),
            (None, Ok(_)) => unreachable!("only a stop or an error ends a call without its guest"),
        };
        recorder.finish(&id, ending, None);
    }
    code
}
