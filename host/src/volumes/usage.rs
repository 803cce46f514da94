//! What each volume holds (bytes and files) and what it may hold (its
//! quota), kept as it changes and shared by every process on this machine.
//!
//! Each volume has a usage file, `usage/<volume id>`, mapped into every
//! process that writes the volume: a few 64-bit counters changed with atomic
//! operations, so a reservation is one compare-and-swap however many
//! instances and processes write at once, and two of them can never take the
//! same room twice. The registry holds the quota as the user set it; the
//! file holds a copy that writers read on every reservation, so `volume set`
//! reaches running instances at once.
//!
//! What is counted: `files` is every entry beneath the volume's root (files,
//! directories, links); `bytes` is the apparent size (`st_size`) of its
//! regular files, a file with several hard links counted once. Growth is
//! reserved *before* it happens and shrinkage given back *after*, so a
//! process that dies in between leaves the count too high, never too low.
//!
//! When the count is recounted (a depth-safe walk, see [`count`]): whenever a
//! process opens the file and no other process has it open (an exclusive
//! `flock` succeeds), and either a process that had it open did not close
//! it (it died: its open is still counted in [`Slot::Users`]), or a writer
//! marked the count as possibly high ([`Slot::Stale`]: it grew a file that
//! was no longer linked, or two writers raced on one file), or the file is
//! new (a volume of a release before usage, or a first use). `volume list`
//! and `volume info` open it that way, so they show an exact count whenever
//! nothing runs on the volume.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use rustix::fs::{FileType, Stat};

use super::walk::{self, Cursor, Visitor, WalkError};
use crate::home::Home;
use crate::manifest::Quota;

/// Marks a usage file whose counts were set by a count (not a fresh file).
const MAGIC: u64 = 0x7761_736d_7573_6531; // "wasmuse1"
/// No quota: a reservation never fails.
const UNLIMITED: u64 = u64::MAX;
/// The mapped size of a usage file: one page.
const FILE_SIZE: usize = 4096;

/// The counters of a usage file, one `u64` each.
#[derive(Clone, Copy)]
enum Slot {
    Magic = 0,
    Bytes = 1,
    Files = 2,
    MaxBytes = 3,
    MaxFiles = 4,
    /// Opens not yet closed: non-zero with no process holding the file
    /// means one died holding it.
    Users = 5,
    /// Non-zero when the count may be high; the next exclusive open
    /// recounts.
    Stale = 6,
}

/// A volume's usage as counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub bytes: u64,
    pub files: u64,
}

/// A reservation refused: it would take the volume past its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the volume's quota has no room for it")]
pub struct NoRoom;

/// An open usage file. Holding it keeps a shared `flock`, so no other
/// process recounts while this one writes.
pub struct Usage {
    map: NonNull<AtomicU64>,
    file: File,
}

// SAFETY: the mapping is only ever accessed through atomics, and lives as
// long as the struct.
unsafe impl Send for Usage {}
unsafe impl Sync for Usage {}

impl Usage {
    /// Opens the usage of volume `volume_id`, recounting it first if it may
    /// be stale (see the module's header). `quota` is written to a file
    /// that has none yet (a new one); an existing file keeps its own, which
    /// `set_quota` changes.
    pub fn open(home: &Home, volume_id: &str, quota: Quota) -> Result<Self> {
        let path = home.volume_usage_file(volume_id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the usage file {}", path.display()))?;
        if file.metadata()?.len() < FILE_SIZE as u64 {
            file.set_len(FILE_SIZE as u64)?;
        }
        let usage = Self {
            map: map(&file).with_context(|| format!("cannot map {}", path.display()))?,
            file,
        };
        if usage.file.try_lock().is_ok() {
            if usage.get(Slot::Magic) != MAGIC {
                usage.store_quota(quota);
            }
            if usage.get(Slot::Magic) != MAGIC
                || usage.get(Slot::Users) != 0
                || usage.get(Slot::Stale) != 0
            {
                let counts = count(&home.volume_dir(volume_id))
                    .with_context(|| format!("cannot count the usage of volume {volume_id}"))?;
                usage
                    .slot(Slot::Bytes)
                    .store(counts.bytes, Ordering::SeqCst);
                usage
                    .slot(Slot::Files)
                    .store(counts.files, Ordering::SeqCst);
                usage.slot(Slot::Users).store(0, Ordering::SeqCst);
                usage.slot(Slot::Stale).store(0, Ordering::SeqCst);
                usage.slot(Slot::Magic).store(MAGIC, Ordering::SeqCst);
            }
        }
        // Shared from here on (converting an exclusive lock, or waiting
        // for a recount elsewhere to end).
        usage.file.lock_shared()?;
        usage.slot(Slot::Users).fetch_add(1, Ordering::SeqCst);
        Ok(usage)
    }

    fn slot(&self, slot: Slot) -> &AtomicU64 {
        // SAFETY: the page holds FILE_SIZE / 8 counters; every slot is
        // below that, and the mapping lives as long as `self`.
        unsafe { &*self.map.as_ptr().add(slot as usize) }
    }

    fn get(&self, slot: Slot) -> u64 {
        self.slot(slot).load(Ordering::SeqCst)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            bytes: self.get(Slot::Bytes),
            files: self.get(Slot::Files),
        }
    }

