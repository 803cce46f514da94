//! Links out of a mount: absolute, relative and directory symlinks, hard
//! links and renames out of the volume, and a symlink swapped between the
//! check and the use, by another instance or another process.

use super::*;

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
