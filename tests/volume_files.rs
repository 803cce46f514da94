//! `volume ls|put|get|rm` and the trash purge against what a hostile guest
//! plants in a volume: trees deeper than the descriptor limit, links in the
//! middle of a path, sparse-file bombs, names that drive the terminal, and
//! files that are neither files nor directories.

mod common;
#[path = "volume_files/names.rs"]
mod names;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{AppToml, Run, TestEnv, path, wait_with_timeout};
use rustix::fs::{Mode, OFlags};

/// Deeper than the open-file limit the commands run under ([`FD_LIMIT`]).
const DEPTH: usize = 1500;
/// A usual default soft limit; the tests' own limit may be much higher.
const FD_LIMIT: u64 = 1024;
/// Eight bytes per level: paths to the bottom pass PATH_MAX (4096) too.
const LEVEL: &str = "deep-dir";

/// An app whose functions `fsops` and `volfiles` mount the named volume
/// `volume` at /data.
fn app(env: &TestEnv, volume: &str) -> PathBuf {
    AppToml::new(&format!("{volume}-app"))
        .volume("data", |v| v.persist(volume))
        .function("fsops", |f| f.guest("fsops").mount("/data", "data"))
        .function("volfiles", |f| f.guest("volfiles").mount("/data", "data"))
        .write(env)
}

/// Runs function `function` of `app` with `args`, which must succeed.
fn guest(env: &TestEnv, app: &Path, function: &str, args: &[&str]) {
    let mut all = vec!["run", path(app), function, "--"];
    all.extend_from_slice(args);
    env.run(&all).success();
}

/// Runs wasmhost with at most [`FD_LIMIT`] open files, as the background
/// purge it starts will.
fn run_limited(env: &TestEnv, args: &[&str]) -> Run {
    let mut command = env.command();
    command.args(args);
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs here.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FD_LIMIT,
                rlim_max: FD_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Run(command.output().expect("run wasmhost"))
}

fn open_dir(at: &OwnedFd, name: &str) -> OwnedFd {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Makes `root/LEVEL/LEVEL/.../bottom.txt`, [`DEPTH`] levels deep, by
/// descriptor (the path is longer than PATH_MAX) with two open at a time.
fn plant_deep(root: &Path) {
    let mut dir =
        rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..DEPTH {
        rustix::fs::mkdirat(&dir, LEVEL, Mode::from_raw_mode(0o755)).unwrap();
        dir = open_dir(&dir, LEVEL);
    }
    let file = rustix::fs::openat(
        &dir,
        "bottom.txt",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    File::from(file).write_all_at(b"the bottom", 0).unwrap();
}

/// The contents of `bottom.txt` at the bottom of a tree [`plant_deep`] made.
fn read_deep(root: &Path) -> String {
    let mut dir =
        rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..DEPTH {
        dir = open_dir(&dir, LEVEL);
    }
    let file = rustix::fs::openat(&dir, "bottom.txt", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut text = String::new();
    File::from(file).read_to_string(&mut text).unwrap();
    text
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn trees_deeper_than_the_descriptor_limit_are_copied_removed_and_purged() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "deep"]).success();
    let dir = env.volume_dir("deep");
    plant_deep(&dir);
    let out = env.work.path().join("out");
    run_limited(&env, &["volume", "get", "deep", "/", path(&out)]).success();
    assert_eq!(read_deep(&out), "the bottom");
    // And back in, under another name.
    run_limited(&env, &["volume", "put", "deep", path(&out), "/copy"]).success();
    assert_eq!(read_deep(&dir.join("copy")), "the bottom");
    run_limited(&env, &["volume", "rm", "deep", "/copy", "--recursive"]).success();
    run_limited(&env, &["volume", "rm", "deep", &format!("/{LEVEL}"), "-r"]).success();
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));

    // The purge after `volume delete`; `app stop` reaches no volume (issue
    // 20 item 12), so it leaves one whole for `volume delete`.
    plant_deep(&dir);
    run_limited(&env, &["volume", "delete", "deep", "--yes"]).success();
    env.wait_for_empty_trash();
    assert!(!dir.exists());
    env.run(&["volume", "create", "deep2"]).success();
    let dir = env.volume_dir("deep2");
    plant_deep(&dir);
    run_limited(&env, &["app", "stop", "deep2", "--yes"]).code_is(2);
    assert!(dir.exists());
    run_limited(&env, &["volume", "delete", "deep2", "--yes"]).success();
    env.wait_for_empty_trash();
    assert!(!dir.exists());
    assert!(!env.home().join("purge-errors.txt").exists());
}

