//! Draining a node: it stops claiming and gives no more room to calls run
//! at once or web requests, lets running calls finish for its grace, then
//! interrupts them. Waiting for the last call is waiting on the
//! supervisor's count, which each ending call signals, not a poll.

use std::time::Instant;

use super::worker::Worker;
use crate::invoke::Stop;

impl Worker {
    /// Stops claiming and giving room; running calls go on.
    pub fn drain(&self) {
        self.drained.send_replace(true);
        self.supervisor.close();
        self.wake();
    }

    pub(super) fn is_draining(&self) -> bool {
        *self.drained.borrow()
    }

    /// Resolves once the node drains.
    pub async fn draining(&self) {
        let mut drained = self.drained.subscribe();
        let _ = drained.wait_for(|d| *d).await;
    }

    /// How many calls run here now (claimed, immediate or web).
    pub fn running_count(&self) -> usize {
        self.supervisor.count()
    }

    /// Waits until no call runs here, no later than `deadline`; false if
    /// some still do then.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        self.supervisor.wait_idle(deadline)
    }

    /// Interrupts every running call, and any that would start (the
    /// drain's grace period is over).
    pub fn interrupt_all(&self) {
        self.supervisor.stop_all(Stop::Drain);
    }
}
