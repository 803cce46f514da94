//! Text that a guest or a module chose, made safe for a terminal.
//!
//! A file name in a volume, an import name in a module or a function name in
//! a trap message can hold a newline, a carriage return, ESC or BEL: printed
//! raw, it forges rows and warnings or retitles the terminal (OSC). Every
//! human output that shows such text goes through this module; `--json`
//! output stays exact (serde escapes control characters itself).
//!
//! Escapes follow bash's `$'…'` quoting (`\n`, `\e`, `\xff`, `\u202e`), so a
//! name printed by [`escape_name`] can be typed back as `$'…'` to address it.

use std::ffi::OsStr;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;

/// `name` with control characters, backslashes and bytes that are not UTF-8
/// escaped: two distinct names always print differently, and none can act on
/// the terminal.
pub fn escape_name(name: &OsStr) -> String {
    escape(name.as_bytes(), true)
}

/// `text` with control characters escaped, for messages that may quote a
/// guest's or a module's words (link errors, trap messages). Backslashes
/// stay, so text already escaped by [`escape_name`] is unchanged.
pub fn escape_control(text: &str) -> String {
    escape(text.as_bytes(), false)
}

fn escape(bytes: &[u8], backslash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' if backslash => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                '\r' => out.push_str("\\r"),
                '\x1b' => out.push_str("\\e"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                // C1 controls (a terminal may take U+009B for CSI) and the
                // bidirectional overrides that reorder what a line shows.
                c if c.is_control() || is_bidi_control(c) => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_as_bash_would_read_them() {
        let name = OsStr::new("a\n\r\x1b]0;title\x07\x00\x7f\u{9b}\u{202e}b");
        assert_eq!(
            escape_name(name),
            "a\\n\\r\\e]0;title\\a\\x00\\x7f\\u009b\\u202eb"
        );
    }

    #[test]
    fn distinct_names_print_distinctly() {
        let invalid = OsStr::from_bytes(b"caf\xe9");
        let other = OsStr::from_bytes(b"caf\xe8");
        let literal = OsStr::new("caf\\xe9");
        let printed: Vec<_> = [invalid, other, literal]
            .into_iter()
            .map(escape_name)
            .collect();
        assert_eq!(printed, ["caf\\xe9", "caf\\xe8", "caf\\\\xe9"]);
    }

    #[test]
    fn escape_control_keeps_backslashes_and_printable_text() {
        assert_eq!(escape_control("C:\\x ünïcode\t"), "C:\\x ünïcode\\t");
        let once = escape_name(OsStr::new("x\x1by"));
        assert_eq!(escape_control(&once), once);
    }
}
