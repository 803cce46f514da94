//! `wasmhost call`: invoke a deployed app's function in this process.

use anyhow::Result;
use clap::Args;
use wasmhost::apps;
use wasmhost::home::Home;
use wasmhost::registry::{CallState, Registry};
use wasmhost::runtime::Runtime;

use super::invoke::{
    InvokeArgs, instances_at_once, note_lowered_concurrency, open_map_inputs, serve,
};
use super::{load_program, open_state};

#[derive(Args)]
pub struct CallArgs {
    /// Id or name of a deployed app.
    app: String,
    function: String,
    #[command(flatten)]
    invoke: InvokeArgs,
}

pub fn execute(args: CallArgs) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    call(
        &home,
        &mut registry,
        &args.app,
        &args.function,
        &args.invoke,
    )
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
