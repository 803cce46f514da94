//! Processes die, disks fill, files rot: nothing is lost or left behind
//! (issue 6, "Faults").

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Run, TestEnv, eventually, path};

/// wasmhost with `$WASMHOST_HOME` at `home`.
fn run_at(env: &TestEnv, home: &Path, args: &[&str]) -> Run {
    Run(env
        .command()
        .env("WASMHOST_HOME", home)
        .args(args)
        .output()
        .unwrap())
}

/// Named volumes by name -> id, from `volume list --json`.
fn named_volumes(env: &TestEnv, home: &Path) -> Vec<(String, String)> {
    let out = run_at(env, home, &["volume", "list", "--json"]).success();
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout()).unwrap();
    list.iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `PRAGMA integrity_check` on the registry, read-only.
fn assert_registry_intact(home: &Path) {
    let conn = rusqlite::Connection::open_with_flags(
        home.join("registry.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the registry");
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check runs");
    assert_eq!(result, "ok", "registry integrity_check");
    let dangling: i64 = conn
        .query_row(
            "SELECT count(*) FROM mounts WHERE volume_id NOT IN (SELECT id FROM volumes)
               OR app_id NOT IN (SELECT id FROM apps)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dangling, 0, "mounts that name a missing app or volume");
}

/// After any command: only named volumes' directories remain, every app
/// shown running is a volume app, the trash empties, the registry is intact.
fn assert_clean(env: &TestEnv, home: &Path, context: &str) {
    let out = run_at(env, home, &["app", "list", "--all", "--json"]).success();
    let apps: Vec<serde_json::Value> = serde_json::from_str(&out.stdout()).unwrap();
    let running: Vec<_> = apps
        .iter()
        .filter(|a| a["state"] == "running" && a["kind"] != "volume")
        .collect();
    assert!(
        running.is_empty(),
        "{context}: apps still running: {running:?}"
    );
    for app in &apps {
        assert!(
            app["id"].as_str().is_some_and(|id| id.starts_with("ap-")),
            "{context}: {app}"
        );
    }
    let named: BTreeSet<String> = named_volumes(env, home)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let dirs = dir_names(&home.join("volumes"));
    assert_eq!(
        dirs, named,
        "{context}: volume directories are not exactly the named volumes'"
    );
    eventually(Duration::from_secs(30), "the trash empties", || {
        dir_names(&home.join("trash"))
            .iter()
            .all(|n| n == ".purge.lock")
    });
    // A kill in the microseconds between creating a lease under its
    // temporary name and placing it leaves a `.lease-new`, which is swept
    // only once it is a minute old (it cannot be told from one being born).
    let leases: Vec<_> = dir_names(&home.join("leases"))
        .into_iter()
        .filter(|n| !n.ends_with(".lease-new"))
        .collect();
    assert!(leases.is_empty(), "{context}: leases left: {leases:?}");
    assert_registry_intact(home);
}

/// A small pseudo-random sequence, seeded from the clock and printed, so a
/// failing round can be told apart from the others.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed {seed}");
        Self(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Asserts `data` is a prefix of what the `pattern` op writes: chunk i is
/// `format!("{i:015}\n")` 256 times. A kill may cut it anywhere, but never
/// leaves anything else.
#[track_caller]
fn assert_pattern_prefix(data: &[u8], context: &str) {
    for (k, record) in data.chunks(16).enumerate() {
        let expected = format!("{:015}\n", k / 256);
        assert_eq!(
            record,
            &expected.as_bytes()[..record.len()],
            "{context}: byte {} is not the pattern",
            k * 16
        );
    }
}

/// Twenty `run`s killed with SIGKILL: even rounds at a random point from
/// startup on, odd ones while the guest is writing a file (it said so), and
/// each of those rounds shows the file partly written. After every kill the
/// next command cleans up, and the named volume keeps exactly what was
/// written.
#[test]
fn kill_9_of_run_at_random_points_leaves_nothing_behind() {
    let env = TestEnv::on_sqlite();
    let app = env.fsops_app("killed", "killed-data");
    // Once whole, so the named volume exists and the module is cached.
    env.run(&[
        "run",
        path(&app),
        "--",
        "pattern",
        "/data/whole",
        "2",
        "/scratch",
    ])
    .success();
    let volume = env
        .home()
        .join("volumes")
        .join(&named_volumes(&env, env.home())[0].1);
    let mut rng = Rng::new();
    let mut killed_mid_write = 0;
    for round in 0..20 {
        let file = format!("round-{round}");
        let mut child = env.spawn(&[
            "run",
            path(&app),
            "--",
            "pattern",
            &format!("/data/{file}"),
            "100000000",
            "/scratch",
        ]);
        let writing = round % 2 == 1;
        let delay = if writing {
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "writing\n", "round {round}");
            rng.below(30)
        } else {
            rng.below(300)
        };
        std::thread::sleep(Duration::from_millis(delay));
        // SIGKILL: no handler runs, exactly like a power cut for this process.
        child.kill().unwrap();
        child.wait().unwrap();
        let context = format!("round {round}, killed after {delay} ms");
        let written = std::fs::read(volume.join(&file)).unwrap_or_default();
        assert_pattern_prefix(&written, &context);
        if writing {
            assert!(
                written.len() >= 4096,
                "{context}: the first chunk is missing"
            );
        }
        if !written.is_empty() {
            killed_mid_write += 1;
            std::fs::remove_file(volume.join(&file)).unwrap();
        }
        assert_clean(&env, env.home(), &context);
        let named = named_volumes(&env, env.home());
        assert_eq!(
            named.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["killed-data"],
            "round {round}"
        );
    }
    assert!(
        killed_mid_write >= 10,
        "{killed_mid_write} of 20 rounds killed a guest mid-write"
    );
    // The named volume kept what the guests wrote, and still works.
    let whole = std::fs::read(volume.join("whole")).unwrap();
    assert_eq!(whole.len(), 2 * 4096);
    assert_pattern_prefix(&whole, "the whole run");
    env.run(&[
        "run",
        path(&app),
        "--",
        "pattern",
        "/data/last",
        "1",
        "/scratch",
    ])
    .success();
    assert_clean(&env, env.home(), "after a last whole run");
}

#[test]
fn racing_create_delete_and_mount_of_one_volume_leave_it_whole_or_absent() {
    let env = Arc::new(TestEnv::on_sqlite());
    let app = env.fsops_app("racer", "contested");
    env.run(&[
        "run",
        path(&app),
        "--",
        "pattern",
        "/data/w",
        "1",
        "/scratch",
    ])
    .success();
    env.run(&["volume", "delete", "contested", "--yes"])
        .success();
    const ROUNDS: usize = 40;
    let barrier = Arc::new(Barrier::new(3));
    let worker = |who: u64| {
        let (env, barrier, app) = (env.clone(), barrier.clone(), app.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((who + 1) * 0x2545_f491_4f6c_dd1d));
            let mut errors = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait();
                let op = rng.below(3);
                // Each process writes its own file: two guests renaming the
                // same temporary file would race each other, not wasmhost.
                let file = format!("/data/w{who}-{round}");
                let args: Vec<&str> = match op {
                    0 => vec!["volume", "create", "contested"],
                    1 => vec!["volume", "delete", "contested", "--yes"],
                    _ => vec!["run", path(&app), "--", "write", &file, "x"],
                };
                let out = env.run(&args);
                let stderr = out.stderr();
                let clean_refusal = (out.code() == 2
                    && (stderr.contains("already exists")
                        || stderr.contains("no volume is named")))
                    || stderr.contains("is mounted by running app");
                if out.code() != 0 && !clean_refusal {
                    errors.push(format!(
                        "round {round}, `{}`: exit {}: {stderr}",
                        args.join(" "),
                        out.code()
                    ));
                }
                if out.code() != 0 && stderr.lines().count() != 1 {
                    errors.push(format!("round {round}: not one line: {stderr:?}"));
                }
                barrier.wait();
            }
            errors
        })
    };
    let workers = [worker(0), worker(1)];
    for round in 0..ROUNDS {
        barrier.wait();
        barrier.wait();
        // Both processes are done: the volume is there whole, or not at all.
        let named = named_volumes(&env, env.home());
        let dirs = dir_names(&env.home().join("volumes"));
        match named.as_slice() {
            [] => assert!(dirs.is_empty(), "round {round}: no volume, yet {dirs:?}"),
            [(name, id)] => {
                assert_eq!(name, "contested");
                assert_eq!(
                    dirs,
                    BTreeSet::from([id.clone()]),
                    "round {round}: volume {id} without its directory, or more"
                );
            }
            more => panic!("round {round}: {more:?}"),
        }
    }
    let errors: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_clean(&env, env.home(), "after the race");
}

