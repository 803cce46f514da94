//! Where the library's diagnostics go. The library only emits `tracing`
//! events; this module decides how they read. A command prints them as the
//! CLI's own lines (`warning: ...`, and `note: ...` on a terminal, where a
//! person waits, e.g. for a module to compile); a node (`serve`) prints
//! every line with its time, level and node id, as text or as one JSON
//! object a line for machines (`--log-format json`).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing::span::Id;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, fmt as subscriber_fmt};
use wasmhost::runtime::COMPILE_TARGET;
use wasmhost::text::escape_control;

/// How a node writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL node=ID: message`
    #[default]
    Text,
    /// One JSON object a line: time, level, node, target, message.
    Json,
}

/// Who reads the lines.
#[derive(Clone, Copy)]
enum Style {
    /// A person at a command: `warning: ...`, as the CLI's own messages.
    Command,
    /// A node's operator or log collector.
    Node(LogFormat),
}

/// The node id a node's lines carry, once it is known.
static NODE: OnceLock<String> = OnceLock::new();

/// Diagnostics of a command: warnings always, notes on a terminal only;
/// a compile as a live line on a terminal, and off one as a note when the
/// module is large (see [`Compiles`]).
pub fn install_for_command() {
    let terminal = std::io::stderr().is_terminal();
    let most = match terminal {
        true => Level::INFO,
        false => Level::WARN,
    };
    install(Style::Command, most, Some(Compiles::new(terminal)));
}

/// Diagnostics of a node: every note and warning, with time and node id,
/// and more with `WASMHOST_LOG=debug` (or `trace`).
pub fn install_for_node(format: LogFormat) {
    let most = std::env::var("WASMHOST_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(Level::INFO);
    install(Style::Node(format), most, None);
}

/// Names the node in every line from now on.
pub fn set_node(id: &str) {
    let _ = NODE.set(id.to_owned());
}

/// Installs the lines of `style` up to `most`; with `compiles`, compiles
/// are its to show rather than lines.
fn install(style: Style, most: Level, compiles: Option<Compiles>) {
    // Only wasmhost's own events: its dependencies' are theirs to debug.
    let mut targets = Targets::new().with_target("wasmhost", most);
    if compiles.is_some() {
        targets = targets.with_target(COMPILE_TARGET, LevelFilter::OFF);
    }
    let layer = subscriber_fmt::layer()
        .event_format(Lines(style))
        .with_writer(std::io::stderr)
        .with_filter(targets);
    // Compiles see their own target only: a layer without a filter would
    // turn on every span and event of every crate (wasmtime-wasi makes one
    // for each WASI call).
    let compiles =
        compiles.map(|c| c.with_filter(Targets::new().with_target(COMPILE_TARGET, Level::INFO)));
    let subscriber = tracing_subscriber::registry().with(layer).with(compiles);
    // Fails only if one is installed already, which then stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Off a terminal, a compile of a module this large or larger gets its one
/// `note:` line: it takes seconds to minutes (3 minutes for a 99 MB
/// CPython), and a log that says nothing meanwhile reads as a hang. Smaller
/// modules compile in well under a second and print nothing, as before.
const NOTED_COMPILE_BYTES: u64 = 4 << 20;

/// Shows the library's compiles (a `compile` span with one note in it,
/// target [`COMPILE_TARGET`]): on a terminal a spinner with the note and
/// the time so far, cleared when the compile ends; off a terminal the
/// note, once, for a large module.
struct Compiles {
    terminal: bool,
    /// The spinners of compiles under way, by their span.
    spinners: Mutex<HashMap<Id, ProgressBar>>,
}

impl Compiles {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            spinners: Mutex::default(),
        }
    }
}

impl<S> Layer<S> for Compiles
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != COMPILE_TARGET {
            return;
        }
        let mut note = CompileNote::default();
        event.record(&mut note);
        let message = escape_control(&note.message);
        if !self.terminal {
            if note.bytes >= NOTED_COMPILE_BYTES {
                // The library prints nothing; this is the CLI's own line.
                let _ = writeln!(std::io::stderr(), "note: {message}");
            }
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let spinner = ProgressBar::new_spinner().with_message(message);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            spinner.set_style(style);
        }
        spinner.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut spinners) = self.spinners.lock() {
            spinners.insert(span.id(), spinner);
        }
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let spinner = self.spinners.lock().ok().and_then(|mut s| s.remove(&id));
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
    }
}

/// The message and size of a compile's note.
#[derive(Default)]
struct CompileNote {
    message: String,
    bytes: u64,
}

impl Visit for CompileNote {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "bytes" {
            self.bytes = value;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        }
    }
}

/// Formats an event as one line in a [`Style`].
struct Lines(Style);

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        // Messages quote what guests and modules named: escaped, so they
        // cannot forge lines or act on a terminal.
        let message = escape_control(&fields.text());
        match self.0 {
            Style::Command => {
                let prefix = match level {
                    Level::ERROR => "error",
                    Level::WARN => "warning",
                    _ => "note",
                };
                writeln!(writer, "{prefix}: {message}")
            }
            Style::Node(LogFormat::Text) => writeln!(
                writer,
                "{} {level:>5} node={}: {message}",
                now(),
                NODE.get().map_or("-", String::as_str)
            ),
            Style::Node(LogFormat::Json) => {
                let line = serde_json::json!({
                    "time": now(),
                    "level": level.as_str(),
                    "node": NODE.get(),
                    "target": event.metadata().target(),
                    "message": fields.text(),
                });
                writeln!(writer, "{line}")
            }
        }
    }
}

/// RFC 3339 in UTC, to the millisecond.
fn now() -> String {
    DateTime::<Utc>::from(SystemTime::now()).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    others: String,
}

impl Fields {
    fn text(&self) -> String {
        format!("{}{}", self.message, self.others)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.others, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let _ = write!(self.others, " {name}={value:?}");
            }
        }
    }
}
