//! Apps, volumes and their lifecycle, end to end, with the real binary and
//! real guests (issue: core lifecycle).

mod common;
#[path = "lifecycle/named_volumes.rs"]
mod named_volumes;
#[path = "lifecycle/stops.rs"]
mod stops;

use std::time::Duration;

use common::{
    AppToml, Mount, Target, TestEnv, eventually, guest, path, repo_root, wait_with_timeout,
};

/// The id of the one running app named `name`, once it is running.
fn wait_until_running(env: &TestEnv, name: &str) -> String {
    let mut id = String::new();
    eventually(
        Duration::from_secs(30),
        &format!("app {name} running"),
        || {
            let apps = env.apps();
            match apps
                .iter()
                .find(|a| a["name"] == name && a["state"] == "running" && a["kind"] != "volume")
            {
                Some(app) => {
                    id = app["id"].as_str().unwrap().to_owned();
                    true
                }
                None => false,
            }
        },
    );
    id
}

/// The ephemeral volume directories that currently exist.
fn volume_dirs(env: &TestEnv) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(env.home().join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[test]
fn ephemeral_volume_is_gone_after_the_app_stops() {
    let env = TestEnv::new();
    let app = env.fsops_app("eph", "eph-data");
    let marker = "ephemeral-marker-5f1c9a";
    env.run(&[
        "run",
        path(&app),
        "--",
        "write",
        "/scratch/marker.txt",
        marker,
    ])
    .success();
    // The named volume remains; only the ephemeral one may be gone.
    assert_eq!(
        volume_dirs(&env).len(),
        1,
        "only the named volume's directory should remain"
    );
    env.wait_for_empty_trash();
    assert_eq!(
        env.files_containing(marker),
        Vec::<std::path::PathBuf>::new()
    );
    let apps = env.apps();
    let run_app = apps.iter().find(|a| a["name"] == "eph").unwrap();
    assert_eq!(run_app["kind"], "ephemeral");
    assert_eq!(run_app["state"], "stopped");
}

#[test]
fn named_volume_outlives_the_app() {
    let env = TestEnv::new();
    let app = env.fsops_app("writer", "keep-me");
    env.run(&[
        "run",
        path(&app),
        "--",
        "write",
        "/data/kept.txt",
        "still here",
    ])
    .success();
    let read = env
        .run(&["run", path(&app), "--", "read", "/data/kept.txt"])
        .success();
    assert_eq!(read.stdout(), "still here");
    let ls = env
        .run(&["volume", "ls", "keep-me", "/", "--json"])
        .success();
    let entries: serde_json::Value = serde_json::from_str(&ls.stdout()).unwrap();
    assert_eq!(entries[0]["path"], "/kept.txt");
    assert_eq!(entries[0]["size"], 10);
}

#[test]
fn args_env_and_exit_code_reach_the_guest() {
    let env = TestEnv::new();
    let app = AppToml::new("hello")
        .function("hello", |f| {
            f.guest("hello")
                .args(&["--from-toml"])
                .env("GREETING", "bonjour")
        })
        .write(&env);
    let run = env
        .run(&["run", path(&app), "--", "x y", "--exit", "7"])
        .code_is(7);
    let out = run.stdout();
    assert!(
        out.contains("arg: --from-toml\narg: x y\narg: --exit\narg: 7\n"),
        "{out}"
    );
    assert!(out.contains("GREETING=bonjour"), "{out}");
    env.run(&["run", path(&app)]).success();
}

#[test]
fn bad_manifest_or_missing_module_creates_nothing() {
    let env = TestEnv::new();
    let home = env.home().join("fresh-home");
    // `colour` on line 2.
    let unknown_key = AppToml::new("typo")
        .key("colour", "\"blue\"")
        .function("f", |f| f.guest("hello"))
        .write(&env);
    let run = env
        .command()
        .env("WASMHOST_HOME", &home)
        .args(["run", path(&unknown_key)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("app.toml:2:1"), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let missing = AppToml::new("missing")
        .function("f", |f| f.module("nowhere/f.wasm"))
        .write(&env);
    let run = env
        .command()
        .env("WASMHOST_HOME", &home)
        .args(["run", path(&missing)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nowhere/f.wasm") && stderr.contains("app.toml:3:10"),
        "{stderr}"
    );
    assert!(!home.exists(), "a bad app.toml must create no state");
}

/// Guest paths `/` (the volume is the whole file system), and the relative
/// preopen names `data` and `.`, as README's app.toml section says.
#[test]
fn guest_paths_root_relative_and_dot_mount_the_volume() {
    let env = TestEnv::new();
    let app = AppToml::new("paths")
        .volume("v", |v| v.persist("paths-vol"))
        .function("root", |f| f.guest("fsops").mount("/", "v"))
        .function("named", |f| f.guest("fsops").mount("data", "v"))
        .function("dot", |f| f.guest("fsops").mount(".", "v"))
        .write(&env);
    let guest = |function: &str, args: &[&str]| {
        let mut all = vec!["run", path(&app), function, "--"];
        all.extend_from_slice(args);
        env.run(&all).success().stdout()
    };
    guest("root", &["write", "/from-root", "r"]);
    guest("root", &["mkdir", "/sub"]);
    guest("named", &["write", "data/sub/from-named", "n"]);
    guest("dot", &["write", "from-dot", "d"]);
    guest("dot", &["write", "./sub/from-dot", "d2"]);
    let ls = env
        .run(&["volume", "ls", "paths-vol", "/", "--json"])
        .success();
    let entries: serde_json::Value = serde_json::from_str(&ls.stdout()).unwrap();
    let mut listed: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["/from-dot", "/from-root", "/sub"]);
    assert_eq!(guest("root", &["ls", "/sub"]), "from-dot\nfrom-named\n");
    assert_eq!(guest("root", &["read", "/sub/from-named"]), "n");
    assert_eq!(guest("named", &["read", "data/from-root"]), "r");
    assert_eq!(guest("dot", &["read", "from-root"]), "r");
    assert_eq!(guest("dot", &["read", "sub/from-dot"]), "d2");
}

/// `cache info` counts the compiled modules under `$WASMHOST_HOME/cache`;
/// `cache clear` removes them, and the next run compiles again.
#[test]
fn cache_info_and_clear() {
    let env = TestEnv::new();
    let app = env.fsops_app("cached", "cached-data");
    let info = || env.run(&["cache", "info"]).success().stdout();
    let cache_dir = env.home().join("cache");
    assert!(info().starts_with("0 entries, 0 bytes in "), "{}", info());
    env.run(&["run", path(&app), "--", "exit", "0"]).success();
    let after = info();
    let bytes: u64 = after
        .strip_prefix("1 entries, ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{after}"));
    assert!(bytes > 10_000, "{after}");
    let first = after.lines().next().unwrap_or_default();
    assert!(first.ends_with(path(&cache_dir)), "{after}");
    assert!(after.contains("\n0 pre-initialized snapshots"), "{after}");
    assert_eq!(
        env.run(&["cache", "clear"]).success().stdout(),
        "removed 1 entries\n"
    );
    assert!(info().starts_with("0 entries, 0 bytes"), "{}", info());
    env.run(&["run", path(&app), "--", "exit", "0"]).success();
    assert!(info().starts_with("1 entries"), "{}", info());
    // A home's cache is its own: there is no cluster's to clear.
    let refused = env.run(&["cache", "clear", "--cluster"]).code_is(2);
    assert!(refused.stderr().contains("this home's cache is its own"));
    assert!(info().starts_with("1 entries"), "{}", info());
}

/// A module of `len` bytes, most of them one data segment: large, as
/// CPython is, yet quick to compile. Its `_start` does nothing.
fn large_module(len: usize) -> Vec<u8> {
    fn leb(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            match n {
                0 => return [out, vec![byte]].concat(),
                _ => out.push(byte | 0x80),
            }
        }
    }
    let section = |id: u8, payload: &[u8]| [&[id][..], &leb(payload.len()), payload].concat();
    let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let segment = [&[1, 0, 0x41, 0, 0x0b][..], &leb(len), &data].concat();
    [
        &b"\0asm\x01\0\0\0"[..],
        &section(1, &[1, 0x60, 0, 0]),
        &section(3, &[1, 0]),
        &section(5, &[1, 0, 100]),
        &section(7, b"\x02\x06_start\x00\x00\x06memory\x02\x00"),
        &section(10, &[1, 2, 0, 0x0b]),
        &section(11, &segment),
    ]
    .concat()
}

/// Off a terminal (the tests' stderr is a pipe), compiling a large module
/// prints one note naming it and saying it compiles once; the next run
/// loads it and prints nothing, and a small module's compile prints
/// nothing either.
#[test]
fn a_large_modules_compile_prints_one_note_off_a_terminal() {
    let env = TestEnv::new();
    let module = env.work.path().join("large.wasm");
    std::fs::write(&module, large_module(5 << 20)).unwrap();
    let app = AppToml::new("large")
        .function("f", |f| f.module(&module))
        .write(&env);
    let first = env.run(&["run", path(&app)]).success();
    let expected = format!(
        "note: compiling {} (once: later starts load it from the cache)\n",
        path(&module)
    );
    assert_eq!(first.stderr(), expected);
    let again = env.run(&["run", path(&app)]).success();
    assert_eq!(again.stderr(), "", "loaded, not compiled");

    let small = env.fsops_app("small", "small-data");
    let run = env.run(&["run", path(&small), "--", "exit", "0"]).success();
    assert_eq!(run.stderr(), "");
}

/// The example apps run from their own app.toml files, as a user would run
/// them after building the guests (the README's commands).
#[test]
fn example_apps_run_from_their_own_app_toml() {
    let env = TestEnv::new();
    // Builds the guests where the examples' app.toml files point.
    guest("hello", Target::P1);
    let example = |name: &str| {
        repo_root()
            .join("guest-examples/apps")
            .join(name)
            .join("app.toml")
    };

    let hello = env
        .run(&[
            "run",
            path(&example("hello")),
            "--",
            "a",
            "b",
            "--exit",
            "3",
        ])
        .code_is(3)
        .stdout();
    assert_eq!(
        hello,
        "hello from wasmhost\narg: a\narg: b\narg: --exit\narg: 3\nGREETING=hi\n"
    );

    let cache = |key: &str| {
        env.run(&["run", path(&example("cache")), "--", key])
            .success()
            .stdout()
    };
    let first = cache("hello");
    let [key, value, "miss"] = first.split_whitespace().collect::<Vec<_>>()[..] else {
        panic!("{first}")
    };
    assert_eq!(key, "hello");
    assert_eq!(cache("hello"), format!("hello {value} hit\n"));
    assert!(
        env.run(&["volume", "ls", "cache-demo-results"])
            .success()
            .stdout()
            .contains("hello.result")
    );

    let data = env.work.path().join("mydata");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "one\ntwo\n").unwrap();
    env.run(&["volume", "create", "dataset-demo-data"])
        .success();
    env.run(&["volume", "put", "dataset-demo-data", path(&data), "/"])
        .success();
    let stats = env
        .run(&["run", path(&example("dataset"))])
        .success()
        .stdout();
    assert_eq!(stats, "mydata/a.txt 2 8\ntotal 1 2 8\n");
}

