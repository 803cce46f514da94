//! Schedules (`schedule = "every 10m"` or a five-field cron line, UTC): when
//! a function's ticks come, and the node's part in running them.
//!
//! Each scheduled function of a running deployed app has a row in the
//! registry holding its next tick. Every node looks for due rows each poll
//! and claims a tick by moving that row on to the following tick, guarded
//! by the tick it read, in the transaction that queues the tick's call: so
//! however many nodes serve a home, each tick is claimed once. The call then
//! runs as any queued call does (`concurrency`, `retries`, records).
//!
//! Ticks are not made up: a tick found more than [`LATE_LIMIT`] overdue
//! (no node served the app then) is dropped, and the schedule goes on from
//! the next tick after now. A tick that comes while the previous tick's
//! call is still queued or running is recorded as a `skipped` call.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::apps;
use crate::calls::max_attempts;
use crate::manifest::schedule::LATE_LIMIT;
use crate::registry::{CallKind, NewCall, QUEUED, Registry, format_ms, new_call_id, now_ms};

/// The environment variable that tells a schedule's call which tick it
/// runs for (RFC 3339, UTC), e.g. to name what it writes.
pub const TICK_VARIABLE: &str = "WASMHOST_SCHEDULE_TICK";

/// What a look for due ticks did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Looked {
    /// Calls it queued (or recorded skipped) for ticks it claimed.
    pub claimed: usize,
    /// Due ticks another node claimed first.
    pub lost: usize,
    /// The next tick to come (Unix ms), when none was due: a node looks
    /// again then, so that every node looks at the tick itself.
    pub next: Option<i64>,
}

/// Claims the due ticks of every running deployed app and queues their
/// calls (or records them skipped).
pub fn run_due(registry: &mut Registry) -> Result<Looked> {
    let now = now_ms();
    // Most looks find nothing: a read, not a write lock, tells.
    let next = registry.read(|tx| tx.next_schedule_tick())?;
    if next.is_none_or(|next| next > now) {
        return Ok(Looked {
            next,
            ..Looked::default()
        });
    }
    let looked = registry.write(|tx| {
        let mut looked = Looked::default();
        let due = tx.due_schedules(now)?;
        if due.is_empty() {
            looked.lost += 1; // claimed between the read and the write
        }
        for due in due {
            let Ok(live) = apps::deployed_app_in(tx, &due.app_id) else {
                continue;
            };
            let Some(spec) = live.manifest.functions.get(&due.function) else {
                continue;
            };
            let Some(schedule) = &spec.schedule else {
                continue;
            };
            let Some(next) = schedule.next_after(now) else {
                continue;
            };
            if !tx.advance_schedule(&due.app_id, &due.function, due.next_tick, next)? {
                looked.lost += 1;
                continue;
            }
            if now - due.next_tick > LATE_LIMIT.as_millis() as i64 {
                continue; // missed while no node served the app
            }
            let id = new_call_id();
            if tx.scheduled_run_going(&due.app_id, &due.function)? {
                tx.insert_skipped(
                    &id,
                    &due.app_id,
                    &due.function,
                    due.next_tick,
                    "was skipped: the previous tick's call was still queued or running",
                )?;
                looked.claimed += 1;
                continue;
            }
            let env = BTreeMap::from([(TICK_VARIABLE.to_owned(), format_ms(due.next_tick))]);
            tx.insert_call(&NewCall {
                id: &id,
                app_id: &due.app_id,
                function: &due.function,
                args: &[],
                env: &env,
                module: live.modules.get(&due.function).map(String::as_str),
                max_attempts: max_attempts(spec),
                running: None,
                ended: None,
                tick: Some(due.next_tick),
                kind: CallKind::Schedule,
            })?;
            looked.claimed += 1;
        }
        if looked.claimed > 0 {
            tx.notify(QUEUED)?;
        }
        Ok(looked)
    })?;
    if looked.lost > 0 {
        tracing::debug!(
            "{} due schedule tick(s) were claimed by another node first",
            looked.lost
        );
    }
    Ok(looked)
}
