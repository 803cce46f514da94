//! Copies between a volume and the host, or inside wasmhost's own store
//! (a volume to itself, to and from a snapshot), by walks that never
//! follow a link: what [`files`](super::files) and
//! [`snapshots`](super::snapshots) copy with, and how a problem on either
//! side is told.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rustix::fs::{FileType, OFlags, Stat};

use super::sparse;
use super::usage::Counts;
use super::walk::{self, Cursor, Problem, Visitor, WalkError, kind_name};
use crate::text::escape_name;

/// What a copy did, including what it would not copy.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Files and links copied.
    pub files: usize,
    /// Directories made beneath the copy's root.
    pub dirs: usize,
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
}

impl CopyReport {
    /// What the copy holds as a volume's usage counts it (directories are
    /// entries too), so that a snapshot's count and a volume's agree.
    pub fn counts(&self) -> Counts {
        Counts {
            bytes: self.bytes,
            files: (self.files + self.dirs) as u64,
        }
    }
}

/// Something a copy passed over: a link, a FIFO, a socket or a device.
#[derive(Debug)]
pub struct Skipped {
    /// As given (a local path) or in the volume (`/...`); escape to print.
    pub path: PathBuf,
    /// What it is, as `volume ls` names kinds (`symlink`, `fifo`, ...).
    pub kind: &'static str,
}

/// One side of a copy, for saying where a problem is.
pub(super) enum Side<'a> {
    /// The volume named so; cursor paths are relative to its root.
    Volume(&'a str),
    /// The local directory cursor paths are relative to.
    Local(&'a Path),
}

impl Side<'_> {
    /// `relative` as messages show it: `/a/b` in a volume, or a local path.
    fn name(&self, relative: &Path) -> String {
        match self {
            Side::Volume(_) => display(relative),
            Side::Local(root) => escape_name(root.join(relative).as_os_str()),
        }
    }

    /// Where `relative` is, for a message: `/a/b in volume `v``, or a local path.
    fn place(&self, relative: &Path) -> String {
        match self {
            Side::Volume(volume) => format!("{} in volume `{volume}`", display(relative)),
            Side::Local(_) => self.name(relative),
        }
    }

    /// The path a skipped entry is reported under.
    pub(super) fn skipped(&self, relative: &Path) -> PathBuf {
        match self {
            Side::Volume(_) => Path::new("/").join(relative),
            Side::Local(root) => root.join(relative),
        }
    }

    /// A walk's error: the copy's own errors say where they are already;
    /// the walker's, on this side, are told here.
    pub(super) fn walk_error(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast::<WalkError>() {
            Ok(e) => self.error("read", e),
            Err(e) => e,
        }
    }

    /// The error of `verb`ing what `e` is about.
    pub(super) fn error(&self, verb: &str, e: WalkError) -> anyhow::Error {
        let target = e.path.clone();
        self.error_in(verb, &target, e)
    }

    /// The error of `verb`ing `target`, which `e` (about `target` or a
    /// directory on the way to it) stopped.
    pub(super) fn error_in(&self, verb: &str, target: &Path, e: WalkError) -> anyhow::Error {
        let what = format!("cannot {verb} {}", self.place(target));
        let at = if e.path == target {
            "it".to_owned()
        } else {
            self.name(&e.path)
        };
        match e.problem {
            Problem::Link => anyhow!(
                "{what}: {at} is a symbolic link; wasmhost never follows links in a volume, which could lead outside it"
            ),
            Problem::NotDirectory => anyhow!("{what}: {at} is not a directory"),
            Problem::NotFound => anyhow!("{what}: {at} does not exist"),
            Problem::Moved => anyhow!(
                "{what}: {at} was moved while wasmhost walked it (by a running guest?); try again"
            ),
            Problem::Io(io) if at == "it" => anyhow::Error::from(io).context(what),
            Problem::Io(io) => anyhow::Error::from(io).context(format!("{what}: {at}")),
        }
    }
}

/// Copies what a walk finds into the directory `target` is at, and keeps
/// `target` in step with the walk.
pub(super) struct Copier<'a> {
    pub(super) target: Cursor,
    from: Side<'a>,
    to: Side<'a>,
    report: &'a mut CopyReport,
    /// Set by [`Copier::within`]: a copy inside wasmhost's own store.
    within: Option<Within<'a>>,
}

