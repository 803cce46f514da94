//! Guests are untrusted: every escape below is attempted by a real guest and
//! must be refused, and the host files planted outside the volumes (canaries)
//! must stay unread and unchanged. Then the host side: `volume` commands and
//! volume deletion must never follow a link a guest planted. Where stock
//! wasmtime-wasi already blocks an attack, the test still exists, so a later
//! change cannot reopen it (issue 6: guest escapes, host-side safety).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{AppToml, Mount, Run, TestEnv, path, wait_with_timeout};

const SECRET: &str = "host-secret-canary-41d7";
const DIR_SECRET: &str = "host-dir-secret-9ac2";

/// Host files outside every volume, with what they held when planted.
struct Canaries {
    /// `$WASMHOST_HOME/canary.txt`: right next to `volumes/`.
    file: PathBuf,
    /// A host directory in the test's work dir, holding `host-only-file`.
    dir: PathBuf,
    file_meta: (u64, i64, i64, u64),
    dir_listing: Vec<String>,
}

impl Canaries {
    fn plant(env: &TestEnv) -> Self {
        let file = env.home().join("canary.txt");
        std::fs::write(&file, SECRET).unwrap();
        let dir = env.work.path().join("hostdir");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("host-only-file"), DIR_SECRET).unwrap();
        // What a racing reader reads through `LINK/f`.
        std::fs::write(dir.join("f"), DIR_SECRET).unwrap();
        Self {
            file_meta: meta(&file),
            dir_listing: listing(&dir),
            file,
            dir,
        }
    }

    /// Both canaries hold exactly what they held, with no new links or
    /// entries, and `outputs` never show their contents.
    #[track_caller]
    fn assert_intact(&self, outputs: &[&Run]) {
        assert_eq!(std::fs::read_to_string(&self.file).unwrap(), SECRET);
        assert_eq!(
            meta(&self.file),
            self.file_meta,
            "canary file metadata changed"
        );
        assert_eq!(
            listing(&self.dir),
            self.dir_listing,
            "host directory changed"
        );
        assert_eq!(
            std::fs::read_to_string(self.dir.join("host-only-file")).unwrap(),
            DIR_SECRET
        );
        for run in outputs {
            for text in [run.stdout(), run.stderr()] {
                assert!(
                    !text.contains(SECRET) && !text.contains(DIR_SECRET),
                    "host data leaked: {text}"
                );
            }
        }
    }
}

/// (size, mtime, mtime nanoseconds, link count).
fn meta(path: &Path) -> (u64, i64, i64, u64) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.len(), m.mtime(), m.mtime_nsec(), m.nlink())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A relative symlink target that climbs from anywhere under `/` up to the
/// root and down to `absolute`: what a guest writes to point outside.
fn climbing(absolute: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(32),
        absolute.to_str().unwrap().trim_start_matches('/')
    )
}

/// An app whose function `f` mounts the named volume `vol` read-write at
/// /data and read-only at /ro.
fn fsops_app(env: &TestEnv, name: &str, volume: &str) -> PathBuf {
    AppToml::new(name)
        .volume("data", |v| v.persist(volume))
        .volume("ro", |v| v.persist(volume))
        .function("f", |f| {
            f.guest("fsops")
                .mount("/data", "data")
                .mount("/ro", Mount::volume("ro").read_only())
        })
        .write(env)
}

