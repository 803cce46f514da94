//! A node's diagnostics go through the library's log facade and come out
//! as lines that carry their time, level and node id: as text by default,
//! as one JSON object a line with `--log-format json`. The drain a SIGTERM
//! starts is such a line.

mod common;

use std::time::Duration;

use common::node::Node;
use common::{TestEnv, eventually};

/// How long the node's stderr reader gets to pass on its last lines.
const READ_BOUND: Duration = Duration::from_secs(10);

/// Starts a node with `extra` arguments, stops it with SIGTERM, and
/// returns its id and the line it wrote about draining.
fn drain_line(extra: &[&str]) -> (String, String) {
    let env = TestEnv::new();
    let mut node = Node::start_with(&env, extra);
    node.wait_healthy();
    let status = node.stop();
    assert!(status.success(), "the node ended with {status:?}");
    let find = || {
        node.stderr()
            .lines()
            .find(|line| line.contains("SIGTERM: draining"))
            .map(str::to_owned)
    };
    eventually(READ_BOUND, "the node's drain line", || find().is_some());
    (node.id.clone(), find().unwrap())
}

#[test]
fn a_nodes_text_lines_carry_time_level_and_node_id() {
    let (id, line) = drain_line(&[]);
    let (time, rest) = line.split_once(' ').unwrap();
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("`{time}` is not an RFC 3339 time ({e}): {line}"));
    assert!(time.ends_with('Z'), "not in UTC: {line}");
    let expected = format!("INFO node={id}: SIGTERM: draining (0 calls running;");
    assert!(
        rest.trim_start().starts_with(&expected),
        "expected `{expected}`...: {line}"
    );
}

#[test]
fn a_nodes_json_lines_are_objects_with_time_level_and_node_id() {
    let (id, line) = drain_line(&["--log-format", "json"]);
    let object: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    assert_eq!(object["level"], "INFO", "{line}");
    assert_eq!(object["node"], id.as_str(), "{line}");
    assert!(
        object["message"]
            .as_str()
            .unwrap()
            .starts_with("SIGTERM: draining"),
        "{line}"
    );
    let time = object["time"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("`{time}` is not an RFC 3339 time ({e}): {line}"));
}

#[test]
fn an_unknown_log_format_is_refused_as_usage() {
    let env = TestEnv::new();
    let run = env.run(&["serve", "--log-format", "xml"]).code_is(2);
    assert!(run.stderr().contains("--log-format"), "{}", run.stderr());
}
