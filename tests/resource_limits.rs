//! Per-instance limits on host resources (issue 9, items 5, 7 and 8): a
//! guest hoarding open files or locks is stopped at its function's
//! `max_open_files` / `max_locks` with an error it can handle, and its
//! `--map` siblings never notice; a huge lock path costs the host nothing;
//! lock files go away with their locks, and no lock directory outlives its
//! volume.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{AppToml, Function, Target, TestEnv, path, wait_with_timeout};

/// Generous: these runs take a second or two; the bound only catches a hang.
const HANG: Duration = Duration::from_secs(120);
/// How long a hoarder keeps what it took after being refused, so that its
/// `--map` siblings run beside a full hoard.
const HOLD_MS: &str = "1500";
/// What a hoarder asks for: what exhausted the process's descriptors before.
const HOARD: &str = "20000";

/// One test of this file at a time: several measure a process's peak
/// memory, which a sibling test's load (and a fork of this test process,
/// whose memory the child counts until it execs) would inflate.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An app of the `hoard` guest: function `f` with `args` and the keys
/// `keys` sets, an ephemeral volume at /scratch and the named volume
/// `NAME-data` at /data.
fn hoard_app(
    env: &TestEnv,
    name: &str,
    target: Target,
    args: &[&str],
    keys: impl FnOnce(Function) -> Function,
) -> PathBuf {
    AppToml::new(name)
        .volume("scratch", |v| v)
        .volume("data", |v| v.persist(&format!("{name}-data")))
        .function("f", |f| {
            keys(
                f.guest_for(target, "hoard")
                    .mount("/scratch", "scratch")
                    .mount("/data", "data")
                    .args(args),
            )
        })
        .write(env)
}

/// `took K then errno E: …`: how many the hoarder got before its refusal.
#[track_caller]
fn refused_after(stdout: &str) -> (usize, String) {
    let line = stdout
        .lines()
        .find(|l| l.contains(" then errno "))
        .unwrap_or_else(|| panic!("the hoarder was never refused: {stdout}"));
    let count = line["took ".len()..line.find(" then").unwrap()]
        .parse()
        .unwrap();
    (count, line.to_owned())
}

/// What an open past `max_open_files` answers: EMFILE for a core module;
/// a component gets wasi:filesystem's `quota`, which wasi-libc calls EDQUOT.
fn open_refusal(target: Target) -> &'static str {
    match target {
        Target::P1 => "errno 33: No file descriptors available",
        Target::P2 => "errno 19: Quota exceeded",
    }
}

/// One hoarder asking for 20,000 (files or locks, per `op`) under `--map`
/// beside 40 siblings that wait until it has been refused, then take 4
/// each: the siblings all succeed, the hoarder is refused at the default
/// limit of 1024 (files count stdio and mounts, so a few fewer), and the
/// summary says which limit it hit.
fn hoarder_beside_siblings(target: Target, op: &str, refusal: &str, limit_note: &str) {
    let env = TestEnv::new();
    let app = hoard_app(&env, "hoard", target, &["words"], |f| f);
    let inputs = env.work.path().join("inputs.txt");
    let hoarder = format!("{op} /scratch {HOLD_MS} {HOARD}");
    let sibling = format!("after /scratch/full {op} /scratch 0 4");
    let lines: Vec<&str> = std::iter::once(hoarder.as_str())
        .chain(std::iter::repeat_n(sibling.as_str(), 40))
        .collect();
    std::fs::write(&inputs, lines.join("\n") + "\n").unwrap();
    let run = &env
        .run_within(
            HANG,
            &[
                "run",
                path(&app),
                "--map",
                path(&inputs),
                "--concurrency",
                "8",
            ],
        )
        .code_is(1);
    let stdout = run.stdout();
    assert_eq!(
        stdout.lines().filter(|l| *l == "took 4").count(),
        40,
        "every sibling takes its 4\nstdout: {stdout}\nstderr: {}",
        run.stderr()
    );
    let (count, line) = refused_after(&stdout);
    assert!((1024 - 16..=1024).contains(&count), "{line}");
    assert!(line.contains(refusal), "{line}");
    let stderr = run.stderr();
    assert!(
        stderr.contains("1 of 41 invocations failed")
            && stderr.contains(&format!(
                "input 1 `{hoarder}`: exited with code 1, after it hit its limit of 1024 {limit_note}"
            )),
        "{stderr}"
    );
}

#[test]
fn a_file_hoarder_stops_at_its_limit_and_its_siblings_still_open_files() {
    let _alone = alone();
    hoarder_beside_siblings(
        Target::P1,
        "open",
        open_refusal(Target::P1),
        "open files (the function's `max_open_files`)",
    );
}