/// The host directory of named volume `name`.
fn volume_dir(env: &TestEnv, name: &str) -> PathBuf {
    let list: serde_json::Value =
        serde_json::from_str(&env.run(&["volume", "list", "--json"]).success().stdout()).unwrap();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .expect("volume listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.home().join("volumes").join(id)
}

/// Runs the guest op and asserts it was refused (the guest's own error exit).
#[track_caller]
fn refused(env: &TestEnv, app: &Path, op: &[&str]) -> Run {
    let mut args = vec!["run", path(app), "--"];
    args.extend_from_slice(op);
    let run = env.run(&args);
    assert_eq!(
        run.code(),
        1,
        "guest op {op:?} was not refused\nstdout: {}\nstderr: {}",
        run.stdout(),
        run.stderr()
    );
    assert!(
        run.stderr().contains("fsops: "),
        "the guest itself got the error: {}",
        run.stderr()
    );
    run
}

#[track_caller]
fn guest_ok(env: &TestEnv, app: &Path, op: &[&str]) -> Run {
    let mut args = vec!["run", path(app), "--"];
    args.extend_from_slice(op);
    env.run(&args).success()
}

#[test]
fn dotdot_past_the_mount_root_is_refused() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "dotdot", "dotdot-vol");
    guest_ok(&env, &app, &["write", "/data/a", "inside"]);
    guest_ok(&env, &app, &["mkdir", "/data/sub"]);
    let mut runs = vec![
        refused(&env, &app, &["read", "/data/../../canary.txt"]),
        refused(&env, &app, &["read", "/data/../canary.txt"]),
        refused(
            &env,
            &app,
            &["read", &format!("/data/{}", climbing(&canaries.file))],
        ),
        refused(&env, &app, &["ls", "/data/.."]),
        refused(&env, &app, &["ls", "/data/../.."]),
        refused(
            &env,
            &app,
            &["write", "/data/../../canary.txt", "overwritten"],
        ),
        refused(&env, &app, &["write", "/data/../escaped.txt", "x"]),
        refused(&env, &app, &["truncate", "/data/../../canary.txt", "0"]),
        refused(&env, &app, &["rm", "/data/../../canary.txt"]),
        refused(&env, &app, &["mkdir", "/data/../../made-by-guest"]),
    ];
    // `..` that stays inside is fine: the refusals above are about leaving.
    let inside = guest_ok(&env, &app, &["read", "/data/sub/../a"]);
    assert_eq!(inside.stdout(), "inside");
    runs.push(inside);
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    assert!(!env.home().join("volumes").join("escaped.txt").exists());
    assert!(!env.home().join("made-by-guest").exists());
}

#[test]
fn absolute_host_paths_outside_mounts_are_not_reachable() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "absolute", "absolute-vol");
    let planted = env.work.path().join("planted-by-guest");
    let runs = [
        refused(&env, &app, &["read", path(&canaries.file)]),
        refused(
            &env,
            &app,
            &["read", &format!("{}/host-only-file", path(&canaries.dir))],
        ),
        refused(&env, &app, &["ls", path(&canaries.dir)]),
        refused(&env, &app, &["ls", "/"]),
        refused(&env, &app, &["read", "/etc/passwd"]),
        refused(&env, &app, &["write", path(&canaries.file), "overwritten"]),
        refused(&env, &app, &["write", path(&planted), "x"]),
        refused(&env, &app, &["rm", path(&canaries.file)]),
        refused(&env, &app, &["read", path(&env.home().join("registry.db"))]),
    ];
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    assert!(!planted.exists());
}

#[test]
fn symlink_to_an_absolute_host_path_is_not_followed() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "abslink", "abslink-vol");
    // The guest may not even create it...
    let mut runs = vec![
        refused(&env, &app, &["symlink", path(&canaries.file), "/data/abs"]),
        refused(
            &env,
            &app,
            &["symlink", path(&canaries.dir), "/data/absdir"],
        ),
    ];
    // ...but a volume can hold one anyway (another runtime, a restored
    // backup): reading, writing and creating through it must still fail.
    let dir = volume_dir(&env, "abslink-vol");
    std::os::unix::fs::symlink(&canaries.file, dir.join("abs")).unwrap();
    let new_file = env.work.path().join("created-through-link");
    std::os::unix::fs::symlink(&new_file, dir.join("dangling")).unwrap();
    runs.extend([
        refused(&env, &app, &["read", "/data/abs"]),
        refused(&env, &app, &["read", "/ro/abs"]),
        refused(&env, &app, &["write", "/data/abs", "overwritten"]),
        refused(&env, &app, &["append", "/data/abs", "more"]),
        refused(&env, &app, &["truncate", "/data/abs", "0"]),
        refused(&env, &app, &["write", "/data/dangling", "x"]),
        refused(&env, &app, &["create-excl", "/data/dangling", "x"]),
    ]);
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    assert!(
        !new_file.exists(),
        "a file was created through a dangling link"
    );
}

