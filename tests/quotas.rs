//! Volume usage and quotas (issue 13): usage kept as guests change a
//! volume, `max_size` and `max_files` refusing the crossing call with
//! ENOSPC, across instances and processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AppToml, Mount, TestEnv, Volume, path};

const BOUND: Duration = Duration::from_secs(120);

/// An app whose function `q` (the quota guest, wasip1 or wasip2) mounts
/// the named volume `data` (with the keys `quota` sets) at /data and an unlimited
/// ephemeral volume at /free.
fn quota_app(
    env: &TestEnv,
    name: &str,
    guest: &str,
    quota: impl FnOnce(Volume) -> Volume,
) -> std::path::PathBuf {
    AppToml::new(name)
        .volume("data", |v| quota(v.persist(&format!("{name}-data"))))
        .volume("free", |v| v)
        .function("q", |f| {
            f.module(guest)
                .mount("/data", "data")
                .mount("/free", "free")
        })
        .write(env)
}

fn run_q(env: &TestEnv, app: &Path, args: &[&str]) -> String {
    let mut all = vec!["run", path(app), "--"];
    all.extend(args);
    env.run_within(BOUND, &all).stdout()
}

/// The output of `run APP --map MAP --concurrency N -- ARGS...`.
fn map_q(env: &TestEnv, app: &Path, map: &Path, concurrency: &str, args: &[&str]) -> String {
    let mut all = vec![
        "run",
        path(app),
        "--map",
        path(map),
        "--concurrency",
        concurrency,
        "--",
    ];
    all.extend(args);
    env.run_within(BOUND, &all).stdout()
}

/// `bytes` and `files` of named volume `name` from `volume list --json`.
fn listed(env: &TestEnv, name: &str) -> (u64, u64) {
    let stdout = env.run(&["volume", "list", "--json"]).success().stdout();
    let volumes: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let volume = volumes.into_iter().find(|v| v["name"] == name);
    let volume = volume.unwrap_or_else(|| panic!("{name} not listed: {stdout}"));
    let count = |key: &str| volume[key].as_u64().unwrap();
    (count("bytes"), count("files"))
}

/// Bytes of regular files and entries beneath `dir`, walked here (passing
/// over entries removed or renamed while it walks).
fn walk(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        files += 1;
        if meta.is_dir() {
            let (b, f) = walk(&entry.path());
            bytes += b;
            files += f;
        } else if meta.is_file() {
            bytes += meta.len();
        }
    }
    (bytes, files)
}

/// Whether `output` says step `n` was refused for want of space: ENOSPC;
/// or, for a wasip2 component's plain write (a stream write), EIO, which is
/// what wasi-libc makes of every failed stream write.
fn refused_at(output: &str, n: u64, stream_write_of_p2: bool) -> bool {
    output == format!("nospc {n}\n")
        || stream_write_of_p2
            && output.starts_with(&format!("error {n}: "))
            && output.contains("os error 29")
}

