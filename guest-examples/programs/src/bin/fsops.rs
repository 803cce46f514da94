//! Test guest: one operation per run, chosen by the arguments, so host tests
//! can probe filesystem semantics, locks and resource limits from the inside.
//!
//! Usage: `fsops OP ARGS...`. Errors go to stderr as `fsops: OP PATH: ERROR`
//! with exit code 1; usage errors exit 2.

use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io::{self, ErrorKind, Write};
use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::sleep;
use std::time::Duration;

use wasmhost_guest::{Lock, LockError, LockGuard};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

fn run(args: &[String]) {
    let Some((op, rest)) = args.split_first() else {
        usage()
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let op = op.as_str();
    let mut out = io::stdout().lock();

    match (op, rest.as_slice()) {
        ("write", [path, content]) => check(op, path, fs::write(path, content)),
        ("append", [path, content]) => check(
            op,
            path,
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{content}")),
        ),
        ("read", [path]) => {
            let data = check(op, path, fs::read(path));
            out.write_all(&data).unwrap();
        }
        ("exists", [path]) => {
            let exists = check(op, path, fs::exists(path));
            println!("{}", if exists { "yes" } else { "no" });
        }
        ("ls", [dir]) => {
            let mut names: Vec<String> = check(
                op,
                dir,
                fs::read_dir(dir).and_then(|it| {
                    it.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                        .collect()
                }),
            );
            names.sort();
            for name in names {
                println!("{name}");
            }
        }
        ("mkdir", [path]) => check(op, path, fs::create_dir(path)),
        ("rm", [path]) => {
            // One op for both kinds keeps the tests short.
            let is_dir = fs::symlink_metadata(path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            check(
                op,
                path,
                if is_dir {
                    fs::remove_dir(path)
                } else {
                    fs::remove_file(path)
                },
            )
        }
        ("rename", [from, to]) => check(op, from, fs::rename(from, to)),
        // `std::os::wasi::fs::symlink_path` is unstable (`wasi_ext`) on both
        // targets; the deprecated `soft_link` is the stable way to the same
        // `path_symlink` call.
        #[allow(deprecated)]
        ("symlink", [target, link]) => check(op, link, fs::soft_link(target, link)),
        ("hardlink", [from, to]) => check(op, to, fs::hard_link(from, to)),
        ("sleep", [ms]) => sleep(Duration::from_millis(number(ms))),
        // One poll_oneoff on two relative clocks; prints which fired first.
        ("poll-two-clocks", [first_ms, second_ms]) => {
            println!("{}", poll_two_clocks(number(first_ms), number(second_ms)))
        }
        ("echo-line", [.., line]) => println!("{line}"),
        // Writes to stdout until that fails (its reader went away), then
        // says so on stderr: `eprintln!` aborts the guest if stderr failed
        // with it (wasmtime's `p2_cli_stdout_epipe`).
        ("stdout-until-closed", []) => {
            let mut written = 0u64;
            let error = loop {
                match out.write_all(&[b'x'; 4096]).and_then(|()| out.flush()) {
                    Ok(()) => written += 4096,
                    Err(e) => break e,
                }
            };
            eprintln!("stdout failed after {written} bytes: {error}; stderr still works");
        }
        // `echo-after MS LINE [LOG]`: LOG gets LINE appended when done, so
        // tests can see the order in which invocations finished.
        ("echo-after", [ms, line, log @ ..]) if log.len() <= 1 => {
            sleep(Duration::from_millis(number(ms)));
            if let [log] = log {
                append_line(op, log, line);
            }
            println!("{line}")
        }
        // Waits (at most 60 s) for PATH to exist, then runs the ops after it
        // (`;` between them, as for `lock-then`): a marker from a sibling
        // instance instead of a guessed sleep.
        ("wait-for", [path, then @ ..]) if !then.is_empty() => {
            let mut waited = 0;
            while !check(op, path, fs::exists(path)) {
                if waited == 60_000 {
                    eprintln!("fsops: {op} {path}: still missing after 60s");
                    exit(1)
                }
                sleep(Duration::from_millis(5));
                waited += 5;
            }
            drop(out);
            run_seq(then)
        }
        // One argument holding a whole command, so one `--map` input line
        // can pick its own op: `words "exit 3"` runs `exit 3`.
        ("words", [line]) => run(&line
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()),
        // N increments under the host lock (`count host PATH N` without the
        // span line), as other test files use it.
        ("counter-lock", [path, n]) => {
            for _ in 0..number(n) {
                count_once(op, "host", path);
            }
        }
        // Read-modify-write increments of the integer in PATH, each under
        // KIND of lock (`host`, `link` or `none`), with a pause between the
        // read and the write so that increments without a lock lose updates.
        // Prints `span START END` (ns of the wall clock) so tests can show
        // the writers overlapped.
        ("count", [kind, path, n]) => {
            let start = now_ns();
            for _ in 0..number(n) {
                count_once(op, kind, path);
                // Off the lock for a moment, so a waiter gets a turn.
                sleep(Duration::from_micros(500));
            }
            println!("span {start} {}", now_ns());
        }
        ("hold-lock", [path, ms]) => {
            let _guard = lock_or_exit(op, path, Lock::acquire(path, Duration::from_secs(10)));
            println!("locked");
            out.flush().unwrap();
            sleep(Duration::from_millis(number(ms)));
            // Exit without dropping the guard: the host must release it.
            exit(0)
        }
        // Runs other ops (`;` between them) while holding the lock:
        // `lock-then PATH spin`. An op that exits or traps keeps it held.
        ("lock-then", [path, then @ ..]) => {
            let _guard = lock_or_exit(op, path, Lock::acquire(path, Duration::from_secs(10)));
            println!("locked");
            out.flush().unwrap();
            drop(out);
            run_seq(then)
        }
        ("try-lock", [path]) => match Lock::try_acquire(path) {
            Ok(Some(_guard)) => println!("acquired"),
            Ok(None) => println!("busy"),
            Err(e) => {
                eprintln!("{e}");
                exit(3)
            }
        },
        ("lock-timeout", [path, ms]) => {
            match Lock::acquire(path, Duration::from_millis(number(ms))) {
                Ok(_guard) => println!("acquired"),
                Err(LockError::Timeout) => println!("timeout"),
                Err(e) => lock_fail(op, path, e),
            }
        }
        // What README's "What WASI cannot do" says a guest cannot do: one
        // line per attempt, `ok` or the error it got.
        ("beyond-wasi", []) => {
            let thread = std::thread::Builder::new().spawn(|| ()).map(|_| ());
            let process = std::process::Command::new("true").status().map(|_| ());
            let connect = std::net::TcpStream::connect("127.0.0.1:9").map(|_| ());
            let bind = std::net::TcpListener::bind("127.0.0.1:0").map(|_| ());
            for (what, result) in [
                ("thread", thread),
                ("process", process),
                ("connect", connect),
                ("bind", bind),
            ] {
                match result {
                    Ok(()) => println!("{what}: ok"),
                    Err(e) => println!("{what}: {e}"),
                }
            }
        }
        ("trap", []) => core::arch::wasm32::unreachable(),
        ("spin", []) => {
            let mut i = 0u64;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        ("alloc", [mib]) => {
            let len = number::<usize>(mib) << 20;
            let mut v: Vec<u8> = Vec::with_capacity(len);
            // Touch every page so the memory is really committed.
            for i in (0..len).step_by(4096) {
                v.spare_capacity_mut()[i].write(1);
            }
            black_box(&v);
            println!("allocated");
        }
        ("stack-overflow", []) => println!("{}", recurse(0)),
        ("spew", [mib]) => {
            let chunk = [b'x'; 1 << 16];
            for _ in 0..number::<u64>(mib) * 16 {
                out.write_all(&chunk).unwrap();
            }
            out.flush().unwrap();
        }
        ("env", [name]) => {
            if let Some(value) = std::env::var_os(name) {
                println!("{}", value.to_string_lossy());
            }
        }
        // All of argv, argv[0] and `args` included, so tests see argv[0] too.
        ("args", _) => {
            for arg in std::env::args() {
                println!("{arg}");
            }
        }
        ("exit", [code]) => {
            out.flush().unwrap();
            exit(number(code))
        }
        // --- escapes and limits (tests/escapes.rs, tests/limits.rs) ---
        ("truncate", [path, len]) => check(
            op,
            path,
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(number(len))),
        ),
        // Sets the modification time through a read-only handle, so only the
        // host's permission check stands between the guest and the change.
        ("utimes", [path]) => check(
            op,
            path,
            fs::File::open(path).and_then(|f| f.set_modified(std::time::UNIX_EPOCH)),
        ),
        ("create-excl", [path, content]) => check(
            op,
            path,
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut f| f.write_all(content.as_bytes())),
        ),
        ("race-swap", [link, target, rounds]) => race_swap(link, target, number(rounds)),
        ("race-read", [link, rounds]) => race_read(link, number(rounds)),
        // Under `--map` the input line comes last, so one map runs a swapper
        // and a reader side by side; the reader stops the swapper when done.
        ("race", [link, target, rounds, "swap"]) => race_swap(link, target, number(rounds)),
        ("race", [link, _, rounds, "read"]) => {
            race_read(link, number(rounds));
            let stop = format!("{link}.stop");
            check(op, &stop, fs::write(&stop, "stop"));
        }
        // --- end escapes and limits ---
        // --- faults (tests/faults.rs) ---
        // Writes, overwrites and renames small files in each DIR, ROUNDS
        // times: a guest busy on its volumes whenever it is killed.
        ("churn", [rounds, dirs @ ..]) if !dirs.is_empty() => {
            for round in 0..number::<u64>(rounds) {
                for dir in dirs {
                    let path = format!("{dir}/churn-{}", round % 16);
                    check(op, &path, fs::write(format!("{path}.tmp"), [b'x'; 4096]));
                    check(op, &path, fs::rename(format!("{path}.tmp"), &path));
                }
            }
        }
        // Appends CHUNKS 4 KiB chunks of a known pattern (chunk i is
        // `format!("{i:015}\n")` 256 times) to PATH, renaming a file in
        // SCRATCH after each; says `writing` once the first chunk is written,
        // so a test can kill it mid-write and check what a kill leaves.
        ("pattern", [path, chunks, scratch]) => {
            let mut file = check(
                op,
                path,
                OpenOptions::new().create(true).append(true).open(path),
            );
            for i in 0..number::<u64>(chunks) {
                check(op, path, file.write_all(format!("{i:015}\n").repeat(256).as_bytes()));
                let tmp = format!("{scratch}/churn.tmp");
                check(op, &tmp, fs::write(&tmp, [b'x'; 4096]));
                check(op, &tmp, fs::rename(&tmp, format!("{scratch}/churn")));
                if i == 0 {
                    println!("writing");
                    out.flush().unwrap();
                }
            }
        }
        // Appends 64 KiB blocks to PATH until it holds MIB MiB; an error
        // (ENOSPC on a full disk) is reported on one line, exit 1.
        ("fill", [path, mib]) => {
            let mut file = check(
                op,
                path,
                OpenOptions::new().create(true).append(true).open(path),
            );
            let block = [b'f'; 64 << 10];
            for _ in 0..number::<u64>(mib) * 16 {
                check(op, path, file.write_all(&block));
            }
            check(op, path, file.sync_all());
            println!("filled");
        }
        // --- end faults ---
        _ => usage(),
    }
}

/// Runs the ops in `words`, separated by `;` words, one after the other.
fn run_seq(words: &[&str]) {
    for op in words.split(|w| *w == ";") {
        run(&op.iter().map(|w| w.to_string()).collect::<Vec<_>>());
    }
}

fn usage() -> ! {
    eprintln!("usage: fsops OP ARGS... (see the source for the list of ops)");
    exit(2)
}

fn number<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("fsops: not a number: {s:?}");
        exit(2)
    })
}