#[test]
fn deployed_app_shares_its_ephemeral_volume_between_calls() {
    let env = TestEnv::new();
    let app = env.fsops_app("svc", "svc-data");
    let deployed = env.run(&["deploy", path(&app)]).success().stdout();
    assert!(deployed.contains("ap-"), "{deployed}");
    env.run(&[
        "call",
        "svc",
        "fsops",
        "--",
        "write",
        "/scratch/shared.txt",
        "from call one",
    ])
    .success();
    let read = env
        .run(&["call", "svc", "fsops", "--", "read", "/scratch/shared.txt"])
        .success();
    assert_eq!(read.stdout(), "from call one");

    // Deploying again updates in place and keeps the ephemeral volume.
    let again = env.run(&["deploy", path(&app)]).success().stdout();
    assert!(again.contains("updated"), "{again}");
    let read = env
        .run(&["call", "svc", "fsops", "--", "read", "/scratch/shared.txt"])
        .success();
    assert_eq!(read.stdout(), "from call one");

    env.run(&["app", "stop", "svc", "--yes"]).success();
    let after = env
        .run(&["call", "svc", "fsops", "--", "read", "/scratch/shared.txt"])
        .code_is(2);
    assert!(
        after.stderr().contains("stopped") && after.stderr().contains("deploy"),
        "{}",
        after.stderr()
    );
    env.wait_for_empty_trash();
    assert!(env.data_files_containing("from call one").is_empty());
}

