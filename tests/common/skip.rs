//! A test that cannot run here says so, loudly, rather than pass as "ok"
//! having proved nothing. Each skip goes to stderr past the harness's
//! capture and into `skips.log` in cargo's test scratch directory, which
//! `.ci/run` counts and prints after each pass. Under CI (`CI=true`) a skip
//! fails the test unless its requirement is [`Requirement::OtherPass`]:
//! the one skip README's "Tests" section documents as expected (a test
//! that runs in the other of CI's two passes).

use std::io::Write;

/// What a skipped test needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// The other registry backend: it runs in CI's other pass.
    OtherPass,
    /// Root: network namespaces, a bridge, FUSE mounts.
    Root,
    /// `chattr +i` on the test's file system.
    Chattr,
}

/// Where skips are counted, one line each.
pub fn log_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skips.log")
}

/// Says that `test` did not run, and why; under CI, fails it unless that
/// is expected.
#[track_caller]
pub fn skip(test: &str, requirement: Requirement, why: &str) {
    let line = format!("SKIPPED {test} ({requirement:?}): {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path())
    {
        let _ = log.write_all(line.as_bytes());
    }
    let in_ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
    assert!(
        !in_ci || requirement == Requirement::OtherPass,
        "{test} cannot run here under CI=true, which must run it: {why}"
    );
}
