//! The house rules README's "Architecture" section states, checked on the
//! source: rooms (the top-level modules of host/src) import each other
//! without cycles, no library room reaches into the node or the triggers
//! above it, the library prints nothing itself (diagnostics go through
//! `tracing`), and files stay small unless their header says why.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Rooms that only translate: nothing below them may import them.
const TOP_ROOMS: [&str; 3] = ["cli", "node", "triggers"];
/// Who may import a top room: the rooms above it.
const MAY_IMPORT_TOP: [(&str, &[&str]); 3] = [
    ("cli", &[]),
    ("node", &["cli"]),
    ("triggers", &["cli", "node"]),
];
/// The most lines a file has without saying why in its header.
const MAX_FILE_LINES: usize = 600;
/// What a longer file's header says.
const LONG_FILE_REASON: &str = "longer than 600 lines because";
/// The most lines a function has unless its file's header names it (in
/// backticks) to say why.
const MAX_FUNCTION_LINES: usize = 120;

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The room a file belongs to: its top-level module, or None for the
/// crate roots.
fn room_of(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let room = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(room, "lib" | "main")).then(|| room.to_owned())
}

/// The code of a line: nothing for a comment line (a trailing comment
/// stays, which this source never uses to name a module).
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    line
}

/// The rooms a file's code names as `crate::ROOM` (or `wasmhost::ROOM` in
/// the binary), including grouped `crate::{a, b::c}` imports.
fn rooms_named(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    let code: String = text.lines().map(code).collect::<Vec<_>>().join("\n");
    for prefix in prefixes {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                rooms.extend(group_items(group).into_iter().map(leading_identifier));
            } else {
                rooms.insert(leading_identifier(rest));
            }
        }
    }
    rooms
}

/// The items of a `{a, b::{c, d}, e}` group (`group` starts after its
/// `{`), split at its own commas.
fn group_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

fn leading_identifier(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

struct Source {
    /// room -> rooms it imports (other than itself).
    imports: BTreeMap<String, BTreeSet<String>>,
    /// (file, text) of every file.
    files: Vec<(PathBuf, String)>,
}

fn read_source() -> Source {
    let root = source_root();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths.sort();
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path).unwrap();
        if let Some(room) = room_of(&root, &path) {
            let prefixes: &[&str] = match room.as_str() {
                "cli" => &["crate::", "wasmhost::"],
                _ => &["crate::"],
            };
            let named = rooms_named(&text, prefixes);
            let entry = imports.entry(room.clone()).or_default();
            entry.extend(named.into_iter().filter(|r| *r != room && !r.is_empty()));
        }
        files.push((path, text));
    }
    let rooms: BTreeSet<String> = imports.keys().cloned().collect();
    for named in imports.values_mut() {
        // `crate::error::usage!` and friends name rooms; macro paths and
        // items of the crate root (none today) do not.
        named.retain(|r| rooms.contains(r));
    }
    Source { imports, files }
}

/// The cycles of the room graph: its strongly connected components of
/// more than one room (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, room: &'a str) {
        let n = s.index.len();
        s.index.insert(room, n);
        s.low.insert(room, n);
        s.stack.push(room);
        s.on_stack.insert(room);
        for next in s.graph.get(room).into_iter().flatten() {
            let next = next.as_str();
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[room].min(s.low[next]);
                s.low.insert(room, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[room].min(s.index[next]);
                s.low.insert(room, low);
            }
        }
        if s.low[room] == s.index[room] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top.to_owned());
                if top == room {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for room in graph.keys() {
        if !state.index.contains_key(room.as_str()) {
            visit(&mut state, room);
        }
    }
    state.found
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
    let named = rooms_named(
        "use crate::{apps::{self, X}, slots};\nlet x = crate::home::Home;\n// crate::node",
        &["crate::"],
    );
    assert_eq!(named, ["apps", "home", "slots"].map(String::from).into());
}

#[test]
fn rooms_import_each_other_without_cycles() {
    let source = read_source();
    let found = cycles(&source.imports);
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let edges: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    source.imports[from]
                        .iter()
                        .filter(|to| component.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "rooms that import each other:\n  {}",
        described.join("\n  ")
    );
}

/// README's "Architecture" table: room -> the rooms it may import.
fn readme_map() -> BTreeMap<String, BTreeSet<String>> {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = readme
        .split("\n## Architecture\n")
        .nth(1)
        .expect("README has an `## Architecture` section");
    let section = section.split("\n## ").next().unwrap();
    let mut map = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            cells.len(),
            3,
            "a row of room, what it owns, what it may import: {row}"
        );
        let room = cells[0].trim_matches('`').trim_end_matches('/').to_owned();
        let may: BTreeSet<String> = cells[2]
            .split(',')
            .map(|r| r.trim().trim_matches('`').to_owned())
            .filter(|r| !r.is_empty() && r != "nothing")
            .collect();
        map.insert(room, may);
    }
    map
}