#[test]
fn a_file_hoarding_component_stops_at_its_limit_and_its_siblings_still_open_files() {
    let _alone = alone();
    hoarder_beside_siblings(
        Target::P2,
        "open",
        open_refusal(Target::P2),
        "open files (the function's `max_open_files`)",
    );
}

#[test]
fn a_lock_hoarder_stops_at_its_limit_and_its_siblings_still_lock() {
    let _alone = alone();
    hoarder_beside_siblings(
        Target::P1,
        "lock",
        "max_locks",
        "locks (the function's `max_locks`)",
    );
}

#[test]
fn a_lock_hoarding_component_stops_at_its_limit_and_its_siblings_still_lock() {
    let _alone = alone();
    hoarder_beside_siblings(
        Target::P2,
        "lock",
        "max_locks",
        "locks (the function's `max_locks`)",
    );
}

/// Hoards with `op` in a single run of a function with the limits `limits`
/// sets; returns how many it got and wasmhost's error line.
fn single_hoard(
    env: &TestEnv,
    target: Target,
    op: &str,
    limits: impl FnOnce(Function) -> Function,
) -> (usize, String) {
    let app = hoard_app(env, "single", target, &[op, "/scratch", "0"], limits);
    let run = env
        .run_within(HANG, &["run", path(&app), "--", HOARD])
        .code_is(1);
    let (count, _) = refused_after(&run.stdout());
    let error = run
        .stderr()
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_owned();
    (count, error)
}

#[test]
fn the_limits_are_set_per_function() {
    let _alone = alone();
    for target in [Target::P1, Target::P2] {
        let env = TestEnv::new();
        for (max, low) in [(64, 48), (2048, 2048 - 16)] {
            let (count, error) =
                single_hoard(&env, target, "open-panic", |f| f.max_open_files(max));
            assert!(
                (low..=max).contains(&count),
                "{target:?}: took {count} of {max}"
            );
            // The guest panicked on the refusal: a trap, which says why.
            assert!(
                error.contains("trapped")
                    && error.contains(&format!(
                        "after it hit its limit of {max} open files (the function's `max_open_files`)"
                    )),
                "{error}"
            );
        }
        for max in [8, 2048] {
            let (count, _) = single_hoard(&env, target, "lock", |f| f.max_locks(max));
            assert_eq!(count, max, "{target:?}");
        }
    }
}

#[test]
fn limit_keys_are_validated_with_their_position() {
    let _alone = alone();
    let env = TestEnv::new();
    for (extra, needle) in [
        (
            "max_open_files = 0",
            "10:18: `max_open_files = 0` is out of range",
        ),
        (
            "max_locks = 2000000",
            "10:13: `max_locks = 2000000` is out of range",
        ),
        ("max_locks = \"many\"", "10:13"),
    ] {
        // As written, for the line and column of each error.
        let app = env.app(
            "bad",
            &format!(
                r#"
name = "bad"
[volumes.scratch]
[volumes.data]
persist = "bad-data"
[functions.f]
module = "{{guest:hoard}}"
mounts = {{ "/scratch" = "scratch", "/data" = "data" }}
args = ["churn", "/data", "1"]
{extra}
"#
            ),
        );
        let run = env.run(&["run", path(&app)]).code_is(2);
        assert!(run.stderr().contains(needle), "{extra}: {}", run.stderr());
    }
}

