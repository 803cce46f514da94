//! `call --spawn` and `call --remote`: calls queued in the registry for the
//! nodes, which need no node address; `--remote` then waits for them and
//! prints and exits as a call in this process would.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use wasmhost::calls;
use wasmhost::home::Home;
use wasmhost::invoke::map::MapReport;
use wasmhost::invoke::{Ended, Stop};
use wasmhost::registry::{self, CallRecord, CallState, Registry, Waiter};
use wasmhost::text::escape_control;

use super::invoke::{InvokeArgs, open_map_inputs};
use super::output::outln;
use super::usage;

/// How often a waiting command looks at the registry.
pub const WAIT_POLL: Duration = Duration::from_millis(100);

pub fn queue(
    home: &Home,
    registry: &mut Registry,
    app: &str,
    function: &str,
    invoke: &InvokeArgs,
    wait: bool,
) -> Result<u8> {
    if invoke.concurrency().is_some() {
        return Err(usage(
            "--concurrency applies to calls in this process; queued calls run at most the function's `concurrency` at once".into(),
        ));
    }
    // Read whole, so that a bad line queues nothing.
    let inputs: Vec<Vec<String>> = match open_map_inputs(invoke)? {
        None => vec![invoke.args().to_vec()],
        Some(inputs) => inputs
            .lines
            .enumerate()
            .map(|(i, line)| {
                let line =
                    line.map_err(|bad| usage(format!("input {}: {}", i + 1, bad.problem)))?;
                let mut args = invoke.args().to_vec();
                args.push(line);
                Ok(args)
            })
            .collect::<Result<_>>()?,
    };
    let lines: Vec<String> = inputs
        .iter()
        .map(|a| a.last().cloned().unwrap_or_default())
        .collect();
    let mut ids = Vec::with_capacity(inputs.len());
    calls::queue_calls(
        registry,
        app,
        function,
        inputs.into_iter(),
        &invoke.env(),
        |id| {
            if !wait {
                outln!("{id}")?;
            }
            ids.push(id.to_owned());
            Ok(())
        },
    )?;
    if !calls::node_serving(home)? {
        eprintln!(
            "note: no node is serving {}; the call(s) wait in the queue until `wasmhost serve` runs",
            home.root().display()
        );
    }
    if !wait {
        return Ok(0);
    }
    let single = invoke.map().is_none();
    // Ctrl-C ends queued calls as it ends calls in this process: cancelled.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
    let mut report = MapReport::default();
    let mut waiter = Waiter::open(&home.registry(), &[registry::ENDED])?;
    for (id, line) in ids.iter().zip(lines) {
        let Some((call, output)) = wait_for(registry, &mut waiter, id, Some(&interrupted))? else {
            let mut cancelled = 0;
            for id in &ids {
                cancelled += usize::from(
                    calls::cancel(registry, id, "Ctrl-C on `wasmhost call --remote`").is_ok(),
                );
            }
            return Err(anyhow::anyhow!(
                "interrupted; {cancelled} call(s) of function `{function}` of app `{app}` that had not ended were cancelled"
            ));
        };
        print_output(&output)?;
        if single {
            return exit_code(&call);
        }
        report.record(Ok(line), ended(&call));
    }
    if report.failed == 0 {
        return Ok(0);
    }
    let summary: Vec<String> = report.summary().lines().map(escape_control).collect();
    eprintln!("error: {}", summary.join("\n"));
    Ok(1)
}

/// A finished call's stdout and stderr, written raw as the guest wrote them.
pub fn print_output([stdout, stderr]: &[String; 2]) -> Result<()> {
    std::io::stdout().write_all(stdout.as_bytes())?;
    std::io::stdout().flush()?;
    let _ = std::io::stderr().write_all(stderr.as_bytes());
    Ok(())
}

/// How a finished call ends a command that waited for it, as a call in
/// this process would: its exit code, or an error saying why it has none.
pub fn exit_code(call: &CallRecord) -> Result<u8> {
    let id = &call.id;
    match ended(call) {
        Ended::Exited(code) => Ok(code as u8),
        Ended::Failed(reason) | Ended::TimedOut(reason) => Err(anyhow::anyhow!(
            "call {id} of function `{}` of app `{}` {reason}",
            call.function,
            call.app
        )),
        Ended::Stopped(_) => Err(anyhow::anyhow!(
            "call {id} was cancelled: {}",
            call.error.as_deref().unwrap_or_default()
        )),
    }
}

/// How a finished call ended, as a local invocation would say it.
fn ended(call: &CallRecord) -> Ended {
    match (call.state, call.exit_code) {
        (CallState::Cancelled, _) => Ended::Stopped(Stop::CallCancelled),
        (_, Some(code)) => Ended::Exited(code),
        _ => Ended::Failed(call.error.clone().unwrap_or_else(|| "failed".into())),
    }
}

/// Waits for call `id` to end; returns it with its stdout and stderr.
/// None if `interrupted` was set first.
pub fn wait_for(
    registry: &mut Registry,
    waiter: &mut Waiter,
    id: &str,
    interrupted: Option<&AtomicBool>,
) -> Result<Option<(CallRecord, [String; 2])>> {
    loop {
        if interrupted.is_some_and(|i| i.load(Ordering::SeqCst)) {
            return Ok(None);
        }
        let ended = registry.read(|tx| {
            let call = tx
                .call(id)?
                .ok_or_else(|| anyhow::anyhow!("call {id} has been deleted"))?;
            if !call.state.is_final() {
                return Ok(None);
            }
            let (output, _) = tx.call_output(&call)?;
            Ok(Some((call, output)))
        })?;
        if let Some(ended) = ended {
            return Ok(Some(ended));
        }
        waiter.wait(WAIT_POLL)?;
    }
}
