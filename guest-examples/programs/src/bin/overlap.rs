//! Test guest for `concurrency` across callers (tests/deploy.rs): while it
//! runs it keeps a marker file in DIR and watches how many markers are
//! there, so a test can see the most instances that ran at once.
//!
//! Usage: `overlap DIR MS [INPUT]`: keeps its marker for MS milliseconds,
//! then prints `max N`, the most markers it saw at once (its own included).
//! INPUT (a `--map` line) is ignored.

use std::fs;
use std::io::Write;
use std::process::exit;
use std::thread::sleep;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(ms)) = (args.first(), args.get(1).and_then(|m| m.parse().ok())) else {
        eprintln!("usage: overlap DIR MS [INPUT]");
        exit(2)
    };
    let marker = format!("{dir}/{:016x}.running", random());
    fs::write(&marker, "").unwrap_or_else(|e| fail(&marker, e));
    println!("started");
    std::io::stdout().flush().unwrap();
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut max = 0;
    while Instant::now() < deadline {
        // A listing can fail when another instance removes its marker
        // while it is read (WASI stats each entry): that look is skipped.
        if let Ok(entries) = fs::read_dir(dir) {
            let running = entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".running"))
                })
                .count();
            max = max.max(running);
        }
        sleep(Duration::from_millis(5));
    }
    fs::remove_file(&marker).unwrap_or_else(|e| fail(&marker, e));
    println!("max {max}");
}

fn fail(path: &str, e: std::io::Error) -> ! {
    eprintln!("overlap: {path}: {e}");
    exit(1)
}

/// std's hasher keys come from the host's random source (`random_get`).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