/// Waits (bounded) for `child` and returns its exit status and peak
/// resident memory in KiB.
fn wait_with_peak_rss(child: &mut Child) -> (i32, i64) {
    let deadline = Instant::now() + HANG;
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: wait4 on our own child, into locals.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(waited >= 0, "wait4 failed");
        if waited == pid {
            return (libc::WEXITSTATUS(status), usage.ru_maxrss);
        }
        assert!(
            Instant::now() < deadline,
            "wasmhost did not exit within {HANG:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest passes a lock path of `bytes` bytes (in memory it never
/// touched): it is refused as invalid, and the host's peak memory stays far
/// below the path's size, so the host never copied it.
fn huge_lock_path_costs_nothing(target: Target, bytes: usize) {
    let env = TestEnv::new();
    let app = hoard_app(&env, "longpath", target, &["long-lock-path"], |f| f);
    // Compiling the guest is what costs memory; do it first.
    env.run_within(HANG, &["run", path(&app), "--", "4"])
        .success();
    let mut child = env.spawn(&["run", path(&app), "--", &bytes.to_string()]);
    let (status, peak_kib) = wait_with_peak_rss(&mut child);
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!((status, stdout.trim()), (0, "invalid lock path"));
    let peak = peak_kib as usize * 1024;
    assert!(
        peak < bytes / 2,
        "{target:?}: peak RSS {} MiB for a {} MiB path",
        peak >> 20,
        bytes >> 20
    );
}

#[test]
fn a_300_mb_lock_path_is_refused_without_copying_it() {
    let _alone = alone();
    huge_lock_path_costs_nothing(Target::P1, 300 << 20);
}

#[test]
fn a_huge_lock_path_from_a_component_is_refused_without_copying_it() {
    let _alone = alone();
    // Below wasmtime's own 128 MiB cap on what one host call may lift,
    // past which the instance traps before the host sees the path.
    huge_lock_path_costs_nothing(Target::P2, 120 << 20);
}

/// A guest stats a path of `bytes` bytes: it is refused as too long, and
/// the host's peak memory beyond the guest's own linear memory stays below
/// `host_bound` (what a component's path costs as the canonical ABI lifts
/// it; nothing for a core module), so the host did not resolve it.
fn huge_file_path_is_refused_early(target: Target, bytes: usize, host_bound: usize) {
    let env = TestEnv::new();
    let app = hoard_app(
        &env,
        "statpath",
        target,
        &["stat-long-path", "/scratch"],
        |f| f,
    );
    env.run_within(HANG, &["run", path(&app), "--", "4"])
        .success();
    let mut child = env.spawn(&["run", path(&app), "--", &bytes.to_string()]);
    let (status, peak_kib) = wait_with_peak_rss(&mut child);
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(status, 0, "{stdout}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("Filename too long (os error 37)"));
    let guest: usize = lines.next().unwrap()["memory ".len()..].parse().unwrap();
    let host = (peak_kib as usize * 1024).saturating_sub(guest);
    assert!(
        host < host_bound,
        "{target:?}: the host took {} MiB beyond the guest's {} MiB for a {} MiB path",
        host >> 20,
        guest >> 20,
        bytes >> 20
    );
}

#[test]
fn a_huge_file_path_is_refused_before_the_host_resolves_it() {
    let _alone = alone();
    huge_file_path_is_refused_early(Target::P1, 100 << 20, 50 << 20);
}

#[test]
fn a_huge_file_path_from_a_component_is_refused_once_lifted() {
    let _alone = alone();
    huge_file_path_is_refused_early(Target::P2, 120 << 20, 180 << 20);
}

/// The id of named volume `name`.
fn volume_id(env: &TestEnv, name: &str) -> String {
    let list: serde_json::Value =
        serde_json::from_str(&env.run(&["volume", "list", "--json"]).success().stdout()).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name} in {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Files left in the lock directory of volume `id`.
fn lock_files(env: &TestEnv, id: &str) -> Vec<PathBuf> {
    let dir = env.home().join("locks").join(id);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn thousands_of_distinct_locks_leave_no_lock_files() {
    let _alone = alone();
    for target in [Target::P1, Target::P2] {
        let env = TestEnv::new();
        let app = hoard_app(&env, "churner", target, &["churn", "/data"], |f| f);
        let run = &env
            .run_within(HANG, &["run", path(&app), "--", "3000"])
            .success();
        assert_eq!(run.stdout().trim(), "churned 3000");
        let id = volume_id(&env, "churner-data");
        assert_eq!(lock_files(&env, &id), Vec::<PathBuf>::new(), "{target:?}");
    }
}

#[test]
fn contended_locks_still_exclude_while_their_files_are_unlinked() {
    let _alone = alone();
    let env = TestEnv::new();
    let app = AppToml::new("counter")
        .volume("data", |v| v.persist("counter-data"))
        .function("count", |f| {
            f.guest("fsops")
                .mount("/data", "data")
                .args(&["counter-lock", "/data/n"])
        })
        .write(&env);
    let inputs = env.work.path().join("inputs.txt");
    std::fs::write(&inputs, "50\n".repeat(8)).unwrap();
    let map = [
        "run",
        path(&app),
        "--map",
        path(&inputs),
        "--concurrency",
        "8",
    ];
    // Two processes of 8 instances each, 50 increments per instance, all
    // under the one lock whose file each holder unlinks as it lets go.
    let children: Vec<Child> = (0..2).map(|_| env.spawn(&map)).collect();
    for mut child in children {
        let status = wait_with_timeout(&mut child, HANG);
        assert!(status.success(), "a counting process failed");
    }
    let count = env
        .run(&["volume", "get", "counter-data", "/n", "-"])
        .success()
        .stdout();
    assert_eq!(count.trim(), "800", "updates were lost");
    let id = volume_id(&env, "counter-data");
    assert_eq!(lock_files(&env, &id), Vec::<PathBuf>::new());
}

#[test]
fn a_guest_outliving_its_deleted_volume_leaves_no_lock_directory() {
    let _alone = alone();
    // Lock directories are a local home's (a cluster's locks are rows).
    let env = TestEnv::on_sqlite();
    let app = hoard_app(
        &env,
        "outlive",
        Target::P1,
        &["lock-loop", "/data", "5000"],
        |f| f,
    );
    // The volume is created by the first run.
    let mut guest = env.spawn(&["run", path(&app)]);
    let mut stdout = std::io::BufReader::new(guest.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "locking");
    let id = volume_id(&env, "outlive-data");
    let locks_dir = env.home().join("locks").join(&id);
    assert!(locks_dir.is_dir(), "a live volume has its lock directory");
    // Paused, the guest's process cannot see its app stopped before the
    // delete is done; resumed, the guest locks on until it does.
    signal(&guest, libc::SIGSTOP);
    env.run(&["volume", "delete", "outlive-data", "--yes", "--force"])
        .success();
    assert!(!locks_dir.exists(), "the delete left the lock directory");
    signal(&guest, libc::SIGCONT);
    wait_with_timeout(&mut guest, HANG);
    let mut answers = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut answers).unwrap();
    // It locked before the pause; after it, its lock calls reached the
    // host and were refused, and none made the directory again.
    let answers: Vec<&str> = answers.lines().collect();
    assert_eq!(answers.first(), Some(&"answer acquired"), "{answers:?}");
    assert!(
        answers.len() >= 2,
        "no lock call after the delete: {answers:?}"
    );
    assert!(
        !locks_dir.exists(),
        "a lock call after the delete made it again"
    );
    // Any later command tidies what a lock call racing the delete made.
    env.run(&["volume", "list"]).success();
    assert!(!locks_dir.exists(), "{} came back", locks_dir.display());
}

#[test]
fn components_built_against_the_first_lock_interface_still_lock() {
    let _alone = alone();
    let env = TestEnv::new();
    let app = AppToml::new("oldlock")
        .volume("data", |v| v)
        .function("f", |f| f.guest2("lock_v0_1").mount("/data", "data"))
        .write(&env);
    let run = &env
        .run_within(HANG, &["run", path(&app), "--", "/data/k"])
        .success();
    assert_eq!(run.stdout().trim(), "locked and released");
}

/// Eight file hoarders at once, under a process limit of 3000 descriptors
/// (`ulimit -n`), beside 40 siblings: at the default `max_open_files` of
/// 1024 three hoarders would take every descriptor the process has, so
/// each instance's limit is lowered to its share, and every hoarder is
/// refused by its own limit (never by the host running out) while every
/// sibling still opens its files.
#[test]
fn hoarders_share_the_process_descriptor_limit() {
    let _alone = alone();
    let env = TestEnv::new();
    let app = hoard_app(&env, "share", Target::P1, &["words"], |f| f);
    let inputs = env.work.path().join("inputs.txt");
    let hoarder = format!("open /scratch {HOLD_MS} {HOARD}");
    let sibling = "after /scratch/full open /scratch 0 4";
    let lines: Vec<&str> = std::iter::repeat_n(hoarder.as_str(), 8)
        .chain(std::iter::repeat_n(sibling, 40))
        .collect();
    std::fs::write(&inputs, lines.join("\n") + "\n").unwrap();
    let command = env.command();
    let mut child = std::process::Command::new("bash")
        .args(["-c", "ulimit -n 3000 && exec \"$0\" \"$@\""])
        .arg(command.get_program())
        .args(["run", path(&app), "--map", path(&inputs)])
        .args(["--concurrency", "9"])
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(env.work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, HANG);
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| *l == "took 4").count(),
        40,
        "every sibling takes its 4\nstdout: {stdout}\nstderr: {stderr}"
    );
    let refusals: Vec<&str> = stdout.lines().filter(|l| l.contains(" then ")).collect();
    assert_eq!(refusals.len(), 8, "{stdout}");
    for line in refusals {
        // (3000 - 512) / 9 instances / 2 = 138 files each, stdio and mounts included.
        assert!(line.starts_with("took 13"), "{line}");
        assert!(line.contains(open_refusal(Target::P1)), "{line}");
    }
    assert!(
        stderr.contains("8 of 48 invocations failed")
            && stderr.contains("its limit of 138 open files (its share of the process's 3000 descriptors, with 9 instances at once"),
        "{stderr}"
    );
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}
