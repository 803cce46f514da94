//! Supervising calls while they run, for a `wasmhost call` or `run` process
//! and for a node alike. Every call has a [`StopFlag`], which its instance
//! (through the runtime's epoch callback) and its wait for a concurrency
//! slot watch. A stop comes from a signal (the caller's to catch), from the
//! registry (its app stopped, the call cancelled: [`Supervisor::look`]) or
//! from a drain ([`Supervisor::stop_all`]); the function's `timeout` is the
//! runtime's. The first cause asked for is the one the call ends with.
//!
//! The supervisor also counts the calls it watches, so that a node waits
//! for room, or for its last call on a drain, on a condition variable that
//! each ending call signals rather than by polling the count.
//!
//! Fencing (a node that lost its lease must stop its calls) is one more
//! [`Stop`] and one more caller of [`Supervisor::stop_all`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::Stop;
use crate::home::Home;
use crate::registry::{AppState, CallState, Registry};

/// How often a process that runs calls of its own asks the registry
/// whether they were stopped elsewhere.
pub const STOP_POLL: Duration = Duration::from_millis(100);

/// Set to stop a call, remembering why.
#[derive(Clone, Default)]
pub struct StopFlag {
    /// What the runtime and a wait for a slot look at.
    flag: Arc<AtomicBool>,
    cause: Arc<OnceLock<Stop>>,
}

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the call; the first cause given is the one kept.
    pub fn stop(&self, why: Stop) {
        let _ = self.cause.set(why);
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Why the call was stopped, once it was.
    pub fn cause(&self) -> Option<Stop> {
        self.cause.get().copied()
    }

    /// The flag the runtime's instances and slot waits poll.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }
}

/// A call the supervisor watches.
struct Watched {
    app_id: String,
    call_id: Option<String>,
    stop: StopFlag,
}

#[derive(Default)]
struct State {
    /// By call id (or, for invocations recorded as no one call, app id).
    calls: BTreeMap<String, Watched>,
    /// No room is given any more (the node drains).
    closed: bool,
    /// Every call is being stopped, those watched later too.
    stopping: Option<Stop>,
}

/// The calls running in this process, each with its stop flag.
#[derive(Default)]
pub struct Supervisor {
    state: Mutex<State>,
    /// Signalled when a call ends, or on a drain.
    changed: Condvar,
}

impl Supervisor {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches call `call_id` of app `app_id` (without a call id: whatever
    /// this process runs of the app) until [`Supervisor::forget`]; returns
    /// its flag, stopped already if every call is being stopped.
    pub fn watch(&self, app_id: &str, call_id: Option<&str>) -> StopFlag {
        let stop = StopFlag::new();
        let mut state = self.state();
        if let Some(why) = state.stopping {
            stop.stop(why);
        }
        state.calls.insert(
            call_id.unwrap_or(app_id).to_owned(),
            Watched {
                app_id: app_id.to_owned(),
                call_id: call_id.map(str::to_owned),
                stop: stop.clone(),
            },
        );
        stop
    }

    /// Ends the watch of call `id` (or app id), making room for another.
    pub fn forget(&self, id: &str) {
        self.state().calls.remove(id);
        self.changed.notify_all();
    }

    pub fn count(&self) -> usize {
        self.state().calls.len()
    }

    /// Gives no room any more: waits for it end at once.
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_all();
    }

    /// Stops every call watched, now and from now on.
    pub fn stop_all(&self, why: Stop) {
        let mut state = self.state();
        state.stopping.get_or_insert(why);
        for call in state.calls.values() {
            call.stop.stop(why);
        }
    }

    /// Waits until fewer than `most` calls are watched, no later than
    /// `deadline`; false if there are still as many then, or no room is
    /// given any more.
    pub fn wait_for_room(&self, most: usize, deadline: Instant) -> bool {
        self.wait_until(deadline, |state| state.closed || state.calls.len() < most)
            .is_some_and(|state| !state.closed)
    }

