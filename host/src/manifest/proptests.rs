//! Property tests over the whole parser and validator: no input panics, every
//! error is one line with a position inside the text, and generated valid
//! manifests come back exactly as written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::units::{format_duration, format_size};
use super::*;

/// A directory holding `m.wasm`, a valid empty core module.
pub(super) fn base_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wasm"), b"\0asm\x01\0\0\0").unwrap();
        dir
    })
    .path()
}

fn check_error(text: &str, e: &ManifestError) -> Result<(), TestCaseError> {
    let message = e.to_string();
    prop_assert!(!message.contains('\n'), "{message:?}");
    prop_assert!(message.contains("; fix: "), "{message:?}");
    if let Some((line, column)) = e.position {
        prop_assert!(line >= 1 && column >= 1);
        prop_assert!(line <= text.split('\n').count(), "{message:?}");
    }
    Ok(())
}

/// An app or volume name (see `names`).
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.-]{0,12}"
}

/// A function name or volume key: bare TOML keys, as users write them.
fn identifier() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_-]{0,12}"
}

fn guest_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        "(/[a-z]{1,6}){1,3}",
        "[a-z]{1,6}(/[a-z]{1,6}){0,2}",
    ]
}

/// An interval in whole seconds (as humantime writes it back), or a cron line.
fn schedule() -> impl Strategy<Value = Schedule> {
    prop_oneof![
        (1u64..=10_000_000).prop_map(|secs| Schedule::Every(Duration::from_secs(secs))),
        proptest::sample::select(vec![
            "* * * * *",
            "0 3 * * *",
            "*/15 9-17 * * 1-5",
            "30 0 1 */2 *"
        ])
        .prop_map(|line| Schedule::Cron(line.to_owned())),
    ]
}

/// Either form of `retries`: the count alone when the delays are the
/// defaults, which is how a user would write it.
fn retries() -> impl Strategy<Value = RetryPolicy> {
    prop_oneof![
        (0..=MAX_RETRIES).prop_map(|max| RetryPolicy {
            max,
            ..RetryPolicy::default()
        }),
        (
            0..=MAX_RETRIES,
            1u64..=86_400_000,
            1u64..=86_400_000,
            1.0..=MAX_BACKOFF
        )
            .prop_map(|(max, a, b, backoff)| RetryPolicy {
                max,
                initial_delay: Duration::from_millis(a.min(b)),
                backoff,
                max_delay: Duration::from_millis(a.max(b)),
            }),
    ]
}

/// An `allowed_hosts` entry, written as its canonical text (which always
/// has a port) so that it parses back to itself.
fn host_pattern() -> impl Strategy<Value = HostPattern> {
    (
        any::<bool>(),
        prop_oneof![
            "[a-z]([a-z0-9-]{0,7}[a-z0-9])?(\\.[a-z]{1,6}){0,2}".prop_map(HostMatch::Name),
            "[a-z]{1,8}\\.[a-z]{1,6}".prop_map(HostMatch::Subdomains),
            any::<std::net::IpAddr>().prop_map(HostMatch::Ip),
        ],
        proptest::option::of(1u16..),
    )
        .prop_map(|(https, host, port)| HostPattern { https, host, port })
}

