//! Fair shares of the CPU between calls. Each instance runs on a thread of
//! its own, so the kernel shares the cores between them; but a node
//! flooded with one app's spinning guests would share them equally between
//! those and another app's short requests, each of which then waits behind
//! dozens of spinners. So a guest that has run wasm for more than
//! [`LONG_RUNNING`] drops to the lowest scheduling priority (nice 19) for
//! the rest of its invocation, as a multi-level feedback queue demotes
//! long jobs: short requests, which end before that, go first, and long
//! calls still get every cycle nobody else wants.
//!
//! Counted in epoch ticks, which advance only while the guest runs wasm.
//! Priority is restored when the invocation ends, where the process may
//! raise it again (as root, or within its `RLIMIT_NICE`); where it may
//! not, the thread stays at the lower priority, which costs nothing on an
//! idle machine, until it exits.

use std::cell::Cell;
use std::time::Duration;

use super::EPOCH_TICK;

/// How long a guest runs before it yields its priority to shorter ones.
pub const LONG_RUNNING: Duration = Duration::from_millis(50);

/// The lowest priority there is.
const DEMOTED_NICE: i32 = 19;

thread_local! {
    /// The nice value this thread had before a long guest lowered it.
    static RESTORE_TO: Cell<Option<i32>> = const { Cell::new(None) };
}

/// The epoch ticks one instance has run wasm for.
#[derive(Default)]
pub struct CpuTime {
    ticks: u32,
}

impl CpuTime {
    /// Counts one more tick of running wasm, on the instance's thread.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if EPOCH_TICK * self.ticks == LONG_RUNNING {
            demote_this_thread();
        }
    }
}

fn demote_this_thread() {
    use rustix::process::{getpriority_process, setpriority_process};
    if RESTORE_TO.get().is_some() {
        return;
    }
    // On Linux, a "process" priority with no pid is the calling thread's.
    let Ok(now) = getpriority_process(None) else {
        return;
    };
    if now < DEMOTED_NICE && setpriority_process(None, DEMOTED_NICE).is_ok() {
        RESTORE_TO.set(Some(now));
    }
}

/// Gives this thread back the priority a long guest took from it, if the
/// process may.
pub fn restore_this_thread() {
    if let Some(before) = RESTORE_TO.get()
        && rustix::process::setpriority_process(None, before).is_ok()
    {
        RESTORE_TO.set(None);
    }
}
