//! Named volumes are not apps, and what destroys their data asks first
//! (issue 20 items 12 and 13): `app list` and `app stop` never reach a
//! volume, and `volume snapshot restore|delete` ask on a terminal or need
//! `--yes`.

use crate::common::{TestEnv, path};

#[test]
fn a_named_volume_is_listed_as_a_volume_only() {
    let env = TestEnv::new();
    let app = env.fsops_app("lister", "listed-vol");
    env.run(&["run", path(&app), "--", "write", "/data/a", "1"])
        .success();
    let list = env.run(&["volume", "list"]).success().stdout();
    assert!(list.contains("listed-vol"), "{list}");
    let volumes: serde_json::Value =
        serde_json::from_str(&env.run(&["volume", "list", "--json"]).success().stdout()).unwrap();
    assert_eq!(volumes[0]["name"], "listed-vol");
    // `app list` is about apps (issue 20 item 12): the volume is none.
    let apps = env.apps();
    assert!(
        apps.iter()
            .all(|a| a["name"] != "listed-vol" && a["kind"] != "volume"),
        "{apps:?}"
    );
    let running = env.run(&["app", "list"]).success().stdout();
    assert!(!running.contains("listed-vol"), "{running}");
}

#[test]
fn app_stop_never_deletes_a_named_volume() {
    let env = TestEnv::new();
    let app = env.fsops_app("deleter", "doomed");
    env.run(&[
        "run",
        path(&app),
        "--",
        "write",
        "/data/secret.txt",
        "doomed-data-77e1",
    ])
    .success();
    // `app stop` is about apps: a volume's name or its row's id is no app
    // of it, and the message says how a volume is deleted.
    let volumes: serde_json::Value =
        serde_json::from_str(&env.run(&["volume", "list", "--json"]).success().stdout()).unwrap();
    let row_id = volumes[0]["app_id"].as_str().unwrap().to_owned();
    for target in ["doomed", row_id.as_str()] {
        let refused = env.run(&["app", "stop", target, "--yes"]).code_is(2);
        assert_eq!(refused.stderr().lines().count(), 1, "{}", refused.stderr());
    }
    let refused = env.run(&["app", "stop", "doomed", "--yes"]).code_is(2);
    assert!(
        refused.stderr().contains("volume delete doomed"),
        "{}",
        refused.stderr()
    );
    let kept = env
        .run(&["run", path(&app), "--", "read", "/data/secret.txt"])
        .success();
    assert_eq!(kept.stdout(), "doomed-data-77e1");

    // Only `volume delete` deletes it, and asks first.
    let refused = env.run(&["volume", "delete", "doomed"]).code_is(2);
    assert!(refused.stderr().contains("--yes"), "{}", refused.stderr());
    env.run(&["volume", "delete", "doomed", "--yes"]).success();
    env.wait_for_empty_trash();
    assert!(env.files_containing("doomed-data-77e1").is_empty());
    assert!(
        !env.run(&["volume", "list"])
            .success()
            .stdout()
            .contains("doomed")
    );
    let again = env
        .run(&["run", path(&app), "--", "exists", "/data/secret.txt"])
        .success();
    assert_eq!(again.stdout().trim(), "no");
    let unknown = env
        .run(&["volume", "delete", "never-was", "--yes"])
        .code_is(2);
    assert!(
        unknown.stderr().contains("never-was"),
        "{}",
        unknown.stderr()
    );
}

/// An app and a named volume of the same name: `app stop` stops the app,
/// without asking which, and the volume keeps its data.
#[test]
fn an_app_and_a_volume_of_one_name_stop_as_the_app() {
    let env = TestEnv::new();
    let app = env.fsops_app("same", "same");
    env.run(&["deploy", path(&app)]).success();
    env.run(&[
        "call",
        "same",
        "fsops",
        "--",
        "write",
        "/data/kept.txt",
        "kept-5e1d",
    ])
    .success();
    env.run(&["app", "stop", "same", "--yes"]).success();
    let file = env
        .run(&["volume", "get", "same", "/kept.txt", "-"])
        .success();
    assert_eq!(file.stdout(), "kept-5e1d");
}

/// Restoring a snapshot discards the live tree and deleting one loses it:
/// without a terminal, both are refused unless `--yes`, and nothing changes.
#[test]
fn snapshot_restore_and_delete_need_yes_without_a_terminal() {
    let env = TestEnv::new();
    let app = env.fsops_app("snapper", "snapped");
    env.run(&["run", path(&app), "--", "write", "/data/f.txt", "before"])
        .success();
    env.run(&["volume", "snapshot", "create", "snapped", "s1"])
        .success();
    env.run(&["run", path(&app), "--", "write", "/data/f.txt", "after"])
        .success();
    let read = || {
        env.run(&["run", path(&app), "--", "read", "/data/f.txt"])
            .success()
            .stdout()
    };
    for args in [
        ["volume", "snapshot", "restore", "snapped", "s1"],
        ["volume", "snapshot", "delete", "snapped", "s1"],
    ] {
        let refused = env.run(&args).code_is(2);
        let stderr = refused.stderr();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("--yes") && stderr.contains("s1"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(read(), "after", "an unconfirmed restore changed the volume");
    let listed = env
        .run(&["volume", "snapshot", "list", "snapped"])
        .success()
        .stdout();
    assert!(
        listed.contains("s1"),
        "an unconfirmed delete deleted: {listed}"
    );

    env.run(&["volume", "snapshot", "restore", "snapped", "s1", "--yes"])
        .success();
    assert_eq!(read(), "before");
    env.run(&["volume", "snapshot", "delete", "snapped", "s1", "-y"])
        .success();
    let listed = env
        .run(&["volume", "snapshot", "list", "snapped"])
        .success()
        .stdout();
    assert!(!listed.contains("s1"), "{listed}");
}