fn check<T>(op: &str, path: &str, result: io::Result<T>) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("fsops: {op} {path}: {e}");
        exit(1)
    })
}

fn lock_fail(op: &str, path: &str, e: LockError) -> ! {
    eprintln!("fsops: {op} {path}: {e}");
    exit(1)
}

fn lock_or_exit<T>(op: &str, path: &str, result: Result<T, LockError>) -> T {
    result.unwrap_or_else(|e| lock_fail(op, path, e))
}

/// One increment of the integer in `path` under `kind` of lock. The read and
/// the write are apart by a pause, so without a lock that excludes, two
/// writers lose updates; the write is a rename, so a reader never sees half
/// a number.
fn count_once(op: &str, kind: &str, path: &str) {
    let lock_path = format!("{path}.lock");
    let held = match kind {
        "host" => Held::Host(lock_or_exit(
            op,
            &lock_path,
            Lock::acquire(&lock_path, Duration::from_secs(60)),
        )),
        "link" => Held::Link(LinkLock::acquire(op, path)),
        "none" => Held::Nothing,
        _ => usage(),
    };
    let n: u64 = match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            eprintln!("fsops: {op} {path}: not an integer: {s:?}");
            exit(1)
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => 0,
        Err(e) => check(op, path, Err(e)),
    };
    sleep(Duration::from_millis(2));
    let tmp = format!("{path}.{:016x}.tmp", random());
    check(op, &tmp, fs::write(&tmp, format!("{}\n", n + 1)));
    check(op, path, fs::rename(&tmp, path));
    match held {
        Held::Host(guard) => {
            if let Err(e) = guard.release() {
                lock_fail(op, &lock_path, e)
            }
        }
        Held::Link(lock) => lock.release(op),
        Held::Nothing => {}
    }
}