fn function(volumes: Vec<String>) -> impl Strategy<Value = FunctionSpec> {
    let mounts = if volumes.is_empty() {
        Just(Vec::new()).boxed()
    } else {
        proptest::collection::btree_map(
            guest_path(),
            (proptest::sample::select(volumes), any::<bool>()),
            0..4,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(guest_path, (volume, read_only))| MountSpec {
                    guest_path,
                    volume,
                    read_only,
                    sub_path: None,
                    snapshot: None,
                })
                .collect()
        })
        .boxed()
    };
    (
        mounts,
        proptest::collection::vec("\\PC{0,8}", 0..3),
        proptest::collection::btree_map("[A-Z_]{1,8}", "\\PC{0,8}", 0..3),
        1u64..=86_400_000,
        proptest::option::of(1u64..=(16 << 14)),
        proptest::option::of(1u32..=1024),
        (proptest::option::of("[a-z_][a-z0-9_.]{0,8}"), any::<bool>()),
        (16u32..=1_000_000, 1u32..=1_000_000, retries()),
        (
            proptest::collection::vec(host_pattern(), 0..3),
            proptest::collection::btree_set(name(), 0..3),
            proptest::option::of(schedule()),
        ),
    )
        .prop_map(
            |(
                mounts,
                args,
                env,
                timeout_ms,
                pages,
                concurrency,
                (entry, trap_unknown_imports),
                (max_open_files, max_locks, retries),
                (allowed_hosts, secrets, schedule),
            )| {
                FunctionSpec {
                    module: base_dir().join("m.wasm"),
                    mounts,
                    args,
                    env,
                    timeout: Duration::from_millis(timeout_ms),
                    memory: pages.map(|p| p << 16),
                    concurrency,
                    entry,
                    trap_unknown_imports,
                    max_open_files,
                    max_locks,
                    retries,
                    allowed_hosts,
                    secrets: secrets.into_iter().collect(),
                    schedule,
                    http: None,
                    record: Record::Output,
                    files: Vec::new(),
                    preinit: None,
                }
            },
        )
}

fn volume() -> impl Strategy<Value = VolumeSpec> {
    (
        proptest::option::of(name()),
        proptest::option::of(1u64..=units::MAX_QUOTA),
        proptest::option::of(1u64..=i64::MAX as u64),
    )
        .prop_map(|(persist, max_bytes, max_files)| VolumeSpec {
            persist,
            quota: Quota {
                max_bytes,
                max_files,
            },
        })
}

fn manifest() -> impl Strategy<Value = AppManifest> {
    (
        name(),
        proptest::collection::btree_map(identifier(), volume(), 0..4),
    )
        .prop_flat_map(|(app, volumes)| {
            let keys: Vec<String> = volumes.keys().cloned().collect();
            (
                Just(app),
                Just(volumes),
                proptest::collection::btree_map(identifier(), function(keys), 1..4),
                any::<proptest::sample::Index>(),
                any::<bool>(),
            )
        })
        .prop_map(|(name, volumes, functions, entry, has_entry)| {
            let entrypoint = has_entry
                .then(|| functions.keys().nth(entry.index(functions.len())).cloned())
                .flatten();
            AppManifest {
                name,
                entrypoint,
                volumes,
                functions,
            }
        })
}

