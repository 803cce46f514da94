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
    /// Room kept for calls about to be claimed (see [`Reservation`]).
    reserved: usize,
}

impl State {
    /// The room taken: calls watched and room kept for claims.
    fn taken(&self) -> usize {
        self.calls.len() + self.reserved
    }

    fn of_app(&self, app_id: &str) -> usize {
        self.calls.values().filter(|c| c.app_id == app_id).count()
    }
}

/// How many calls a node runs at once: `most` in all (its `--max-calls`),
/// and at most `per_app` of any one app, so that one app's flood leaves
/// room for the others.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub most: usize,
    pub per_app: usize,
}

/// A call the supervisor watches, until this is dropped: however the
/// thread that runs it ends, a panic included, its room is given back.
pub struct Watch {
    supervisor: Arc<Supervisor>,
    /// The call's id (or, for invocations recorded as no one call, app id).
    id: String,
    stop: StopFlag,
}

impl Watch {
    pub fn stop(&self) -> &StopFlag {
        &self.stop
    }

    /// The id of the call watched.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.supervisor.forget(&self.id);
    }
}

/// Room kept for calls about to be claimed; what is not turned into a
/// [`Watch`] is given back when this is dropped.
pub struct Reservation {
    supervisor: Arc<Supervisor>,
    left: usize,
}

impl Reservation {
    /// How many calls the room kept is for.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Watches call `call_id` of app `app_id` in one of the places kept.
    pub fn watch(&mut self, app_id: &str, call_id: &str) -> Watch {
        assert!(
            self.left > 0,
            "a reservation watched more calls than it kept room for"
        );
        self.left -= 1;
        let mut state = self.supervisor.state();
        state.reserved -= 1;
        self.supervisor.insert(&mut state, app_id, Some(call_id))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.supervisor.state().reserved -= self.left;
        self.supervisor.changed.notify_all();
    }
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
    /// this process runs of the app) for as long as the [`Watch`] lives,
    /// whatever room is left: for a process that runs only its own calls.
    pub fn watch(self: &Arc<Self>, app_id: &str, call_id: Option<&str>) -> Watch {
        let mut state = self.state();
        self.insert(&mut state, app_id, call_id)
    }

    /// Watches call `call_id` of app `app_id` once there is [`Room`] for
    /// it, waiting no later than `deadline`. The room is taken in the
    /// same step as it is found, so callers racing for the last of it never
    /// both get it. None if there is none by then, or no room is given any
    /// more (a drain).
    pub fn admit(
        self: &Arc<Self>,
        app_id: &str,
        call_id: &str,
        room: Room,
        deadline: Instant,
    ) -> Option<Watch> {
        let mut state = self.wait_until(deadline, |state| {
            state.closed || (state.taken() < room.most && state.of_app(app_id) < room.per_app)
        })?;
        if state.closed {
            return None;
        }
        Some(self.insert(&mut state, app_id, Some(call_id)))
    }

    /// Keeps room for up to `wanted` calls (of what `most` leaves), for
    /// calls claimed from the queue: found before they are claimed, so
    /// that no request takes it meanwhile.
    pub fn reserve(self: &Arc<Self>, most: usize, wanted: usize) -> Reservation {
        let mut state = self.state();
        let left = if state.closed {
            0
        } else {
            most.saturating_sub(state.taken()).min(wanted)
        };
        state.reserved += left;
        Reservation {
            supervisor: self.clone(),
            left,
        }
    }

    fn insert(self: &Arc<Self>, state: &mut State, app_id: &str, call_id: Option<&str>) -> Watch {
        let stop = StopFlag::new();
        if let Some(why) = state.stopping {
            stop.stop(why);
        }
        let id = call_id.unwrap_or(app_id).to_owned();
        state.calls.insert(
            id.clone(),
            Watched {
                app_id: app_id.to_owned(),
                call_id: call_id.map(str::to_owned),
                stop: stop.clone(),
            },
        );
        Watch {
            supervisor: self.clone(),
            id,
            stop,
        }
    }

    /// Ends the watch of call `id` (or app id), making room for another.
    fn forget(&self, id: &str) {
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
        assert_eq!(before.stop().cause(), Some(Stop::Drain));
        assert_eq!(after.stop().cause(), Some(Stop::Drain));
    }

    const ROOM: Room = Room {
        most: 2,
        per_app: 1,
    };

    #[test]
    fn an_ending_call_makes_room_at_once() {
        let supervisor = Supervisor::new();
        let first = supervisor.admit("ap-a", "ca-1", ROOM, Instant::now());
        assert!(first.is_some());
        let far = Instant::now() + Duration::from_secs(30);
        assert!(
            supervisor
                .admit("ap-a", "ca-2", ROOM, Instant::now())
                .is_none()
        );
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let started = Instant::now();
                let watch = supervisor.admit("ap-a", "ca-2", ROOM, far);
                (watch.is_some(), started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(50));
            drop(first);
            let (room, waited) = waiter.join().unwrap();
            assert!(room && waited < Duration::from_secs(5), "{waited:?}");
        });
        assert!(supervisor.wait_idle(Instant::now()));
        supervisor.close();
        assert!(
            supervisor.admit("ap-a", "ca-3", ROOM, far).is_none(),
            "a closed supervisor gives no room"
        );
    }

    #[test]
    fn one_app_cannot_take_the_room_of_others() {
        let supervisor = Supervisor::new();
        let _a = supervisor
            .admit("ap-a", "ca-1", ROOM, Instant::now())
            .unwrap();
        assert!(
            supervisor
                .admit("ap-a", "ca-2", ROOM, Instant::now())
                .is_none()
        );
        let _b = supervisor
            .admit("ap-b", "ca-3", ROOM, Instant::now())
            .unwrap();
        assert!(
            supervisor
                .admit("ap-c", "ca-4", ROOM, Instant::now())
                .is_none()
        );
    }

    #[test]
    fn room_is_taken_in_the_step_that_finds_it() {
        let supervisor = Supervisor::new();
        let room = Room {
            most: 3,
            per_app: 3,
        };
        let far = Instant::now() + Duration::from_millis(300);
        let barrier = std::sync::Barrier::new(16);
        let admitted: Vec<Option<Watch>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..16)
                .map(|i| {
                    let (supervisor, barrier) = (&supervisor, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        supervisor.admit("ap-a", &format!("ca-{i}"), room, far)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(admitted.iter().flatten().count(), 3);
        assert_eq!(supervisor.count(), 3);
    }

    #[test]
    fn reserved_room_is_kept_from_others_until_given_back() {
        let supervisor = Supervisor::new();
        let mut kept = supervisor.reserve(2, 5);
        assert_eq!(kept.left(), 2);
        let _claimed = kept.watch("ap-a", "ca-1");
        assert!(
            supervisor
                .admit("ap-b", "ca-2", ROOM, Instant::now())
                .is_none()
        );
        drop(kept);
        assert!(
            supervisor
                .admit("ap-b", "ca-2", ROOM, Instant::now())
                .is_some()
        );
    }

    #[test]
    fn a_panicking_call_gives_its_room_back() {
        let supervisor = Supervisor::new();
        let panicked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _watch = supervisor.admit("ap-a", "ca-1", ROOM, Instant::now());
                    panic!("a bug while serving");
                })
                .join()
        });
        assert!(panicked.is_err());
        assert_eq!(supervisor.count(), 0);
    }
}