#[test]
fn relative_symlink_climbing_out_is_not_followed() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "rellink", "rellink-vol");
    let new_file = env.work.path().join("created-through-link");
    // Creating a link is allowed (its text is just data); following it is not.
    guest_ok(&env, &app, &["symlink", "../../canary.txt", "/data/near"]);
    guest_ok(
        &env,
        &app,
        &["symlink", &climbing(&canaries.file), "/data/far"],
    );
    guest_ok(
        &env,
        &app,
        &["symlink", &climbing(&new_file), "/data/dangling"],
    );
    let mut runs = Vec::new();
    for link in ["/data/near", "/data/far", "/ro/far"] {
        runs.push(refused(&env, &app, &["read", link]));
        runs.push(refused(&env, &app, &["write", link, "overwritten"]));
        runs.push(refused(&env, &app, &["truncate", link, "0"]));
    }
    runs.push(refused(&env, &app, &["utimes", "/data/far"]));
    runs.push(refused(&env, &app, &["write", "/data/dangling", "x"]));
    runs.push(refused(&env, &app, &["create-excl", "/data/dangling", "x"]));
    runs.push(refused(&env, &app, &["append", "/data/dangling", "x"]));
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    assert!(
        !new_file.exists(),
        "a file was created through a dangling link"
    );
}

#[test]
fn symlink_to_a_host_directory_then_a_path_through_it() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "dirlink", "dirlink-vol");
    guest_ok(
        &env,
        &app,
        &["symlink", &climbing(&canaries.dir), "/data/rel"],
    );
    guest_ok(&env, &app, &["mkdir", "/data/sub"]);
    guest_ok(
        &env,
        &app,
        &["symlink", &climbing(&canaries.dir), "/data/sub/rel"],
    );
    let dir = volume_dir(&env, "dirlink-vol");
    std::os::unix::fs::symlink(&canaries.dir, dir.join("abs")).unwrap();
    let mut runs = Vec::new();
    for link in ["/data/rel", "/data/sub/rel", "/data/abs", "/ro/abs"] {
        let through = format!("{link}/host-only-file");
        runs.push(refused(&env, &app, &["ls", link]));
        runs.push(refused(&env, &app, &["read", &through]));
        runs.push(refused(&env, &app, &["exists", &through]));
        runs.push(refused(&env, &app, &["write", &through, "overwritten"]));
        runs.push(refused(
            &env,
            &app,
            &["write", &format!("{link}/new-file"), "x"],
        ));
        runs.push(refused(&env, &app, &["mkdir", &format!("{link}/new-dir")]));
        runs.push(refused(&env, &app, &["rm", &through]));
        runs.push(refused(
            &env,
            &app,
            &["symlink", "x", &format!("{link}/new-link")],
        ));
    }
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
}

#[test]
fn hard_link_to_a_host_file_is_refused() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "hardlink", "hardlink-vol");
    guest_ok(
        &env,
        &app,
        &["symlink", &climbing(&canaries.file), "/data/link"],
    );
    let mut runs = vec![
        refused(
            &env,
            &app,
            &["hardlink", "/data/../../canary.txt", "/data/hl"],
        ),
        refused(&env, &app, &["hardlink", path(&canaries.file), "/data/hl"]),
        refused(
            &env,
            &app,
            &[
                "hardlink",
                &format!("/data/{}", climbing(&canaries.file)),
                "/data/hl",
            ],
        ),
        refused(&env, &app, &["hardlink", "/data/link/", "/data/hl"]),
        // And the other way round: a link to volume data placed on the host.
        refused(&env, &app, &["hardlink", "/data/link", "/data/../../hl"]),
    ];
    // Linking the symlink itself stays inside (link(2) does not follow), and
    // what it makes is just another link that cannot be followed.
    if env
        .run(&[
            "run",
            path(&app),
            "--",
            "hardlink",
            "/data/link",
            "/data/hl",
        ])
        .code()
        == 0
    {
        runs.push(refused(&env, &app, &["read", "/data/hl"]));
    }
    // The canary's link count is part of `assert_intact`.
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    assert!(!env.home().join("hl").exists());
}

#[test]
fn rename_out_of_the_mount_is_refused() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "rename", "rename-vol");
    guest_ok(&env, &app, &["write", "/data/a", "volume-data"]);
    guest_ok(
        &env,
        &app,
        &["symlink", &climbing(&canaries.dir), "/data/hostdir"],
    );
    let moved = env.work.path().join("moved");
    let runs = [
        refused(&env, &app, &["rename", "/data/a", "/data/../../moved"]),
        refused(&env, &app, &["rename", "/data/a", path(&moved)]),
        refused(&env, &app, &["rename", "/data/a", "/data/hostdir/moved"]),
        refused(
            &env,
            &app,
            &["rename", "/data/a", &format!("/data/{}", climbing(&moved))],
        ),
        // Nor in: a host file renamed over volume data, or into the volume.
        refused(
            &env,
            &app,
            &["rename", "/data/../../canary.txt", "/data/stolen"],
        ),
        refused(
            &env,
            &app,
            &["rename", "/data/hostdir/host-only-file", "/data/stolen"],
        ),
        refused(
            &env,
            &app,
            &["rename", path(&canaries.file), "/data/stolen"],
        ),
    ];
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    assert!(!moved.exists() && !env.home().join("moved").exists());
    assert_eq!(
        guest_ok(&env, &app, &["read", "/data/a"]).stdout(),
        "volume-data"
    );
    assert_eq!(
        guest_ok(&env, &app, &["exists", "/data/stolen"])
            .stdout()
            .trim(),
        "no"
    );
}

