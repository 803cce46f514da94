//! Leases across machines: rows in the registry's `leases` table that their
//! process renews every heartbeat (default 5 s) and that count as dead once
//! a renewal is `dead_after` (default 15 s) late. Times are the PostgreSQL
//! server's, so machines' clocks need not agree.
//!
//! Every process of a cluster that holds leases has one of its own
//! (`pr-…`, [`process_id`]) and owns the others it takes; one statement a
//! heartbeat renews them all. A thread of the process does that on a
//! registry connection of its own.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use super::flock::FileLease;
use crate::home::Home;
use crate::registry::{Registry, new_id};

/// How often a process renews its leases, and how late a renewal may be
/// before its leases count as dead.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub dead_after: Duration,
}

static TIMING: Mutex<Option<Timing>> = Mutex::new(None);

/// Sets this process's timing, before it takes any lease (`serve
/// --heartbeat --dead-after`); other processes read
/// `$WASMHOST_HEARTBEAT` and `$WASMHOST_DEAD_AFTER`, or take the defaults.
pub fn set_timing(timing: Timing) {
    *TIMING.lock().unwrap_or_else(|e| e.into_inner()) = Some(timing);
}

pub fn timing() -> Timing {
    let mut chosen = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    *chosen.get_or_insert_with(|| {
        let read = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(Duration::from_secs(default))
        };
        Timing {
            heartbeat: read("WASMHOST_HEARTBEAT", 5),
            dead_after: read("WASMHOST_DEAD_AFTER", 15),
        }
    })
}

/// This process's lease, which its heartbeat thread renews with the others
/// it owns; made when the process takes its first lease.
struct Process {
    id: String,
    registry: Mutex<Registry>,
    /// The same lease as a `flock` in this machine's home, so that a death
    /// on this machine is seen at once here rather than `dead_after` later.
    _local: FileLease,
}

static PROCESS: Mutex<Option<&'static Process>> = Mutex::new(None);

fn process(home: &Home) -> Result<&'static Process> {
    let mut slot = PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(process) = *slot {
        return Ok(process);
    }
    let id = new_id("pr");
    let local = FileLease::acquire(home, &id)?;
    let mut registry = Registry::open(&home.registry())?;
    registry.write_shared(|tx| tx.take_lease(&id, &id, dead_after_ms()).map(drop))?;
    let process: &'static Process = Box::leak(Box::new(Process {
        id,
        registry: Mutex::new(registry),
        _local: local,
    }));
    std::thread::Builder::new()
        .name("wasmhost-heartbeat".into())
        .spawn(move || beat(process))?;
    *slot = Some(process);
    Ok(process)
}

/// A connection for looking at leases, which needs no lease of one's own.
static READER: Mutex<Option<Registry>> = Mutex::new(None);

fn with_reader<T>(home: &Home, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
    let mut slot = READER.lock().unwrap_or_else(|e| e.into_inner());
    let registry = match &mut *slot {
        Some(registry) => registry,
        None => slot.insert(Registry::open(&home.registry())?),
    };
    f(registry)
}

/// Renews the process's leases every heartbeat, for as long as it lives.
/// A renewal that fails (the registry is unreachable) is tried again at
/// the next beat; past `dead_after`, other machines take the leases over.
fn beat(process: &'static Process) {
    let Timing {
        heartbeat,
        dead_after,
    } = timing();
    loop {
        std::thread::sleep(heartbeat);
        let renewed = process
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_shared(|tx| tx.renew_leases(&process.id, dead_after.as_millis() as i64));
        if let Err(e) = renewed {
            tracing::warn!("cannot renew this process's leases: {e:#}");
        }
    }
}

fn with_registry<T>(home: &Home, f: impl FnOnce(&mut Registry, &str) -> Result<T>) -> Result<T> {
    let process = process(home)?;
    let mut registry = process.registry.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut registry, &process.id)
}

/// The id of this process's own lease, live while the process is.
pub fn process_id(home: &Home) -> Result<String> {
    Ok(process(home)?.id.clone())
}

/// Whether process lease `owner` belonged to a process of this machine
/// (its local half is in this home) that has died (no one holds that).
pub fn died_here(home: &Home, owner: &str) -> Result<bool> {
    Ok(home.lease_file(owner).exists() && !FileLease::is_held(home, owner)?)
}

fn dead_after_ms() -> i64 {
    timing().dead_after.as_millis() as i64
}

/// A lease row this process renews.
pub(super) struct RowLease {
    id: String,
    home: Home,
    released: bool,
}

impl RowLease {
    pub(super) fn acquire(home: &Home, id: &str) -> Result<Self> {
        Self::take_abandoned(home, id)?
            .ok_or_else(|| anyhow::anyhow!("lease {id} is held by another process"))
    }

    pub(super) fn take_abandoned(home: &Home, id: &str) -> Result<Option<Self>> {
        let taken = with_registry(home, |registry, me| {
            registry.write_shared(|tx| {
                if tx.take_lease(id, me, dead_after_ms())? {
                    return Ok(true);
                }
                match tx.lease_owner(id)? {
                    Some(owner) if died_here(home, &owner)? => {
                        tx.take_lease_from(id, &owner, me, dead_after_ms())
                    }
                    _ => Ok(false),
                }
            })
        })?;
        Ok(taken.then(|| Self {
            id: id.to_owned(),
            home: home.clone(),
            released: false,
        }))
    }

    pub(super) fn remove_orphans(home: &Home, is_running: impl Fn(&str) -> bool) -> Result<()> {
        with_reader(home, |registry| {
            let leases = registry.read(|tx| tx.leases())?;
            // The local halves of processes' leases (`pr-…`) that no live
            // process holds are of the dead; kept while their rows live,
            // since they are what tells others here so before the rows
            // expire.
            FileLease::remove_orphans(home, |id| {
                leases
                    .iter()
                    .any(|(lease, expired)| lease == id && !expired)
            })?;
            let orphans: Vec<&String> = leases
                .iter()
                .filter(|(id, expired)| *expired && !is_running(id))
                .map(|(id, _)| id)
                .collect();
            if orphans.is_empty() {
                return Ok(());
            }
            registry.write_shared(|tx| {
                for id in &orphans {
                    tx.delete_expired_lease(id)?;
                }
                Ok(())
            })
        })
    }

    pub(super) fn ids(home: &Home) -> Result<Vec<String>> {
        let leases = with_reader(home, |registry| registry.read(|tx| tx.leases()))?;
        Ok(leases.into_iter().map(|(id, _)| id).collect())
    }

    pub(super) fn is_held(home: &Home, id: &str) -> Result<bool> {
        let owner = with_reader(home, |registry| registry.read(|tx| tx.live_lease_owner(id)))?;
        match owner {
            Some(owner) => Ok(!died_here(home, &owner)?),
            None => Ok(false),
        }
    }

    pub(super) fn release(mut self) {
        self.released = true;
        let _ = with_registry(&self.home, |registry, _| {
            registry.write_shared(|tx| tx.delete_lease(&self.id))
        });
    }
}

impl Drop for RowLease {
    /// A lease dropped unreleased is abandoned at once, as a `flock` is
    /// when its file closes: it stops being renewed and counts as dead.
    fn drop(&mut self) {
        if !self.released {
            let _ = with_registry(&self.home, |registry, _| {
                registry.write_shared(|tx| tx.abandon_lease(&self.id))
            });
        }
    }
}
