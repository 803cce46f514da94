//! Calls of deployed apps, whoever runs them: a `wasmhost call` process
//! (in-process), or a node that claimed them from the queue (`--spawn`,
//! `--remote`, the HTTP API). Every call is recorded (see
//! `registry::calls`); how one ends decides whether it is retried.
//!
//! A process that runs calls holds a [`Holder`] lease for as long as it
//! lives, and its running calls name it: when it dies, however it dies,
//! the next command's housekeeping (or a serving node's) finds its calls by
//! the lost lease and retries or fails them, so none stays `running`.

pub mod recorder;

use std::collections::BTreeMap;

use anyhow::Result;

use crate::apps::{self, LiveApp};
use crate::error::{conflict, not_found};
use crate::home::Home;
use crate::lease::Lease;
use crate::manifest::FunctionSpec;
use crate::registry::{
    AppKind, AppRecord, CallKind, CallRecord, CallState, KindFilter, NewCall, QUEUED, Registry, Tx,
    WebRequests, new_call_id, new_id, now_ms,
};

pub use recorder::Recorder;

/// The lease of a process that runs calls: `pr-…` for a `wasmhost call`,
/// the node's id (`no-…`) for a node.
pub struct Holder {
    pub id: String,
    /// The node's id, for a node.
    pub node: Option<String>,
    lease: Lease,
}

impl Holder {
    pub fn caller(home: &Home) -> Result<Self> {
        let id = new_id("pr");
        Ok(Self {
            lease: Lease::acquire(home, &id)?,
            id,
            node: None,
        })
    }

    pub fn node(home: &Home) -> Result<Self> {
        let id = new_id("no");
        Ok(Self {
            lease: Lease::acquire(home, &id)?,
            node: Some(id.clone()),
            id,
        })
    }

    pub fn release(self) {
        self.lease.release();
    }
}

/// The most attempts a call of `spec` gets.
pub fn max_attempts(spec: &FunctionSpec) -> u32 {
    1 + spec.retries.max
}

