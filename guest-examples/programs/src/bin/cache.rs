//! The seed use case: many instances share a cache volume, and the host lock
//! makes sure each key is computed once even when instances race.
//!
//! Usage: `cache KEY [CACHE_DIR]` (CACHE_DIR defaults to `/cache`).

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::process::exit;
use std::time::Duration;

use wasmhost_guest::Lock;

/// Stands in for real work: slow enough to make races likely, deterministic
/// so hits can be checked against misses.
fn expensive(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..200_000 {
        for &b in key.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
    }
    std::thread::sleep(Duration::from_millis(50));
    h
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("cache: {what}: {e}");
    exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (key, dir) = match args.as_slice() {
        [key] => (key.as_str(), "/cache"),
        [key, dir] => (key.as_str(), dir.as_str()),
        _ => {
            eprintln!("usage: cache KEY [CACHE_DIR]");
            exit(2)
        }
    };
    // The key becomes a file name, so nothing that could escape the dir.
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        eprintln!("cache: invalid key {key:?}: use only A-Z a-z 0-9 _ -");
        exit(2)
    }

    let lock_path = format!("{dir}/{key}.lock");
    let _guard =
        Lock::acquire(&lock_path, Duration::from_secs(30)).unwrap_or_else(|e| fail(&lock_path, e));

    let result_path = format!("{dir}/{key}.result");
    match fs::read_to_string(&result_path) {
        Ok(value) => {
            println!("{key} {} hit", value.trim());
            return;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => fail(&result_path, e),
    }

    let value = expensive(key);
    // Write-then-rename so a reader without the lock never sees half a file.
    let tmp_path = format!("{dir}/{key}.result.tmp");
    fs::write(&tmp_path, format!("{value}\n")).unwrap_or_else(|e| fail(&tmp_path, e));
    fs::rename(&tmp_path, &result_path).unwrap_or_else(|e| fail(&result_path, e));

    let log_path = format!("{dir}/computed.log");
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        // One write per line: O_APPEND makes each write atomic, so lines
        // from instances holding other keys' locks never interleave.
        .and_then(|mut log| log.write_all(format!("{key}\n").as_bytes()))
        .unwrap_or_else(|e| fail(&log_path, e));
    println!("{key} {value} miss");
}