/// What a `race-read` reader reported: reads of the directory's `inside`,
/// and failed reads (the path was the link); asserts the race happened
/// (both seen) and that it read nothing else.
#[track_caller]
fn assert_raced_without_escape(run: &Run) {
    let out = run.stdout();
    let counts = out
        .lines()
        .find_map(|l| l.strip_prefix("inside "))
        .unwrap_or_else(|| panic!("no reader counts in {out}"));
    let numbers: Vec<u64> = counts
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [inside, _empty, failed] = numbers[..] else {
        panic!("bad reader counts {counts:?}")
    };
    assert!(
        inside > 0 && failed > 0,
        "the reader never saw both the directory and the link, so nothing raced: {out}"
    );
    let other: Vec<&str> = out.lines().filter(|l| l.starts_with("read: ")).collect();
    assert!(
        other.is_empty(),
        "the reader saw something other than volume data: {other:?}"
    );
}

/// One instance flips a path between a real directory and a symlink to a
/// host directory while another reads through it until it has seen both
/// many times, in one `--map` (two instances in one process).
#[test]
fn symlink_swapped_between_check_and_use_by_a_second_instance() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "race", "race-vol");
    let inputs = env.work.path().join("roles.txt");
    std::fs::write(&inputs, "swap\nread\n").unwrap();
    let mut runs = Vec::new();
    for target in [climbing(&canaries.dir), "../../../../../../../../..".into()] {
        let run = env
            .run(&[
                "run",
                path(&app),
                "--map",
                path(&inputs),
                "--concurrency",
                "2",
                "--",
                "race",
                "/data/link",
                &target,
                "200000",
            ])
            .success();
        assert_raced_without_escape(&run);
        // The reader stopped the swapper (else it would say 200000).
        assert!(!run.stdout().contains("swapped 200000"), "{}", run.stdout());
        env.run(&["volume", "rm", "race-vol", "/link.stop"])
            .success();
        runs.push(run);
    }
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
}

/// The same race between two wasmhost processes sharing the named volume,
/// and between a guest and the host's own `volume get`.
#[test]
fn symlink_swapped_by_another_process_is_not_followed() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let app = fsops_app(&env, "race2", "race2-vol");
    let target = climbing(&canaries.dir);
    // Swaps until told to stop (bounded): the reader and the host's gets
    // below all run while it swaps.
    let mut swapper = env.spawn(&[
        "run",
        path(&app),
        "--",
        "race-swap",
        "/data/link",
        &target,
        "500000",
    ]);
    let reader = env
        .run(&[
            "run",
            path(&app),
            "--",
            "race-read",
            "/data/link",
            "1000000",
        ])
        .success();
    assert_raced_without_escape(&reader);
    // The host reads through the swapping path too, until it has got the
    // file and been refused the link (at most 2000 tries).
    let mut host_runs = Vec::new();
    let (mut got, mut refused) = (0, 0);
    for _ in 0..2000 {
        let get = env.run(&["volume", "get", "race2-vol", "/link/f", "-"]);
        match get.code() {
            0 if get.stdout() == "inside" => got += 1,
            // Read between the swapper's create and its write.
            0 => assert!(get.stdout().is_empty(), "{}", get.stdout()),
            _ => refused += 1,
        }
        host_runs.push(get);
        if got > 0 && refused > 0 {
            break;
        }
    }
    std::fs::write(volume_dir(&env, "race2-vol").join("link.stop"), "stop").unwrap();
    let status = wait_with_timeout(&mut swapper, Duration::from_secs(60));
    assert!(status.success());
    assert!(
        got > 0 && refused > 0,
        "`volume get` never raced the swapper: {got} reads, {refused} refusals"
    );
    let mut all: Vec<&Run> = host_runs.iter().collect();
    all.push(&reader);
    canaries.assert_intact(&all);
}