fn guest_quota_is_enforced(guest: &str) {
    let p2 = guest.starts_with("{guest2:");
    let env = TestEnv::new();
    let app = quota_app(&env, "qa", guest, |v| v.max_size("1MiB").max_files(10));
    // One big write past the quota is refused; a wasip1 write fails whole
    // (wasi-libc splits a wasip2 one into 64 KiB stream writes: those that
    // fit succeed).
    let out = run_q(&env, &app, &["write", "2000000", "/data/big"]);
    assert!(refused_at(&out, 0, p2), "{out}");
    let (bytes, _) = listed(&env, "qa-data");
    assert!(bytes <= 1 << 20, "{bytes}");
    if !p2 {
        assert_eq!(bytes, 0, "nothing of the refused write is counted");
    }
    assert_eq!(run_q(&env, &app, &["extend", "/data/big", "0"]), "done 1\n");
    // The same in the unlimited volume next to it succeeds.
    assert_eq!(
        run_q(&env, &app, &["write", "2000000", "/free/big"]),
        "done 1\n"
    );
    // Many small writes: the one that would cross fails.
    let out = run_q(&env, &app, &["writes", "/data/small", "100000", "20"]);
    assert!(refused_at(&out, 10, p2), "{out}");
    let (bytes, files) = listed(&env, "qa-data");
    assert!(bytes <= 1 << 20, "{bytes}");
    assert_eq!((bytes, files), walk(&env.volume_dir("qa-data")));
    // Extending with ftruncate and a write past the end cross it too.
    assert_eq!(
        run_q(&env, &app, &["extend", "/data/small", "2000000"]),
        "nospc 0\n"
    );
    let out = run_q(&env, &app, &["pwrite", "/data/small", "1048000", "1000"]);
    assert!(refused_at(&out, 0, p2), "{out}");
    // In place (no growth) is fine; shrinking gives room back.
    assert_eq!(
        run_q(&env, &app, &["pwrite", "/data/small", "0", "1000"]),
        "done 1\n"
    );
    assert_eq!(
        run_q(&env, &app, &["extend", "/data/small", "0"]),
        "done 1\n"
    );
    assert_eq!(listed(&env, "qa-data").0, 0);
    // max_files: 10 entries, two of them `small` and `big`.
    assert_eq!(run_q(&env, &app, &["files", "/data", "20"]), "nospc 8\n");
    assert_eq!(listed(&env, "qa-data").1, 10);
    assert_eq!(listed(&env, "qa-data"), walk(&env.volume_dir("qa-data")));
}

#[test]
fn a_wasip1_guest_gets_enospc_at_the_crossing_call() {
    guest_quota_is_enforced("{guest:quota}");
}

#[test]
fn a_wasip2_component_is_refused_at_the_crossing_call() {
    guest_quota_is_enforced("{guest2:quota}");
}

/// 8 instances in 2 processes write 1 MiB files, 256 bytes at a time, into
/// one 20 MiB volume, at once: it fills exactly and never holds more.
#[test]
fn instances_in_two_processes_share_one_quota() {
    let env = TestEnv::new();
    let app = quota_app(&env, "qb", "{guest:quota}", |v| v.max_size("20MiB"));
    env.run(&["deploy", path(&app)]).success();
    let maps: Vec<_> = (0..2)
        .map(|p| {
            let file = env.work.path().join(format!("map{p}"));
            let lines: String = (0..20).map(|i| format!("/data/p{p}-{i}\n")).collect();
            std::fs::write(&file, lines).unwrap();
            file
        })
        .collect();
    let children: Vec<_> = maps
        .iter()
        .map(|m| {
            env.spawn(&[
                "call",
                "qb",
                "q",
                "--map",
                path(m),
                "--concurrency",
                "4",
                "--",
                "chunked",
                "1048576",
                "256",
            ])
        })
        .collect();
    // While they write, the volume never holds more than its quota.
    let volume = env.volume_dir("qb-data");
    let deadline = std::time::Instant::now() + BOUND;
    let mut samples = 0;
    while samples < 10_000 && std::time::Instant::now() < deadline {
        let (bytes, _) = walk(&volume);
        assert!(bytes <= 20 << 20, "the volume held {bytes} bytes");
        samples += 1;
        if bytes == 20 << 20 {
            break;
        }
    }
    let mut done = 0;
    let mut refused = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        done += text.matches("done 4096").count();
        refused += text.matches("nospc ").count();
    }
    assert_eq!(done + refused, 40, "every input fitted or was refused");
    assert!(
        refused >= 20,
        "only {refused} of 40 MiB asked for were refused"
    );
    let (bytes, files) = walk(&env.volume_dir("qb-data"));
    assert_eq!(bytes, 20 << 20);
    assert_eq!(listed(&env, "qb-data"), (bytes, files));
    // The two processes wrote at once: the times of their files (each
    // made by one write, refused or not) interleave.
    let span = |p: usize| {
        let times: Vec<std::time::SystemTime> = std::fs::read_dir(&volume)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("p{p}-"))
            })
            .map(|e| e.metadata().unwrap().modified().unwrap())
            .collect();
        assert!(!times.is_empty(), "process {p} made no file");
        (*times.iter().min().unwrap(), *times.iter().max().unwrap())
    };
    let ((first0, last0), (first1, last1)) = (span(0), span(1));
    assert!(
        first0.max(first1) < last0.min(last1),
        "the two processes did not write at once: {:?} against {:?}",
        (first0, last0),
        (first1, last1)
    );
}