/// How a copy inside wasmhost's store (a volume to itself, or to and from
/// a snapshot) differs from one across the host boundary: it is to be the
/// same tree again, so links are copied as links (never followed), modes
/// and times are kept, data is shared by reflink where the file system
/// can, and the caller syncs once at the end rather than per file.
struct Within<'a> {
    /// False once a reflink failed: the file system cannot, so every file
    /// after is copied.
    reflink: bool,
    progress: &'a mut dyn FnMut(&CopyReport),
}

impl<'a> Copier<'a> {
    pub(super) fn new(
        target: Cursor,
        from: Side<'a>,
        to: Side<'a>,
        report: &'a mut CopyReport,
    ) -> Self {
        Self {
            target,
            from,
            to,
            report,
            within: None,
        }
    }

    pub(super) fn within(mut self, progress: &'a mut dyn FnMut(&CopyReport)) -> Self {
        self.within = Some(Within {
            reflink: true,
            progress,
        });
        self
    }

    fn skip(&mut self, relative: &Path, kind: &'static str) {
        self.report.skipped.push(Skipped {
            path: self.from.skipped(relative),
            kind,
        });
    }

    /// Copies the file `name` in `dir` to `target_name` in the target
    /// directory, holes kept. A file that vanished or became something else
    /// since the walk saw it is passed over (reported if it is not gone).
    pub(super) fn file(&mut self, dir: &Cursor, name: &OsStr, target_name: &OsStr) -> Result<()> {
        let source = match open_source(dir, name) {
            Ok(Some(file)) => file,
            Ok(None) => {
                let kind = dir.stat(name).map_or("other", |s| kind_name(&s));
                self.skip(&dir.child(name), kind);
                return Ok(());
            }
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) if matches!(e.problem, Problem::Link) => {
                self.skip(&dir.child(name), "symlink");
                return Ok(());
            }
            Err(e) => return Err(self.from.error("read", e)),
        };
        let target = self.create(target_name)?;
        let failed = |e: io::Error, this: &Self| {
            anyhow::Error::from(e).context(format!(
                "cannot copy {} to {}",
                this.from.place(&dir.child(name)),
                this.to.place(&this.target.child(target_name))
            ))
        };
        let bytes = match &mut self.within {
            Some(within) => clone_or_copy(&source, &target, &mut within.reflink)
                .and_then(|bytes| keep_mode_and_times(&source, &target).map(|()| bytes))
                .map_err(|e| failed(e, self))?,
            None => {
                let bytes = sparse::copy(&source, &target).map_err(|e| failed(e, self))?;
                if let Side::Volume(_) = self.to {
                    target.sync_all()?;
                }
                bytes
            }
        };
        self.report.files += 1;
        self.report.bytes += bytes;
        if let Some(within) = &mut self.within {
            (within.progress)(self.report);
        }
        Ok(())
    }

    /// Copies the link `name` in `dir` as a link named `target_name`: its
    /// text, never what it points at.
    fn link(&mut self, dir: &Cursor, name: &OsStr, target_name: &OsStr) -> Result<()> {
        let text = match rustix::fs::readlinkat(dir.fd(), name, Vec::new()) {
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            other => {
                other.map_err(|e| self.from.error("read", WalkError::new(dir.child(name), e)))?
            }
        };
        rustix::fs::symlinkat(text.as_c_str(), self.target.fd(), target_name).map_err(|e| {
            self.to
                .error("write", WalkError::new(self.target.child(target_name), e))
        })?;
        self.report.files += 1;
        Ok(())
    }

    /// Copies what `name` in `dir` is (`stat`) to `target_name`: a file; a
    /// link, inside wasmhost's store; anything else is skipped.
    pub(super) fn entry_as(
        &mut self,
        dir: &Cursor,
        name: &OsStr,
        stat: &Stat,
        target_name: &OsStr,
    ) -> Result<()> {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => self.file(dir, name, target_name),
            FileType::Symlink if self.within.is_some() => self.link(dir, name, target_name),
            _ => {
                self.skip(&dir.child(name), kind_name(stat));
                Ok(())
            }
        }
    }

    /// Creates (or truncates) `name` in the target directory. A link there
    /// is refused in a volume (a guest's: never written through, nor
    /// removed); on the local side, where the user asked for `--force`, it
    /// is replaced, never written through.
    fn create(&self, name: &OsStr) -> Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NONBLOCK;
        let open = || self.target.open_at(name, flags, 0o666);
        let fd = match (open(), &self.to) {
            (Err(e), Side::Local(_)) if matches!(e.problem, Problem::Link) => {
                self.target.unlink(name, false).and_then(|()| open())
            }
            (result, _) => result,
        }
        .map_err(|e| self.to.error("write", e))?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            bail!(
                "cannot write {}: it is not a regular file",
                self.to.place(&self.target.child(name))
            );
        }
        Ok(file)
    }
}