/// No threads, processes or network for guests, core modules and
/// components alike (components have wasi:sockets, but no network is
/// granted), as README's "What WASI cannot do" says.
#[test]
fn guests_get_no_threads_processes_or_network() {
    let env = TestEnv::new();
    for module in ["{guest:fsops}", "{guest2:fsops}"] {
        let app = AppToml::new("beyond")
            .function("f", |f| f.module(module))
            .write(&env);
        let out = env
            .run(&["run", path(&app), "--", "beyond-wasi"])
            .success()
            .stdout();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{module}: {out}");
        for line in lines {
            assert!(!line.ends_with(": ok"), "{module}: {line}");
        }
    }
}

#[test]
fn read_only_mount_refuses_every_write() {
    let env = TestEnv::new();
    let app = fsops_app(&env, "readonly", "readonly-vol");
    guest_ok(&env, &app, &["write", "/data/a", "original"]);
    guest_ok(&env, &app, &["mkdir", "/data/d"]);
    let dir = volume_dir(&env, "readonly-vol");
    let before = (meta(&dir.join("a")), listing(&dir), meta(&dir.join("d")));
    let ops: &[&[&str]] = &[
        &["write", "/ro/new", "x"],
        &["create-excl", "/ro/new", "x"],
        &["write", "/ro/a", "changed"],
        &["append", "/ro/a", "more"],
        &["truncate", "/ro/a", "0"],
        &["rename", "/ro/a", "/ro/b"],
        &["rename", "/ro/a", "/data/b"],
        &["rename", "/data/a", "/ro/b"],
        &["rm", "/ro/a"],
        &["rm", "/ro/d"],
        &["mkdir", "/ro/e"],
        &["mkdir", "/ro/d/e"],
        &["write", "/ro/d/new", "x"],
        &["symlink", "a", "/ro/s"],
        &["hardlink", "/ro/a", "/ro/h"],
        &["utimes", "/ro/a"],
    ];
    for op in ops {
        refused(&env, &app, op);
        assert_eq!(
            (meta(&dir.join("a")), listing(&dir), meta(&dir.join("d"))),
            before,
            "{op:?} changed the read-only volume"
        );
    }
    assert_eq!(
        guest_ok(&env, &app, &["read", "/ro/a"]).stdout(),
        "original"
    );
    // The same writes through the read-write mount work, so the refusals
    // above are the mount's doing.
    guest_ok(&env, &app, &["utimes", "/data/a"]);
    guest_ok(&env, &app, &["truncate", "/data/a", "3"]);
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "ori");
}

#[test]
fn a_function_cannot_reach_a_volume_it_does_not_mount() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    // App `one`: f mounts `shared`; g mounts `private`, which f does not.
    let one = AppToml::new("one")
        .volume("shared", |v| v.persist("one-shared"))
        .volume("private", |v| v.persist("one-private"))
        .function("f", |f| f.guest("fsops").mount("/data", "shared"))
        .function("g", |f| f.guest("fsops").mount("/private", "private"))
        .write(&env);
    let two = fsops_app(&env, "two", "two-vol");
    env.run(&[
        "run",
        path(&one),
        "g",
        "--",
        "write",
        "/private/secret",
        "private-secret-5e0b",
    ])
    .success();
    guest_ok(
        &env,
        &two,
        &["write", "/data/secret", "other-app-secret-a3c1"],
    );
    env.run(&["run", path(&one), "f", "--", "write", "/data/mine", "x"])
        .success();
    let private_dir = volume_dir(&env, "one-private");
    let other_dir = volume_dir(&env, "two-vol");
    let mut attempts: Vec<String> = vec!["/private/secret".into()];
    let mut link_targets = Vec::new();
    for dir in [&private_dir, &other_dir] {
        let id = dir.file_name().unwrap().to_str().unwrap();
        attempts.push(format!("/data/../{id}/secret"));
        attempts.push(format!("/data/../../volumes/{id}/secret"));
        attempts.push(format!("{}/secret", path(dir)));
        attempts.push(format!("/data/{}/secret", climbing(dir)));
        link_targets.extend([format!("../{id}"), climbing(dir)]);
    }
    let f = |op: &[&str]| {
        let mut args = vec!["run", path(&one), "f", "--"];
        args.extend_from_slice(op);
        env.run(&args)
    };
    let mut runs = Vec::new();
    for attempt in &attempts {
        runs.push(f(&["read", attempt]).code_is(1));
        runs.push(f(&["write", attempt, "clobbered"]).code_is(1));
    }
    // Through links the guest planted, too.
    for (i, target) in link_targets.iter().enumerate() {
        let link = format!("/data/link{i}");
        f(&["symlink", target, &link]).success();
        runs.push(f(&["read", &format!("{link}/secret")]).code_is(1));
        runs.push(f(&["write", &format!("{link}/secret"), "clobbered"]).code_is(1));
        runs.push(f(&["ls", &link]).code_is(1));
    }
    for run in &runs {
        // Refused to the guest itself, not a failure of wasmhost's.
        assert!(run.stderr().contains("fsops: "), "{}", run.stderr());
        let out = format!("{}{}", run.stdout(), run.stderr());
        assert!(
            !out.contains("private-secret-5e0b") && !out.contains("other-app-secret-a3c1"),
            "{out}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(private_dir.join("secret")).unwrap(),
        "private-secret-5e0b"
    );
    assert_eq!(
        std::fs::read_to_string(other_dir.join("secret")).unwrap(),
        "other-app-secret-a3c1"
    );
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
}

