//! Test guest for `--map` streaming (tests/streaming.rs). Its arguments,
//! joined and split at whitespace, are one op, so a `--map` line picks it
//! (words from a `#` on are padding, ignored):
//!
//! - `wait PATH TAG`: waits for PATH to exist, then prints TAG.
//! - `emit TAG KIB COUNT`: appends TAG to the file COUNT (`-` for none),
//!   then prints TAG and KIB lines of 1 KiB, each starting with TAG.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::process::exit;
use std::thread::sleep;
use std::time::Duration;

fn main() {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .flat_map(|arg| {
            arg.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let words: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .take_while(|w| *w != "#")
        .collect();
    let mut out = io::stdout().lock();
    match words.as_slice() {
        ["wait", path, tag] => {
            while !Path::new(path).exists() {
                sleep(Duration::from_millis(10));
            }
            writeln!(out, "{tag}").unwrap();
        }
        ["emit", tag, kib, count] => {
            if *count != "-" {
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(count)
                    .unwrap();
                writeln!(file, "{tag}").unwrap();
            }
            writeln!(out, "{tag}").unwrap();
            let line = format!("{tag} {}\n", "x".repeat(1023 - tag.len() - 2));
            for _ in 0..kib.parse::<u64>().unwrap() {
                out.write_all(line.as_bytes()).unwrap();
            }
        }
        _ => {
            eprintln!("mapper: unknown op {words:?}");
            exit(2)
        }
    }
}
