//! Benchmark guest: sequential file I/O in 1 MiB blocks, like `dd bs=1M`, so
//! a volume's throughput from inside a guest compares with native `dd`.
//!
//! Usage: `iobench write PATH MIB` or `iobench read PATH`; prints the bytes
//! moved and the seconds the copy loop took, as `dd` reports its own.

use std::fs::File;
use std::io::{Read, Write};
use std::process::exit;
use std::time::Instant;

const BLOCK: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut block = vec![0u8; BLOCK];
    // Each copy loop is timed after its file is open, as `dd` times its own.
    let (bytes, start) = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["write", path, mib] => {
            let mib: usize = mib.parse().unwrap_or_else(|_| usage());
            block.fill(0xa5);
            let mut file = File::create(path).unwrap_or_else(|e| fail(path, e));
            let start = Instant::now();
            for _ in 0..mib {
                file.write_all(&block).unwrap_or_else(|e| fail(path, e));
            }
            (mib * BLOCK, start)
        }
        ["read", path] => {
            let mut file = File::open(path).unwrap_or_else(|e| fail(path, e));
            let start = Instant::now();
            let mut total = 0;
            loop {
                match file.read(&mut block) {
                    Ok(0) => break (total, start),
                    Ok(n) => total += n,
                    Err(e) => fail(path, e),
                }
            }
        }
        _ => usage(),
    };
    println!("{bytes} {}", start.elapsed().as_secs_f64());
}

fn usage() -> ! {
    eprintln!("usage: iobench write PATH MIB | iobench read PATH");
    exit(2)
}

fn fail(path: &str, e: std::io::Error) -> ! {
    eprintln!("iobench: {path}: {e}");
    exit(1)
}
