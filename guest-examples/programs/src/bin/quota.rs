//! Test guest for volume quotas: grows files and directories until the
//! quota refuses, and prints what happened, one line per step the host
//! tests check.
//!
//! Usage: `quota OP ARGS...`:
//! - `write BYTES PATH`: one write of BYTES bytes (the path last, for
//!   `--map`, which gives each invocation its line as the last argument);
//! - `writes PATH CHUNK COUNT`: COUNT writes of CHUNK bytes, stopping at
//!   the first refusal;
//! - `chunked BYTES CHUNK PATH`: BYTES written CHUNK bytes at a time (the
//!   path last, for `--map`), stopping at the first refusal;
//! - `extend PATH BYTES`: `set_len` (ftruncate) to BYTES;
//! - `pwrite PATH OFFSET BYTES`: one write at OFFSET of an existing file
//!   (a seek and a write);
//! - `files DIR COUNT`: creates COUNT empty files in DIR (made if
//!   missing), stopping at a refusal;
//! - `mixed DIR COUNT SEED`: COUNT creates, writes, truncates, renames and
//!   deletes chosen by SEED;
//! - `renumbered BYTES COUNT` (wasip1 only): moves the first preopen to
//!   descriptor 0 with `fd_renumber`, then creates COUNT files of BYTES
//!   bytes in it through that descriptor;
//! - `rowrite PATH OFFSET BYTES`: one write at OFFSET through a descriptor
//!   opened read-only (which fails), then the file's size;
//! - `churn BYTES COUNT PATH`: COUNT rounds of truncating PATH to nothing
//!   and writing BYTES at its start, through one descriptor.
//!
//! Each prints `done N` (N steps succeeded), or `nospc N` when step N+1
//! failed with ENOSPC, or `error N: …` for any other failure.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Seek, SeekFrom, Write};
use std::process::exit;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| usage());
    let result = match args.as_slice() {
        ["write", bytes, path] => steps(1, |_| write_all(path, number(bytes))),
        ["writes", path, chunk, count] => {
            let mut file = File::create(path).unwrap_or_else(|e| fail(0, &e));
            let chunk = vec![7u8; number(chunk) as usize];
            steps(number(count), |_| file.write_all(&chunk))
        }
        ["chunked", bytes, chunk, path] => {
            let mut file = File::create(path).unwrap_or_else(|e| fail(0, &e));
            let chunk = vec![7u8; number(chunk) as usize];
            steps(number(bytes) / chunk.len() as u64, |_| file.write_all(&chunk))
        }
        ["extend", path, bytes] => steps(1, |_| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?
                .set_len(number(bytes))
        }),
        ["pwrite", path, offset, bytes] => steps(1, |_| {
            // A seek and a write: `FileExt::write_at` is unstable on WASI.
            let mut file = OpenOptions::new().write(true).open(path)?;
            file.seek(SeekFrom::Start(number(offset)))?;
            file.write_all(&vec![1u8; number(bytes) as usize])
        }),
        ["files", dir, count] => {
            fs::create_dir_all(dir).unwrap_or_else(|e| fail(0, &e));
            steps(number(count), |i| File::create(format!("{dir}/f{i}")).map(drop))
        }
        ["mixed", dir, count, seed] => {
            let mut rng = number(seed) | 1;
            steps(number(count), |i| mixed_step(dir, i, &mut rng))
        }
        ["renumbered", bytes, count] => renumbered(number(bytes), number(count)),
        ["rowrite", path, offset, bytes] => {
            let result = File::open(path).and_then(|mut file| {
                file.seek(SeekFrom::Start(number(offset)))?;
                file.write_all(&vec![1u8; number(bytes) as usize])
            });
            let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            println!("{} size {size}", if result.is_ok() { "written" } else { "refused" });
            exit(0)
        }
        ["churn", bytes, count, path] => {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .unwrap_or_else(|e| fail(0, &e));
            let chunk = vec![5u8; number(bytes) as usize];
            steps(number(count), |_| {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&chunk)
            })
        }
        _ => usage(),
    };
    match result {
        Ok(n) => println!("done {n}"),
        Err((n, e)) if e.kind() == ErrorKind::StorageFull => println!("nospc {n}"),
        Err((n, e)) => fail(n, &e),
    }
}