/// A tmpfs mounted for the test, unmounted (lazily, so a stray purge process
/// cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run it as root, or in a container with CAP_SYS_ADMIN): mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_guest_cleanly_and_damages_nothing() {
    let env = TestEnv::on_sqlite();
    let disk = Tmpfs::mount(&env.work.path().join("disk"), "8m");
    // `$WASMHOST_HOME` is the small disk; TestEnv keeps its own temp dir.
    let home = disk.0.join("home");
    let app = env.fsops_app("filler", "big");
    let keep_app = env.fsops_app("keeper", "keep");
    let with_home = |args: &[&str]| run_at(&env, &home, args);
    // Another volume's data, and the module cached, before the disk fills.
    with_home(&[
        "run",
        path(&keep_app),
        "--",
        "write",
        "/data/precious",
        "keep me",
    ])
    .success();

    // An ephemeral volume filled past the disk: ENOSPC reaches the guest,
    // which says so on one line; the run fails, and its volume is deleted.
    let out = with_home(&["run", path(&app), "--", "fill", "/scratch/fill", "64"]);
    assert_ne!(out.code(), 0, "filling an 8 MiB disk with 64 MiB succeeded");
    let stderr = out.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("No space left on device"), "{stderr:?}");

    // A named volume filled past the disk: the same, and the data stays.
    let out = with_home(&["run", path(&app), "--", "fill", "/data/fill", "64"]);
    assert_ne!(out.code(), 0);
    let stderr = out.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("No space left on device"), "{stderr:?}");

    // The disk is full now. Commands still answer, and what they refuse
    // they refuse in one line.
    for args in [
        vec!["app", "list", "--all", "--json"],
        vec!["volume", "list", "--json"],
        vec!["volume", "get", "keep", "/precious", "-"],
    ] {
        let out = with_home(&args);
        assert!(
            out.code() == 0 || out.stderr().lines().count() == 1,
            "`{}` on a full disk: exit {}, {:?}",
            args.join(" "),
            out.code(),
            out.stderr()
        );
    }
    assert_registry_intact(&home);

    // Freeing the space makes everything work again, and nothing was lost.
    with_home(&["volume", "delete", "big", "--yes"]).success();
    let precious = with_home(&["volume", "get", "keep", "/precious", "-"]).success();
    assert_eq!(precious.stdout(), "keep me");
    with_home(&["run", path(&keep_app), "--", "read", "/data/precious"]).success();
    assert_clean(&env, &home, "after the disk was freed");
    drop(disk);
}