/// After 1,000 mixed creates, writes, truncates, renames and deletes, the
/// listed usage is what a walk finds: one instance at a time (nothing else
/// has the volume open, so nothing marks it for a recount: this is the
/// count kept as the guest went), then four at once (racing on the same
/// names, they mark it, and `volume list` recounts once they are done).
#[test]
fn listed_usage_matches_a_walk_after_mixed_changes() {
    let env = TestEnv::new();
    let app = quota_app(&env, "qc", "{guest:quota}", |v| v);
    let map = env.work.path().join("map");
    for (seeds, concurrency) in [(1..11, "1"), (11..21, "4")] {
        let lines: String = seeds.map(|i| format!("{i}\n")).collect();
        std::fs::write(&map, lines).unwrap();
        let out = map_q(&env, &app, &map, concurrency, &["mixed", "/data", "100"]);
        assert_eq!(out.matches("done 100").count(), 10, "{out}");
        let walked = walk(&env.volume_dir("qc-data"));
        assert!(walked.1 > 0);
        assert_eq!(
            listed(&env, "qc-data"),
            walked,
            "at concurrency {concurrency}"
        );
    }
}

#[test]
fn volume_create_and_set_change_the_quota_and_info_shows_it() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "v", "--max-size", "1MiB"])
        .success();
    let info = env
        .run(&["volume", "info", "v", "--json"])
        .success()
        .stdout();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["max_size"], 1 << 20);
    assert_eq!(info["bytes"], 0);
    env.run(&[
        "volume",
        "set",
        "v",
        "--max-size",
        "none",
        "--max-files",
        "5",
    ])
    .success();
    let info = env.run(&["volume", "info", "v"]).success().stdout();
    assert!(info.contains("max_size none, max_files 5"), "{info}");
}

#[test]
fn bad_quotas_are_refused_with_where_and_how() {
    let env = TestEnv::new();
    // As written, for the line and column of the error.
    let app = env.app(
        "qd",
        r#"
name = "qd"
[volumes.data]
persist = "qd-data"
max_size = "lots"
[volumes.free]
[functions.q]
module = "{guest:quota}"
mounts = { "/data" = "data", "/free" = "free" }
"#,
    );
    let run = env
        .run(&["run", path(&app), "--", "write", "1", "/data/x"])
        .code_is(2);
    assert!(run.stderr().contains("app.toml:5:12"), "{}", run.stderr());
    assert!(run.stderr().contains("bad `max_size`"), "{}", run.stderr());
    let app = quota_app(&env, "qe", "{guest:quota}", |v| v.max_files(0));
    let run = env
        .run(&["run", path(&app), "--", "write", "1", "/data/x"])
        .code_is(2);
    assert!(
        run.stderr().contains("`max_files = 0` is out of range"),
        "{}",
        run.stderr()
    );
    let run = env
        .run(&["volume", "set", "missing", "--max-size", "1MiB"])
        .code_is(2);
    assert!(
        run.stderr().contains("no volume is named `missing`"),
        "{}",
        run.stderr()
    );
    let run = env
        .run(&["volume", "create", "w", "--max-size", "0"])
        .code_is(2);
    assert!(run.stderr().contains("zero bytes"), "{}", run.stderr());
    env.run(&["volume", "create", "w"]).success();
    env.run(&["volume", "set", "w"]).code_is(2);
}