/// Starts a call of `function` of the deployed app `id_or_name` in this
/// process: records it as running, in the same transaction that reads the
/// app, so a deploy either sees the call or is seen by it. In-process calls
/// are not retried (their output went to a terminal already). Returns the
/// app, the function's name and the call's id.
pub fn start_call(
    registry: &mut Registry,
    holder: &Holder,
    id_or_name: &str,
    function: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(LiveApp, String, String)> {
    let id = new_call_id();
    let (live, function) = registry.write(|tx| {
        let (live, function) = deployed_function(tx, id_or_name, function)?;
        tx.insert_call(&NewCall {
            id: &id,
            app_id: &live.record.id,
            function: &function,
            args,
            env,
            module: live.modules.get(&function).map(String::as_str),
            max_attempts: 1,
            running: Some((&holder.id, holder.node.as_deref())),
            ended: None,
            tick: None,
            kind: CallKind::Call,
        })?;
        Ok((live, function))
    })?;
    Ok((live, function, id))
}

fn deployed_function(tx: &Tx, id_or_name: &str, function: &str) -> Result<(LiveApp, String)> {
    let live = apps::deployed_app_in(tx, id_or_name)?;
    let function = live
        .manifest
        .select_function(Some(function))
        .map_err(|problem| not_found!("{problem}"))?
        .to_owned();
    Ok((live, function))
}

/// The deployed app `id_or_name` and the name of its function `function`.
pub fn find_function(
    registry: &mut Registry,
    id_or_name: &str,
    function: &str,
) -> Result<(LiveApp, String)> {
    registry.read(|tx| deployed_function(tx, id_or_name, function))
}

/// How many queued calls go into one transaction.
const QUEUE_BATCH: usize = 1000;

/// Queues one call of `function` per item of `args` for the nodes, in input
/// order, handing each id to `queued` as soon as its batch has committed.
/// Returns the app and the function's name.
pub fn queue_calls(
    registry: &mut Registry,
    id_or_name: &str,
    function: &str,
    args: impl Iterator<Item = Vec<String>>,
    env: &BTreeMap<String, String>,
    mut queued: impl FnMut(&str) -> Result<()>,
) -> Result<(LiveApp, String)> {
    let (live, function) = find_function(registry, id_or_name, function)?;
    let max_attempts = max_attempts(&live.manifest.functions[&function]);
    let mut args = args.peekable();
    while args.peek().is_some() {
        let batch: Vec<(String, Vec<String>)> = args
            .by_ref()
            .take(QUEUE_BATCH)
            .map(|a| (new_call_id(), a))
            .collect();
        registry.write(|tx| {
            // The app may have been stopped or updated since it was read.
            let (now, _) = deployed_function(tx, &live.record.id, &function)?;
            for (id, args) in &batch {
                tx.insert_call(&NewCall {
                    id,
                    app_id: &now.record.id,
                    function: &function,
                    args,
                    env,
                    module: now.modules.get(&function).map(String::as_str),
                    max_attempts,
                    running: None,
                    ended: None,
                    tick: None,
                    kind: CallKind::Call,
                })?;
            }
            tx.notify(QUEUED)
        })?;
        for (id, _) in &batch {
            queued(id)?;
        }
    }
    Ok((live, function))
}

/// The call `id`, or a usage error saying there is none.
pub fn find(registry: &mut Registry, id: &str) -> Result<CallRecord> {
    registry.read(|tx| call_in(tx, id))
}

fn call_in(tx: &Tx, id: &str) -> Result<CallRecord> {
    tx.call(id)?.ok_or_else(|| {
        not_found!(
            "no call has the id `{}`; `wasmhost calls list` shows them",
            id.escape_debug()
        )
    })
}

fn no_such_app(id_or_name: &str) -> anyhow::Error {
    not_found!(
        "no app has the id or name `{}`; `wasmhost app list --all` shows them",
        id_or_name.escape_debug()
    )
}

/// Cancels a queued or running call (whoever runs it sees the change
/// within a poll and interrupts it); `by` names who asked (`the API`), for
/// the call's error. Returns the call as it was before.
pub fn cancel(registry: &mut Registry, id: &str, by: &str) -> Result<CallRecord> {
    registry.write(|tx| {
        let call = call_in(tx, id)?;
        if call.state.is_final() {
            return Err(conflict!(
                "call {id} has already ended ({})",
                call.state.as_str()
            ));
        }
        tx.cancel_call(id, &format!("cancelled by {by}"))?;
        Ok(call)
    })
}

/// Why call `call_id` was cancelled, as the registry has it.
pub fn why_cancelled(home: &Home, call_id: &str) -> String {
    Registry::open(&home.registry())
        .and_then(|mut registry| registry.read(|tx| tx.call(call_id)))
        .ok()
        .flatten()
        .and_then(|call| call.error)
        .unwrap_or_else(|| "cancelled from another process".into())
}

/// Whether a node serves this home: one holds its lease.
pub fn node_serving(home: &Home) -> Result<bool> {
    for id in Lease::ids(home)? {
        if id.starts_with("no-") && crate::lease::is_held(home, &id)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How an attempt's end changes its call.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Finished {
        state: CallState,
        exit_code: Option<i32>,
        error: Option<String>,
        /// When (Unix ms), as the record and any answer made from memory
        /// both say.
        at: i64,
    },
    /// Queued again, to run no earlier than `run_after` (Unix ms).
    Retry {
        run_after: i64,
        exit_code: Option<i32>,
        error: String,
    },
}

impl Ending {
    /// A failed attempt: retried if attempts remain, else the call failed.
    pub fn failed(
        exit_code: Option<i32>,
        error: String,
        attempt: u32,
        max_attempts: u32,
        spec: &FunctionSpec,
    ) -> Self {
        // A record's error is one line (trap messages can hold several).
        let error = error.replace('\n', " ");
        if attempt < max_attempts {
            let delay = spec.retries.delay_before(attempt + 1);
            Ending::Retry {
                run_after: now_ms() + delay.as_millis() as i64,
                exit_code,
                error,
            }
        } else {
            let error = if attempt > 1 {
                format!("{error} (attempt {attempt} of {max_attempts})")
            } else {
                error
            };
            Ending::Finished {
                state: CallState::Failed,
                exit_code,
                error: Some(error),
                at: now_ms(),
            }
        }
    }

    /// Records this ending of running call `id`; a call cancelled meanwhile
    /// stays cancelled.
    pub fn record(&self, tx: &Tx, id: &str) -> Result<()> {
        match self {
            Ending::Finished {
                state,
                exit_code,
                error,
                at,
            } => tx.finish_call(id, *state, *exit_code, error.as_deref(), *at)?,
            Ending::Retry {
                run_after,
                exit_code,
                error,
            } => tx.requeue_call(id, *run_after, *exit_code, error)?,
        };
        Ok(())
    }
}

/// The newest calls of `kinds` first, at most `limit`: of every app whose
/// id or name is `app` (a redeployed app has a new id, under the same
/// name), or of all apps; when web requests are left out, with them summed
/// up per endpoint. An app that never existed is a usage error.
pub fn list(
    registry: &mut Registry,
    app: Option<&str>,
    kinds: KindFilter,
    limit: usize,
) -> Result<(Vec<CallRecord>, Vec<WebRequests>)> {
    registry.read(|tx| {
        if let Some(app) = app
            && tx.find_apps(app)?.is_empty()
            && tx.latest_app_named(app, AppKind::Deployed)?.is_none()
        {
            return Err(no_such_app(app));
        }
        let web = match kinds {
            KindFilter::NotWeb => tx.web_requests(app)?,
            _ => Vec::new(),
        };
        Ok((tx.list_calls(app, kinds, limit)?, web))
    })
}

/// The app whose calls' output `app logs APP` shows: the app with that id,
/// else the newest deployed app of that name (running first), else the one
/// running app of that name.
pub fn logs_app(registry: &mut Registry, id_or_name: &str) -> Result<AppRecord> {
    registry.read(|tx| {
        if let Some(app) = tx.app(id_or_name)? {
            return Ok(app);
        }
        if let Some(app) = tx.latest_app_named(id_or_name, AppKind::Deployed)? {
            return Ok(app);
        }
        tx.find_apps(id_or_name)?
            .pop()
            .ok_or_else(|| no_such_app(id_or_name))
    })
}
