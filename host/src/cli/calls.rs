//! `wasmhost calls list|get|cancel`: the records of deployed apps' calls,
//! read from the registry (no node address needed).

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use wasmhost::calls;
use wasmhost::home::Home;
use wasmhost::registry::{
    self, AppKind, CallKind, CallRecord, CallState, KindFilter, Registry, Waiter, format_ms,
};
use wasmhost::text::escape_control;
use wasmhost::views::FullCall;

use super::open_state;
use super::output::{escape_lines, outln, shorten, table, timestamp_ms};
use super::remote::{exit_code, print_output, wait_for};

#[derive(Subcommand)]
pub enum CallsCommand {
    /// List calls, newest first.
    List {
        /// Only the calls of this app (an id, or a name: every app of that name).
        app: Option<String>,
        #[arg(long)]
        json: bool,
        /// Show at most this many calls.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only calls made so: `call` (a command or the API), `web` (requests
        /// to web endpoints), `schedule`, or `all`. Without it, every kind but
        /// web requests, which are summed up per endpoint instead.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
    },
    /// Show a call: its fields, attempts and output.
    Get {
        /// The call's id (`ca-…`).
        call: String,
        /// Wait for the call to end, print its output as it was written and
        /// exit with its exit code (with --json: print the record, same exit code).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running call.
    Cancel {
        /// The call's id (`ca-…`).
        call: String,
    },
}

/// `--kind`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Call,
    Web,
    Schedule,
    All,
}

impl KindArg {
    fn filter(kind: Option<Self>) -> KindFilter {
        match kind {
            None => KindFilter::NotWeb,
            Some(KindArg::All) => KindFilter::All,
            Some(KindArg::Call) => KindFilter::Only(CallKind::Call),
            Some(KindArg::Web) => KindFilter::Only(CallKind::Web),
            Some(KindArg::Schedule) => KindFilter::Only(CallKind::Schedule),
        }
    }
}

pub fn execute(command: CallsCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    match command {
        CallsCommand::List {
            app,
            json,
            limit,
            kind,
        } => {
            let kinds = KindArg::filter(kind);
            list(&mut registry, app.as_deref(), kinds, json, limit)
        }
        CallsCommand::Get { call, wait, json } => get(&home, &mut registry, &call, wait, json),
        CallsCommand::Cancel { call } => {
            let was = calls::cancel(&mut registry, &call, "`wasmhost calls cancel`")?;
            outln!("cancelled call {} (was {})", was.id, was.state.as_str())?;
            Ok(0)
        }
    }
}

/// How much of a call's error the table shows.
const ERROR_COLUMN: usize = 60;

/// Calls as a table, web requests summed up if they were left out, then
/// when each scheduled function (of `app_filter`'s app, or of all) runs
/// next; with `json`, the calls alone.
fn list(
    registry: &mut Registry,
    app_filter: Option<&str>,
    kinds: KindFilter,
    json: bool,
    limit: usize,
) -> Result<u8> {
    let (calls, web) = calls::list(registry, app_filter, kinds, limit)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&calls)?)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.app.clone(),
                c.function.clone(),
                c.state.as_str().to_owned(),
                c.attempts.to_string(),
                c.exit_code.map(|e| e.to_string()).unwrap_or_default(),
                timestamp_ms(c.created_at),
                shorten(
                    &escape_control(c.error.as_deref().unwrap_or_default()),
                    ERROR_COLUMN,
                ),
            ]
        })
        .collect();
    outln!(
        "{}",
        table(
            &[
                "ID", "APP", "FUNCTION", "STATE", "ATTEMPTS", "EXIT", "CREATED", "ERROR"
            ],
            &rows
        )
    )?;
    for (app, function, requests, failed, last) in &web {
        outln!(
            "web requests: {app}/{function}: {requests} ({failed} failed), the last at {}; `--kind web` lists them",
            timestamp_ms(*last)
        )?;
    }
    // What comes next, under what has been.
    for app in registry.read(|tx| tx.list_apps(false))? {
        if app.next_ticks.is_empty() || app.kind != AppKind::Deployed {
            continue;
        }
        if app_filter.is_some_and(|filter| filter != app.id && filter != app.name) {
            continue;
        }
        for (function, tick) in &app.next_ticks {
            outln!(
                "next tick: {}/{function} at {}",
                app.name,
                timestamp_ms(*tick)
            )?;
        }
    }
    Ok(0)
}

