//! Concurrency slots: a function's `concurrency` is the most instances of it
//! running at once across every call and process of its app (SPEC section
//! 2), not only within one `--map`.
//!
//! On one machine a slot is a file, `$WASMHOST_HOME/slots/<app id>/<function>/<i>.slot`
//! for `i` below `concurrency`, and holding it is holding an `flock` on it.
//! The kernel drops the lock when its holder's process dies however it dies,
//! so a crashed caller never keeps a slot. Every open of a slot file is its
//! own lock owner, so threads of one process exclude each other as processes
//! do. A caller waits by polling rather than blocking in `flock`, so that a
//! waiting invocation still notices Ctrl-C and `app stop` at once. Waiters
//! are not served in order.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::home::Home;

/// Longest pause between two looks for a free slot.
const MAX_POLL: Duration = Duration::from_millis(50);

/// The slots of one function of one app.
#[derive(Debug, Clone)]
pub struct Slots {
    dir: PathBuf,
    count: u32,
}

/// A held slot, given back when dropped.
pub struct Slot {
    _file: File,
}

impl Slots {
    /// Makes the slots' directory once, not at every invocation.
    pub fn new(home: &Home, app_id: &str, function: &str, count: u32) -> Result<Self> {
        let dir = home.function_slots_dir(app_id, function);
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create slot directory {}", dir.display()))?;
        Ok(Self {
            dir,
            count: count.max(1),
        })
    }

    /// Waits for a free slot; `None` if `cancelled` is set first.
    pub fn acquire(&self, cancelled: &AtomicBool) -> Result<Option<Slot>> {
        self.acquire_until(cancelled, None)
    }

    /// Waits for a free slot until `deadline`; `None` if `cancelled` is set
    /// or the deadline passes first.
    pub fn acquire_until(
        &self,
        cancelled: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<Option<Slot>> {
        // Start at a different slot each time, so waiters do not all
        // contend for slot 0 first.
        let start = random_index(self.count);
        let mut pause = Duration::from_millis(1);
        loop {
            for i in 0..self.count {
                let path = self.dir.join(format!("{}.slot", (start + i) % self.count));
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open slot file {}", path.display()))?;
                if file.try_lock().is_ok() {
                    return Ok(Some(Slot { _file: file }));
                }
            }
            if cancelled.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}

fn random_index(count: u32) -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    u32::from_le_bytes(bytes) % count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_count_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let slots = Slots::new(&home, "ap-x", "f", 2).unwrap();
        let never = AtomicBool::new(false);
        let a = slots.acquire(&never).unwrap().unwrap();
        let _b = slots.acquire(&never).unwrap().unwrap();
        // A third waits, and gives up when cancelled.
        let cancelled = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| slots.acquire(&cancelled).unwrap().is_none());
            std::thread::sleep(Duration::from_millis(100));
            assert!(!waiter.is_finished(), "a third slot was handed out");
            cancelled.store(true, Ordering::SeqCst);
            assert!(waiter.join().unwrap(), "the waiter took a slot");
        });
        drop(a);
        assert!(slots.acquire(&cancelled).unwrap().is_some());
    }
}
