//! Walks of directory trees that guests control: at any depth with a bounded
//! number of descriptors, and never through a symbolic link.
//!
//! `std::fs::remove_dir_all` and a recursive copy keep one descriptor per
//! level, and paths grow with depth: a guest nests directories past the
//! open-file limit or `PATH_MAX` in milliseconds, and every such walk of its
//! volume fails, the trash purge for good. A [`Cursor`] holds one directory
//! descriptor at any depth (two while it moves): it descends with
//! `openat(name, O_NOFOLLOW | O_DIRECTORY)`, keeps each level's (device,
//! inode) rather than its descriptor, and climbs with `openat("..")`,
//! checking that it reached the directory it recorded. A guest may rename
//! directories while we walk; when `..` is not where we came from, the walk
//! fails rather than go on somewhere else.
//!
//! Paths are resolved one component at a time the same way, so a link at any
//! component is refused, whether it leads out of the volume or not: the host
//! commands never read or write through a link a guest planted.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::text::escape_name;

/// How a cursor opens a directory: never a link, never kept past exec.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Where a walk stopped: `path` is relative to where its cursor began.
#[derive(Debug)]
pub struct WalkError {
    pub path: PathBuf,
    pub problem: Problem,
}

#[derive(Debug)]
pub enum Problem {
    /// A symbolic link where the walk needed a directory or a file.
    Link,
    NotDirectory,
    NotFound,
    /// `..` did not lead back to the directory the walk came from: a
    /// directory was renamed under the walk.
    Moved,
    Io(io::Error),
}

impl WalkError {
    pub fn new(path: PathBuf, error: impl Into<io::Error>) -> Self {
        let error = error.into();
        let problem = match error.raw_os_error() {
            Some(libc::ELOOP) => Problem::Link,
            Some(libc::ENOTDIR) => Problem::NotDirectory,
            Some(libc::ENOENT) => Problem::NotFound,
            _ => Problem::Io(error),
        };
        Self { path, problem }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.problem, Problem::NotFound)
    }
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = escape_name(self.path.as_os_str());
        match &self.problem {
            Problem::Link => write!(f, "{path} is a symbolic link"),
            Problem::NotDirectory => write!(f, "{path} is not a directory"),
            Problem::NotFound => write!(f, "{path} does not exist"),
            Problem::Moved => write!(f, "{path} was moved while it was being walked"),
            Problem::Io(e) => write!(f, "{path}: {e}"),
        }
    }
}

impl std::error::Error for WalkError {}

/// (device, inode): what identifies a directory across renames.
type DirId = (u64, u64);

fn dir_id(stat: &Stat) -> DirId {
    (stat.st_dev, stat.st_ino)
}

/// An open directory, and how it was reached from where the cursor began.
pub struct Cursor {
    fd: OwnedFd,
    /// The identity of each directory from the start down to this one.
    ids: Vec<DirId>,
    /// The names walked from the start.
    path: PathBuf,
}

