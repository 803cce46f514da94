//! Volumes beyond copies of files (issue 13, second half): `sub_path`
//! mounts, `volume cp`, `volume rename` and snapshots, driven through the
//! real binary with the `fsops` test guest doing what a guest would.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{AppToml, Function, Mount, Run, StdoutLines, TestEnv, path};

/// An app named `name` whose function `fsops` mounts the named volume
/// `volume` (key `data`) at /data, with the mounts `more` adds beside.
fn app(
    env: &TestEnv,
    name: &str,
    volume: &str,
    more: impl FnOnce(Function) -> Function,
) -> PathBuf {
    AppToml::new(name)
        .volume("data", |v| v.persist(volume))
        .function("fsops", |f| more(f.guest("fsops").mount("/data", "data")))
        .write(env)
}

/// Runs function `fsops` of `app` with `args`.
fn guest(env: &TestEnv, app: &Path, args: &[&str]) -> Run {
    let mut all = vec!["run", path(app), "--"];
    all.extend_from_slice(args);
    env.run(&all)
}

/// Every entry beneath `dir`, by path: a file's bytes, a link's text, or
/// `dir`. What two trees must share to be the same tree, byte for byte.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap().path();
            let name = entry.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            let value = if meta.is_symlink() {
                let mut v = b"link:".to_vec();
                v.extend(
                    std::fs::read_link(&entry)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                );
                v
            } else if meta.is_dir() {
                stack.push(entry.clone());
                b"dir".to_vec()
            } else {
                std::fs::read(&entry).unwrap()
            };
            entries.insert(name, value);
        }
    }
    entries
}

