//! What the claim loop does besides claiming: it queues the calls of
//! schedules whose tick has come (see `triggers::schedule`), which the same
//! look then claims like any other, and every [`HOUSEKEEPING`] it reaps
//! what dead processes and nodes left (housekeeping also prunes call
//! records, when they are due).

use std::time::{Duration, Instant};

use super::worker::Worker;
use crate::registry::{Registry, now_ms};
use crate::triggers::schedule::{self, Looked};

/// How often the node reaps what dead processes and nodes left.
const HOUSEKEEPING: Duration = Duration::from_secs(2);

impl Worker {
    /// Queues the calls of due ticks; returns how long until the next tick
    /// comes, if sooner than `most`, so that the node looks then: every
    /// node looks at a tick itself, not up to a poll later.
    pub(super) fn queue_due_schedules(&self, registry: &mut Registry, most: Duration) -> Duration {
        match schedule::run_due(registry) {
            Ok(Looked {
                next: Some(next), ..
            }) => {
                let until = u64::try_from(next - now_ms()).unwrap_or(0);
                most.min(Duration::from_millis(until))
            }
            Ok(_) => most,
            Err(e) => {
                tracing::warn!("cannot queue the calls of due schedules: {e:#}");
                most
            }
        }
    }

    /// Housekeeping, if [`HOUSEKEEPING`] has passed since `last`.
    pub(super) fn housekeeping_if_due(&self, registry: &mut Registry, last: &mut Instant) {
        if last.elapsed() >= HOUSEKEEPING {
            self.housekeeping(registry);
            *last = Instant::now();
        }
    }

    pub(super) fn housekeeping(&self, registry: &mut Registry) {
        if let Err(e) = crate::housekeeping::run(&self.home, registry) {
            tracing::warn!("housekeeping failed: {e:#}");
        }
    }
}
