//! Housekeeping: what dead processes and nodes left, and records past
//! their bounds. Every command does it before its own work (`cli`), and a
//! serving node every few seconds: the apps of dead `run` processes are
//! stopped, the calls of dead callers and nodes retried or failed, their
//! lock files and leases removed, old call records pruned, orphaned volume
//! directories and unused modules moved to the trash, and the trash purged
//! in the background.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::apps;
use crate::calls::Ending;
use crate::file_store;
use crate::home::Home;
use crate::lease::Lease;
use crate::locks;
use crate::module_store;
use crate::registry::{AppRecord, CallRecord, CallState, Registry, now_ms};
use crate::volumes;

/// Calls kept in the registry: ended calls older than this are deleted...
pub const KEEP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// ...and so are all but the newest this many ended calls.
pub const KEEP_AT_MOST: usize = 100_000;
/// Bytes of call output kept per app: a busy app's output goes, oldest
/// first, rather than fill the disk (its calls' records stay).
pub const KEEP_OUTPUT_PER_APP: u64 = 256 << 20;

/// What every command does first: stop apps whose `run` process died (and
/// remove the lock files it left), end calls whose caller died, trash volume
/// directories and module snapshots a crash orphaned, and restart an
/// interrupted purge.
pub fn run(home: &Home, registry: &mut Registry) -> Result<Vec<AppRecord>> {
    // In a cluster, one process at a time reaps; the others go on.
    let reaped = registry
        .as_the_only_reaper(|registry| reap_the_dead(home, registry))?
        .unwrap_or_default();
    prune_if_due(home, registry)?;
    registry.write(|tx| {
        volumes::trash_orphans(home, &tx.all_volume_ids()?, &tx.snapshots(None)?)?;
        module_store::remove_unused(home, tx)?;
        file_store::remove_unused(home, tx)
    })?;
    volumes::purge_in_background(home)?;
    Ok(reaped)
}

/// Stops the apps of `run` processes that died, ends the calls of callers
/// and nodes that died, and removes what they left: lock files and leases.
fn reap_the_dead(home: &Home, registry: &mut Registry) -> Result<Vec<AppRecord>> {
    let mut reaped = Vec::new();
    let leased = registry.read(|tx| tx.leased_running_apps())?;
    for app in &leased {
        if let Some(lease) = Lease::take_abandoned(home, &app.id)? {
            apps::stop(home, registry, &app.id, true)
                .with_context(|| format!("cannot clean up app {} of a dead process", app.id))?;
            lease.release();
            reaped.push(app.clone());
        }
    }
    // A call of an app just reaped was cancelled by its stop; ending it
    // again changes nothing.
    reap_dead_holders(home, registry)?;
    if !reaped.is_empty() {
        // A process that died holding locks left their files.
        locks::remove_unheld(home).context("cannot remove stale lock files")?;
    }
    // Leases of apps registered since the read above are held by their
    // owners, which `remove_orphans` respects.
    Lease::remove_orphans(home, |id| leased.iter().any(|a| a.id == id))?;
    Ok(reaped)
}

/// Ends the running calls of holders that died (their lease is free):
/// retried if attempts remain, else failed naming what died. Returns the
/// calls it ended.
fn reap_dead_holders(home: &Home, registry: &mut Registry) -> Result<Vec<CallRecord>> {
    let running = registry.read(|tx| tx.running_calls(None))?;
    let mut holders: BTreeMap<String, Vec<CallRecord>> = BTreeMap::new();
    for call in running {
        // Calls recorded before holders ran under a lease of their own id.
        let holder = call.holder.clone().unwrap_or_else(|| call.id.clone());
        holders.entry(holder).or_default().push(call);
    }
    let mut reaped = Vec::new();
    for (holder, calls) in holders {
        let Some(lease) = Lease::take_abandoned(home, &holder)? else {
            continue;
        };
        let what = match holder.starts_with("no-") {
            true => format!("its node {holder} died while it ran"),
            false => "its calling process died".to_owned(),
        };
        registry.write(|tx| {
            for call in &calls {
                let spec = apps::function_of(tx, &call.app_id, &call.function)?;
                let ending = match spec {
                    Some(spec) => {
                        Ending::failed(None, what.clone(), call.attempts, call.max_attempts, &spec)
                    }
                    None => Ending::Finished {
                        state: CallState::Failed,
                        exit_code: None,
                        error: Some(what.clone()),
                        at: now_ms(),
                    },
                };
                ending.record(tx, &call.id)?;
            }
            Ok(())
        })?;
        lease.release();
        reaped.extend(calls);
    }
    Ok(reaped)
}

/// Deletes call records past the bounds ([`KEEP_FOR`], [`KEEP_AT_MOST`]),
/// and output past [`KEEP_OUTPUT_PER_APP`].
fn prune(registry: &mut Registry) -> Result<usize> {
    let before = now_ms() - KEEP_FOR.as_millis() as i64;
    registry.write(|tx| {
        let calls = tx.prune_calls(before, KEEP_AT_MOST)?;
        tx.prune_output(KEEP_OUTPUT_PER_APP)?;
        Ok(calls)
    })
}

/// How often commands prune records when no node does it for them.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Prunes if no process has in the last [`PRUNE_EVERY`] (the mtime of
/// `$WASMHOST_HOME/pruned-at` says when one last did), so that a home used
/// only by `call` keeps its records within bounds too, at the cost of one
/// stat per command.
fn prune_if_due(home: &Home, registry: &mut Registry) -> Result<()> {
    let marker = home.root().join("pruned-at");
    let due = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .map_or(true, |at| {
            at.elapsed().map_or(true, |age| age >= PRUNE_EVERY)
        });
    // Marked first, so that many commands starting at once prune once; a
    // disk too full for the mark is left to a node or a later command.
    if due && std::fs::write(&marker, b"").is_ok() {
        prune(registry)?;
    }
    Ok(())
}
