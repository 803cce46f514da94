//! Claiming queued calls: registry transactions (`BEGIN IMMEDIATE` on
//! SQLite, `FOR UPDATE SKIP LOCKED` on PostgreSQL), so two nodes never
//! claim one call, taking at most each function's `concurrency` at once
//! across every caller and at most `--max-calls` on this node; each
//! claimed call runs on a thread of its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::worker::Worker;
use crate::apps::{self, LiveApp};
use crate::invoke::Watch;
use crate::registry::{CallRecord, CallState, Registry, now_ms};
use crate::runtime::OutputLog;

impl Worker {
    /// Claims what the node has room for and starts it.
    pub(super) fn claim_and_start(self: &Arc<Self>, registry: &mut Registry) {
        // Kept before claiming, so no web request takes it meanwhile.
        let mut room = self.supervisor.reserve(self.room.most, usize::MAX);
        if room.left() == 0 {
            return;
        }
        match self.claim(registry, room.left()) {
            Ok(claimed) => {
                for (call, live) in claimed {
                    let watch = room.watch(&call.app_id, &call.id);
                    self.start(call, live, watch);
                }
            }
            Err(e) => tracing::warn!("cannot claim queued calls: {e:#}"),
        }
    }

    /// Claims up to `free` queued calls that their function's
    /// `concurrency` leaves room for.
    fn claim(
        &self,
        registry: &mut Registry,
        free: usize,
    ) -> Result<Vec<(CallRecord, Arc<LiveApp>)>> {
        // Most looks find nothing: a read, not a write lock, tells.
        if registry.read(|tx| tx.claimable_calls(1, false))?.is_empty() {
            return Ok(Vec::new());
        }
        let holder = &self.holder;
        // Claims of several nodes run side by side, each skipping the calls
        // another has locked; only counting a `concurrency` needs them to
        // take turns, per function.
        registry.write_shared(|tx| {
            let candidates = tx.claimable_calls(free.max(64) * 4, true)?;
            let mut apps: HashMap<String, Option<Arc<LiveApp>>> = HashMap::new();
            for call in &candidates {
                if !apps.contains_key(&call.app_id) {
                    let live = apps::deployed_app_in(tx, &call.app_id).ok().map(Arc::new);
                    apps.insert(call.app_id.clone(), live);
                }
            }
            let spec_of = |call: &CallRecord| {
                apps[&call.app_id]
                    .as_ref()
                    .and_then(|l| l.manifest.functions.get(&call.function))
            };
            // In one order, so that two claims never wait on each other.
            let limited: BTreeSet<(&str, &str)> = candidates
                .iter()
                .filter(|call| spec_of(call).is_some_and(|spec| spec.concurrency.is_some()))
                .map(|call| (call.app_id.as_str(), call.function.as_str()))
                .collect();
            for (app_id, function) in &limited {
                tx.lock_key(&format!("{app_id}/{function}"))?;
            }
            let mut claimed = Vec::new();
            let mut counts: HashMap<(String, String), u32> = HashMap::new();
            for call in &candidates {
                if claimed.len() == free {
                    break;
                }
                let Some(spec) = spec_of(call) else {
                    tx.finish_call(
                        &call.id,
                        CallState::Failed,
                        None,
                        Some("its function is no longer in the app (it was updated)"),
                        now_ms(),
                    )?;
                    continue;
                };
                let key = (call.app_id.clone(), call.function.clone());
                let count = match counts.get(&key) {
                    Some(count) => *count,
                    None => tx.running_count(&call.app_id, &call.function)?,
                };
                if spec.concurrency.is_some_and(|most| count >= most) {
                    counts.insert(key, count);
                    continue;
                }
                if tx.claim_call(&call.id, &holder.id, holder.node.as_deref())? {
                    counts.insert(key, count + 1);
                    let call = tx.call(&call.id)?.context("a claimed call vanished")?;
                    let live = apps[&call.app_id].clone().expect("checked above");
                    claimed.push((call, live));
                }
            }
            Ok(claimed)
        })
    }

    /// Runs a claimed call on a thread of its own.
    fn start(self: &Arc<Self>, call: CallRecord, live: Arc<LiveApp>, watch: Watch) {
        let worker = self.clone();
        std::thread::spawn(move || {
            let log = OutputLog::new();
            worker
                .recorder
                .watch(&call.id, &call.app_id, call.attempts, log.clone());
            worker.run_call(call, &live, watch, log, None);
        });
    }
}