    /// Waits until no call is watched, no later than `deadline`; false if
    /// some still are then.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, |state| state.calls.is_empty())
            .is_some()
    }

    /// The state once `ready` holds of it, or None if it does not by
    /// `deadline`.
    fn wait_until(
        &self,
        deadline: Instant,
        ready: impl Fn(&State) -> bool,
    ) -> Option<MutexGuard<'_, State>> {
        let mut state = self.state();
        loop {
            if ready(&state) {
                return Some(state);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the calls whose app was stopped (or is gone), or which were
    /// cancelled, from anywhere; returns the stops it made.
    pub fn look(&self, registry: &mut Registry) -> Vec<Stop> {
        let watched: Vec<(String, Option<String>, StopFlag)> = self
            .state()
            .calls
            .values()
            .filter(|call| !call.stop.is_stopped())
            .map(|call| (call.app_id.clone(), call.call_id.clone(), call.stop.clone()))
            .collect();
        if watched.is_empty() {
            return Vec::new();
        }
        let stops = registry.read(|tx| {
            let mut stops = Vec::new();
            for (app_id, call_id, _) in &watched {
                let app_stopped = tx.app(app_id)?.is_none_or(|a| a.state == AppState::Stopped);
                let cancelled = match call_id {
                    Some(id) => tx
                        .call(id)?
                        .is_some_and(|c| c.state == CallState::Cancelled),
                    None => false,
                };
                stops.push(match (app_stopped, cancelled) {
                    (true, _) => Some(Stop::AppStopped),
                    (false, true) => Some(Stop::CallCancelled),
                    (false, false) => None,
                });
            }
            Ok(stops)
        });
        let Ok(stops) = stops else { return Vec::new() };
        let mut made = Vec::new();
        for ((_, _, flag), stop) in watched.iter().zip(stops) {
            if let Some(why) = stop {
                flag.stop(why);
                made.push(why);
            }
        }
        made
    }

    /// [`Supervisor::look`] with a registry of its own, asked now rather
    /// than at a watcher's next poll: an invocation can fail because of a
    /// stop (its volumes trashed under it) before the watcher has seen it.
    pub fn look_now(&self, home: &Home) -> Option<Stop> {
        let mut registry = Registry::open(&home.registry()).ok()?;
        self.look(&mut registry).into_iter().next()
    }

    /// Looks every [`STOP_POLL`] on a thread of its own, for a process
    /// with nothing else to look for stops, until one is found (which goes
    /// to `on_stop`) or the supervisor is dropped.
    pub fn watch_registry(
        self: &Arc<Self>,
        home: &Home,
        on_stop: impl Fn(Stop) + Send + 'static,
    ) -> Result<()> {
        let mut registry = Registry::open(&home.registry())?;
        let supervisor: Weak<Self> = Arc::downgrade(self);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(STOP_POLL);
                let Some(supervisor) = supervisor.upgrade() else {
                    return;
                };
                if let Some(why) = supervisor.look(&mut registry).into_iter().next() {
                    on_stop(why);
                    return;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cause_is_kept() {
        let stop = StopFlag::new();
        assert!(!stop.is_stopped() && stop.cause().is_none());
        stop.stop(Stop::CallCancelled);
        stop.stop(Stop::Drain);
        assert!(stop.is_stopped());
        assert_eq!(stop.cause(), Some(Stop::CallCancelled));
    }

    #[test]
    fn stop_all_stops_the_calls_watched_now_and_later() {
        let supervisor = Supervisor::new();
        let before = supervisor.watch("ap-a", Some("ca-1"));
        supervisor.stop_all(Stop::Drain);
        let after = supervisor.watch("ap-a", Some("ca-2"));
        assert_eq!(before.cause(), Some(Stop::Drain));
        assert_eq!(after.cause(), Some(Stop::Drain));
    }

    #[test]
    fn an_ending_call_makes_room_at_once() {
        let supervisor = Supervisor::new();
        supervisor.watch("ap-a", Some("ca-1"));
        let far = Instant::now() + Duration::from_secs(30);
        assert!(!supervisor.wait_for_room(1, Instant::now()));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let started = Instant::now();
                (supervisor.wait_for_room(1, far), started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(50));
            supervisor.forget("ca-1");
            let (room, waited) = waiter.join().unwrap();
            assert!(room && waited < Duration::from_secs(5), "{waited:?}");
        });
        assert!(supervisor.wait_idle(Instant::now()));
        supervisor.close();
        assert!(
            !supervisor.wait_for_room(1, far),
            "a closed supervisor gives no room"
        );
    }
}
