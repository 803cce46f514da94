//! Where the library's diagnostics go. The library only emits `tracing`
//! events; this module decides how they read. A command prints them as the
//! CLI's own lines (`warning: ...`, and `note: ...` on a terminal, where a
//! person waits, e.g. for a module to compile); a node (`serve`) prints
//! every line with its time, level and node id, as text or as one JSON
//! object a line for machines (`--log-format json`).

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, fmt as subscriber_fmt};
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

/// Diagnostics of a command: warnings always, notes on a terminal only.
pub fn install_for_command() {
    let most = match std::io::stderr().is_terminal() {
        true => Level::INFO,
        false => Level::WARN,
    };
    install(Style::Command, most);
}

/// Diagnostics of a node: every note and warning, with time and node id,
/// and more with `WASMHOST_LOG=debug` (or `trace`).
pub fn install_for_node(format: LogFormat) {
    let most = std::env::var("WASMHOST_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(Level::INFO);
    install(Style::Node(format), most);
}

/// Names the node in every line from now on.
pub fn set_node(id: &str) {
    let _ = NODE.set(id.to_owned());
}

fn install(style: Style, most: Level) {
    // Only wasmhost's own events: its dependencies' are theirs to debug.
    let layer = subscriber_fmt::layer()
        .event_format(Lines(style))
        .with_writer(std::io::stderr)
        .with_filter(Targets::new().with_target("wasmhost", most));
    // Fails only if one is installed already, which then stays.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
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
