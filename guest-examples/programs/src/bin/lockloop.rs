//! Benchmark guest: takes and releases one host lock over and over, so the
//! lock's cost compares between a machine's own locks (flock) and a
//! cluster's (PostgreSQL).
//!
//! Usage: `lockloop PATH N`; prints N and the seconds the N acquire+release
//! pairs took.

use std::process::exit;
use std::time::{Duration, Instant};

use wasmhost_guest::Lock;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, n] = args.as_slice() else {
        eprintln!("usage: lockloop PATH N");
        exit(2)
    };
    let n: u32 = n.parse().unwrap_or_else(|_| {
        eprintln!("lockloop: not a number: {n:?}");
        exit(2)
    });
    let start = Instant::now();
    for _ in 0..n {
        let held = Lock::acquire(path, Duration::from_secs(60)).unwrap_or_else(|e| {
            eprintln!("lockloop: acquire {path}: {e}");
            exit(1)
        });
        held.release().unwrap_or_else(|e| {
            eprintln!("lockloop: release {path}: {e}");
            exit(1)
        });
    }
    println!("{n} {}", start.elapsed().as_secs_f64());
}