impl Visitor for Copier<'_> {
    type Error = anyhow::Error;

    fn entry(&mut self, dir: &Cursor, name: &OsStr, stat: &Stat) -> Result<()> {
        self.entry_as(dir, name, stat, name)
    }

    fn enter(&mut self, _: &Cursor, name: &OsStr) -> Result<()> {
        self.target
            .descend_making(name)
            .map_err(|e| self.to.error("write", e))?;
        self.report.dirs += 1;
        Ok(())
    }

    fn leave(&mut self, _: &Cursor, _: &OsStr) -> Result<()> {
        self.target.ascend().map_err(|e| self.to.error("write", e))
    }
}

/// Makes `target` (empty) hold what `source` holds: a reflink (`FICLONE`,
/// btrfs and XFS), which shares the data until either is written, while
/// `reflink` says the file system may take one; else a copy that keeps
/// holes. Returns the length.
fn clone_or_copy(source: &File, target: &File, reflink: &mut bool) -> io::Result<u64> {
    if *reflink {
        match rustix::fs::ioctl_ficlone(target, source) {
            Ok(()) => return Ok(source.metadata()?.len()),
            // Not this file system (or not across these two): copy from now on.
            Err(_) => *reflink = false,
        }
    }
    sparse::copy(source, target)
}

/// Gives `target` the permission bits and times of `source`.
fn keep_mode_and_times(source: &File, target: &File) -> io::Result<()> {
    let stat = rustix::fs::fstat(source)?;
    rustix::fs::fchmod(
        target,
        rustix::fs::Mode::from_raw_mode(stat.st_mode & 0o7777),
    )?;
    let time = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::futimens(
        target,
        &rustix::fs::Timestamps {
            last_access: time(stat.st_atime, stat.st_atime_nsec),
            last_modification: time(stat.st_mtime, stat.st_mtime_nsec),
        },
    )?;
    Ok(())
}

/// Writes what a copy inside wasmhost's store made to disk: once, for the
/// whole file system `dir` is on, rather than a sync per file.
pub(super) fn sync_fs(dir: &Cursor) -> Result<()> {
    rustix::fs::syncfs(dir.fd()).context("cannot sync the copy to disk")
}

/// Copies the whole tree at `from` into the empty directory `to`, both
/// wasmhost's own (a volume root, a snapshot, a copy under way), as
/// `volume cp` copies inside a volume (see [`VolumeFiles::cp`]);
/// `names` are what messages call the two (`data`, `data@v1`). Returns
/// what was copied, and tells `progress` after each file.
pub fn clone_tree(
    from: &Path,
    to: &Path,
    names: (&str, &str),
    progress: &mut dyn FnMut(&CopyReport),
) -> Result<CopyReport> {
    let source = Cursor::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let target = Cursor::open(to).with_context(|| format!("cannot open {}", to.display()))?;
    let mut report = CopyReport::default();
    let mut copier = Copier::new(
        target.try_clone()?,
        Side::Volume(names.0),
        Side::Volume(names.1),
        &mut report,
    )
    .within(progress);
    walk::walk(source, &mut copier).map_err(|e| Side::Volume(names.0).walk_error(e))?;
    sync_fs(&target)?;
    Ok(report)
}

/// The file `name` in `dir` opened to read, if it is still a regular file.
/// `O_NONBLOCK`, so a FIFO swapped in cannot hang the host.
pub(super) fn open_source(dir: &Cursor, name: &OsStr) -> Result<Option<File>, WalkError> {
    let fd = dir.open_at(name, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
    let file = File::from(fd);
    let regular = file
        .metadata()
        .map_err(|e| WalkError::new(dir.child(name), e))?
        .is_file();
    Ok(regular.then_some(file))
}
/// A path in a volume as messages show it: from the root, escaped.
pub(super) fn display(relative: &Path) -> String {
    format!("/{}", escape_name(relative.as_os_str()))
}