impl Cursor {
    /// A cursor at `dir`, a path the user gave or wasmhost's own: links in
    /// it are followed like any path the user types. Only what is walked
    /// from here on is refused when it is a link.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let ids = vec![dir_id(&rustix::fs::fstat(&fd)?)];
        Ok(Self {
            fd,
            ids,
            path: PathBuf::new(),
        })
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            ids: self.ids.clone(),
            path: self.path.clone(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where the cursor is, relative to where it began.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` here, relative to where the cursor began.
    pub fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// The entry `name` here itself, a link included.
    pub fn stat(&self, name: &OsStr) -> Result<Stat, WalkError> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| WalkError::new(self.child(name), e))
    }

    /// The directory the cursor is at.
    pub fn stat_here(&self) -> Result<Stat, WalkError> {
        rustix::fs::fstat(&self.fd).map_err(|e| WalkError::new(self.path.clone(), e))
    }

    /// Opens `name` here with `flags`, never following a link (`ELOOP`).
    pub fn open_at(&self, name: &OsStr, flags: OFlags, mode: u32) -> Result<OwnedFd, WalkError> {
        rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| WalkError::new(self.child(name), e))
    }

    /// Moves into directory `name`, made first if nothing is there; a
    /// link or a file there is refused.
    pub fn descend_making(&mut self, name: &OsStr) -> Result<(), WalkError> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => self.descend(name),
            Err(e) => Err(WalkError::new(self.child(name), e)),
        }
    }

    /// Removes `name` here (an empty directory if `dir`); one that is gone
    /// already is not an error.
    pub fn unlink(&self, name: &OsStr, dir: bool) -> Result<(), WalkError> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&self.fd, name, flags) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            other => other.map_err(|e| WalkError::new(self.child(name), e)),
        }
    }

    /// Moves into directory `name`; a link there is refused.
    pub fn descend(&mut self, name: &OsStr) -> Result<(), WalkError> {
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| {
            let mut error = WalkError::new(self.child(name), e);
            // With O_DIRECTORY, Linux says ENOTDIR for a link, not ELOOP.
            let link = self
                .stat(name)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
            if link {
                error.problem = Problem::Link;
            }
            error
        })?;
        let id = rustix::fs::fstat(&fd).map_err(|e| WalkError::new(self.child(name), e))?;
        self.fd = fd;
        self.ids.push(dir_id(&id));
        self.path.push(name);
        Ok(())
    }

    /// Moves through each component of `relative` (plain names only).
    pub fn descend_path(&mut self, relative: &Path) -> Result<(), WalkError> {
        for name in relative.iter() {
            self.descend(name)?;
        }
        Ok(())
    }

    /// Moves back to the parent directory, refusing to go above where the
    /// cursor began or to any directory but the one it came from.
    pub fn ascend(&mut self) -> Result<(), WalkError> {
        let moved = || WalkError {
            path: self.path.clone(),
            problem: Problem::Moved,
        };
        let Some(&expected) = self.ids.len().checked_sub(2).map(|i| &self.ids[i]) else {
            return Err(moved());
        };
        let parent = rustix::fs::openat(&self.fd, "..", DIR_FLAGS, Mode::empty())
            .map_err(|e| WalkError::new(self.path.clone(), e))?;
        let id = rustix::fs::fstat(&parent).map_err(|e| WalkError::new(self.path.clone(), e))?;
        if dir_id(&id) != expected {
            return Err(moved());
        }
        self.fd = parent;
        self.ids.pop();
        self.path.pop();
        Ok(())
    }

    /// The names in the directory, sorted, without `.` and `..`.
    pub fn names(&self) -> Result<Vec<OsString>, WalkError> {
        let error = |e| WalkError::new(self.path.clone(), e);
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd).map_err(error)? {
            let name = entry.map_err(error)?.file_name().to_bytes().to_owned();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        names.sort();
        Ok(names)
    }
}

pub fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

/// What a kind of file is called in listings and warnings.
pub fn kind_name(stat: &Stat) -> &'static str {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "char-device",
        FileType::BlockDevice => "block-device",
        FileType::Unknown => "other",
    }
}

/// What a walk does with what it finds. Entries that vanish while the walk
/// runs (a guest removing them) are passed over: a walk of a tree in use is
/// a walk of whatever is there when it gets there.
pub trait Visitor {
    type Error: From<WalkError>;
    /// `name` in `dir` is not a directory (a file, a link, a FIFO...).
    fn entry(&mut self, dir: &Cursor, name: &OsStr, stat: &Stat) -> Result<(), Self::Error>;
    /// The walk has just moved into directory `name`; `dir` is it.
    fn enter(&mut self, dir: &Cursor, name: &OsStr) -> Result<(), Self::Error>;
    /// The walk is done with directory `name` and back in `dir`, its parent.
    fn leave(&mut self, dir: &Cursor, name: &OsStr) -> Result<(), Self::Error>;
}

/// Walks everything beneath the cursor's directory, depth first, names in
/// sorted order, holding a few descriptors (the cursor's, and one more
/// while it moves or lists) whatever the depth.
pub fn walk<V: Visitor>(mut cursor: Cursor, visitor: &mut V) -> Result<(), V::Error> {
    // The names still to visit at each level, last first.
    let mut pending = vec![reversed(cursor.names()?)];
    while let Some(level) = pending.last_mut() {
        let Some(name) = level.pop() else {
            pending.pop();
            if pending.is_empty() {
                break;
            }
            let name = cursor
                .path
                .file_name()
                .map(OsStr::to_owned)
                .unwrap_or_default();
            cursor.ascend()?;
            visitor.leave(&cursor, &name)?;
            continue;
        };
        let stat = match cursor.stat(&name) {
            Err(e) if e.is_not_found() => continue,
            other => other?,
        };
        if !is_dir(&stat) {
            visitor.entry(&cursor, &name, &stat)?;
            continue;
        }
        match cursor.descend(&name) {
            Err(e) if e.is_not_found() => continue,
            other => other?,
        }
        visitor.enter(&cursor, &name)?;
        pending.push(reversed(cursor.names()?));
    }
    Ok(())
}

fn reversed(mut names: Vec<OsString>) -> Vec<OsString> {
    names.reverse();
    names
}

/// Removes `name` in `dir` and, if it is a directory, all beneath it; links
/// are removed, never followed. Gone already is not an error.
pub fn remove(dir: &Cursor, name: &OsStr) -> Result<(), WalkError> {
    let stat = match dir.stat(name) {
        Err(e) if e.is_not_found() => return Ok(()),
        other => other?,
    };
    if !is_dir(&stat) {
        return dir.unlink(name, false);
    }
    let mut inside = dir
        .try_clone()
        .map_err(|e| WalkError::new(dir.child(name), e))?;
    match inside.descend(name) {
        Err(e) if e.is_not_found() => return Ok(()),
        other => other?,
    }
    walk(inside, &mut Remover)?;
    dir.unlink(name, true)
}

struct Remover;

impl Visitor for Remover {
    type Error = WalkError;
    fn entry(&mut self, dir: &Cursor, name: &OsStr, _: &Stat) -> Result<(), WalkError> {
        dir.unlink(name, false)
    }
    fn enter(&mut self, _: &Cursor, _: &OsStr) -> Result<(), WalkError> {
        Ok(())
    }
    fn leave(&mut self, dir: &Cursor, name: &OsStr) -> Result<(), WalkError> {
        dir.unlink(name, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a walk visits; renames `a` to `z/a` on entering `a/b`.
    struct Mover<'a> {
        root: &'a Path,
        seen: Vec<String>,
    }

    impl Visitor for Mover<'_> {
        type Error = WalkError;
        fn entry(&mut self, dir: &Cursor, name: &OsStr, _: &Stat) -> Result<(), WalkError> {
            self.seen.push(dir.child(name).display().to_string());
            Ok(())
        }
        fn enter(&mut self, dir: &Cursor, _: &OsStr) -> Result<(), WalkError> {
            if dir.path() == Path::new("a/b") {
                std::fs::rename(self.root.join("a"), self.root.join("z/a")).unwrap();
            }
            Ok(())
        }
        fn leave(&mut self, _: &Cursor, _: &OsStr) -> Result<(), WalkError> {
            Ok(())
        }
    }

    #[test]
    fn a_directory_moved_under_the_walk_stops_it_there() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::create_dir(root.path().join("z")).unwrap();
        std::fs::write(root.path().join("a/b/file"), "x").unwrap();
        let mut mover = Mover {
            root: root.path(),
            seen: Vec::new(),
        };
        let error = walk(Cursor::open(root.path()).unwrap(), &mut mover).unwrap_err();
        assert!(matches!(error.problem, Problem::Moved), "{error}");
        assert_eq!(error.path, Path::new("a"));
        // Nothing outside the tree as it was was visited.
        assert_eq!(mover.seen, ["a/b/file"]);
    }

    #[test]
    fn links_are_refused_at_any_component_and_removed_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.path().join("inside")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("real/out")).unwrap();
        let mut cursor = Cursor::open(root.path()).unwrap();
        let error = cursor.descend_path(Path::new("inside/x")).unwrap_err();
        assert!(matches!(error.problem, Problem::Link), "{error}");
        assert_eq!(error.path, Path::new("inside"));
        let root_cursor = Cursor::open(root.path()).unwrap();
        remove(&root_cursor, OsStr::new("real")).unwrap();
        assert!(outside.path().join("keep").exists());
        assert_eq!(root_cursor.names().unwrap(), [OsString::from("inside")]);
    }
}
