//! The shared file system under a cluster (issue 12), without wasmhost:
//! two JuiceFS clients, each in its own "machine" (network namespace),
//! take turns at read-increment-write of one counter file under a lock
//! that excludes across both, and with the mount options the cluster uses
//! (`cluster::JUICEFS_OPTIONS`) no increment is lost. With JuiceFS's
//! default metadata caches the same loses most of them; the test prints
//! how many (run it with `--nocapture` to see), as the evidence for the
//! options.

mod common;

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use common::cluster::{Cluster, JUICEFS_OPTIONS};

/// Increments per client.
const INCREMENTS: u64 = 100;

/// The lock around each increment.
#[derive(Clone, Copy, Debug)]
enum Lock {
    /// An flock on a file of this box's own file system: excludes the two
    /// clients whatever the shared file system does.
    Local,
    /// A lock file made by `link(2)` on the shared file system itself (as
    /// flufl.lock does), through each client's own mount.
    Link,
}

/// How an increment writes the new count.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// A new file renamed over the counter (what the `fsops` guest does).
    Rename,
    /// The counter truncated and rewritten in place.
    InPlace,
    /// A line appended (`O_APPEND`): the count is the number of lines.
    Append,
}

/// What one run of increments left.
struct Outcome {
    /// The counter at the end, read through `check`'s mount.
    kept: u64,
    /// Reads that were not a number (a stale length over new data, say).
    garbled: Vec<String>,
}