/// `volume put` of more than fits copies nothing; what fits is counted.
#[test]
fn volume_put_checks_the_quota_first_and_leaves_nothing() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "p", "--max-size", "100KiB"])
        .success();
    let local = env.work.path().join("tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("a"), vec![1u8; 60 << 10]).unwrap();
    std::fs::write(local.join("sub/b"), vec![2u8; 60 << 10]).unwrap();
    let run = env
        .run(&["volume", "put", "p", path(&local), "/tree"])
        .code_is(1);
    assert!(
        run.stderr().contains("does not fit in volume `p`"),
        "{}",
        run.stderr()
    );
    assert_eq!(walk(&env.volume_dir("p")), (0, 0), "nothing was copied");
    assert_eq!(listed(&env, "p"), (0, 0));
    env.run(&["volume", "put", "p", path(&local.join("a")), "/a"])
        .success();
    assert_eq!(listed(&env, "p"), (60 << 10, 1));
    env.run(&["volume", "rm", "p", "/a"]).success();
    assert_eq!(listed(&env, "p"), (0, 0));
}

/// `volume cp` takes its room before copying: a copy past the quota copies
/// nothing; a snapshot counts against no quota, and `volume info` lists it;
/// a restore is counted again.
#[test]
fn volume_cp_checks_the_quota_and_snapshots_count_against_none() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "c", "--max-size", "100KiB"])
        .success();
    let local = env.work.path().join("tree");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("a"), vec![1u8; 30 << 10]).unwrap();
    std::fs::write(local.join("b"), vec![2u8; 30 << 10]).unwrap();
    env.run(&["volume", "put", "c", path(&local), "/tree"])
        .success();
    assert_eq!(listed(&env, "c"), (60 << 10, 3));
    let run = env
        .run(&["volume", "cp", "c", "/tree", "/copy", "--recursive"])
        .code_is(1);
    assert!(
        run.stderr().contains("does not fit in volume `c`"),
        "{}",
        run.stderr()
    );
    assert!(!env.volume_dir("c").join("copy").exists(), "nothing copied");
    env.run(&["volume", "cp", "c", "/tree/a", "/a2"]).success();
    assert_eq!(listed(&env, "c"), (90 << 10, 4));

    env.run(&["volume", "snapshot", "create", "c", "s1"])
        .success();
    let info: serde_json::Value = serde_json::from_str(
        &env.run(&["volume", "info", "c", "--json"])
            .success()
            .stdout(),
    )
    .unwrap();
    assert_eq!(info["snapshots"][0]["name"], "s1", "{info}");
    assert_eq!(info["snapshots"][0]["bytes"], 90 << 10, "{info}");
    assert_eq!(
        listed(&env, "c"),
        (90 << 10, 4),
        "a snapshot is not counted"
    );
    env.run(&["volume", "rm", "c", "/tree", "--recursive"])
        .success();
    assert_eq!(listed(&env, "c"), (30 << 10, 1));
    env.run(&["volume", "snapshot", "restore", "c", "s1", "--yes"])
        .success();
    assert_eq!(listed(&env, "c"), (90 << 10, 4), "a restore is recounted");
}

/// Issue 20, item 8: a wasip1 guest that moves its preopen to another
/// descriptor with `fd_renumber` still writes the volume it is, quota and
/// all.
#[test]
fn a_renumbered_preopen_keeps_its_quota() {
    let env = TestEnv::new();
    let app = AppToml::new("qr")
        .volume("data", |v| {
            v.persist("qr-data").max_size("1MiB").max_files(20)
        })
        .function("q", |f| f.module("{guest:quota}").mount("/data", "data"))
        .write(&env);
    // Ten files of 100,000 bytes fit in 1 MiB, the eleventh does not.
    assert_eq!(
        run_q(&env, &app, &["renumbered", "100000", "30"]),
        "nospc 10\n"
    );
    assert_eq!(listed(&env, "qr-data"), walk(&env.volume_dir("qr-data")));
    // Empty files: the ten there and ten more make the 20 files allowed.
    assert_eq!(run_q(&env, &app, &["renumbered", "0", "30"]), "nospc 20\n");
    assert_eq!(listed(&env, "qr-data"), (0, 20));
    assert_eq!(walk(&env.volume_dir("qr-data")), (0, 20));
}

