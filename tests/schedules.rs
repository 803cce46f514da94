//! Schedules (SPEC section 7): `schedule = "every 1s"` or a cron line runs a
//! deployed app's function once per tick across every node that serves it,
//! skips a tick whose previous run is still going, shows the next tick, and
//! stops with the app.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use common::node::Node;
use common::{AppToml, TestEnv, eventually, path};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);

/// Deploys app `name` whose function `tick` runs the `scheduled` guest on
/// `schedule`, writing its tick files to the named volume `{name}-ticks`
/// and sleeping `sleep_ms` per run.
fn deploy(env: &TestEnv, name: &str, schedule: &str, sleep_ms: u32) {
    let app = AppToml::new(name)
        .volume("ticks", |v| v.persist(&format!("{name}-ticks")))
        .function("tick", |f| {
            f.guest("scheduled")
                .mount("/data", "ticks")
                .args(&["/data", &sleep_ms.to_string()])
                .schedule(schedule)
        })
        .write(env);
    env.run(&["deploy", path(&app)]).success();
}

/// Every call of app `name`, as `calls list --json` has them.
fn calls(env: &TestEnv, name: &str) -> Vec<Value> {
    let out = env
        .run(&["calls", "list", name, "--json", "--limit", "1000"])
        .success()
        .stdout();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The `tick-*` files in volume `volume`.
fn tick_files(env: &TestEnv, volume: &str) -> BTreeSet<String> {
    std::fs::read_dir(env.volume_dir(volume))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tick-"))
        .collect()
}

fn tick_of(call: &Value) -> SystemTime {
    let tick = call["tick"]
        .as_str()
        .unwrap_or_else(|| panic!("no tick: {call}"));
    humantime::parse_rfc3339(tick).unwrap()
}

#[test]
fn every_second_runs_once_per_tick_across_two_nodes_until_the_app_stops() {
    let env = TestEnv::new();
    deploy(&env, "pulse", "every 1s", 0);
    let a = Node::start_logging(&env, &[], "debug");
    let b = Node::start_logging(&env, &[], "debug");
    eventually(BOUND, "the first tick's run", || {
        calls(&env, "pulse")
            .iter()
            .any(|c| c["state"] == "succeeded")
    });
    let first = calls(&env, "pulse")
        .iter()
        .map(tick_of)
        .min()
        .expect("a call");
    std::thread::sleep(Duration::from_secs(11));
    env.run(&["app", "stop", "pulse", "--yes"]).success();

    let all = calls(&env, "pulse");
    // Over the 10 s from the first tick on: one run per tick (a tick that
    // came while a slow machine had not yet run the one before is
    // `skipped`, not run).
    let window: Vec<&Value> = all
        .iter()
        .filter(|c| tick_of(c) < first + Duration::from_secs(10) && c["state"] != "skipped")
        .collect();
    assert!(
        (9..=11).contains(&window.len()),
        "{} runs in 10 s: {all:#?}",
        window.len()
    );
    let ticks: BTreeSet<String> = all.iter().map(|c| c["tick"].to_string()).collect();
    assert_eq!(ticks.len(), all.len(), "two calls for one tick: {all:#?}");
    // Both nodes claimed ticks as they came (each looks at a tick's own
    // instant): each ran some, or found them claimed by the other first,
    // and at least one tick was raced for.
    let lost = "claimed by another node first";
    for (node, name) in [(&a, "A"), (&b, "B")] {
        let ran = all.iter().filter(|c| c["node"] == node.id.as_str()).count();
        eprintln!("node {name} ran {ran} of {} ticks", all.len());
        assert!(
            ran > 0 || node.stderr().contains(lost),
            "node {name} never claimed a tick: {all:#?}"
        );
    }
    assert!(
        a.stderr().contains(lost) || b.stderr().contains(lost),
        "neither node ever lost a tick to the other:\n{}\n{}",
        a.stderr(),
        b.stderr()
    );
    // A second run of one tick could not create its file, and would fail.
    let ran: Vec<&Value> = all.iter().filter(|c| c["state"] == "succeeded").collect();
    for call in &all {
        assert!(
            ["succeeded", "cancelled", "skipped"].contains(&call["state"].as_str().unwrap()),
            "{call:#}"
        );
    }
    let files = tick_files(&env, "pulse-ticks");
    assert!(
        files.len() >= ran.len() && files.len() <= all.len(),
        "{} files for {} runs ({} calls): {files:?}",
        files.len(),
        ran.len(),
        all.len()
    );

    // Stopped: nothing more, though both nodes still serve.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        calls(&env, "pulse").len(),
        all.len(),
        "a run after the stop"
    );
    assert_eq!(
        tick_files(&env, "pulse-ticks"),
        files,
        "a run after the stop"
    );
}