/// `renumbered`: the preopen moved to descriptor 0 (stdin, closed by the
/// move), where wasi-libc no longer looks for it, so the files are opened
/// with `path_open` itself.
#[cfg(not(target_env = "p2"))]
fn renumbered(bytes: u64, count: u64) -> Result<u64, (u64, io::Error)> {
    use std::os::fd::FromRawFd;
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn fd_renumber(from: i32, to: i32) -> i32;
        fn path_open(
            dir: i32,
            lookup: i32,
            path: *const u8,
            len: usize,
            oflags: i32,
            base: i64,
            inheriting: i64,
            fdflags: i32,
            opened: *mut i32,
        ) -> i32;
    }
    let errno = |e: i32| io::Error::from_raw_os_error(e);
    // SAFETY: plain calls of WASI imports, on descriptors and memory this
    // function owns.
    match unsafe { fd_renumber(3, 0) } {
        0 => {}
        e => fail(0, &errno(e)),
    }
    let all_rights = 0x1fff_ffff;
    steps(count, |i| {
        let name = format!("r{i}");
        let mut fd = -1;
        let oflags_creat_trunc = 1 | 8;
        let e = unsafe {
            path_open(0, 0, name.as_ptr(), name.len(), oflags_creat_trunc, all_rights, all_rights, 0, &mut fd)
        };
        if e != 0 {
            return Err(errno(e));
        }
        // SAFETY: `fd` was just opened, and is owned by the file from here.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(&vec![4u8; bytes as usize])
    })
}

#[cfg(target_env = "p2")]
fn renumbered(_: u64, _: u64) -> Result<u64, (u64, io::Error)> {
    usage()
}

fn write_all(path: &str, bytes: u64) -> io::Result<()> {
    File::create(path)?.write_all(&vec![3u8; bytes as usize])
}

/// Runs `step` COUNT times; the number that succeeded, or where it failed.
fn steps(count: u64, mut step: impl FnMut(u64) -> io::Result<()>) -> Result<u64, (u64, io::Error)> {
    for i in 0..count {
        step(i).map_err(|e| (i, e))?;
    }
    Ok(count)
}

/// One of: create and write, append, truncate, extend, rename (over a file
/// or not), delete, make or remove a directory. Missing files are fine.
fn mixed_step(dir: &str, i: u64, rng: &mut u64) -> io::Result<()> {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let pick = |n: u64, r: u64| r % n;
    let a = format!("{dir}/m{}", pick(40, *rng >> 8));
    let b = format!("{dir}/m{}", pick(40, *rng >> 20));
    let len = pick(5000, *rng >> 32) as usize;
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists | ErrorKind::IsADirectory | ErrorKind::NotADirectory) => Ok(()),
        other => other,
    };
    let _ = i;
    ignore_missing(match pick(8, *rng) {
        0 => fs::write(&a, vec![1u8; len]),
        1 => OpenOptions::new()
            .append(true)
            .create(true)
            .open(&a)
            .and_then(|mut f| f.write_all(&vec![2u8; len])),
        2 => OpenOptions::new().write(true).open(&a).and_then(|f| f.set_len(len as u64 / 2)),
        3 => OpenOptions::new().write(true).open(&a).and_then(|mut f| {
            f.seek(SeekFrom::Start(len as u64))?;
            f.write_all(b"x")
        }),
        4 => fs::rename(&a, &b),
        5 => fs::remove_file(&a),
        6 => fs::create_dir(format!("{a}.d")),
        _ => fs::remove_dir(format!("{a}.d")),
    })
}

fn fail(n: u64, e: &io::Error) -> ! {
    println!("error {n}: {e}");
    exit(1)
}

fn usage() -> ! {
    eprintln!("usage: quota write|writes|extend|pwrite|files|mixed|renumbered|rowrite|churn ARGS...");
    exit(2)
}