#[test]
fn a_corrupted_or_truncated_registry_gives_one_clear_line() {
    let env = TestEnv::on_sqlite();
    let app = env.fsops_app("reg", "reg-data");
    env.run(&["run", path(&app), "--", "write", "/data/x", "y"])
        .success();
    for i in 0..40 {
        env.run(&["volume", "create", &format!("filler-{i}")])
            .success();
    }
    let registry = env.home().join("registry.db");
    // Everything in the main file, so damaging it damages the data.
    rusqlite::Connection::open(&registry)
        .unwrap()
        .pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    let good = std::fs::read(&registry).unwrap();
    assert!(good.len() > 4096, "registry is {} bytes", good.len());
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a database\n".repeat(500)),
        ("truncated to 100 bytes", good[..100].to_vec()),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("header only", good[..4096].to_vec()),
        ("zeroed second page", {
            let mut bad = good.clone();
            bad[4096..8192].fill(0);
            bad
        }),
        ("scribbled over", {
            let mut bad = good.clone();
            for (i, b) in bad.iter_mut().enumerate().skip(100) {
                *b = (i * 7 % 251) as u8;
            }
            bad
        }),
    ];
    for (what, bytes) in damages {
        for side in ["registry.db-wal", "registry.db-shm"] {
            let _ = std::fs::remove_file(env.home().join(side));
        }
        std::fs::write(&registry, &bytes).unwrap();
        for args in [
            vec!["app", "list", "--all"],
            vec!["volume", "list"],
            vec!["run", path(&app), "--", "read", "/data/x"],
        ] {
            let out = env.run(&args);
            let stderr = out.stderr();
            assert_eq!(
                out.code(),
                1,
                "{what}, `{}`: exit {}: {stderr}",
                args.join(" "),
                out.code()
            );
            assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
            assert!(
                stderr.starts_with("error: ") && stderr.contains(path(&registry)),
                "{what}: the message does not name {}: {stderr:?}",
                registry.display()
            );
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        }
    }
    // Moved aside as the message says, wasmhost starts afresh.
    std::fs::rename(&registry, env.home().join("registry.db.bad")).unwrap();
    env.run(&["app", "list"]).success();
}

