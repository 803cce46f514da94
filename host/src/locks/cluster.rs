//! Guest locks across machines: a lock is a row of the registry's
//! `cluster_locks` (see `registry::cluster_locks`) naming the instance that
//! holds it and the lease of its process, so it excludes whatever machine
//! the other taker runs on, is freed when the instance lets go or ends,
//! and is free to take once its process's lease expires (the process or
//! its machine died).
//!
//! A waiter tries, then sleeps until a release is announced (PostgreSQL's
//! NOTIFY, heard by one LISTENing connection per process that wakes all
//! of its waiters) or a poll interval passes (a missed announcement, or a
//! dead owner's lease running out), never spinning. The registry's client
//! blocks, so each try runs on a blocking thread, and a try that wins
//! after its waiter was abandoned (a stop, a timeout) gives the lock back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot, watch};

use super::LockError;
use crate::home::Home;
use crate::lease;
use crate::registry::{LOCKS_CHANNEL, Listener, Registries, new_id};

/// How long a waiter sleeps when no release is announced before it tries
/// again: the wait for a dead owner's lease, or for a missed NOTIFY.
const POLL: Duration = Duration::from_secs(1);

/// The most tries one process makes at once, each on a connection of its
/// own: a release wakes all of its waiters, which must not need as many
/// connections as there are waiters.
const TRIES_AT_ONCE: usize = 4;

/// How long the listener waits before reconnecting after losing the
/// registry.
const RECONNECT: Duration = Duration::from_secs(1);

/// What the instances of one process share for one registry: pooled
/// connections, permits to try, and a counter its listener bumps at every
/// release.
struct Cluster {
    registries: Registries,
    tries: Arc<Semaphore>,
    released: watch::Sender<u64>,
}

impl Cluster {
    /// This process's for the registry at `url`, listening from then on.
    fn of(home: &Home, url: &str) -> Arc<Self> {
        static CLUSTERS: OnceLock<Mutex<HashMap<String, Arc<Cluster>>>> = OnceLock::new();
        let mut clusters = CLUSTERS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        clusters
            .entry(url.to_owned())
            .or_insert_with(|| {
                let (released, _) = watch::channel(0);
                let listening = released.clone();
                let url = url.to_owned();
                std::thread::Builder::new()
                    .name("wasmhost-locks".into())
                    .spawn(move || listen(&url, &listening))
                    .expect("the OS cannot start a thread");
                Arc::new(Cluster {
                    registries: Registries::new(home.clone()),
                    tries: Arc::new(Semaphore::new(TRIES_AT_ONCE)),
                    released,
                })
            })
            .clone()
    }

    /// Deletes `holder`'s row of `key`, or all its rows, waking waiters.
    /// Blocks, on a thread of its own if this one drives async tasks.
    fn release(&self, holder: &str, key: Option<&str>) -> Result<(), LockError> {
        off_runtime(|| {
            self.registries.with_sync(|registry| {
                registry.write_shared(|tx| tx.release_cluster_locks(holder, key))
            })
        })
        .map_err(|e| {
            tracing::warn!(
                "cannot release a lock in the registry ({e:#}); it is freed when this process's lease expires"
            );
            LockError::Io
        })
    }
}

/// Wakes the process's waiters at every release announced on the
/// registry at `url`, and once on every (re)connection, for what was
/// released while not listening. Runs for the life of the process.
fn listen(url: &str, released: &watch::Sender<u64>) {
    loop {
        if let Ok(mut listener) = Listener::open(url, &[LOCKS_CHANNEL]) {
            released.send_modify(|n| *n += 1);
            while let Ok(woken) = listener.wait(RECONNECT * 60) {
                if woken {
                    released.send_modify(|n| *n += 1);
                }
            }
        }
        std::thread::sleep(RECONNECT);
    }
}

/// Runs `f`, which blocks on the registry, where that may be done: the
/// blocking client panics on a thread that drives an async runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// One instance as a holder of cluster locks.
pub(super) struct Holder {
    home: Home,
    url: String,
    /// Set at the first acquire, so that an instance that never locks
    /// costs no connection.
    cluster: OnceLock<Arc<Cluster>>,
    /// This instance, in the rows of the locks it holds.
    id: String,
}

impl Holder {
    pub(super) fn new(home: &Home, url: &str) -> Self {
        Self {
            home: home.clone(),
            url: url.to_owned(),
            cluster: OnceLock::new(),
            id: new_id("in"),
        }
    }

    fn cluster(&self) -> &Arc<Cluster> {
        self.cluster
            .get_or_init(|| Cluster::of(&self.home, &self.url))
    }

    /// Waits up to `timeout` for the lock `key`, trying once at least.
    pub(super) async fn acquire(&self, key: &str, timeout: Duration) -> Result<(), LockError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut released = self.cluster().released.subscribe();
        loop {
            // Seen before trying: a release after the try wakes the wait.
            released.borrow_and_update();
            if self.try_take(key).await? {
                return Ok(());
            }
            let left = deadline.map_or(POLL, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Err(LockError::Timeout);
            }
            tokio::select! {
                // The sender lives as long as the process: never an error.
                _ = released.changed() => {}
                () = tokio::time::sleep(left.min(POLL)) => {}
            }
        }
    }

    /// One try at `key`, on a blocking thread.
    async fn try_take(&self, key: &str) -> Result<bool, LockError> {
        let (answer, taken) = oneshot::channel();
        let (home, cluster, holder, key) = (
            self.home.clone(),
            self.cluster().clone(),
            self.id.clone(),
            key.to_owned(),
        );
        let Ok(permit) = cluster.tries.clone().acquire_owned().await else {
            return Err(LockError::Io);
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let fence = cluster.registries.with_sync(|registry| {
                let owner = lease::process_id(&home)?;
                registry.write_shared(|tx| {
                    tx.take_cluster_lock(&key, &holder, &owner, |other| {
                        lease::died_here(&home, other).unwrap_or(false)
                    })
                })
            });
            if let Err(Ok(Some(_))) = answer.send(fence) {
                // The waiter was abandoned while this ran: not its lock.
                let _ = cluster.release(&holder, Some(&key));
            }
        });
        match taken.await {
            Ok(Ok(fence)) => Ok(fence.is_some()),
            Ok(Err(e)) => {
                tracing::warn!("cannot take a lock in the registry: {e:#}");
                Err(LockError::Io)
            }
            Err(_) => Err(LockError::Io),
        }
    }

    /// Releases `key`, or every lock this instance holds.
    pub(super) fn release(&self, key: Option<&str>) -> Result<(), LockError> {
        self.cluster().release(&self.id, key)
    }
}