/// Issue 20, item 9: a read-only mount of a volume and a writable
/// `sub_path` mount of it: the quota is the volume's, whichever mount
/// the guest writes through.
#[test]
fn two_mounts_of_one_volume_keep_its_one_quota() {
    for guest in ["{guest:quota}", "{guest2:quota}"] {
        let p2 = guest.starts_with("{guest2:");
        let env = TestEnv::new();
        // The sub_path is there before (see the next test for one the
        // mount makes).
        let out = env.work.path().join("out");
        std::fs::create_dir(&out).unwrap();
        env.run(&["volume", "create", "qm-data"]).success();
        env.run(&["volume", "put", "qm-data", path(&out), "/out"])
            .success();
        let app = AppToml::new("qm")
            .volume("data", |v| {
                v.persist("qm-data").max_size("1MiB").max_files(10)
            })
            .function("q", |f| {
                f.module(guest)
                    .mount("/data", Mount::volume("data").read_only())
                    .mount("/out", Mount::volume("data").sub_path("out"))
            })
            .write(&env);
        let out = run_q(&env, &app, &["write", "2000000", "/out/big"]);
        assert!(refused_at(&out, 0, p2), "{guest}: {out}");
        let (bytes, _) = listed(&env, "qm-data");
        assert!(bytes <= 1 << 20, "{guest}: {bytes}");
        let out = run_q(&env, &app, &["files", "/out/many", "50"]);
        assert!(out.starts_with("nospc "), "{guest}: {out}");
        let (bytes, files) = listed(&env, "qm-data");
        assert!(bytes <= 1 << 20 && files <= 10, "{guest}: {bytes} {files}");
        assert_eq!((bytes, files), walk(&env.volume_dir("qm-data")), "{guest}");
    }
}

/// Issue 20, item 10: a write that fails (through a read-only descriptor,
/// aimed 3 MB past the end) counts nothing.
#[test]
fn a_failed_write_gives_back_what_it_reserved() {
    for guest in ["{guest:quota}", "{guest2:quota}"] {
        let env = TestEnv::new();
        let app = quota_app(&env, "qw", guest, |v| v.max_size("10MiB"));
        assert_eq!(run_q(&env, &app, &["write", "1000", "/data/f"]), "done 1\n");
        assert_eq!(
            run_q(&env, &app, &["rowrite", "/data/f", "3000000", "10"]),
            "refused size 1000\n",
            "{guest}"
        );
        assert_eq!(listed(&env, "qw-data"), (1000, 1), "{guest}");
    }
}

/// Issue 20, item 10: two instances truncating and rewriting one file
/// never hold more than one copy of it, and nothing they do is refused in
/// a volume that has room for it: each write settles what it changed.
#[test]
fn instances_rewriting_one_file_are_counted_per_write() {
    let env = TestEnv::new();
    let app = quota_app(&env, "qt", "{guest:quota}", |v| v.max_size("1MiB"));
    let map = env.work.path().join("map");
    std::fs::write(&map, "/data/f\n/data/f\n/data/f\n/data/f\n").unwrap();
    let out = map_q(&env, &app, &map, "4", &["churn", "200000", "300"]);
    assert_eq!(
        out.matches("done 300").count(),
        4,
        "every round fits: {out}"
    );
    assert_eq!(listed(&env, "qt-data"), (200000, 1));
}