/// The lock `count` holds around one increment.
enum Held {
    Host(LockGuard),
    Link(LinkLock),
    Nothing,
}

/// Nanoseconds since the Unix epoch: the host's wall clock, the same for
/// every instance and process.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn append_line(op: &str, path: &str, line: &str) {
    check(
        op,
        path,
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes())),
    )
}

/// Overflows wasm's own call stack, so the host sees a stack-overflow trap.
/// `black_box` would not do: it spills to Rust's shadow stack in linear
/// memory, which runs out first and traps as an out-of-bounds access. Here
/// frames hold no locals in memory, and the atomic store after the call keeps
/// LLVM from turning the recursion into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if LAST.load(Relaxed) == u64::MAX {
        return 0;
    }
    let r = recurse(depth + 1);
    LAST.store(r, Relaxed);
    r.wrapping_add(depth)
}

/// A lock file in the style of flufl.lock: `link(2)` is atomic on every
/// filesystem, so whoever creates the shared name by hard-linking their own
/// unique file holds the lock. This shows how far guests get without host
/// locks (no cleanup if the holder dies).
struct LinkLock {
    lock_path: String,
    tmp_path: String,
}

impl LinkLock {
    fn acquire(op: &str, path: &str) -> LinkLock {
        let lock_path = format!("{path}.lock");
        let tmp_path = format!("{lock_path}.{:016x}", random());
        check(op, &tmp_path, fs::write(&tmp_path, &tmp_path));
        loop {
            match fs::hard_link(&tmp_path, &lock_path) {
                Ok(()) => {
                    return LinkLock {
                        lock_path,
                        tmp_path,
                    };
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => check(op, &lock_path, Err(e)),
            }
            // flufl.lock also checks the temp file's link count here in case
            // the link succeeded but reported failure, but `nlink()` is
            // unstable on WASI, so this just retries.
            sleep(Duration::from_millis(1 + random() % 5));
        }
    }

    fn release(self, op: &str) {
        check(op, &self.lock_path, fs::remove_file(&self.lock_path));
        check(op, &self.tmp_path, fs::remove_file(&self.tmp_path));
    }
}

/// std's hasher keys come from the host's random source (`random_get`), so
/// this needs no extra crate.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

// --- escapes and limits (tests/escapes.rs) ---

/// Flips `link` between a real directory holding `f` = "inside" and a
/// symlink to `target`, at most `rounds` times, until `LINK.stop` exists,
/// while another instance reads through it. Errors are expected and
/// ignored: the other side races.
#[allow(deprecated)]
fn race_swap(link: &str, target: &str, rounds: u64) {
    let inner = format!("{link}/f");
    let stop = format!("{link}.stop");
    let mut done = 0;
    while done < rounds && !fs::exists(&stop).unwrap_or(true) {
        let _ = fs::remove_file(link);
        let _ = fs::create_dir(link);
        let _ = fs::write(&inner, "inside");
        sleep(Duration::from_micros(50));
        let _ = fs::remove_file(&inner);
        let _ = fs::remove_dir(link);
        let _ = fs::soft_link(target, link);
        sleep(Duration::from_micros(50));
        done += 1;
    }
    let _ = fs::remove_file(link);
    println!("swapped {done}");
}

/// Reads `LINK/f` until it has seen the directory (`inside`) and the swapped
/// link (a failed read) 20 times each, at most `rounds` times; prints how
/// often each happened and every other content it read.
fn race_read(link: &str, rounds: u64) {
    let path = format!("{link}/f");
    let mut other = std::collections::BTreeSet::new();
    let (mut inside, mut empty, mut failed) = (0u64, 0u64, 0u64);
    for _ in 0..rounds {
        match fs::read(&path) {
            Ok(data) if data == b"inside" => inside += 1,
            // Between the swapper's create and its write.
            Ok(data) if data.is_empty() => empty += 1,
            Ok(data) => {
                other.insert(String::from_utf8_lossy(&data).into_owned());
            }
            Err(_) => failed += 1,
        }
        if inside >= 20 && failed >= 20 {
            break;
        }
    }
    for content in other {
        println!("read: {content}");
    }
    println!("inside {inside} empty {empty} failed {failed}");
}
// --- end escapes and limits ---

/// wasip1 `poll_oneoff` on two relative clock subscriptions (userdata 1 and
/// 2): a poll the host does not treat as a plain sleep. Returns the userdata
/// of the events that fired, e.g. `events: 1`.
#[cfg(not(target_env = "p2"))]
fn poll_two_clocks(first_ms: u64, second_ms: u64) -> String {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn poll_oneoff(subs: *const u8, events: *mut u8, count: u32, nevents: *mut u32) -> u16;
    }
    // `subscription` is 48 bytes: userdata u64 @0, tag u8 @8 (0 = clock),
    // clock id u32 @16 (1 = monotonic), timeout u64 @24, precision u64 @32,
    // flags u16 @40 (0 = relative). `event` is 32 bytes, userdata u64 @0.
    let mut subs = [0u8; 96];
    for (i, ms) in [first_ms, second_ms].into_iter().enumerate() {
        let sub = &mut subs[i * 48..(i + 1) * 48];
        sub[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        sub[16..20].copy_from_slice(&1u32.to_le_bytes());
        sub[24..32].copy_from_slice(&(ms * 1_000_000).to_le_bytes());
    }
    let mut events = [0u8; 64];
    let mut count = 0u32;
    let errno = unsafe { poll_oneoff(subs.as_ptr(), events.as_mut_ptr(), 2, &mut count) };
    if errno != 0 {
        eprintln!("fsops: poll_oneoff: errno {errno}");
        exit(1)
    }
    let fired: Vec<String> = events
        .chunks(32)
        .take(count as usize)
        .map(|e| u64::from_le_bytes(e[..8].try_into().unwrap()).to_string())
        .collect();
    format!("events: {}", fired.join(" "))
}

#[cfg(target_env = "p2")]
fn poll_two_clocks(_: u64, _: u64) -> String {
    eprintln!("fsops: poll-two-clocks is a wasip1 call");
    exit(2)
}