/// Makes a file immutable (`chattr +i`), which even root cannot delete, and
/// makes it mutable again when dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(file: &Path) -> Option<Self> {
        let status = Command::new("chattr")
            .arg("+i")
            .arg(file)
            .stderr(Stdio::null())
            .status();
        status
            .is_ok_and(|s| s.success())
            .then(|| Self(file.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_trash_entry_that_cannot_be_removed_does_not_keep_the_others() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "stuck"]).success();
    let stuck_file = env.volume_dir("stuck").join("pinned");
    std::fs::write(&stuck_file, "x").unwrap();
    let Some(mut immutable) = Immutable::new(&stuck_file) else {
        let why = "`chattr +i` does not work here (not root, or the file system lacks it)";
        common::skip::skip(
            "a_trash_entry_that_cannot_be_removed_does_not_keep_the_others",
            common::skip::Requirement::Chattr,
            why,
        );
        return;
    };
    env.run(&["volume", "delete", "stuck", "--yes"]).success();
    let trash = env.home().join("trash");
    // The volume's files; its lock directory went to the trash beside them.
    let stuck = env
        .trash_entries()
        .into_iter()
        .find(|entry| entry.join("pinned").exists())
        .expect("the deleted volume is in the trash");
    immutable.0 = stuck.join("pinned");
    // Others after it, in any order of the directory: other deleted volumes
    // and what a crash left.
    // Made beside the trash and renamed in whole: the purge the delete
    // started may already be emptying the trash.
    for i in 0..30 {
        let junk = env.home().join(format!("left-by-a-crash-{i}"));
        std::fs::create_dir_all(junk.join("sub")).unwrap();
        std::fs::write(junk.join("sub/file"), "x").unwrap();
        std::fs::rename(&junk, trash.join(format!("left-by-a-crash-{i}"))).unwrap();
    }
    for name in ["freed-1", "freed-2"] {
        env.run(&["volume", "create", name]).success();
        std::fs::write(env.volume_dir(name).join("data"), "x").unwrap();
        env.run(&["volume", "delete", name, "--yes"]).success();
    }
    // Commands go on starting purges, as they would; every one meets the
    // stuck entry.
    common::eventually(Duration::from_secs(30), "all but one entry purged", || {
        env.run(&["volume", "list"]).success();
        env.trash_entries().len() == 1
    });
    assert_eq!(env.trash_entries(), [stuck]);
    let report = env.home().join("purge-errors.txt");
    common::eventually(Duration::from_secs(30), "the purge's report", || {
        std::fs::read_to_string(&report).is_ok_and(|r| r.contains("pinned"))
    });

    // Once it can be removed, a later command's purge removes it (the first
    // may find an earlier purge still at work, and leave it that one).
    drop(immutable);
    common::eventually(Duration::from_secs(30), "the trash emptied", || {
        env.run(&["volume", "list"]).success();
        env.trash_entries().is_empty()
    });
    common::eventually(Duration::from_secs(30), "the report removed", || {
        !report.exists()
    });
}

#[test]
fn links_in_the_middle_of_a_path_are_refused() {
    let env = TestEnv::new();
    let app = app(&env, "mid");
    guest(&env, &app, "fsops", &["mkdir", "/data/realdir"]);
    guest(
        &env,
        &app,
        "fsops",
        &["write", "/data/realdir/file", "real-data"],
    );
    guest(&env, &app, "fsops", &["symlink", "realdir", "/data/link"]);
    let dir = env.volume_dir("mid");

    let refused = |args: &[&str]| {
        let run = env.run(args);
        assert_eq!(run.code(), 1, "{args:?}: {}", run.stderr());
        assert!(
            run.stderr().contains("/link") && run.stderr().contains("symbolic link"),
            "{args:?}: {}",
            run.stderr()
        );
        assert!(!run.stdout().contains("real-data"), "{args:?} read through");
        run
    };
    refused(&["volume", "get", "mid", "/link/file", "-"]);
    let out = env.work.path().join("out");
    refused(&["volume", "get", "mid", "/link/file", path(&out)]);
    assert!(!out.exists());
    refused(&["volume", "ls", "mid", "/link/file"]);
    refused(&["volume", "rm", "mid", "/link/file"]);
    refused(&["volume", "rm", "mid", "/link/file", "--recursive"]);
    let local = env.work.path().join("local.txt");
    std::fs::write(&local, "from the host").unwrap();
    refused(&["volume", "put", "mid", path(&local), "/link/new"]);
    refused(&[
        "volume",
        "put",
        "mid",
        path(&local),
        "/link/file",
        "--force",
    ]);
    assert_eq!(listing(&dir.join("realdir")), ["file"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("realdir/file")).unwrap(),
        "real-data"
    );
    // The real path works, and the link itself is listed as a link.
    let run = env
        .run(&["volume", "get", "mid", "/realdir/file", "-"])
        .success();
    assert_eq!(run.stdout(), "real-data");
    let ls = env
        .run(&["volume", "ls", "mid", "/link", "--json"])
        .success();
    let entries: serde_json::Value = serde_json::from_str(&ls.stdout()).unwrap();
    assert_eq!(entries[0]["kind"], "symlink", "{entries}");
}