#[test]
fn deleting_a_volume_in_use_is_refused_and_names_the_app() {
    let env = TestEnv::new();
    let app = env.fsops_app("holder", "busy-vol");
    let mut child = env.spawn(&["run", path(&app), "--", "sleep", "60000"]);
    let id = wait_until_running(&env, "holder");
    let refused = env
        .run(&["volume", "delete", "busy-vol", "--yes"])
        .code_is(1);
    assert!(
        refused.stderr().contains("holder") && refused.stderr().contains(&id),
        "{}",
        refused.stderr()
    );
    // `app stop` does not reach volumes (issue 20 item 12).
    let refused = env.run(&["app", "stop", "busy-vol", "--yes"]).code_is(2);
    assert!(
        refused.stderr().contains("is a volume"),
        "{}",
        refused.stderr()
    );
    assert!(
        env.run(&["volume", "list"])
            .success()
            .stdout()
            .contains("busy-vol")
    );

    // --force stops the app first, then deletes the volume.
    env.run(&["volume", "delete", "busy-vol", "--yes", "--force"])
        .success();
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    assert!(
        !env.run(&["volume", "list"])
            .success()
            .stdout()
            .contains("busy-vol")
    );
    env.wait_for_empty_trash();
    assert!(volume_dirs(&env).is_empty());
}