#[test]
fn readmes_map_names_every_room_and_what_it_imports() {
    let source = read_source();
    let map = readme_map();
    let code_rooms: BTreeSet<&String> = source.imports.keys().collect();
    let mapped: BTreeSet<&String> = map.keys().collect();
    assert_eq!(code_rooms, mapped, "README's rooms differ from host/src's");
    let mut wrong = Vec::new();
    for (room, imported) in &source.imports {
        for other in imported.difference(&map[room]) {
            wrong.push(format!(
                "{room} imports {other}, which README's map does not allow"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_library_room_imports_the_node_or_the_triggers() {
    let source = read_source();
    let mut wrong = Vec::new();
    for (room, imported) in &source.imports {
        for (top, allowed) in MAY_IMPORT_TOP {
            if imported.contains(top) && !allowed.contains(&room.as_str()) {
                wrong.push(format!("{room} imports {top}"));
            }
        }
    }
    assert!(
        TOP_ROOMS
            .iter()
            .all(|top| source.imports.contains_key(*top))
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_library_prints_nothing_itself() {
    let root = source_root();
    let mut printing = Vec::new();
    for (path, text) in &read_source().files {
        let relative = path.strip_prefix(&root).unwrap();
        if relative.starts_with("cli") || relative == Path::new("main.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            if ["eprintln!", "eprint!(", "println!", "print!("]
                .iter()
                .any(|m| line.contains(m))
            {
                printing.push(format!("{}:{}: {}", relative.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        printing.is_empty(),
        "the library prints; use `tracing`:\n{}",
        printing.join("\n")
    );
}

/// The header (`//!` lines) of a file.
fn header(text: &str) -> String {
    text.lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// (name, first line, lines) of each function in `text` longer than
/// `most` lines, found by counting braces from its `fn` line (strings and
/// chars holding braces are blanked first).
fn long_functions(text: &str, most: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<String> = text.lines().map(blank_literals).collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        let (mut depth, mut opened) = (0i64, false);
        for (offset, line) in lines[start..].iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            opened |= code.contains('{');
            if !opened && code.trim_end().ends_with(';') {
                break; // a declaration without a body
            }
            if opened && depth <= 0 {
                if offset + 1 > most {
                    found.push((name, start + 1, offset + 1));
                }
                break;
            }
        }
    }
    found
}

/// The function a line starts, if it does.
fn function_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "pub" | "async" | "const" | "unsafe" | "extern" => continue,
            w if w.starts_with("pub(") => continue,
            "fn" => return words.next().map(leading_identifier),
            _ => return None,
        }
    }
    None
}

/// `line` with the insides of string and char literals blanked.
fn blank_literals(line: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push('"');
            }
            '\'' if matches!(chars.clone().nth(1), Some('\'')) => {
                chars.next();
                chars.next();
                out.push_str("' '");
            }
            c => out.push(c),
        }
    }
    out
}

#[test]
fn the_function_finder_measures_bodies() {
    let text = "fn short() {\n    let s = \"}}}\";\n}\npub(crate) fn long() {\n    a();\n    b();\n}\nfn decl();\n";
    assert_eq!(long_functions(text, 3), [("long".to_owned(), 4, 4)]);
    assert!(long_functions(text, 4).is_empty());
}

#[test]
fn functions_are_short_or_their_file_says_why() {
    let root = source_root();
    let mut long = Vec::new();
    for (path, text) in &read_source().files {
        let header = header(text);
        for (name, line, count) in long_functions(text, MAX_FUNCTION_LINES) {
            if !header.contains(&format!("`{name}`")) {
                let file = path.strip_prefix(&root).unwrap().display();
                long.push(format!("{file}:{line}: fn {name}, {count} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines whose file's header does not name them to say why:\n{}",
        long.join("\n")
    );
}

#[test]
fn files_are_small_or_say_why() {
    let root = source_root();
    let long: Vec<String> = read_source()
        .files
        .iter()
        .filter(|(_, text)| text.lines().count() > MAX_FILE_LINES)
        .filter(|(_, text)| !header(text).contains(LONG_FILE_REASON))
        .map(|(path, text)| {
            format!(
                "{}: {} lines",
                path.strip_prefix(&root).unwrap().display(),
                text.lines().count()
            )
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines whose header does not say why (`{LONG_FILE_REASON} ...`):\n{}",
        long.join("\n")
    );
}
