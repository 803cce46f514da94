//! Test guest: plants in a volume what the host's `volume` commands must
//! survive (tests/volume_files.rs).
//!
//! Usage: `volfiles OP ARGS...`:
//! - `write-at PATH OFFSET TEXT`: writes TEXT at OFFSET, leaving a hole before it.
//! - `churn DIR MS`: for MS milliseconds, creates and removes files in DIR,
//!   after printing `churning`.
//!
//! Errors go to stderr with exit code 1; usage errors exit 2.

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::process::exit;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["write-at", path, offset, text] => check(path, write_at(path, number(offset), text)),
        ["churn", dir, ms] => check(dir, churn(dir, Duration::from_millis(number(ms)))),
        _ => {
            eprintln!("usage: volfiles write-at PATH OFFSET TEXT | churn DIR MS");
            exit(2)
        }
    }
}

fn write_at(path: &str, offset: u64, text: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(text.as_bytes())
}

/// Keeps 64 names coming and going, so that whatever lists the directory
/// finds entries gone by the time it looks at them.
fn churn(dir: &str, length: Duration) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    println!("churning");
    io::stdout().flush()?;
    let end = Instant::now() + length;
    let mut i = 0u64;
    while Instant::now() < end {
        fs::write(format!("{dir}/f{}", i % 64), "x")?;
        let _ = fs::remove_file(format!("{dir}/f{}", (i + 32) % 64));
        i += 1;
    }
    Ok(())
}

fn number(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| {
        eprintln!("volfiles: not a number: {s:?}");
        exit(2)
    })
}

fn check(path: &str, result: io::Result<()>) {
    if let Err(e) = result {
        eprintln!("volfiles: {path}: {e}");
        exit(1)
    }
}