/// The one line a refused command prints, checked to be one line.
#[track_caller]
fn one_line_error(run: &Run, code: i32, needle: &str) {
    assert_eq!(run.code(), code, "stderr: {}", run.stderr());
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

fn snapshot_names(env: &TestEnv, volume: &str) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(
        &env.run(&["volume", "snapshot", "list", volume, "--json"])
            .success()
            .stdout(),
    )
    .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Must hold 4: a `sub_path` mount is the guest's whole view. `..` stops at
/// its root, a link the guest makes inside it leads nowhere outside, and a
/// sub_path that a guest (or the host) turned into a link is refused
/// rather than followed.
#[test]
fn a_sub_path_mount_cannot_reach_the_rest_of_the_volume() {
    let env = TestEnv::new();
    let app = AppToml::new("sub")
        .volume("data", |v| v.persist("models"))
        .function("whole", |f| f.guest("fsops").mount("/all", "data"))
        .function("sub", |f| {
            f.guest("fsops")
                .mount("/cache", Mount::volume("data").sub_path("hf/v2"))
        })
        .function("etc", |f| {
            f.guest("fsops").mount(
                "/cache",
                Mount::volume("data").read_only().sub_path("host-link"),
            )
        })
        .write(&env);
    let run = |function: &str, args: &[&str]| {
        let mut all = vec!["run", path(&app), function, "--"];
        all.extend_from_slice(args);
        env.run(&all)
    };
    run("whole", &["write", "/all/secret", "top"]).success();
    // Made when missing; the guest sees it as its root.
    run("sub", &["write", "/cache/weights", "w"]).success();
    let volume = env.volume_dir("models");
    assert_eq!(std::fs::read(volume.join("hf/v2/weights")).unwrap(), b"w");
    assert_eq!(
        run("sub", &["ls", "/cache"]).success().stdout(),
        "weights\n"
    );
    for escape in [
        "/cache/../secret",
        "/cache/../../secret",
        "/cache/./../../secret",
    ] {
        let read = run("sub", &["read", escape]);
        assert_eq!(read.code(), 1, "{escape}: {}", read.stdout());
        assert!(!read.stdout().contains("top"));
    }
    // A link the guest makes inside it points nowhere it can go.
    run("sub", &["symlink", "../../secret", "/cache/up"]).success();
    let read = run("sub", &["read", "/cache/up"]);
    assert_eq!(read.code(), 1, "{}", read.stdout());
    assert!(!read.stdout().contains("top"));

    // A guest with the whole volume turns the sub_path into a link to
    // the volume's root: the next instance is refused, not let through.
    run("whole", &["rename", "/all/hf/v2", "/all/moved"]).success();
    run("whole", &["symlink", "..", "/all/hf/v2"]).success();
    let refused = run("sub", &["ls", "/cache"]);
    assert_eq!(refused.code(), 1, "{}", refused.stdout());
    assert!(!refused.stdout().contains("secret"), "{}", refused.stdout());
    assert!(
        refused.stderr().contains("symbolic link"),
        "{}",
        refused.stderr()
    );
    // Nothing was made through the link either.
    assert!(!volume.join("secret").is_dir());
    assert_eq!(std::fs::read(volume.join("secret")).unwrap(), b"top");

    // A link the host made (to /etc) is refused the same way.
    std::os::unix::fs::symlink("/etc", volume.join("host-link")).unwrap();
    let refused = run("etc", &["ls", "/cache"]);
    assert_eq!(refused.code(), 1, "{}", refused.stdout());
    assert!(!refused.stdout().contains("passwd"), "{}", refused.stdout());
}

/// Locks taken through a sub_path mount are the volume's: the same lock
/// whichever mount names it.
#[test]
fn a_lock_through_a_sub_path_is_the_volumes_lock() {
    let env = TestEnv::new();
    let holder = app(&env, "holder", "shared", |f| f);
    let sub = AppToml::new("sub")
        .volume("data", |v| v.persist("shared"))
        .function("fsops", |f| {
            f.guest("fsops")
                .mount("/cache", Mount::volume("data").sub_path("hf"))
        })
        .write(&env);
    let mut child = env.spawn_guarded(&[
        "run",
        path(&holder),
        "--",
        "hold-lock",
        "/data/hf/k",
        "60000",
    ]);
    StdoutLines::of(&mut child).until("locked", Duration::from_secs(60));
    let answer = guest(&env, &sub, &["try-lock", "/cache/k"])
        .success()
        .stdout();
    assert_eq!(answer.trim(), "busy");
    let other = guest(&env, &sub, &["try-lock", "/cache/other"])
        .success()
        .stdout();
    assert_eq!(other.trim(), "acquired");
}

/// Bad `sub_path` and `snapshot` keys are app.toml errors at their line
/// and column, before anything is created.
#[test]
fn bad_sub_paths_and_writable_snapshots_are_app_toml_errors() {
    let env = TestEnv::new();
    let cases = [
        (r#"sub_path = "../x""#, "`..` component"),
        (r#"sub_path = "/etc""#, "is absolute"),
        (r#"sub_path = "a//b""#, "empty component"),
        (r#"sub_path = "a/./b""#, "`.` component"),
        (
            r#"snapshot = "v1", read_only = false"#,
            "cannot be writable",
        ),
        (r#"snapshot = "../v1""#, "invalid snapshot name"),
    ];
    for (i, (keys, problem)) in cases.iter().enumerate() {
        let toml = format!(
            "name = \"bad{i}\"\n[volumes.data]\npersist = \"v\"\n[functions.fsops]\nmodule = \"{{guest:fsops}}\"\nmounts = {{ \"/d\" = {{ volume = \"data\", {keys} }} }}\n"
        );
        let file = env.app(&format!("bad{i}"), &toml);
        let run = env.run(&["run", path(&file), "--", "ls", "/d"]);
        one_line_error(&run, 2, problem);
        assert!(
            run.stderr().contains("app.toml:6:"),
            "{keys}: {}",
            run.stderr()
        );
    }
    // Nothing was created.
    let list = env.run(&["volume", "list", "--json"]).success().stdout();
    assert_eq!(list.trim(), "[]");
}

/// Must hold 5: snapshot, a guest changes and deletes files, restore: the
/// volume is the snapshot again, byte for byte; a fork from the snapshot
/// is independent of both; a snapshot mount refuses writes.
#[test]
fn restore_puts_back_the_snapshot_and_forks_and_snapshot_mounts_stand_apart() {
    let env = TestEnv::new();
    let writer = app(&env, "writer", "data", |f| f);
    for args in [
        &["write", "/data/a", "one"][..],
        &["mkdir", "/data/d"],
        &["write", "/data/d/b", "two"],
        &["symlink", "../a", "/data/d/link"],
        &["write", "/data/sparse", "s"],
        &["truncate", "/data/sparse", "10000000"],
    ] {
        guest(&env, &writer, args).success();
    }
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(env.work.path().join("big"), &big).unwrap();
    env.run(&[
        "volume",
        "put",
        "data",
        path(&env.work.path().join("big")),
        "/d/big",
    ])
    .success();
    let volume = env.volume_dir("data");
    let original = tree(&volume);
    assert_eq!(original.len(), 6, "{:?}", original.keys());

    env.run(&["volume", "snapshot", "create", "data", "v1"])
        .success();
    assert_eq!(snapshot_names(&env, "data"), ["v1"]);

    for args in [
        &["write", "/data/a", "changed"][..],
        &["rm", "/data/d/b"],
        &["rm", "/data/d/link"],
        &["write", "/data/new", "x"],
        &["truncate", "/data/d/big", "10"],
    ] {
        guest(&env, &writer, args).success();
    }
    assert_ne!(tree(&volume), original);

    // A snapshot mount sees the snapshot, and cannot change it.
    let reader = app(&env, "reader", "data", |f| {
        f.mount("/snap", Mount::volume("data").snapshot("v1"))
    });
    assert_eq!(
        guest(&env, &reader, &["read", "/snap/a"])
            .success()
            .stdout(),
        "one"
    );
    assert_eq!(
        guest(&env, &reader, &["read", "/snap/d/b"])
            .success()
            .stdout(),
        "two"
    );
    for write in [
        &["write", "/snap/a", "overwritten"][..],
        &["write", "/snap/fresh", "x"],
        &["rm", "/snap/d/b"],
        &["mkdir", "/snap/dir"],
    ] {
        let refused = guest(&env, &reader, write);
        assert_eq!(refused.code(), 1, "{write:?} was let through");
    }
    let snapshot_dir = env
        .home()
        .join("snapshots")
        .join(volume.file_name().unwrap())
        .join("v1");
    assert_eq!(tree(&snapshot_dir), original);

    env.run(&["volume", "snapshot", "restore", "data", "v1", "--yes"])
        .success();
    assert_eq!(tree(&volume), original);

    // A fork is the snapshot, and then its own.
    env.run(&["volume", "create", "fork", "--from", "data@v1"])
        .success();
    let fork_dir = env.volume_dir("fork");
    assert_eq!(tree(&fork_dir), original);
    let fork_writer = app(&env, "fork-writer", "fork", |f| f);
    guest(&env, &fork_writer, &["write", "/data/a", "fork's"]).success();
    guest(&env, &fork_writer, &["rm", "/data/d/b"]).success();
    guest(&env, &writer, &["write", "/data/d/b", "data's"]).success();
    assert_eq!(std::fs::read(volume.join("a")).unwrap(), b"one");
    assert_eq!(std::fs::read(volume.join("d/b")).unwrap(), b"data's");
    assert_eq!(std::fs::read(fork_dir.join("a")).unwrap(), b"fork's");
    assert!(!fork_dir.join("d/b").exists());
    assert_eq!(tree(&snapshot_dir), original);

    // A snapshot goes with its volume.
    env.run(&["volume", "delete", "data", "--yes"]).success();
    assert!(!snapshot_dir.exists());
    env.wait_for_empty_trash();
    assert_eq!(tree(&fork_dir).len(), 5);
}

/// Must hold 6: a rename keeps the data and the locks (a lock taken under
/// the old name still excludes), and the old name then names nothing.
#[test]
fn rename_keeps_data_and_locks_and_frees_the_old_name() {
    let env = TestEnv::new();
    let old_app = app(&env, "old-app", "old", |f| f);
    guest(&env, &old_app, &["write", "/data/kept", "data"]).success();
    env.run(&["volume", "snapshot", "create", "old", "s1"])
        .success();
    let mut holder =
        env.spawn_guarded(&["run", path(&old_app), "--", "hold-lock", "/data/k", "60000"]);
    StdoutLines::of(&mut holder).until("locked", Duration::from_secs(60));
    let dir = env.volume_dir("old");

    // Mounted by a running app: refused, and nothing changed.
    let refused = env.run(&["volume", "rename", "old", "new"]);
    one_line_error(&refused, 1, "pass --force");
    assert_eq!(env.volume_dir("old"), dir);

    env.run(&["volume", "rename", "old", "new", "--force"])
        .success();
    assert_eq!(env.volume_dir("new"), dir);
    let new_app = app(&env, "new-app", "new", |f| f);
    assert_eq!(
        guest(&env, &new_app, &["read", "/data/kept"])
            .success()
            .stdout(),
        "data"
    );
    let answer = guest(&env, &new_app, &["try-lock", "/data/k"])
        .success()
        .stdout();
    assert_eq!(answer.trim(), "busy", "the lock held under the old name");
    assert_eq!(snapshot_names(&env, "new"), ["s1"]);

    // The old name names nothing; an app naming it gets a new, empty volume.
    let missing = env.run(&["volume", "ls", "old"]);
    one_line_error(&missing, 2, "no volume is named `old`");
    assert_eq!(
        guest(&env, &old_app, &["ls", "/data"]).success().stdout(),
        ""
    );
    assert_ne!(env.volume_dir("old"), dir);
    let answer = guest(&env, &old_app, &["try-lock", "/data/k"])
        .success()
        .stdout();
    assert_eq!(answer.trim(), "acquired");
}

/// A snapshot is refused while running apps may write the volume, a
/// restore while they mount it (unless --force); a mount of only a
/// snapshot counts for neither, but keeps that snapshot from deletion.
#[test]
fn snapshots_and_restores_are_refused_while_running_apps_write() {
    let env = TestEnv::new();
    let writer = app(&env, "writer", "busy", |f| f);
    guest(&env, &writer, &["write", "/data/a", "one"]).success();
    env.run(&["volume", "snapshot", "create", "busy", "v1"])
        .success();
    let mut child =
        env.spawn_guarded(&["run", path(&writer), "--", "hold-lock", "/data/k", "60000"]);
    StdoutLines::of(&mut child).until("locked", Duration::from_secs(60));

    one_line_error(
        &env.run(&["volume", "snapshot", "create", "busy", "v2"]),
        1,
        "is mounted writable by running app(s) `writer`",
    );
    one_line_error(
        &env.run(&["volume", "snapshot", "restore", "busy", "v1", "--yes"]),
        1,
        "pass --force to restore it anyway",
    );
    assert_eq!(snapshot_names(&env, "busy"), ["v1"]);
    env.run(&["volume", "snapshot", "create", "busy", "v2", "--force"])
        .success();
    assert_eq!(snapshot_names(&env, "busy"), ["v1", "v2"]);
    drop(child);

    // A running app that mounts a snapshot only keeps it from deletion.
    let reader = AppToml::new("reader")
        .volume("data", |v| v.persist("busy"))
        .function("fsops", |f| {
            f.guest("fsops")
                .mount("/snap", Mount::volume("data").snapshot("v1"))
        })
        .write(&env);
    let mut child = env.spawn_guarded(&["run", path(&reader), "--", "echo-after", "60000", "x"]);
    common::eventually(Duration::from_secs(60), "the reader running", || {
        env.apps()
            .iter()
            .any(|a| a["name"] == "reader" && a["state"] == "running")
    });
    env.run(&["volume", "snapshot", "create", "busy", "v3"])
        .success();
    env.run(&["volume", "snapshot", "restore", "busy", "v2", "--yes"])
        .success();
    one_line_error(
        &env.run(&["volume", "snapshot", "delete", "busy", "v1", "--yes"]),
        1,
        "stop them first",
    );
    let _ = child.kill();
    let _ = child.wait();
    env.run(&["volume", "snapshot", "delete", "busy", "v1", "--yes"])
        .success();
    assert_eq!(snapshot_names(&env, "busy"), ["v2", "v3"]);
}

/// `volume cp`: files and trees inside a volume, links copied as links
/// (never followed), an existing DST only with --force, which replaces it.
#[test]
fn cp_copies_inside_a_volume_without_following_links() {
    let env = TestEnv::new();
    let writer = app(&env, "writer", "cpvol", |f| f);
    for args in [
        &["mkdir", "/data/src"][..],
        &["write", "/data/src/f", "file"],
        &["mkdir", "/data/src/sub"],
        &["write", "/data/src/sub/g", "deeper"],
        &["symlink", "..", "/data/src/up"],
        &["mkdir", "/data/other"],
    ] {
        guest(&env, &writer, args).success();
    }
    let volume = env.volume_dir("cpvol");
    // One a guest cannot make (WASI refuses absolute links): the host's.
    std::os::unix::fs::symlink("/etc/passwd", volume.join("src/abs-link")).unwrap();
    env.run(&["volume", "cp", "cpvol", "/src", "/copy", "--recursive"])
        .success();
    let src = tree(&volume.join("src"));
    assert_eq!(tree(&volume.join("copy")), src);
    assert_eq!(
        std::fs::read_link(volume.join("copy/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    // A file into a directory, and a file to a new name.
    env.run(&["volume", "cp", "cpvol", "/src/f", "/other"])
        .success();
    env.run(&["volume", "cp", "cpvol", "/src/sub/g", "/other/h"])
        .success();
    assert_eq!(std::fs::read(volume.join("other/f")).unwrap(), b"file");
    assert_eq!(std::fs::read(volume.join("other/h")).unwrap(), b"deeper");
    // --force replaces (not merges).
    guest(&env, &writer, &["write", "/data/copy/extra", "x"]).success();
    env.run(&["volume", "cp", "cpvol", "/src", "/copy", "-r", "--force"])
        .success();
    assert_eq!(tree(&volume.join("copy")), src);
    // A directory on the way to SRC that is a link is refused.
    let refused = env.run(&["volume", "cp", "cpvol", "/src/up/other/f", "/x"]);
    assert_eq!(refused.code(), 1, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("symbolic link"),
        "{}",
        refused.stderr()
    );
    assert!(!volume.join("x").exists());
}

/// Bad input to each command: one line, exit code 2, nothing changed.
#[test]
fn bad_input_to_each_command_changes_nothing() {
    let env = TestEnv::new();
    let writer = app(&env, "writer", "data", |f| f);
    for args in [
        &["mkdir", "/data/dir"][..],
        &["write", "/data/dir/f", "x"],
        &["write", "/data/file", "y"],
    ] {
        guest(&env, &writer, args).success();
    }
    env.run(&["volume", "create", "other"]).success();
    env.run(&["volume", "snapshot", "create", "data", "v1"])
        .success();
    let volume = env.volume_dir("data");
    let before = (
        tree(env.home().join("volumes").as_path()),
        tree(env.home().join("snapshots").as_path()),
        env.run(&["volume", "list", "--json"]).success().stdout(),
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["snapshot", "create", "nosuch", "v2"],
            "no volume is named `nosuch`",
        ),
        (
            &["snapshot", "create", "data", "../v2"],
            "invalid snapshot name",
        ),
        (
            &["snapshot", "create", "data", "v1"],
            "already has a snapshot `v1`",
        ),
        (
            &["snapshot", "list", "nosuch"],
            "no volume is named `nosuch`",
        ),
        (
            &["snapshot", "restore", "data", "nosuch"],
            "has no snapshot `nosuch`",
        ),
        (
            &["snapshot", "restore", "nosuch", "v1"],
            "no volume is named",
        ),
        (
            &["snapshot", "delete", "data", "nosuch"],
            "has no snapshot `nosuch`",
        ),
        (
            &["snapshot", "delete", "data", "a/b"],
            "invalid snapshot name",
        ),
        (
            &["create", "fork", "--from", "data@nosuch"],
            "has no snapshot `nosuch`",
        ),
        (
            &["create", "fork", "--from", "nosuch@v1"],
            "no volume is named",
        ),
        (&["create", "fork", "--from", "data"], "names no snapshot"),
        (
            &["create", "other", "--from", "data@v1"],
            "volume `other` already exists",
        ),
        (
            &["create", "bad/name", "--from", "data@v1"],
            "invalid volume name",
        ),
        (
            &["cp", "data", "/dir", "/dir2"],
            "is a directory; pass --recursive",
        ),
        (
            &["cp", "data", "/file", "/dir/f"],
            "already exists in volume `data`; pass --force",
        ),
        (
            &["cp", "data", "/dir", "/dir/inner", "-r"],
            "one is inside the other",
        ),
        (
            &["cp", "data", "/dir/f", "/dir", "--force"],
            "one is inside the other",
        ),
        (&["cp", "data", "/nosuch", "/x"], "/nosuch does not exist"),
        (&["cp", "data", "/../file", "/x"], "`..` component"),
        (&["cp", "nosuch", "/file", "/x"], "no volume is named"),
        (&["rename", "nosuch", "new"], "no volume is named"),
        (
            &["rename", "data", "other"],
            "volume `other` already exists",
        ),
        (&["rename", "data", "bad name"], "invalid volume name"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["volume"];
        all.extend_from_slice(args);
        one_line_error(&env.run(&all), 2, needle);
    }
    let after = (
        tree(env.home().join("volumes").as_path()),
        tree(env.home().join("snapshots").as_path()),
        env.run(&["volume", "list", "--json"]).success().stdout(),
    );
    assert_eq!(before, after);
    assert_eq!(snapshot_names(&env, "data"), ["v1"]);
    assert!(volume.join("dir/f").exists());
}