/// One byte just under 16 TiB (ext4's largest file), after a hole.
const FAR: u64 = (16 << 40) - 8192;

fn assert_sparse_copy(file: &Path) {
    let meta = std::fs::metadata(file).unwrap();
    assert_eq!(meta.len(), FAR + 1, "{}", file.display());
    assert!(
        meta.blocks() < 1024,
        "{} takes {} blocks",
        file.display(),
        meta.blocks()
    );
    let mut last = [0; 1];
    File::open(file)
        .unwrap()
        .read_exact_at(&mut last, FAR)
        .unwrap();
    assert_eq!(&last, b"x");
}

#[test]
fn sparse_files_keep_their_holes() {
    let env = TestEnv::new();
    let app = app(&env, "sparse");
    guest(
        &env,
        &app,
        "volfiles",
        &["write-at", "/data/bomb", &FAR.to_string(), "x"],
    );
    let bounded = |args: &[&str], stdout: Stdio| {
        let mut child = env
            .command()
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Writing the zeros would take hours; keeping the holes, no time.
        let status = wait_with_timeout(&mut child, Duration::from_secs(30));
        assert!(status.success(), "{args:?}: {status}");
    };
    let out = env.work.path().join("out");
    bounded(
        &["volume", "get", "sparse", "/bomb", path(&out)],
        Stdio::null(),
    );
    assert_sparse_copy(&out);
    // `-` into a file keeps the holes too.
    let stdout_file = env.work.path().join("stdout");
    bounded(
        &["volume", "get", "sparse", "/bomb", "-"],
        File::create(&stdout_file).unwrap().into(),
    );
    assert_sparse_copy(&stdout_file);
    // And `put` does.
    bounded(
        &["volume", "put", "sparse", path(&out), "/copy"],
        Stdio::null(),
    );
    assert_sparse_copy(&env.volume_dir("sparse").join("copy"));
    // Into a pipe, every byte is what the reader asked for: it gets zeros,
    // and the copy ends when it stops reading.
    let mut child = env
        .command()
        .args(["volume", "get", "sparse", "/bomb", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut head = vec![1; 1 << 20];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
    wait_with_timeout(&mut child, Duration::from_secs(30));
}

#[test]
fn fifos_sockets_and_devices_are_skipped_with_a_warning_on_put() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "special"]).success();
    let local = env.work.path().join("special");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("plain"), "x").unwrap();
    let fifo = local.join("a-fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let socket = local.join("a-socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let put = env
        .run(&["volume", "put", "special", path(&local), "/d"])
        .success();
    for (kind, file) in [("fifo", &fifo), ("socket", &socket)] {
        assert!(
            put.stderr()
                .contains(&format!("warning: skipped {kind} {}", path(file))),
            "{}",
            put.stderr()
        );
    }
    assert_eq!(listing(&env.volume_dir("special").join("d")), ["plain"]);
    // One at the top, and a device.
    let put = env
        .run(&["volume", "put", "special", path(&fifo), "/f"])
        .success();
    assert!(put.stderr().contains("skipped fifo"), "{}", put.stderr());
    let put = env
        .run(&["volume", "put", "special", "/dev/null", "/n"])
        .success();
    assert!(
        put.stderr().contains("skipped char-device /dev/null"),
        "{}",
        put.stderr()
    );
    assert_eq!(listing(&env.volume_dir("special")), ["d"]);
}

#[test]
fn a_missing_local_file_is_bad_usage() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "usage"]).success();
    let missing = env.work.path().join("no-such-file");
    let run = env
        .run(&["volume", "put", "usage", path(&missing), "/x"])
        .code_is(2);
    assert!(run.stderr().contains("does not exist"), "{}", run.stderr());
}

#[test]
fn files_vanishing_under_volume_get_are_not_bad_usage() {
    let env = TestEnv::new();
    let app = app(&env, "churn");
    let mut churn = env.spawn(&[
        "run",
        path(&app),
        "volfiles",
        "--",
        "churn",
        "/data/dir",
        "8000",
    ]);
    let mut line = String::new();
    BufReader::new(churn.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "churning\n");
    let mut codes = Vec::new();
    for i in 0..40 {
        if churn.try_wait().unwrap().is_some() {
            break;
        }
        let out = env.work.path().join(format!("out-{i}"));
        let run = env.run(&["volume", "get", "churn", "/dir", path(&out)]);
        assert_ne!(run.code(), 2, "a race is not bad usage: {}", run.stderr());
        codes.push(run.code());
    }
    assert!(wait_with_timeout(&mut churn, Duration::from_secs(30)).success());
    assert!(
        codes.len() >= 5,
        "only {} gets ran during the churn",
        codes.len()
    );
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
}