    pub fn quota(&self) -> Quota {
        let limit = |slot| Some(self.get(slot)).filter(|&max| max != UNLIMITED);
        Quota {
            max_bytes: limit(Slot::MaxBytes),
            max_files: limit(Slot::MaxFiles),
        }
    }

    /// Makes `quota` the one writers check from now on.
    pub fn set_quota(&self, quota: Quota) {
        self.store_quota(quota);
    }

    fn store_quota(&self, quota: Quota) {
        let store = |slot, max: Option<u64>| {
            self.slot(slot)
                .store(max.unwrap_or(UNLIMITED), Ordering::SeqCst)
        };
        store(Slot::MaxBytes, quota.max_bytes);
        store(Slot::MaxFiles, quota.max_files);
    }

    /// Takes room for `bytes` more bytes and `files` more files, or none of
    /// it if either would pass the quota. Nothing is ever refused for
    /// growing by zero, so a volume over a lowered quota still shrinks and
    /// rewrites in place.
    pub fn reserve(&self, bytes: u64, files: u64) -> Result<(), NoRoom> {
        self.note_concurrency();
        add_within(self.slot(Slot::Files), files, self.get(Slot::MaxFiles))?;
        if let Err(e) = add_within(self.slot(Slot::Bytes), bytes, self.get(Slot::MaxBytes)) {
            self.release(0, files);
            return Err(e);
        }
        Ok(())
    }

    /// Counts growth that already happened, quota or not: what a writer
    /// finds it used beyond what it reserved (a race with another writer).
    pub fn charge(&self, bytes: u64, files: u64) {
        self.slot(Slot::Bytes).fetch_add(bytes, Ordering::SeqCst);
        self.slot(Slot::Files).fetch_add(files, Ordering::SeqCst);
    }

    /// Gives back room: what was reserved but not used, or what was freed.
    pub fn release(&self, bytes: u64, files: u64) {
        self.note_concurrency();
        sub_saturating(self.slot(Slot::Bytes), bytes);
        sub_saturating(self.slot(Slot::Files), files);
    }

    /// Moves the count by a signed number of bytes, quota or not.
    pub fn settle(&self, reserved: u64, used: u64) {
        if used > reserved {
            self.charge(used - reserved, 0);
        } else {
            self.release(reserved - used, 0);
        }
    }

    /// Marks the count for a recount when others have the volume open too:
    /// a writer reckons growth and shrinkage from what it saw just before
    /// its call, and two writers changing one file at once can each reckon
    /// the same change (two creates of one name, two truncates of one
    /// file). One atomic load when nothing else writes the volume.
    fn note_concurrency(&self) {
        if self.shared() && self.get(Slot::Stale) == 0 {
            self.mark_stale();
        }
    }

    /// Whether another open (an instance, a process) has the usage too:
    /// alone, a writer races with no one.
    pub fn shared(&self) -> bool {
        self.get(Slot::Users) > 1
    }

    /// Says the count may be off: the next exclusive open recounts.
    pub fn mark_stale(&self) {
        self.slot(Slot::Stale).store(1, Ordering::SeqCst);
    }

    /// Takes the file `inode`'s turn to be changed, if no other writer of
    /// this volume (in this process or another) has it: `Ok(false)` if one
    /// does. A writer that measures a file, changes it and settles what it
    /// changed within its turn sees the size the change starts from, so
    /// two writers truncating and rewriting one file count each change
    /// once, and the count stays exact while they run instead of drifting
    /// until a recount. A turn is a one-byte open-file-description lock of
    /// the usage file past its counters, at the inode's offset: held per
    /// open of the usage file (each instance opens its own), let go by
    /// [`Usage::end_file_turn`] or when the file is closed.
    pub fn try_file_turn(&self, inode: u64) -> io::Result<bool> {
        match self.lock_byte(inode, libc::F_WRLCK as i16) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ends a turn [`Usage::try_file_turn`] took.
    pub fn end_file_turn(&self, inode: u64) {
        // Failing, it stays held until the usage file is closed: a later
        // turn of the file only waits for that.
        let _ = self.lock_byte(inode, libc::F_UNLCK as i16);
    }

    fn lock_byte(&self, inode: u64, kind: i16) -> io::Result<()> {
        // SAFETY: `flock` is plain data; all zeroes is a valid value.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind;
        lock.l_whence = libc::SEEK_SET as i16;
        lock.l_start = (FILE_SIZE as u64)
            .saturating_add(inode)
            .min(i64::MAX as u64) as i64;
        lock.l_len = 1;
        // SAFETY: an OFD lock request on a descriptor this struct owns,
        // with a valid `flock`.
        match unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        sub_saturating(self.slot(Slot::Users), 1);
        // SAFETY: `map` came from mmap of FILE_SIZE bytes and is unmapped
        // once, here.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), FILE_SIZE);
        }
    }
}