/// Two clients (threads, one per mount in `dirs`) each make [`INCREMENTS`]
/// increments of the file `name`, under `lock`, writing as `write`; the
/// result is read through `check` (a mount without caches) at the end.
fn count(dirs: [&Path; 2], check: &Path, name: &str, lock: Lock, write: Write) -> Outcome {
    let locks = tempfile::tempdir().unwrap();
    let local_lock = locks.path().join("counter.lock");
    File::create(&local_lock).unwrap();
    let garbled: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(client, dir)| {
                let local_lock = &local_lock;
                scope.spawn(move || {
                    let mut garbled = Vec::new();
                    for _ in 0..INCREMENTS {
                        let held = Held::take(lock, local_lock, dir, name, client);
                        if let Err(e) = increment(dir, name, write, client) {
                            garbled.push(e);
                        }
                        held.release();
                        // Off the lock for a moment, so the other client
                        // gets a turn.
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    garbled
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let kept =
        read_count(&check.join(name), write).unwrap_or_else(|e| panic!("the final count: {e}"));
    Outcome { kept, garbled }
}

/// The count in `path` as `write` keeps it (0 if it does not exist).
fn read_count(path: &Path, write: Write) -> Result<u64, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let garbled = || format!("{} holds {text:?}", path.display());
    match write {
        Write::Rename | Write::InPlace => text.trim().parse().map_err(|_| garbled()),
        Write::Append => text
            .lines()
            .map(|line| (line == "x").then_some(1).ok_or_else(garbled))
            .sum(),
    }
}

/// One increment of `dir/name` by `client`; a garbled read is an error
/// (and nothing is written).
fn increment(dir: &Path, name: &str, write: Write, client: usize) -> Result<(), String> {
    let path = dir.join(name);
    if let Write::Append = write {
        use std::io::Write as _;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"x\n").unwrap();
        return Ok(());
    }
    let next = format!("{}\n", read_count(&path, write)? + 1);
    match write {
        Write::Rename => {
            let tmp = dir.join(format!("{name}.{client}.tmp"));
            fs::write(&tmp, next).unwrap();
            fs::rename(&tmp, &path).unwrap();
        }
        Write::InPlace => fs::write(&path, next).unwrap(),
        Write::Append => unreachable!("appended above"),
    }
    Ok(())
}

/// A lock held around one increment.
enum Held {
    Local(File),
    Link {
        lock: std::path::PathBuf,
        mine: std::path::PathBuf,
    },
}

impl Held {
    fn take(lock: Lock, local_lock: &Path, dir: &Path, name: &str, client: usize) -> Held {
        match lock {
            Lock::Local => {
                let file = File::open(local_lock).unwrap();
                file.lock().unwrap();
                Held::Local(file)
            }
            Lock::Link => {
                let lock = dir.join(format!("{name}.lock"));
                let mine = dir.join(format!("{name}.lock.{client}"));
                fs::write(&mine, "").unwrap();
                for _ in 0..100_000 {
                    match fs::hard_link(&mine, &lock) {
                        Ok(()) => return Held::Link { lock, mine },
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(e) => panic!("link {}: {e}", lock.display()),
                    }
                }
                panic!("the link lock {} was never free", lock.display())
            }
        }
    }

    fn release(self) {
        match self {
            Held::Local(file) => drop(file),
            Held::Link { lock, mine } => {
                fs::remove_file(&lock).unwrap();
                fs::remove_file(&mine).unwrap();
            }
        }
    }
}

const RUNS: [(Lock, Write); 4] = [
    (Lock::Local, Write::Rename),
    (Lock::Local, Write::InPlace),
    (Lock::Local, Write::Append),
    (Lock::Link, Write::Rename),
];

#[test]
fn increments_under_a_lock_across_two_clients_are_all_kept_with_the_cluster_options() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let check = cluster.a().mount.path.clone();
    let wanted = 2 * INCREMENTS;

    // The evidence: the same runs through clients with JuiceFS's defaults.
    {
        let defaults = [
            cluster.mount(0, "defaults-a", &[]),
            cluster.mount(1, "defaults-b", &[]),
        ];
        for (lock, write) in RUNS {
            let name = format!("defaults-{lock:?}-{write:?}");
            let outcome = count(
                [&defaults[0].path, &defaults[1].path],
                &check,
                &name,
                lock,
                write,
            );
            eprintln!(
                "JuiceFS defaults, {lock:?} lock, {write:?}: {} of {wanted} increments kept, \
                 {} garbled reads",
                outcome.kept,
                outcome.garbled.len()
            );
        }
    }

    for (lock, write) in RUNS {
        let name = format!("cluster-{lock:?}-{write:?}");
        let outcome = count(
            [&cluster.a().mount.path, &cluster.b().mount.path],
            &check,
            &name,
            lock,
            write,
        );
        eprintln!(
            "JuiceFS with {JUICEFS_OPTIONS:?}, {lock:?} lock, {write:?}: {} of {wanted} kept",
            outcome.kept
        );
        assert!(
            outcome.garbled.is_empty(),
            "{lock:?} lock, {write:?}: reads that were not a number: {:?}",
            outcome.garbled
        );
        assert_eq!(
            outcome.kept, wanted,
            "{lock:?} lock, {write:?}: increments lost across two JuiceFS clients mounted with \
             {JUICEFS_OPTIONS:?}"
        );
        // The other client sees the same count.
        assert_eq!(
            read_count(&cluster.b().mount.path.join(&name), write),
            Ok(wanted),
            "{name} through b's mount"
        );
    }
}

#[test]
fn the_other_client_sees_a_write_once_it_is_flushed_or_closed() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let (a, b) = (&cluster.a().mount.path, &cluster.b().mount.path);
    let read_b = || fs::read_to_string(b.join("note")).unwrap();
    fs::write(a.join("note"), "old").unwrap();
    assert_eq!(read_b(), "old", "after a's close");

    // Close-to-open: a write still in a's buffers may or may not be seen;
    // after a's fsync or close it is.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(a.join("note"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"new").unwrap();
    eprintln!(
        "b reads {:?} while a's write is neither flushed nor closed",
        read_b()
    );
    file.sync_all().unwrap();
    assert_eq!(read_b(), "new", "after a's fsync");
    std::io::Seek::rewind(&mut file).unwrap();
    std::io::Write::write_all(&mut file, b"NEW").unwrap();
    drop(file);
    assert_eq!(read_b(), "NEW", "after a's close");
}