/// The cache entries (`*.cwasm`) under `$WASMHOST_HOME/cache`.
fn cache_entries(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".cwasm"))
        .collect()
}

#[test]
fn a_corrupted_or_truncated_cache_entry_is_rebuilt() {
    let env = TestEnv::new();
    let app = env.fsops_app("cached", "cached-data");
    env.run(&["run", path(&app), "--", "write", "/data/x", "hello"])
        .success();
    let entries = cache_entries(env.home());
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let good = std::fs::read(entry).unwrap();
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated to 16 bytes", good[..16].to_vec()),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("all but the last byte", good[..good.len() - 1].to_vec()),
        ("garbage", vec![0x5a; good.len()]),
        ("zeroed header", {
            let mut bad = good.clone();
            bad[..64].fill(0);
            bad
        }),
        ("zeroed tail", {
            let mut bad = good.clone();
            let n = bad.len();
            bad[n - 4096..].fill(0);
            bad
        }),
    ];
    for (what, bytes) in damages {
        std::fs::write(entry, &bytes).unwrap();
        let out = env.run(&["run", path(&app), "--", "read", "/data/x"]);
        assert_eq!(
            (out.code(), out.stdout().as_str()),
            (0, "hello"),
            "{what}: {}",
            out.stderr()
        );
        assert!(out.stderr().is_empty(), "{what}: {}", out.stderr());
        let now = cache_entries(env.home());
        assert_eq!(now.len(), 1, "{what}: {now:?}");
        assert_eq!(std::fs::read(&now[0]).unwrap(), good, "{what}: not rebuilt");
    }
}

/// Several wasmhost processes starting at once on a new `$WASMHOST_HOME`
/// all open the registry (one of them creates it); none is told the
/// database is locked.
#[test]
fn simultaneous_first_commands_on_a_new_home_all_succeed() {
    for _ in 0..40 {
        let env = TestEnv::new();
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..6)
                .map(|_| scope.spawn(|| env.run(&["volume", "list", "--json"])))
                .collect();
            for run in runs {
                let run = run.join().unwrap().success();
                assert_eq!(run.stdout().trim(), "[]");
            }
        });
    }
}