fn get(home: &Home, registry: &mut Registry, id: &str, wait: bool, json: bool) -> Result<u8> {
    let call = calls::find(registry, id)?;
    let mut code = 0;
    if wait {
        if call.state == CallState::Queued && !calls::node_serving(home)? {
            eprintln!(
                "note: no node is serving {}; call {} waits in the queue until `wasmhost serve` runs",
                home.root().display(),
                call.id
            );
        }
        let mut waiter = Waiter::open(&home.registry(), &[registry::ENDED])?;
        let (call, output) = wait_for(registry, &mut waiter, &call.id, None)?
            .expect("only an interrupt ends the wait early");
        if !json {
            print_output(&output)?;
            return exit_code(&call);
        }
        // The record says why; the exit code says it to a script.
        code = exit_code(&call).unwrap_or(1);
    }
    let full = registry.read(|tx| {
        let call = tx
            .call(id)?
            .ok_or_else(|| anyhow::anyhow!("call {id} has been deleted"))?;
        FullCall::read(tx, call)
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&full)?)?;
        return Ok(code);
    }
    let FullCall {
        call,
        stdout,
        stderr,
        dropped_stdout,
        dropped_stderr,
        attempt_history: attempts,
    } = full;
    let dropped = [dropped_stdout, dropped_stderr];
    outln!("{}", fields(&call))?;
    if !attempts.is_empty() {
        let rows: Vec<Vec<String>> = attempts
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    a.node.clone().unwrap_or_else(|| "-".into()),
                    format_ms(a.started_at),
                    a.finished_at.map(format_ms).unwrap_or_default(),
                    a.exit_code.map(|e| e.to_string()).unwrap_or_default(),
                    escape_control(a.error.as_deref().unwrap_or_default()),
                ]
            })
            .collect();
        outln!(
            "\n{}",
            table(
                &["ATTEMPT", "NODE", "STARTED", "FINISHED", "EXIT", "ERROR"],
                &rows
            )
        )?;
    }
    for (name, text, dropped) in [
        ("stdout", stdout, dropped[0]),
        ("stderr", stderr, dropped[1]),
    ] {
        let more = match dropped {
            0 => String::new(),
            n => format!(" ({n} more bytes were not kept)"),
        };
        outln!("\n--- {name}{more} ---")?;
        std::io::stdout().write_all(escape_lines(&text).as_bytes())?;
    }
    Ok(0)
}

/// A call's fields, one per line.
fn fields(call: &CallRecord) -> String {
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let args = serde_json::to_string(&call.args).unwrap_or_default();
    let rows: [(&str, String); 13] = [
        ("id", call.id.clone()),
        ("app", format!("{} ({})", call.app, call.app_id)),
        ("function", call.function.clone()),
        ("args", escape_control(&args)),
        ("state", call.state.as_str().to_owned()),
        (
            "attempts",
            format!("{} of at most {}", call.attempts, call.max_attempts),
        ),
        ("node", or_none(call.node.clone())),
        ("exit code", or_none(call.exit_code.map(|c| c.to_string()))),
        ("error", or_none(call.error.as_deref().map(escape_control))),
        ("created", format_ms(call.created_at)),
        ("started", or_none(call.started_at.map(format_ms))),
        ("finished", or_none(call.finished_at.map(format_ms))),
        ("tick", or_none(call.tick.map(format_ms))),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}
