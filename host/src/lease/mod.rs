//! Leases: how the next wasmhost command learns that a `run` process died
//! without stopping its app (kill -9, power loss), how a deploy tells a
//! running `call` from one whose process died, and how a cluster tells a
//! dead node from a live one. A lease is named by the id of what it keeps
//! alive: an app (`ap-…`), a call (`ca-…`), a process (`pr-…`) or a node
//! (`no-…`).
//!
//! On one machine a lease is a `flock` (see `flock`): the kernel drops it
//! the moment its process dies. Across machines no lock outlives a
//! machine's death by itself, so a cluster's leases are registry rows that
//! the owning process keeps renewing (see `heartbeat`): one whose renewals
//! stop is dead `--dead-after` later.

mod flock;
mod heartbeat;

use anyhow::Result;

use crate::home::Home;
use flock::FileLease;
use heartbeat::RowLease;

pub use heartbeat::{Timing, died_here, process_id, set_timing, timing};

/// A held lease; dropping it without [`Lease::release`] is what a crash
/// looks like: its owner is gone, and others may take it over.
pub struct Lease(Kind);

enum Kind {
    File(FileLease),
    Row(RowLease),
}

impl Lease {
    /// Takes the lease for a new id. Taken before what it keeps alive is
    /// registered, so a registered running app without a held lease is a
    /// dead one.
    pub fn acquire(home: &Home, id: &str) -> Result<Self> {
        Ok(Self(if home.is_shared() {
            Kind::Row(RowLease::acquire(home, id)?)
        } else {
            Kind::File(FileLease::acquire(home, id)?)
        }))
    }

    /// Deletes leases no live process holds whose id `is_running` does not
    /// know: a process killed before it registered its app, or a call's
    /// whose process died (its record is ended either way).
    pub fn remove_orphans(home: &Home, is_running: impl Fn(&str) -> bool) -> Result<()> {
        if home.is_shared() {
            RowLease::remove_orphans(home, is_running)
        } else {
            FileLease::remove_orphans(home, is_running)
        }
    }

    /// The ids of the leases there are, held or not.
    pub fn ids(home: &Home) -> Result<Vec<String>> {
        if home.is_shared() {
            RowLease::ids(home)
        } else {
            FileLease::ids(home)
        }
    }

    /// Takes over the lease of `id` if its owner is gone.
    pub fn take_abandoned(home: &Home, id: &str) -> Result<Option<Self>> {
        Ok(if home.is_shared() {
            RowLease::take_abandoned(home, id)?.map(|l| Self(Kind::Row(l)))
        } else {
            FileLease::take_abandoned(home, id)?.map(|l| Self(Kind::File(l)))
        })
    }

    /// Ends the lease once what it kept alive is over.
    pub fn release(self) {
        match self.0 {
            Kind::File(lease) => lease.release(),
            Kind::Row(lease) => lease.release(),
        }
    }
}

/// Whether a live process holds the lease `id`, without taking it.
pub fn is_held(home: &Home, id: &str) -> Result<bool> {
    if home.is_shared() {
        RowLease::is_held(home, id)
    } else {
        FileLease::is_held(home, id)
    }
}
