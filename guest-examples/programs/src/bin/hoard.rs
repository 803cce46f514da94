//! Test guest for per-instance limits: hoards host resources (open files,
//! locks) or hands the host oversized input, and reports what the host did.
//!
//! Usage: `hoard OP ARGS...`; under `--map` the input line is the last arg.
//!
//! - `words LINE`: runs the op that LINE spells, split on whitespace (for
//!   `--map` inputs that each choose their own op).
//! - `after PATH OP ARGS...`: waits (at most a minute) until PATH exists,
//!   or cannot be looked up, then runs OP.
//! - `open DIR HOLD_MS N`: opens N files in DIR and keeps them open. Prints
//!   `took N`, or on the first error `took K then errno E: ERROR`, makes
//!   the directory `DIR/full` (for `after`), keeps what it opened for
//!   HOLD_MS (so `--map` siblings run beside a full hoard) and exits 1.
//! - `open-panic DIR HOLD_MS N`: the same, but panics on the error.
//! - `lock DIR HOLD_MS N`: the same with N distinct host locks.
//! - `churn DIR N`: takes and releases N distinct locks, one at a time.
//! - `lock-loop DIR MS`: prints `locking`, then takes and releases distinct
//!   locks for MS milliseconds, whatever the host answers, printing
//!   `answer A` each time the answer changes.
//! - `stat-long-path DIR BYTES`: stats a path of BYTES bytes under DIR,
//!   prints the error, then `memory M`, the size of its linear memory.
//! - `long-lock-path BYTES`: asks for a lock whose path is BYTES long, held
//!   in fresh (never touched) memory, and prints the host's answer.

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::process::exit;
use std::thread::sleep;
use std::time::{Duration, Instant};

use wasmhost_guest::{Lock, LockGuard};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn run(args: &[&str]) {
    match args {
        ["words", line] => run(&line.split_whitespace().collect::<Vec<_>>()),
        ["after", path, op @ ..] => {
            let end = Instant::now() + Duration::from_secs(60);
            // An error (a host out of descriptors cannot even look) ends
            // the wait too: what follows is then bound to show the damage.
            while let Ok(false) = std::fs::exists(path) {
                if Instant::now() > end {
                    fail(&format!("{path} never appeared"));
                }
                sleep(Duration::from_millis(5));
            }
            run(op)
        }
        ["open", dir, hold, n] => hoard(dir, number(hold), number(n), false, |i| open(dir, i)),
        ["open-panic", dir, hold, n] => hoard(dir, number(hold), number(n), true, |i| open(dir, i)),
        ["lock", dir, hold, n] => {
            let tag = unique_tag();
            hoard(dir, number(hold), number(n), false, |i| {
                let path = format!("{dir}/{tag}-{i}");
                Lock::acquire(&path, Duration::from_secs(10)).map_err(|e| (0, e.to_string()))
            })
        }
        ["churn", dir, n] => {
            let tag = unique_tag();
            for i in 0..number(n) {
                let path = format!("{dir}/{tag}-{i}");
                let lock: LockGuard = Lock::acquire(&path, Duration::from_secs(10))
                    .unwrap_or_else(|e| fail(&format!("lock {path}: {e}")));
                lock.release()
                    .unwrap_or_else(|e| fail(&format!("release {path}: {e}")));
            }
            println!("churned {n}");
        }
        ["lock-loop", dir, ms] => {
            println!("locking");
            std::io::stdout().flush().unwrap();
            let tag = unique_tag();
            let end = Instant::now() + Duration::from_millis(number(ms) as u64);
            let (mut i, mut last) = (0, String::new());
            while Instant::now() < end {
                let answer = match Lock::acquire(&format!("{dir}/{tag}-{i}"), Duration::ZERO) {
                    Ok(_) => "acquired".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                if answer != last {
                    println!("answer {answer}");
                    std::io::stdout().flush().unwrap();
                    last = answer;
                }
                i += 1;
            }
        }
        ["stat-long-path", dir, bytes] => {
            // Built in place: the guest's memory holds the path once.
            let mut path = String::with_capacity(number(bytes) + 2);
            path.push_str(dir);
            while path.len() < number(bytes) {
                path.push_str("/a");
            }
            match std::fs::metadata(&path) {
                Ok(_) => println!("found"),
                Err(e) => println!("{e}"),
            }
            // What the guest's own memory (in the host's RSS) came to.
            println!("memory {}", core::arch::wasm32::memory_size(0) * 65536);
        }
        ["long-lock-path", bytes] => {
            let path = untouched_str(number(bytes));
            match Lock::acquire(path, Duration::ZERO) {
                Ok(_) => println!("acquired"),
                Err(e) => println!("{e}"),
            }
        }
        _ => {
            eprintln!("hoard: bad arguments {args:?}");
            exit(2)
        }
    }
}

/// Takes `n` of something with `take`, keeping each; see the module docs.
fn hoard<T>(
    dir: &str,
    hold_ms: usize,
    n: usize,
    panic: bool,
    mut take: impl FnMut(usize) -> Result<T, (i32, String)>,
) {
    let mut kept = Vec::new();
    for i in 0..n {
        match take(i) {
            Ok(item) => kept.push(item),
            Err((errno, error)) => {
                println!("took {} then errno {errno}: {error}", kept.len());
                std::io::stdout().flush().unwrap();
                // A directory, which takes no descriptor to make.
                let _ = std::fs::create_dir(format!("{dir}/full"));
                sleep(Duration::from_millis(hold_ms as u64));
                if panic {
                    panic!("hoard: {error}");
                }
                exit(1)
            }
        }
    }
    println!("took {n}");
}

fn open(dir: &str, i: usize) -> Result<File, (i32, String)> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/f{i}"))
        .map_err(|e| (e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// Different in every instance: the host seeds `RandomState` afresh.
fn unique_tag() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// A `len`-byte string of NULs in memory the guest has just grown and never
/// touched, so it costs the host nothing unless the host copies it.
fn untouched_str(len: usize) -> &'static str {
    let pages = len.div_ceil(65536);
    let old = core::arch::wasm32::memory_grow(0, pages);
    if old == usize::MAX {
        fail("memory.grow failed")
    }
    // SAFETY: fresh pages belong to no allocation, are zero (valid UTF-8),
    // and are never freed.
    unsafe {
        std::str::from_utf8_unchecked(std::slice::from_raw_parts((old * 65536) as *const u8, len))
    }
}

fn number(text: &str) -> usize {
    text.parse()
        .unwrap_or_else(|_| fail(&format!("not a number: {text}")))
}

fn fail(message: &str) -> ! {
    eprintln!("hoard: {message}");
    exit(1)
}