// ---- host side ----

/// A named volume in which a guest planted links out (relative, climbing)
/// and the test planted absolute ones, at the top and nested.
fn booby_trapped_volume(env: &TestEnv, canaries: &Canaries, name: &str) -> (PathBuf, PathBuf) {
    let app = fsops_app(env, &format!("{name}-app"), name);
    guest_ok(env, &app, &["write", "/data/plain.txt", "volume-data"]);
    guest_ok(
        env,
        &app,
        &["symlink", &climbing(&canaries.file), "/data/file-link"],
    );
    guest_ok(
        env,
        &app,
        &["symlink", &climbing(&canaries.dir), "/data/dir-link"],
    );
    guest_ok(env, &app, &["mkdir", "/data/sub"]);
    guest_ok(
        env,
        &app,
        &["symlink", &climbing(&canaries.dir), "/data/sub/dir-link"],
    );
    guest_ok(
        env,
        &app,
        &["symlink", "../../canary.txt", "/data/sub/near-link"],
    );
    let dir = volume_dir(env, name);
    std::os::unix::fs::symlink(&canaries.file, dir.join("abs-file-link")).unwrap();
    std::os::unix::fs::symlink(&canaries.dir, dir.join("abs-dir-link")).unwrap();
    std::os::unix::fs::symlink(&canaries.dir, dir.join("sub").join("abs-dir-link")).unwrap();
    (app, dir)
}

