//! Tables and JSON for listing commands.

use wasmhost::text::escape_control;
pub use wasmhost::views::{app_json, snapshot_json, timestamp, volume_json};

/// Unix milliseconds as [`timestamp`] shows seconds.
pub fn timestamp_ms(ms: i64) -> String {
    timestamp(ms.div_euclid(1000))
}

/// `text` a guest wrote, for a terminal: each line's control characters
/// escaped, its newlines kept, a last line without one ended.
pub fn escape_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&escape_control(line.strip_suffix('\n').unwrap_or(line)));
        out.push('\n');
    }
    out
}

/// At most `max` characters of `text`, `…` ending a shortened one.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

/// `println!` that returns a closed stdout as an error, for `main` to end
/// quietly on, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use outln;

/// Whether `error` is stdout's reader having gone (`| head`): the command
/// ends quietly then, with exit code 0, as `head` means "enough".
pub fn stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
