//! Text that a guest or a module chose, made safe for a terminal.
//!
//! A file name in a volume, an import name in a module or a function name in
//! a trap message can hold a newline, a carriage return, ESC or BEL: printed
//! raw, it forges rows and warnings or retitles the terminal (OSC). Every
//! human output that shows such text goes through this module; `--json`
//! output stays exact (serde escapes control characters itself).
//!
//! Escapes follow bash's `$'…'` quoting (`\n`, `\e`, `\xff`, `\u202e`,
//! `\U000e0041`), so a name printed by [`escape_name`] can be typed back as
//! `$'…'` to address it.

use std::ffi::OsStr;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;

/// `name` with control characters, invisible characters, lookalikes of
/// `/`, `\` and space, backslashes and bytes that are not UTF-8 escaped:
/// two distinct names always print differently (but for letters of
/// different scripts that share a shape, and composed and decomposed
/// accents, which `--json` tells apart), and none can act on the terminal.
pub fn escape_name(name: &OsStr) -> String {
    escape(name.as_bytes(), true)
}

/// `text` with control characters, bidi controls and line separators
/// escaped, for messages that may quote a guest's or a module's words (link
/// errors, trap messages, log lines): what could forge a row or reorder a
/// line. Backslashes and other characters stay (emoji sequences keep their
/// joiners), so text already escaped by [`escape_name`] is unchanged.
pub fn escape_control(text: &str) -> String {
    escape(text.as_bytes(), false)
}

/// `name`'s escapes (`true`) or `text`'s.
fn escape(bytes: &[u8], name: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' if name => out.push_str("\\\\"),
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
                // C1 controls (a terminal may take U+009B for CSI), the
                // bidirectional overrides that reorder what a line shows,
                // the separators that break it, and in a name what shows
                // nothing or looks like something else.
                c if c.is_control()
                    || moves_text(c)
                    || (name && (is_invisible(c) || is_lookalike(c))) =>
                {
                    let _ = match c as u32 {
                        code @ ..=0xffff => write!(out, "\\u{code:04x}"),
                        code => write!(out, "\\U{code:08x}"),
                    };
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

/// Characters that print as nothing, or move or break what follows, as
/// inclusive ranges: Unicode's format characters (soft hyphen, zero-width
/// spaces and joiners, bidi marks, overrides and isolates, the byte order
/// mark, tags), the line and paragraph separators, variation selectors, and
/// the fillers and blanks fonts draw empty.
const INVISIBLE: &[(char, char)] = &[
    ('\u{00ad}', '\u{00ad}'),
    ('\u{034f}', '\u{034f}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061c}', '\u{061c}'),
    ('\u{06dd}', '\u{06dd}'),
    ('\u{070f}', '\u{070f}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08e2}', '\u{08e2}'),
    ('\u{115f}', '\u{1160}'),
    ('\u{17b4}', '\u{17b5}'),
    ('\u{180b}', '\u{180f}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{2028}', '\u{202e}'),
    ('\u{2060}', '\u{206f}'),
    ('\u{2800}', '\u{2800}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{fe00}', '\u{fe0f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{ffa0}', '\u{ffa0}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0000}', '\u{e0fff}'),
];

/// Symbols drawn like `/` (division and fraction slashes, solidi) or `\`
/// (set minus, reverse solidi), which make a name look like a path or like
/// another name. Spaces other than U+0020 are the other lookalikes.
const SLASH_LOOKALIKES: &[char] = &[
    '\u{2044}', '\u{2215}', '\u{2571}', '\u{27cb}', '\u{29f8}', '\u{3033}', '\u{ff0f}', '\u{2216}',
    '\u{2572}', '\u{27cd}', '\u{29f5}', '\u{29f9}', '\u{fe68}', '\u{ff3c}',
];

/// Bidi marks, embeddings, overrides and isolates, which reorder what a
/// line shows, and the line and paragraph separators, which break it.
fn moves_text(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn is_invisible(c: char) -> bool {
    INVISIBLE
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

fn is_lookalike(c: char) -> bool {
    (c.is_whitespace() && c != ' ') || SLASH_LOOKALIKES.contains(&c)
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
    fn invisible_and_lookalike_characters_in_names_are_escaped() {
        // Each would print like `ab`, `a/b`, `a b` or break the line.
        let cases = [
            ("a\u{200b}b", "a\\u200bb"),
            ("\u{feff}ab", "\\ufeffab"),
            ("a\u{2028}b", "a\\u2028b"),
            ("a\u{2029}b", "a\\u2029b"),
            ("a\u{2066}b\u{2069}", "a\\u2066b\\u2069"),
            ("a\u{2215}b", "a\\u2215b"),
            ("a\u{2044}b", "a\\u2044b"),
            ("a\u{ff0f}b", "a\\uff0fb"),
            ("a\u{00a0}b", "a\\u00a0b"),
            ("a\u{e0041}b", "a\\U000e0041b"),
        ];
        for (name, shown) in cases {
            assert_eq!(escape_name(OsStr::new(name)), shown, "{name:?}");
        }
        // In any text, what breaks or reorders a line; the rest only where
        // a name is at stake.
        assert_eq!(escape_control("a\u{2028}b\u{2067}"), "a\\u2028b\\u2067");
        let emoji = "1\u{2215}2 \u{00a0}\u{1f469}\u{200d}\u{1f4bb}\u{fe0f}";
        assert_eq!(escape_control(emoji), emoji);
        assert_eq!(escape_name(OsStr::new("ünï cödé")), "ünï cödé");
    }

    #[test]
    fn escape_control_keeps_backslashes_and_printable_text() {
        assert_eq!(escape_control("C:\\x ünïcode\t"), "C:\\x ünïcode\\t");
        let once = escape_name(OsStr::new("x\x1by"));
        assert_eq!(escape_control(&once), once);
    }
}
