//! Guests are untrusted: every escape below is attempted by a real guest and
//! must be refused, and the host files planted outside the volumes (canaries)
//! must stay unread and unchanged. Then the host side: `volume` commands and
//! volume deletion must never follow a link a guest planted. Where stock
//! wasmtime-wasi already blocks an attack, the test still exists, so a later
//! change cannot reopen it (issue 6: guest escapes, host-side safety).

mod common;
#[path = "escapes/host_side.rs"]
mod host_side;
#[path = "escapes/links.rs"]
mod links;

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

/// A link or rename between a read-only mount and a writable one of
/// another volume is "not permitted" before it is "cross-device", as
/// wasmtime-wasi answers (`p1/p2_file_{hardlink,rename}_across_perms`);
/// between two writable volumes it is cross-device.
#[test]
fn read_only_is_checked_before_cross_device() {
    let env = TestEnv::new();
    for module in ["{guest:fsops}", "{guest2:fsops}"] {
        let app = AppToml::new("perms")
            .volume("data", |v| v.persist("perms-data"))
            .volume("other", |v| v.persist("perms-other"))
            .volume("ro", |v| v.persist("perms-other"))
            .function("f", |f| {
                f.module(module)
                    .mount("/data", "data")
                    .mount("/other", "other")
                    .mount("/ro", Mount::volume("ro").read_only())
            })
            .write(&env);
        guest_ok(&env, &app, &["write", "/data/a", "x"]);
        guest_ok(&env, &app, &["write", "/other/a", "x"]);
        for op in [
            &["rename", "/data/a", "/ro/b"][..],
            &["rename", "/ro/a", "/data/b"],
            &["hardlink", "/data/a", "/ro/b"],
            &["hardlink", "/ro/a", "/data/b"],
        ] {
            let stderr = refused(&env, &app, op).stderr();
            assert!(
                stderr.to_lowercase().contains("not permitted"),
                "{module} {op:?}: {stderr}"
            );
        }
        for op in [
            &["rename", "/data/a", "/other/b"][..],
            &["hardlink", "/data/a", "/other/b"],
        ] {
            let stderr = refused(&env, &app, op).stderr();
            assert!(
                stderr.to_lowercase().contains("cross-device"),
                "{module} {op:?}: {stderr}"
            );
        }
    }
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
