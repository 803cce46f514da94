//! Test guest: `ticker N MS` prints `tick 1` … `tick N`, one line every MS
//! milliseconds, flushing each, so tests can watch output arrive while a
//! call runs.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: ticker N MS");
            std::process::exit(2)
        })
    };
    let (count, ms) = (number(0), number(1));
    let mut out = std::io::stdout().lock();
    for i in 1..=count {
        if i > 1 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        writeln!(out, "tick {i}").unwrap();
        out.flush().unwrap();
    }
}
