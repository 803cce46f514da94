//! `wasmhost serve`: a node. It runs the queued calls of every running
//! deployed app (see `worker`, and `claims`, `chores`, `immediate`,
//! `caches`, `drain` for its jobs), answers the HTTP API of SPEC section 6
//! (see `api`), which only translates requests into the library calls the
//! CLI makes, and hands web requests to `triggers::http` (see `web`).
//!
//! SIGTERM or SIGINT drains: the listener closes, no call is claimed any
//! more, running calls get `grace` to finish, then are interrupted and
//! retried per their function's `retries` (by the next node) or failed.

mod api;
mod caches;
mod chores;
mod claims;
mod drain;
mod immediate;
mod listen;
mod token;
mod web;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::calls::Holder;
use crate::home::Home;
use crate::invoke::Room;
use crate::lease;
use crate::registry::{NodeRecord, NodeState, Registry};

pub use token::token_file;
use worker::Worker;

/// A node's settings, from its command line (never from an app).
pub struct NodeConfig {
    pub listen: SocketAddr,
    /// How long a drain lets running calls finish.
    pub grace: Duration,
    /// Most calls this node runs at once, in all and of one app.
    pub room: Room,
    /// Most connections open at once; more are closed as they come.
    pub max_connections: usize,
}

/// How long interrupted calls get to unwind and be recorded after the grace.
const UNWIND: Duration = Duration::from_secs(5);

/// Runs a node until SIGTERM or SIGINT; `ready` is told the address it
/// listens on.
pub fn serve(home: &Home, config: NodeConfig, ready: impl FnOnce(SocketAddr, &str)) -> Result<()> {
    let token = token::load_or_create(home)?;
    // Each connection and each call's files take descriptors.
    listen::raise_descriptor_limit(config.max_connections as u64 + 4096);
    let executor = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the node's executor")?;
    let holder = Holder::node(home)?;
    let worker = Worker::new(home, holder, config.room)?;
    let claims = {
        let worker = worker.clone();
        std::thread::spawn(move || worker.run())
    };
    let served = executor.block_on(async {
        let listener = listen::bind(config.listen, config.max_connections)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let (location, id) = (home.registry(), worker.node_id().to_owned());
        tokio::task::spawn_blocking(move || {
            Registry::open(&location)?.write(|tx| {
                tx.insert_node(&id, &host_name(), &address.to_string(), std::process::id())
            })
        })
        .await?
        .context("cannot register the node")?;
        ready(address, worker.node_id());
        let app = api::router(worker.clone(), token, address);
        let shutdown = shutdown_signal(worker.clone());
        listen::serve(listener, app, config.max_connections, shutdown).await;
        anyhow::Ok(())
    });
    worker.drain();
    // A second signal during the drain interrupts the running calls now.
    let impatient = worker.clone();
    executor.spawn(async move {
        shutdown_signal(impatient.clone()).await;
        impatient.interrupt_all();
    });
    let _ = claims.join();
    if !worker.wait_idle(Instant::now() + config.grace) {
        worker.interrupt_all();
        worker.wait_idle(Instant::now() + UNWIND);
    }
    // Long-polling handlers (`logs?follow=1`) must not hold the exit.
    executor.shutdown_timeout(Duration::from_millis(100));
    worker.finish()?;
    served
}

/// The nodes of this home or cluster, with whether each is alive; with
/// `all`, also those that stopped in the last day.
pub fn list(home: &Home, registry: &mut Registry, all: bool) -> Result<Vec<NodeRecord>> {
    let since = if all { 0 } else { i64::MAX };
    let mut nodes = registry.read(|tx| tx.nodes(since))?;
    for node in &mut nodes {
        if node.state == NodeState::Alive && !lease::is_held(home, &node.id)? {
            node.state = NodeState::Dead;
        }
    }
    Ok(nodes)
}

/// This machine's host name, for `nodes list`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// Resolves at SIGTERM or SIGINT, having started the drain, so that
/// requests waiting on the node give up and the listener can close.
async fn shutdown_signal(worker: Arc<Worker>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        "{name}: draining ({} calls running; a second signal interrupts them)",
        worker.running_count()
    );
    worker.drain();
}