fn map(file: &File) -> io::Result<NonNull<AtomicU64>> {
    // SAFETY: a shared mapping of a file at least FILE_SIZE long, which
    // stays valid until munmap whatever happens to the descriptor.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FILE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

fn add_within(counter: &AtomicU64, amount: u64, max: u64) -> Result<(), NoRoom> {
    if amount == 0 {
        return Ok(());
    }
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
            current.checked_add(amount).filter(|&next| next <= max)
        })
        .map(drop)
        .map_err(|_| NoRoom)
}

fn sub_saturating(counter: &AtomicU64, amount: u64) {
    if amount == 0 {
        return;
    }
    let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
        Some(current.saturating_sub(amount))
    });
}

/// Counts what is beneath `dir` as usage counts it: depth-safe, never
/// through a link (see [`walk`](super::walk)).
pub fn count(dir: &Path) -> Result<Counts, WalkError> {
    let cursor = Cursor::open(dir).map_err(|e| WalkError::new(dir.to_owned(), e))?;
    count_at(cursor)
}

/// [`count`] from an open cursor.
pub fn count_at(cursor: Cursor) -> Result<Counts, WalkError> {
    let mut counter = Counter::default();
    walk::walk(cursor, &mut counter)?;
    Ok(counter.counts)
}

/// What one file or link adds to a count (a directory adds one file).
pub fn counts_of(stat: &Stat, seen: &mut HashSet<(u64, u64)>) -> Counts {
    let regular = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile;
    let first = stat.st_nlink <= 1 || seen.insert((stat.st_dev, stat.st_ino));
    Counts {
        bytes: if regular && first {
            stat.st_size as u64
        } else {
            0
        },
        files: 1,
    }
}

#[derive(Default)]
struct Counter {
    counts: Counts,
    /// Files with several links met so far, to count their bytes once.
    seen: HashSet<(u64, u64)>,
}

impl Visitor for Counter {
    type Error = WalkError;

    fn entry(&mut self, _dir: &Cursor, _name: &OsStr, stat: &Stat) -> Result<(), WalkError> {
        let counts = counts_of(stat, &mut self.seen);
        self.counts.bytes += counts.bytes;
        self.counts.files += counts.files;
        Ok(())
    }

    fn enter(&mut self, _dir: &Cursor, _name: &OsStr) -> Result<(), WalkError> {
        self.counts.files += 1;
        Ok(())
    }

    fn leave(&mut self, _dir: &Cursor, _name: &OsStr) -> Result<(), WalkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_quota_and_zero_always_fits() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        std::fs::create_dir(home.volume_dir("vo-1")).unwrap();
        let quota = Quota {
            max_bytes: Some(100),
            max_files: Some(2),
        };
        let usage = Usage::open(&home, "vo-1", quota).unwrap();
        assert_eq!(usage.reserve(60, 1), Ok(()));
        assert_eq!(usage.reserve(41, 0), Err(NoRoom));
        assert_eq!(usage.reserve(40, 1), Ok(()));
        assert_eq!(usage.reserve(0, 1), Err(NoRoom));
        assert_eq!(
            usage.counts(),
            Counts {
                bytes: 100,
                files: 2
            }
        );
        usage.set_quota(Quota {
            max_bytes: Some(10),
            max_files: None,
        });
        assert_eq!(usage.reserve(1, 0), Err(NoRoom));
        assert_eq!(usage.reserve(0, 5), Ok(()));
        usage.release(100, 7);
        assert_eq!(usage.counts(), Counts::default());
    }

    #[test]
    fn a_file_has_one_writer_at_a_time_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        std::fs::create_dir(home.volume_dir("vo-1")).unwrap();
        let one = Usage::open(&home, "vo-1", Quota::default()).unwrap();
        let two = Usage::open(&home, "vo-1", Quota::default()).unwrap();
        assert!(one.try_file_turn(42).unwrap());
        assert!(!two.try_file_turn(42).unwrap(), "the file's turn is taken");
        assert!(two.try_file_turn(43).unwrap(), "another file's is not");
        one.end_file_turn(42);
        assert!(two.try_file_turn(42).unwrap());
    }

    #[test]
    fn a_dead_holder_makes_the_next_open_recount() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned()).unwrap();
        let volume = home.volume_dir("vo-1");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("a"), [0u8; 10]).unwrap();
        std::fs::hard_link(volume.join("a"), volume.join("b")).unwrap();
        std::fs::create_dir(volume.join("d")).unwrap();
        // The two names of `a` hold its 10 bytes once.
        let on_disk = Counts {
            bytes: 10,
            files: 3,
        };
        let usage = Usage::open(&home, "vo-1", Quota::default()).unwrap();
        assert_eq!(usage.counts(), on_disk);
        usage.reserve(1000, 0).unwrap();
        // A crash: the process lets go of the file without closing its open.
        usage.slot(Slot::Users).fetch_add(1, Ordering::SeqCst);
        drop(usage);
        let usage = Usage::open(&home, "vo-1", Quota::default()).unwrap();
        assert_eq!(usage.counts(), on_disk);
    }
}