#[test]
fn volume_get_and_ls_never_follow_planted_links() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    booby_trapped_volume(&env, &canaries, "trap-get");
    let mut runs = Vec::new();
    // `get … -` of a link: refused, and says so.
    for link in ["/file-link", "/abs-file-link", "/sub/near-link"] {
        let run = env
            .run(&["volume", "get", "trap-get", link, "-"])
            .code_is(1);
        assert!(run.stderr().contains("symbolic link"), "{}", run.stderr());
        assert!(run.stdout().is_empty());
        runs.push(run);
    }
    // A path through a link to a host directory: refused.
    for through in [
        "/dir-link/host-only-file",
        "/abs-dir-link/host-only-file",
        "/sub/dir-link/host-only-file",
    ] {
        let run = env.run(&["volume", "get", "trap-get", through, "-"]);
        assert_ne!(run.code(), 0, "{through} was read");
        assert!(run.stdout().is_empty());
        assert!(
            run.stderr().contains("outside") && run.stderr().contains("symbolic link"),
            "{}",
            run.stderr()
        );
        runs.push(run);
        let local = env.work.path().join("through-copy");
        let run = env.run(&["volume", "get", "trap-get", through, path(&local)]);
        assert_ne!(run.code(), 0);
        assert!(!local.exists());
        runs.push(run);
    }
    // `get` of a link to a file or directory: skipped, and said so.
    for link in ["/file-link", "/abs-file-link", "/dir-link", "/abs-dir-link"] {
        let local = env
            .work
            .path()
            .join(format!("copy{}", link.replace('/', "-")));
        let run = env
            .run(&["volume", "get", "trap-get", link, path(&local)])
            .success();
        assert!(
            run.stderr().contains("skipped symbolic link"),
            "{}",
            run.stderr()
        );
        assert!(
            std::fs::symlink_metadata(&local).is_err(),
            "{} was created",
            local.display()
        );
        runs.push(run);
    }
    // `get` of the whole volume: files copied, every link skipped by name.
    let whole = env.work.path().join("whole");
    let run = env
        .run(&["volume", "get", "trap-get", "/", path(&whole)])
        .success();
    for link in [
        "/file-link",
        "/dir-link",
        "/sub/dir-link",
        "/sub/near-link",
        "/abs-file-link",
        "/abs-dir-link",
        "/sub/abs-dir-link",
    ] {
        assert!(
            run.stderr()
                .contains(&format!("skipped symbolic link {link}:")),
            "{link}: {}",
            run.stderr()
        );
    }
    assert_eq!(
        std::fs::read_to_string(whole.join("plain.txt")).unwrap(),
        "volume-data"
    );
    assert_eq!(listing(&whole), ["plain.txt", "sub"]);
    assert!(listing(&whole.join("sub")).is_empty());
    runs.push(run);
    // `ls` shows links as links and never lists what they point at.
    let ls = env
        .run(&["volume", "ls", "trap-get", "/", "--json"])
        .success();
    let entries: serde_json::Value = serde_json::from_str(&ls.stdout()).unwrap();
    for entry in entries.as_array().unwrap() {
        if entry["path"].as_str().unwrap().contains("link") {
            assert_eq!(entry["kind"], "symlink", "{entry}");
        }
    }
    runs.push(ls);
    for link in ["/dir-link", "/abs-dir-link", "/sub/dir-link"] {
        let ls = env
            .run(&["volume", "ls", "trap-get", link, "--json"])
            .success();
        let entries: serde_json::Value = serde_json::from_str(&ls.stdout()).unwrap();
        assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
        assert_eq!(entries[0]["kind"], "symlink");
        runs.push(ls);
        let through = env.run(&[
            "volume",
            "ls",
            "trap-get",
            &format!("{link}/host-only-file"),
        ]);
        assert_ne!(through.code(), 0);
        assert!(through.stdout().is_empty(), "{}", through.stdout());
        runs.push(through);
        // The link's `.` is the host directory to a shell's `ls`: refused,
        // or the link itself, never what it points at.
        let dot = env.run(&["volume", "ls", "trap-get", &format!("{link}/."), "--json"]);
        if dot.code() == 0 {
            let entries: serde_json::Value = serde_json::from_str(&dot.stdout()).unwrap();
            assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
            assert_eq!(entries[0]["kind"], "symlink", "{entries}");
        }
        assert!(
            !dot.stdout().contains("host-only-file") && !dot.stderr().contains("host-only-file"),
            "{link}/. listed the host directory: {}",
            dot.stdout()
        );
        runs.push(dot);
    }
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
}

#[test]
fn volume_put_and_rm_never_write_through_planted_links() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let (_, dir) = booby_trapped_volume(&env, &canaries, "trap-put");
    let local = env.work.path().join("local.txt");
    std::fs::write(&local, "from-the-host").unwrap();
    let local_dir = env.work.path().join("localdir");
    std::fs::create_dir_all(&local_dir).unwrap();
    std::fs::write(local_dir.join("host-only-file"), "from-the-host").unwrap();
    let mut runs = Vec::new();
    for remote in ["/file-link", "/abs-file-link", "/sub/near-link"] {
        let run = env.run(&["volume", "put", "trap-put", path(&local), remote, "--force"]);
        assert_ne!(run.code(), 0, "put over {remote} succeeded");
        assert!(run.stderr().contains("symbolic link"), "{}", run.stderr());
        runs.push(run);
    }
    for remote in [
        "/dir-link/host-only-file",
        "/abs-dir-link/host-only-file",
        "/sub/dir-link/new-file",
        "/dir-link/",
        "/abs-dir-link",
    ] {
        let run = env.run(&["volume", "put", "trap-put", path(&local), remote, "--force"]);
        assert_ne!(run.code(), 0, "put to {remote} succeeded");
        runs.push(run);
        let run = env.run(&[
            "volume",
            "put",
            "trap-put",
            path(&local_dir),
            remote,
            "--force",
        ]);
        assert_ne!(run.code(), 0, "put of a directory to {remote} succeeded");
        runs.push(run);
    }
    // rm through a link is refused; rm of a link removes the link only.
    for through in [
        "/dir-link/host-only-file",
        "/abs-dir-link/host-only-file",
        "/sub/dir-link/host-only-file",
    ] {
        let run = env.run(&["volume", "rm", "trap-put", through]);
        assert_ne!(run.code(), 0);
        runs.push(run);
        let run = env.run(&["volume", "rm", "trap-put", through, "--recursive"]);
        assert_ne!(run.code(), 0);
        runs.push(run);
    }
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
    runs.push(
        env.run(&["volume", "rm", "trap-put", "/file-link"])
            .success(),
    );
    runs.push(
        env.run(&["volume", "rm", "trap-put", "/abs-dir-link"])
            .success(),
    );
    runs.push(
        env.run(&["volume", "rm", "trap-put", "/dir-link", "--recursive"])
            .success(),
    );
    runs.push(
        env.run(&["volume", "rm", "trap-put", "/sub", "--recursive"])
            .success(),
    );
    assert_eq!(listing(&dir), ["abs-file-link", "plain.txt"]);
    canaries.assert_intact(&runs.iter().collect::<Vec<_>>());
}