/// Issue 20, item 11: the directories a `sub_path` mount makes are entries
/// of the volume, counted and held to `max_files` like a guest's.
#[test]
fn directories_made_for_a_sub_path_are_counted() {
    let env = TestEnv::new();
    let app = |name: &str, files: u64| {
        AppToml::new(name)
            .volume("data", |v| {
                v.persist(&format!("{name}-data")).max_files(files)
            })
            .function("q", |f| {
                f.module("{guest:quota}")
                    .mount("/out", Mount::volume("data").sub_path("a/b/c/d/e"))
            })
            .write(&env)
    };
    // The volume's usage exists before the mount makes its directories.
    env.run(&["volume", "create", "qs-data", "--max-files", "10"])
        .success();
    assert_eq!(listed(&env, "qs-data"), (0, 0));
    let roomy = app("qs", 10);
    assert_eq!(run_q(&env, &roomy, &["files", "/out", "20"]), "nospc 5\n");
    assert_eq!(listed(&env, "qs-data"), (0, 10));
    assert_eq!(walk(&env.volume_dir("qs-data")), (0, 10));
    // Five directories do not fit in three files: the mount is refused.
    env.run(&["volume", "create", "qn-data", "--max-files", "3"])
        .success();
    assert_eq!(listed(&env, "qn-data"), (0, 0));
    let tight = app("qn", 3);
    let run = env.run_within(BOUND, &["run", path(&tight), "--", "files", "/out", "2"]);
    assert_ne!(run.code(), 0, "{}", run.stdout());
    assert!(run.stderr().contains("sub_path"), "{}", run.stderr());
    assert!(listed(&env, "qn-data").1 <= 3);
    assert_eq!(listed(&env, "qn-data"), walk(&env.volume_dir("qn-data")));
}

/// Issue 20, item 11: a snapshot counts what `volume info` counts
/// (directories are entries too), a volume forked from a snapshot must
/// have room for it, and `put --force` over a file counts the file it
/// replaces.
#[test]
fn snapshots_forks_and_forced_puts_count_as_the_volume_does() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "s"]).success();
    let local = env.work.path().join("tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("a"), vec![1u8; 30 << 10]).unwrap();
    std::fs::write(local.join("sub/b"), vec![2u8; 30 << 10]).unwrap();
    env.run(&["volume", "put", "s", path(&local), "/tree"])
        .success();
    assert_eq!(listed(&env, "s"), (60 << 10, 4));
    env.run(&["volume", "snapshot", "create", "s", "s1"])
        .success();
    let list: serde_json::Value = serde_json::from_str(
        &env.run(&["volume", "snapshot", "list", "s", "--json"])
            .success()
            .stdout(),
    )
    .unwrap();
    assert_eq!(list[0]["files"], 4, "{list}");
    assert_eq!(list[0]["bytes"], 60 << 10, "{list}");

    for quota in [&["--max-size", "1KiB"][..], &["--max-files", "3"]] {
        let mut args = vec!["volume", "create", "t", "--from", "s@s1"];
        args.extend(quota);
        let run = env.run(&args).code_is(2);
        assert!(
            run.stderr().contains("snapshot `s@s1` holds"),
            "{}",
            run.stderr()
        );
        let names = env.run(&["volume", "list", "--json"]).success().stdout();
        assert!(!names.contains("\"t\""), "{quota:?} made t: {names}");
    }
    env.run(&[
        "volume",
        "create",
        "t",
        "--from",
        "s@s1",
        "--max-files",
        "4",
    ])
    .success();
    assert_eq!(listed(&env, "t"), (60 << 10, 4));

    env.run(&["volume", "create", "p", "--max-size", "1MiB"])
        .success();
    let big = env.work.path().join("big");
    let small = env.work.path().join("small");
    std::fs::write(&big, vec![1u8; 900_000]).unwrap();
    std::fs::write(&small, vec![2u8; 200_000]).unwrap();
    env.run(&["volume", "put", "p", path(&big), "/f"]).success();
    env.run(&["volume", "put", "p", path(&small), "/f", "--force"])
        .success();
    assert_eq!(listed(&env, "p"), (200_000, 1));
}