#[test]
fn a_run_longer_than_its_interval_skips_the_ticks_meanwhile() {
    let env = TestEnv::new();
    deploy(&env, "slow", "every 1s", 2500);
    let _node = Node::start(&env);
    eventually(BOUND, "a skipped tick", || {
        calls(&env, "slow").iter().any(|c| c["state"] == "skipped")
    });
    env.run(&["app", "stop", "slow", "--yes"]).success();
    let all = calls(&env, "slow");
    let skipped = all.iter().find(|c| c["state"] == "skipped").unwrap();
    assert!(
        skipped["error"]
            .as_str()
            .unwrap()
            .contains("still queued or running"),
        "{skipped:#}"
    );
    assert!(skipped["started_at"].is_null(), "{skipped:#}");
    let id = skipped["id"].as_str().unwrap();
    let shown = env.run(&["calls", "get", id]).success().stdout();
    assert!(
        shown.contains("skipped") && shown.contains("tick:"),
        "{shown}"
    );
    let table = env.run(&["calls", "list", "slow"]).success().stdout();
    assert!(table.contains(" skipped "), "{table}");
    // No run overlapped another: every tick file names a different tick.
    let ran = all.iter().filter(|c| c["state"] == "succeeded").count();
    assert!(tick_files(&env, "slow-ticks").len() >= ran);
}

#[test]
fn a_cron_line_shows_its_next_tick_at_the_next_whole_minute() {
    let env = TestEnv::new();
    let before = SystemTime::now();
    deploy(&env, "minutely", "* * * * *", 0);
    let apps = env.apps();
    let app = apps.iter().find(|a| a["name"] == "minutely").unwrap();
    let next = app["next_ticks"]["tick"]
        .as_str()
        .unwrap_or_else(|| panic!("no next tick: {app:#}"));
    let next = humantime::parse_rfc3339(next).unwrap();
    let secs = next
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert_eq!(secs % 60_000, 0, "{next:?} is not a whole minute");
    assert!(
        next > before && next <= before + Duration::from_secs(60),
        "{next:?}"
    );

    let table = env.run(&["app", "list"]).success().stdout();
    assert!(table.contains("NEXT TICK"), "{table}");
    let shown = humantime::format_rfc3339_seconds(next).to_string();
    assert!(table.contains(&shown), "{table}");
    let calls = env.run(&["calls", "list", "minutely"]).success().stdout();
    assert!(
        calls.contains(&format!("next tick: minutely/tick at {shown}")),
        "{calls}"
    );

    // Stopped, it has no next tick.
    env.run(&["app", "stop", "minutely", "--yes"]).success();
    let table = env.run(&["app", "list", "--all"]).success().stdout();
    assert!(!table.contains(&shown), "{table}");
}

#[test]
fn a_schedule_that_does_not_parse_is_refused_at_its_line() {
    let env = TestEnv::new();
    for (schedule, problem) in [
        ("61 * * * *", "is not a five-field cron line"),
        ("* * * *", "is not a five-field cron line"),
        ("every 500ms", "more often than once a second"),
        ("every soon", "is not a duration"),
    ] {
        let app = AppToml::new("bad")
            .function("tick", |f| f.guest("hello").schedule(schedule))
            .write(&env);
        for command in ["deploy", "run"] {
            let run = env.run(&[command, path(&app)]).code_is(2);
            let stderr = run.stderr();
            assert!(
                stderr.contains(&format!("{}:4:12: bad `schedule`", app.display()))
                    && stderr.contains(problem)
                    && stderr.contains("fix:"),
                "{schedule}: {stderr}"
            );
        }
    }
    assert!(env.apps().is_empty());
}

#[test]
fn ticks_missed_while_no_node_served_are_not_made_up() {
    let env = TestEnv::new();
    deploy(&env, "dozing", "every 1s", 0);
    // No node for longer than a tick may be late (5 s).
    std::thread::sleep(Duration::from_secs(7));
    let started = SystemTime::now();
    let _node = Node::start(&env);
    eventually(BOUND, "a run once a node serves", || {
        calls(&env, "dozing")
            .iter()
            .any(|c| c["state"] == "succeeded")
    });
    std::thread::sleep(Duration::from_secs(2));
    env.run(&["app", "stop", "dozing", "--yes"]).success();
    let all = calls(&env, "dozing");
    // The node began at the next tick after it started: none of the ticks
    // it missed ran late, and none in a burst.
    for call in &all {
        assert!(
            tick_of(call) + Duration::from_secs(1) >= started,
            "a missed tick ran: {call:#}"
        );
    }
    let first = all.iter().map(tick_of).min().unwrap();
    let early = all
        .iter()
        .filter(|c| tick_of(c) < first + Duration::from_secs(2))
        .count();
    assert!(early <= 2, "a burst: {all:#?}");
}
