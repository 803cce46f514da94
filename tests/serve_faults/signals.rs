//! A node's signals: SIGTERM lets a call finish within the grace, and past
//! it requeues a call that has retries left; SIGINT past the grace
//! interrupts the call and fails it.

use super::*;

#[test]
fn sigterm_lets_a_call_finish_within_the_grace_then_exits_0() {
    let env = TestEnv::new();
    deploy_pair(&env, "drain");
    // A grace far longer than any bound below, so ending within the bound
    // can only mean ending with the call.
    let mut node = Node::start_with(&env, &["--grace", "120s"]);
    let id = spawn_call(
        &env,
        "drain",
        "once",
        &["wait-for", "/gates/open", "echo-line", "finished"],
    );
    wait_all_running(&env, std::slice::from_ref(&id), &node.id);
    let signalled = Instant::now();
    node.signal(libc::SIGTERM);
    // A call queued during the drain is not claimed by the draining node.
    let late = spawn_call(&env, "drain", "once", &["echo-line", "late"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.try_wait().is_none(),
        "the node waits for its running call\n{}",
        node.stderr()
    );
    assert_eq!(call_row(&env, &id).state, "running");
    let gate = env.work.path().join("open");
    std::fs::write(&gate, "").unwrap();
    env.run(&["volume", "put", "drain-gates", path(&gate), "/open"])
        .success();
    let status = node.wait_exit(Duration::from_secs(60));
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "the drained node exits 0: {status:?}\n{}",
        node.stderr()
    );
    let call = call_row(&env, &id);
    assert_eq!(call.state, "succeeded", "{call:?}");
    assert_eq!(call.attempts, 1, "{call:?}");
    assert!(
        took < Duration::from_secs(60),
        "the node exits once its call ends, not at the grace's end: {took:?}"
    );
    let mut registry = env.registry();
    let call = call_record(&mut registry, &id);
    let [output, _] = registry.read(|tx| tx.call_output(&call)).unwrap().0;
    assert_eq!(output, "finished\n");
    let late = call_row(&env, &late);
    assert_eq!(
        (late.state.as_str(), late.attempts),
        ("queued", 0),
        "a draining node claims nothing: {late:?}"
    );
}

#[test]
fn sigint_past_the_grace_interrupts_the_call_and_fails_it() {
    let env = TestEnv::new();
    deploy_pair(&env, "drain");
    let mut node = Node::start_with(&env, &["--grace", "1s"]);
    let id = spawn_call(&env, "drain", "once", &["sleep", "60000"]);
    wait_all_running(&env, std::slice::from_ref(&id), &node.id);
    let signalled = Instant::now();
    node.signal(libc::SIGINT);
    let status = node.wait_exit(Duration::from_secs(40));
    let took = signalled.elapsed();
    // The call would sleep a minute: ending well before means interrupted.
    assert!(
        took < Duration::from_secs(30),
        "a 1 s grace, then the interrupt: the node took {took:?}"
    );
    assert!(
        status.code().is_some(),
        "the node exits, not killed: {status:?}"
    );
    let call = call_row(&env, &id);
    assert_eq!(call.state, "failed", "{call:?}");
    let error = call.error.clone().unwrap_or_default();
    assert!(
        error.contains("shut down") && error.contains(&node.id),
        "the error says the node shut down: {call:?}"
    );
}

#[test]
fn sigterm_past_the_grace_requeues_a_call_with_retries_for_the_next_node() {
    let env = TestEnv::new();
    deploy_pair(&env, "drain");
    let mut first = Node::start_with(&env, &["--grace", "1s"]);
    // Waits for /gates/open (at most 60 s), which exists only once the
    // first node has gone.
    let id = spawn_call(
        &env,
        "drain",
        "retried",
        &["wait-for", "/gates/open", "echo-line", "through"],
    );
    wait_all_running(&env, std::slice::from_ref(&id), &first.id);
    let signalled = Instant::now();
    first.signal(libc::SIGTERM);
    first.wait_exit(Duration::from_secs(40));
    // Its call waits for a gate nobody opens: ending means interrupted.
    assert!(signalled.elapsed() < Duration::from_secs(30));
    let call = call_row(&env, &id);
    assert_eq!(
        (call.state.as_str(), call.attempts),
        ("queued", 1),
        "queued again for another node: {call:?}"
    );
    assert!(
        call.error
            .as_deref()
            .unwrap_or_default()
            .contains("shut down"),
        "{call:?}"
    );

    let gate = env.work.path().join("open");
    std::fs::write(&gate, "").unwrap();
    env.run(&["volume", "put", "drain-gates", path(&gate), "/open"])
        .success();
    let second = Node::start(&env);
    let call = second.wait_call(&id, CALLS_BOUND);
    assert_eq!(call["state"], "succeeded", "{call}");
    assert_eq!(call["attempts"], 2, "{call}");
    assert_eq!(call["node"], second.id.as_str(), "{call}");
    assert_eq!(call["stdout"], "through\n", "{call}");
    let history = call["attempt_history"].as_array().unwrap();
    assert_eq!(history[0]["node"], first.id.as_str(), "{call}");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("shut down"),
        "{call}"
    );
}