/// `volume put|get|ls|rm` on files and whole directories, and the `dataset`
/// example reading what a user put into a named volume, mounted read-only.
#[test]
fn volume_files_round_trip_and_the_dataset_example_reads_them() {
    let env = TestEnv::new();
    let local = env.work.path().join("corpus");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("a.txt"), "one\ntwo\n").unwrap();
    std::fs::write(local.join("sub/b.txt"), "three\n").unwrap();
    env.run(&["volume", "create", "ds"]).success();
    env.run(&["volume", "put", "ds", path(&local)]).success();

    let app = AppToml::new("stats")
        .volume("data", |v| v.persist("ds"))
        .function("stats", |f| {
            f.guest("dataset")
                .mount("/data", Mount::volume("data").read_only())
        })
        .write(&env);
    let stats = env.run(&["run", path(&app)]).success().stdout();
    assert_eq!(
        stats,
        "corpus/a.txt 2 8\ncorpus/sub/b.txt 1 6\ntotal 2 3 14\n"
    );

    // Overwriting needs --force, in both directions.
    let again = env.run(&["volume", "put", "ds", path(&local)]).code_is(2);
    assert!(again.stderr().contains("--force"), "{}", again.stderr());
    std::fs::write(local.join("a.txt"), "changed\n").unwrap();
    env.run(&["volume", "put", "ds", path(&local), "/corpus", "--force"])
        .success();
    let cat = env
        .run(&["volume", "get", "ds", "/corpus/a.txt", "-"])
        .success();
    assert_eq!(cat.stdout(), "changed\n");

    let copy = env.work.path().join("copy");
    env.run(&["volume", "get", "ds", "/corpus", path(&copy)])
        .success();
    assert_eq!(
        std::fs::read_to_string(copy.join("a.txt")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("sub/b.txt")).unwrap(),
        "three\n"
    );
    env.run(&["volume", "get", "ds", "/corpus", path(&copy)])
        .code_is(2);

    let ls = env
        .run(&["volume", "ls", "ds", "/corpus", "--json"])
        .success();
    let entries: serde_json::Value = serde_json::from_str(&ls.stdout()).unwrap();
    let listed: Vec<(&str, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("/corpus/a.txt", "file"), ("/corpus/sub", "dir")]);

    let refused = env.run(&["volume", "rm", "ds", "/corpus"]).code_is(2);
    assert!(
        refused.stderr().contains("--recursive"),
        "{}",
        refused.stderr()
    );
    env.run(&["volume", "rm", "ds", "/corpus", "--recursive"])
        .success();
    let empty = env.run(&["run", path(&app)]).success().stdout();
    assert_eq!(empty, "total 0 0 0\n");
}

/// `app stop NAME` with two running apps of that name is refused with both
/// ids; an id stops just the one; `app list` shows the columns the spec
/// names, and `--all` the stopped app too.
#[test]
fn app_stop_by_an_ambiguous_name_lists_the_ids() {
    let env = TestEnv::new();
    let app = env.fsops_app("twin", "twin-data");
    let mut first = env.spawn(&["run", path(&app), "--", "sleep", "60000"]);
    let mut second = env.spawn(&["run", path(&app), "--", "sleep", "60000"]);
    let mut ids = Vec::new();
    eventually(Duration::from_secs(30), "two twins running", || {
        ids = env
            .apps()
            .iter()
            .filter(|a| a["name"] == "twin" && a["state"] == "running")
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        ids.len() == 2
    });
    let refused = env.run(&["app", "stop", "twin", "--yes"]).code_is(2);
    assert!(
        ids.iter().all(|id| refused.stderr().contains(id.as_str())),
        "{}",
        refused.stderr()
    );
    assert_eq!(refused.stderr().lines().count(), 1, "{}", refused.stderr());

    env.run(&["app", "stop", &ids[0], "--yes"]).success();
    let table = env.run(&["app", "list"]).success().stdout();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "NAME", "KIND", "STATE", "CREATED", "STOPPED", "NEXT", "TICK"
        ]
    );
    assert!(
        !table.contains(&ids[0]) && table.contains(&ids[1]),
        "{table}"
    );
    let all = env.run(&["app", "list", "--all"]).success().stdout();
    let stopped_row = all.lines().find(|l| l.contains(&ids[0])).unwrap();
    assert!(
        stopped_row.contains("ephemeral") && stopped_row.contains("stopped"),
        "{all}"
    );

    env.run(&["app", "stop", "twin", "--yes"]).success();
    for child in [&mut first, &mut second] {
        assert_eq!(
            wait_with_timeout(child, Duration::from_secs(20)).code(),
            Some(1)
        );
    }
}
