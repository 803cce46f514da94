//! A guest whose start-up runs once, at deploy: its `wizer.initialize`
//! export (named by `preinit` in app.toml) reads a shipped file and an
//! environment variable, builds a table, and keeps the result in statics;
//! wasmhost snapshots the instance after it, so `main` starts with them
//! already set. `main` prints the value and how many times the init ran in
//! this instance: 1 from a snapshot (the init's work is not repeated), 0
//! when run without `preinit`.
//!
//! `PREINIT_MODE` makes the init do what a pre-initialization may not:
//! `write` writes its volume at /data (mounted read-only during the init),
//! `trap` panics, `leak` leaves a file open across the snapshot.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);
static VALUE: OnceLock<String> = OnceLock::new();
/// The arguments the init saw: `preinit`'s own `args` when it has them.
static INIT_ARGS: OnceLock<String> = OnceLock::new();

#[unsafe(export_name = "wizer.initialize")]
pub extern "C" fn init() {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
    let _ = INIT_ARGS.set(std::env::args().skip(1).collect::<Vec<_>>().join(","));
    match std::env::var("PREINIT_MODE").as_deref() {
        Ok("write") => {
            std::fs::write("/data/from-init", "x").expect("the init writes its volume");
        }
        Ok("trap") => panic!("the init gave up"),
        Ok("leak") => {
            let file = std::fs::File::open("/app/greeting.txt").expect("open the greeting");
            std::mem::forget(file);
        }
        _ => {}
    }
    let greeting = std::fs::read_to_string("/app/greeting.txt")
        .unwrap_or_else(|e| format!("<no greeting: {e}>"));
    let who = std::env::var("WHO").unwrap_or_default();
    // The expensive part a real init would do once: a table to look up.
    let table: Vec<u64> = (1..=1000u64).map(|n| n * n).collect();
    let _ = VALUE.set(format!(
        "{} {who} {}",
        greeting.trim(),
        table.iter().sum::<u64>()
    ));
}

fn main() {
    let value = VALUE.get().map_or("<not initialized>", String::as_str);
    println!("value={value}");
    println!("init_runs={}", INIT_RUNS.load(Ordering::SeqCst));
    println!("init_args={}", INIT_ARGS.get().map_or("", String::as_str));
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args={}", args.join(","));
}