/// app.toml text for `m`, written the way a user would.
fn to_toml(m: &AppManifest) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = format!("name = {}\n", q(&m.name));
    if let Some(entry) = &m.entrypoint {
        out += &format!("entrypoint = {}\n", q(entry));
    }
    for (key, volume) in &m.volumes {
        out += &format!("[volumes.{key}]\n");
        if let Some(p) = &volume.persist {
            out += &format!("persist = {}\n", q(p));
        }
        if let Some(bytes) = volume.quota.max_bytes {
            out += &format!("max_size = \"{bytes}B\"\n");
        }
        if let Some(files) = volume.quota.max_files {
            out += &format!("max_files = {files}\n");
        }
    }
    for (key, f) in &m.functions {
        out += &format!("[functions.{key}]\nmodule = \"m.wasm\"\n");
        let mounts: Vec<String> = f
            .mounts
            .iter()
            .map(|mount| {
                format!(
                    "{} = {{ volume = {}, read_only = {} }}",
                    q(&mount.guest_path),
                    q(&mount.volume),
                    mount.read_only
                )
            })
            .collect();
        out += &format!("mounts = {{ {} }}\n", mounts.join(", "));
        let args: Vec<String> = f.args.iter().map(|a| q(a)).collect();
        out += &format!("args = [{}]\n", args.join(", "));
        let env: Vec<String> = f
            .env
            .iter()
            .map(|(k, v)| format!("{k} = {}", q(v)))
            .collect();
        out += &format!("env = {{ {} }}\n", env.join(", "));
        out += &format!("timeout = {}\n", q(&format_duration(f.timeout)));
        if let Some(memory) = f.memory {
            out += &format!("memory = {}\n", q(&format_size(memory)));
        }
        if let Some(c) = f.concurrency {
            out += &format!("concurrency = {c}\n");
        }
        if let Some(entry) = &f.entry {
            out += &format!("entry = {}\n", q(entry));
        }
        if f.trap_unknown_imports {
            out += "unknown_imports = \"trap\"\n";
        }
        let secrets: Vec<String> = f.secrets.iter().map(|s| q(s)).collect();
        out += &format!("secrets = [{}]\n", secrets.join(", "));
        if let Some(schedule) = &f.schedule {
            out += &format!("schedule = {}\n", q(&schedule.to_string()));
        }
        out += &format!("max_open_files = {}\n", f.max_open_files);
        out += &format!("max_locks = {}\n", f.max_locks);
        let hosts: Vec<String> = f.allowed_hosts.iter().map(|h| q(&h.to_string())).collect();
        out += &format!("allowed_hosts = [{}]\n", hosts.join(", "));
        let r = &f.retries;
        if (r.initial_delay, r.backoff, r.max_delay) == {
            let d = RetryPolicy::default();
            (d.initial_delay, d.backoff, d.max_delay)
        } {
            if r.max != 0 {
                out += &format!("retries = {}\n", r.max);
            }
        } else {
            // `{:?}` keeps a `.0`, so a whole backoff is still written as a float.
            out += &format!(
                "retries = {{ max = {}, initial_delay = {}, backoff = {:?}, max_delay = {} }}\n",
                r.max,
                q(&format_duration(r.initial_delay)),
                r.backoff,
                q(&format_duration(r.max_delay))
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_manifests_round_trip(m in manifest()) {
        let text = to_toml(&m);
        let parsed = parse(Path::new("app.toml"), &text, base_dir());
        prop_assert_eq!(parsed.as_ref(), Ok(&m), "{}", text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        if let Err(e) = parse(Path::new("app.toml"), &text, base_dir()) {
            check_error(&text, &e)?;
        }
    }

    /// Valid manifests with one line replaced by noise: still no panic, and
    /// every error one line with a position inside the text.
    #[test]
    fn mutated_manifests_never_panic(
        m in manifest(),
        at in any::<proptest::sample::Index>(),
        noise in "[\\[\\]{}=\",.a-z0-9 /-]{0,20}",
    ) {
        let text = to_toml(&m);
        let mut lines: Vec<&str> = text.lines().collect();
        let i = at.index(lines.len());
        lines[i] = &noise;
        let text = lines.join("\n");
        if let Err(e) = parse(Path::new("app.toml"), &text, base_dir()) {
            check_error(&text, &e)?;
        }
    }

    #[test]
    fn bad_names_are_refused_where_they_stand(bad in "[_. /][a-zA-Z0-9_./ -]{0,8}") {
        let text = format!("name = \"ok\"\n[functions.f]\nmodule = \"m.wasm\"\n[volumes.v]\npersist = {}\n",
            toml::Value::String(bad.clone()));
        let e = parse(Path::new("app.toml"), &text, base_dir()).unwrap_err();
        prop_assert_eq!(e.position, Some((5, 11)));
        check_error(&text, &e)?;
    }

    #[test]
    fn climbing_guest_paths_are_refused(
        prefix in "(/?[a-z]{1,4}/){0,2}",
        suffix in "(/[a-z]{1,4}){0,2}",
    ) {
        let text = format!(
            "name = \"ok\"\n[volumes.v]\n[functions.f]\nmodule = \"m.wasm\"\nmounts = {{ \"{prefix}..{suffix}\" = \"v\" }}\n"
        );
        let e = parse(Path::new("app.toml"), &text, base_dir()).unwrap_err();
        prop_assert!(e.problem.contains("`..`"), "{}", e);
        prop_assert_eq!(e.position, Some((5, 12)));
    }
}

#[test]
fn env_keys_are_kept() {
    let text = "name = \"ok\"\n[functions.f]\nmodule = \"m.wasm\"\nenv = { A = \"1\" }\n";
    let m = parse(Path::new("app.toml"), text, base_dir()).unwrap();
    assert_eq!(
        m.functions["f"].env,
        BTreeMap::from([("A".into(), "1".into())])
    );
}
