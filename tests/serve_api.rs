//! The node's HTTP API (SPEC section 6): `wasmhost serve` on a free port,
//! driven over HTTP as a client would.

mod common;

use common::TestEnv;
use common::node::{Auth, Node};

#[test]
fn health_answers_without_a_token() {
    let env = TestEnv::new();
    let node = Node::start(&env);
    let (status, body) = node.get_as("/v1/health", Auth::None);
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node"], node.id.as_str());
}