#[test]
fn deleting_a_volume_with_links_to_host_directories_deletes_only_the_volume() {
    let env = TestEnv::new();
    let canaries = Canaries::plant(&env);
    let (_, dir) = booby_trapped_volume(&env, &canaries, "trap-delete");
    env.run(&["volume", "delete", "trap-delete", "--yes"])
        .success();
    env.wait_for_empty_trash();
    assert!(!dir.exists());
    canaries.assert_intact(&[]);

    // `app stop` of the volume, the same.
    let (_, dir) = booby_trapped_volume(&env, &canaries, "trap-stop");
    env.run(&["app", "stop", "trap-stop", "--yes"]).success();
    env.wait_for_empty_trash();
    assert!(!dir.exists());
    canaries.assert_intact(&[]);

    // An ephemeral volume with the same links, gone when its run ends.
    let eph = AppToml::new("eph")
        .volume("scratch", |v| v)
        .function("f", |f| f.guest("fsops").mount("/scratch", "scratch"))
        .write(&env);
    env.run(&[
        "run",
        path(&eph),
        "--",
        "symlink",
        &climbing(&canaries.dir),
        "/scratch/dir-link",
    ])
    .success();
    env.wait_for_empty_trash();
    assert!(
        listing(&env.home().join("volumes")).is_empty(),
        "the ephemeral volume was not deleted"
    );
    canaries.assert_intact(&[]);
}

#[test]
fn bad_volume_and_app_names_are_refused() {
    let env = TestEnv::new();
    let long = "a".repeat(65);
    let local = env.work.path().join("local.txt");
    std::fs::write(&local, "x").unwrap();
    for name in ["../x", "_a", "a/b", long.as_str(), "", ".", "..", "/etc"] {
        for args in [
            vec!["volume", "create", name],
            vec!["volume", "ls", name],
            vec!["volume", "delete", name, "--yes"],
            vec!["volume", "get", name, "/x", "-"],
            vec!["volume", "put", name, path(&local), "/x"],
            vec!["volume", "rm", name, "/x"],
        ] {
            let run = env.run(&args).code_is(2);
            let stderr = run.stderr();
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(stderr.contains("name"), "{args:?}: {stderr}");
        }
        let stop = env.run(&["app", "stop", name, "--yes"]).code_is(2);
        assert_eq!(stop.stderr().lines().count(), 1, "{}", stop.stderr());
        if !name.is_empty() {
            for toml in [
                AppToml::new(name).function("f", |f| f.guest("fsops")),
                AppToml::new("ok")
                    .volume("v", |v| v.persist(name))
                    .function("f", |f| f.guest("fsops").mount("/v", "v")),
            ] {
                // Not `write`: the name is no directory to write to.
                let app = env.app("bad-name", &toml.to_string());
                let run = env
                    .run(&["run", path(&app), "--", "write", "/v/x", "y"])
                    .code_is(2);
                assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
                assert!(run.stderr().contains("name"), "{}", run.stderr());
            }
        }
    }
    // Nothing was made outside (or inside) `$WASMHOST_HOME`.
    assert!(!env.home().join("x").exists() && !env.home().parent().unwrap().join("x").exists());
    assert!(
        !env.home().join("volumes").exists() || listing(&env.home().join("volumes")).is_empty()
    );
    assert_eq!(
        env.run(&["volume", "list", "--json"])
            .success()
            .stdout()
            .trim(),
        "[]"
    );
}
