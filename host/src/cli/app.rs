//! `wasmhost app list|stop|logs`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use wasmhost::home::Home;
use wasmhost::manifest::units::{self, DURATION_UNITS};
use wasmhost::registry::{AppRecord, LogFilter, LogLine, Registry, Stream, format_ms, now_ms};
use wasmhost::text::escape_control;
use wasmhost::{apps, calls};

use super::confirm::confirm;
use super::output::{app_json, outln, table, timestamp, timestamp_ms};
use super::{open_state, usage};

#[derive(Subcommand)]
pub enum AppCommand {
    /// List running apps (with --all, stopped ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop an app: interrupt its instances and delete its ephemeral volumes.
    Stop {
        /// App id, or the name of exactly one running app.
        app: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Show the output lines of an app's calls, oldest first.
    Logs(LogsArgs),
}

#[derive(Args)]
pub struct LogsArgs {
    /// App id, or a name (the newest deployed app of that name).
    app: String,
    /// Only the calls of this function.
    #[arg(long)]
    function: Option<String>,
    /// Only this call's lines.
    #[arg(long)]
    call: Option<String>,
    /// Only lines written in the last DURATION (e.g. 10m, 1h30m).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only the last N lines (then new ones, with --follow).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Keep printing lines as calls write them, until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per line: time, call, function, stream, line.
    #[arg(long)]
    json: bool,
}

pub fn execute(command: AppCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    app_command(&home, &mut registry, command)
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
                            next_tick(a),
                        ]
                    })
                    .collect();
                outln!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "NAME",
                            "KIND",
                            "STATE",
                            "CREATED",
                            "STOPPED",
                            "NEXT TICK"
                        ],
                        &rows
                    )
                )?;
            }
            Ok(0)
        }
        AppCommand::Stop { app, yes } => {
            let record = apps::find_running_app(registry, &app)?;
            confirm(
                &format!(
                    "Stop app `{}` ({}) and delete its ephemeral volumes?",
                    record.name, record.id
                ),
                yes,
            )?;
            apps::stop(home, registry, &record.id, false)?;
            outln!("stopped app `{}` ({})", record.name, record.id)?;
            Ok(0)
        }
        AppCommand::Logs(args) => logs(registry, args),
    }
}

/// The soonest tick of an app's schedules, and whose it is when the app
/// has several scheduled functions.
fn next_tick(app: &AppRecord) -> String {
    let Some((function, tick)) = app.next_ticks.iter().min_by_key(|(_, tick)| **tick) else {
        return String::new();
    };
    match app.next_ticks.len() {
        1 => timestamp_ms(*tick),
        _ => format!("{} ({function})", timestamp_ms(*tick)),
    }
}

/// Lines read from the registry in one query.
const LOG_PAGE: usize = 1000;
/// How often `app logs --follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

fn logs(registry: &mut Registry, args: LogsArgs) -> Result<u8> {
    let since = match &args.since {
        None => None,
        Some(text) => {
            let ago = units::parse_duration_or_zero(text).map_err(|problem| {
                usage(format!(
                    "--since {}: {problem}; give a duration such as 10m ({DURATION_UNITS})",
                    text.escape_debug()
                ))
            })?;
            Some(now_ms().saturating_sub(ago.as_millis().try_into().unwrap_or(i64::MAX)))
        }
    };
    let app = calls::logs_app(registry, &args.app)?;
    if let Some(id) = &args.call {
        let call = calls::find(registry, id)?;
        if call.app_id != app.id {
            return Err(usage(format!(
                "call {} is of app `{}` ({}), not of `{}` ({})",
                call.id, call.app, call.app_id, app.name, app.id
            )));
        }
    }
    let mut filter = LogFilter {
        function: args.function.clone(),
        call: args.call.clone(),
        since,
        after: 0,
    };
    let stop = Arc::new(AtomicBool::new(false));
    if args.follow {
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot handle Ctrl-C")?;
    }
    let mut out = std::io::stdout().lock();
    if let Some(n) = args.tail {
        // One line at least, so that --tail 0 --follow starts after it.
        let lines = registry.read(|tx| tx.log_lines(&app.id, &filter, n.max(1), true))?;
        if let Some(last) = lines.last() {
            filter.after = last.seq;
        }
        print_lines(
            &mut out,
            &lines[lines.len() - n.min(lines.len())..],
            args.json,
        )?;
    } else {
        loop {
            let lines = registry.read(|tx| tx.log_lines(&app.id, &filter, LOG_PAGE, false))?;
            let Some(last) = lines.last() else { break };
            filter.after = last.seq;
            print_lines(&mut out, &lines, args.json)?;
            if lines.len() < LOG_PAGE {
                break;
            }
        }
    }
    out.flush()?;
    while args.follow && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(FOLLOW_POLL);
        loop {
            let lines = registry.read(|tx| tx.log_lines(&app.id, &filter, LOG_PAGE, false))?;
            let Some(last) = lines.last() else { break };
            filter.after = last.seq;
            print_lines(&mut out, &lines, args.json)?;
            out.flush()?;
            if lines.len() < LOG_PAGE || stop.load(Ordering::SeqCst) {
                break;
            }
        }
    }
    Ok(0)
}

/// Log lines as `TIME CALL FUNCTION STREAM: LINE` (the line escaped for a
/// terminal), or with `json` as one JSON object each.
fn print_lines(out: &mut impl Write, lines: &[LogLine], json: bool) -> Result<()> {
    for line in lines {
        if json {
            writeln!(out, "{}", serde_json::to_string(line)?)?;
        } else {
            let stream = match line.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            writeln!(
                out,
                "{} {} {} {stream}: {}",
                format_ms(line.time),
                line.call,
                line.function,
                escape_control(&line.line)
            )?;
        }
    }
    Ok(())
}
