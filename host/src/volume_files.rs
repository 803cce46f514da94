//! `volume ls|put|get|rm`: the host's hands on a volume's files.
//!
//! Guests are untrusted: they plant symbolic links (and swap files for them
//! while we work), nest directories deeper than any descriptor limit, write
//! one byte at 16 TiB and pick names with escape sequences in them. So every
//! path is resolved one component at a time beneath the volume root and a
//! link at any component is refused ([`volume_walk`]); trees are walked with
//! a bounded number of descriptors; copies keep holes ([`sparse`]); links,
//! FIFOs, sockets and devices are never copied, in either direction, and
//! each one skipped is reported; and names are escaped for the terminal
//! ([`text`]) by whoever prints them.
//!
//! [`text`]: crate::text

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rustix::fs::{FileType, OFlags, Stat};
use serde::Serialize;

use crate::error::{conflict, not_found, usage};
use crate::sparse;
use crate::text::escape_name;
use crate::volume_usage::{self, Counts};
use crate::volume_walk::{self, Cursor, Problem, Visitor, WalkError, is_dir, kind_name};

/// A volume's root, opened so nothing can be reached outside it.
pub struct VolumeFiles {
    root: Cursor,
    name: String,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    /// The path in the volume, exactly; for a name that is not UTF-8, its
    /// escaped form (see [`crate::text`]), and `path_bytes` holds it exactly.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
    pub kind: &'static str,
    pub size: u64,
    /// Unix seconds.
    pub modified: Option<u64>,
    /// The path in the volume, for human output (escape it to print).
    #[serde(skip)]
    pub raw_path: PathBuf,
}

/// What a copy did, including what it would not copy.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub files: usize,
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
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
enum Side<'a> {
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
    fn skipped(&self, relative: &Path) -> PathBuf {
        match self {
            Side::Volume(_) => Path::new("/").join(relative),
            Side::Local(root) => root.join(relative),
        }
    }

    /// A walk's error: the copy's own errors say where they are already;
    /// the walker's, on this side, are told here.
    fn walk_error(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast::<WalkError>() {
            Ok(e) => self.error("read", e),
            Err(e) => e,
        }
    }

    /// The error of `verb`ing what `e` is about.
    fn error(&self, verb: &str, e: WalkError) -> anyhow::Error {
        let target = e.path.clone();
        self.error_in(verb, &target, e)
    }

    /// The error of `verb`ing `target`, which `e` (about `target` or a
    /// directory on the way to it) stopped.
    fn error_in(&self, verb: &str, target: &Path, e: WalkError) -> anyhow::Error {
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

impl VolumeFiles {
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        let root = Cursor::open(dir)
            .with_context(|| format!("cannot open volume `{name}` at {}", dir.display()))?;
        Ok(Self {
            root,
            name: name.to_owned(),
        })
    }

    fn side(&self) -> Side<'_> {
        Side::Volume(&self.name)
    }

    /// A cursor at the directory holding `relative`, and the last name of
    /// `relative` (`None` for the root). A link, or a name that is not a
    /// directory, on the way is refused; a missing one is bad usage.
    fn locate(&self, relative: &Path, verb: &str) -> Result<(Cursor, Option<OsString>)> {
        let mut cursor = self.root.try_clone()?;
        let Some(name) = relative.file_name() else {
            return Ok((cursor, None));
        };
        let parent = relative.parent().unwrap_or(Path::new(""));
        cursor
            .descend_path(parent)
            .map_err(|e| self.resolve_error(verb, relative, e))?;
        Ok((cursor, Some(name.to_owned())))
    }

    /// What `name` in `dir` is (the root when `None`), not following a link.
    fn stat(&self, dir: &Cursor, name: Option<&OsStr>, relative: &Path) -> Result<Stat> {
        match name {
            None => dir.stat_here(),
            Some(name) => dir.stat(name),
        }
        .map_err(|e| self.resolve_error("read", relative, e))
    }

    /// A path the user gave that does not resolve: missing parts are bad
    /// usage (exit 2); links and I/O errors are not.
    fn resolve_error(&self, verb: &str, relative: &Path, e: WalkError) -> anyhow::Error {
        match e.problem {
            Problem::NotFound => not_found!(
                "{} does not exist in volume `{}`",
                display(relative),
                self.name
            ),
            Problem::NotDirectory => usage!("{}", self.side().error_in(verb, relative, e)),
            _ => self.side().error_in(verb, relative, e),
        }
    }

    /// Entries of the directory at `path`, or the one entry `path` names.
    pub fn ls(&self, path: &Path) -> Result<Vec<Entry>> {
        let relative = relative(path)?;
        let (mut dir, name) = self.locate(&relative, "list")?;
        let stat = self.stat(&dir, name.as_deref(), &relative)?;
        if !is_dir(&stat) {
            return Ok(vec![entry(&relative, &stat)]);
        }
        if let Some(name) = &name {
            dir.descend(name)
                .map_err(|e| self.side().error("list", e))?;
        }
        let mut entries = Vec::new();
        for name in dir.names().map_err(|e| self.side().error("list", e))? {
            match dir.stat(&name) {
                Ok(stat) => entries.push(entry(&dir.child(&name), &stat)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(self.side().error("list", e)),
            }
        }
        Ok(entries)
    }

    /// Copies the local file or directory `local` to `remote` in the volume.
    pub fn put(&self, local: &Path, remote: &Path, force: bool) -> Result<CopyReport> {
        let local_stat = match rustix::fs::lstat(local) {
            Err(rustix::io::Errno::NOENT) => {
                return Err(not_found!(
                    "{} does not exist",
                    escape_name(local.as_os_str())
                ));
            }
            other => {
                other.with_context(|| format!("cannot read {}", escape_name(local.as_os_str())))?
            }
        };
        let local_is_dir = is_dir(&local_stat);
        let base = local.file_name().ok_or_else(|| {
            usage!(
                "{} has no file name; give a REMOTE path",
                escape_name(local.as_os_str())
            )
        });
        let remote_path = self.destination(remote, base, local_is_dir)?;
        let (dir, name) = self.make_parents(&remote_path)?;
        if !force {
            self.refuse_existing(&dir, name.as_deref(), &remote_path)?;
        }
        let mut report = CopyReport::default();
        let kind = FileType::from_raw_mode(local_stat.st_mode);
        if kind == FileType::RegularFile {
            let (parent, source_dir, source_name) = local_parent(local)?;
            let name = name.expect("a file is never put at the root");
            Copier::new(dir, Side::Local(parent), self.side(), &mut report).file(
                &source_dir,
                &source_name,
                &name,
            )?;
        } else if local_is_dir {
            let mut target = dir;
            if let Some(name) = &name {
                target
                    .descend_making(name)
                    .map_err(|e| self.side().error_in("write", &remote_path, e))?;
            }
            let source = Cursor::open(local)
                .with_context(|| format!("cannot read {}", escape_name(local.as_os_str())))?;
            let mut copier = Copier::new(target, Side::Local(local), self.side(), &mut report);
            volume_walk::walk(source, &mut copier).map_err(|e| Side::Local(local).walk_error(e))?;
        } else {
            report.skipped.push(Skipped {
                path: local.to_owned(),
                kind: kind_name(&local_stat),
            });
        }
        Ok(report)
    }

    /// Where a copy of something named `base` (a directory if `is_dir`)
    /// given `given` as its destination goes: inside `given` when it ends
    /// with `/`, or when it is a directory and what is copied is not.
    fn destination(
        &self,
        given: &Path,
        base: Result<&OsStr>,
        source_is_dir: bool,
    ) -> Result<PathBuf> {
        let mut path = relative(given)?;
        let into_dir =
            given.as_os_str().as_bytes().ends_with(b"/") || !source_is_dir && self.is_dir(&path);
        if into_dir {
            path.push(base?);
        }
        if path.as_os_str().is_empty() && !source_is_dir {
            return Err(usage!(
                "cannot copy a file to the root of volume `{}`; give a destination path",
                self.name
            ));
        }
        Ok(path)
    }

    /// Refuses `name` in `dir` (the root when `None`) if it exists.
    fn refuse_existing(&self, dir: &Cursor, name: Option<&OsStr>, relative: &Path) -> Result<()> {
        if let Some(name) = name
            && dir.stat(name).is_ok()
        {
            return Err(conflict!(
                "{} already exists in volume `{}`; pass --force to overwrite",
                display(relative),
                self.name
            ));
        }
        Ok(())
    }

    /// `volume cp`: copies `src` to `dst` inside this volume, through no
    /// link: a symbolic link is copied as a link (its text unchanged, never
    /// followed), modes and times are kept, and data is shared by reflink
    /// where the file system can. A directory needs `recursive`; an
    /// existing `dst` needs `force`, and is then replaced, not merged. One
    /// inside the other is refused. Returns what was copied.
    pub fn cp(
        &self,
        src: &Path,
        dst: &Path,
        recursive: bool,
        force: bool,
        room: &mut dyn FnMut(Counts) -> Result<()>,
        progress: &mut dyn FnMut(&CopyReport),
    ) -> Result<CopyReport> {
        let src_path = relative(src)?;
        let (src_dir, src_name) = self.locate(&src_path, "read")?;
        let stat = self.stat(&src_dir, src_name.as_deref(), &src_path)?;
        let src_is_dir = is_dir(&stat);
        if src_is_dir && !recursive {
            return Err(usage!(
                "{} in volume `{}` is a directory; pass --recursive",
                display(&src_path),
                self.name
            ));
        }
        let base = src_name
            .as_deref()
            .ok_or_else(|| usage!("the root of volume `{}` has no name", self.name));
        let dst_path = self.destination(dst, base, src_is_dir)?;
        if dst_path.starts_with(&src_path) || src_path.starts_with(&dst_path) {
            return Err(usage!(
                "cannot copy {} to {} in volume `{}`: one is inside the other",
                display(&src_path),
                display(&dst_path),
                self.name
            ));
        }
        let (dir, name) = self.make_parents(&dst_path)?;
        let name = name.expect("the root is inside every source");
        if !force {
            self.refuse_existing(&dir, Some(&name), &dst_path)?;
        }
        // Room is taken (quotas checked) before anything is removed or copied.
        room(if src_is_dir {
            let mut source = src_dir.try_clone()?;
            source
                .descend(src_name.as_deref().expect("not the root"))
                .map_err(|e| self.side().error("read", e))?;
            let inside =
                volume_usage::count_at(source).map_err(|e| self.side().error("read", e))?;
            Counts {
                files: inside.files + 1,
                ..inside
            }
        } else {
            Counts {
                bytes: stat.st_size as u64,
                files: 1,
            }
        })?;
        if force {
            volume_walk::remove(&dir, &name).map_err(|e| self.side().error("remove", e))?;
        }
        let mut report = CopyReport::default();
        let mut copier =
            Copier::new(dir.try_clone()?, self.side(), self.side(), &mut report).within(progress);
        if src_is_dir {
            let mut source = src_dir;
            source
                .descend(src_name.as_deref().expect("not the root"))
                .map_err(|e| self.side().error("read", e))?;
            copier
                .target
                .descend_making(&name)
                .map_err(|e| self.side().error_in("write", &dst_path, e))?;
            volume_walk::walk(source, &mut copier).map_err(|e| self.side().walk_error(e))?;
        } else {
            copier.entry_as(&src_dir, src_name.as_deref().expect("a file"), &stat, &name)?;
        }
        sync_fs(&dir)?;
        Ok(report)
    }

    fn is_dir(&self, relative: &Path) -> bool {
        self.locate(relative, "read")
            .and_then(|(dir, name)| self.stat(&dir, name.as_deref(), relative))
            .is_ok_and(|stat| is_dir(&stat))
    }

    /// A cursor at the directory that will hold `relative`, made if missing,
    /// and `relative`'s last name.
    fn make_parents(&self, relative: &Path) -> Result<(Cursor, Option<OsString>)> {
        let mut dir = self.root.try_clone()?;
        let Some(name) = relative.file_name() else {
            return Ok((dir, None));
        };
        for part in relative.parent().unwrap_or(Path::new("")).iter() {
            dir.descend_making(part)
                .map_err(|e| self.side().error_in("write", relative, e))?;
        }
        Ok((dir, Some(name.to_owned())))
    }

    /// Copies `remote` (a file or directory) to `local`.
    pub fn get(&self, remote: &Path, local: &Path, force: bool) -> Result<CopyReport> {
        let remote_path = relative(remote)?;
        let (mut dir, name) = self.locate(&remote_path, "read")?;
        let stat = self.stat(&dir, name.as_deref(), &remote_path)?;
        if !force && std::fs::symlink_metadata(local).is_ok() {
            return Err(conflict!(
                "{} already exists; pass --force to overwrite",
                escape_name(local.as_os_str())
            ));
        }
        let mut report = CopyReport::default();
        if is_dir(&stat) {
            if let Some(name) = &name {
                dir.descend(name)
                    .map_err(|e| self.side().error("read", e))?;
            }
            match std::fs::create_dir(local) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| {
                        format!("cannot create {}", escape_name(local.as_os_str()))
                    });
                }
                _ => {}
            }
            let target = Cursor::open(local)
                .with_context(|| format!("cannot write {}", escape_name(local.as_os_str())))?;
            let mut copier = Copier::new(target, self.side(), Side::Local(local), &mut report);
            volume_walk::walk(dir, &mut copier).map_err(|e| self.side().walk_error(e))?;
        } else if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
            let name = name.expect("the root is a directory");
            let (parent, target_dir, target_name) = local_parent(local)?;
            Copier::new(target_dir, self.side(), Side::Local(parent), &mut report).file(
                &dir,
                &name,
                &target_name,
            )?;
        } else {
            report.skipped.push(Skipped {
                path: self.side().skipped(&remote_path),
                kind: kind_name(&stat),
            });
        }
        Ok(report)
    }

    /// Writes the file `remote` to `out` (`volume get NAME REMOTE -`);
    /// holes are kept when `out` is a new regular file (see [`sparse`]).
    pub fn cat(&self, remote: &Path, out: impl Write + AsFd) -> Result<u64> {
        let remote_path = relative(remote)?;
        let (dir, name) = self.locate(&remote_path, "read")?;
        let stat = self.stat(&dir, name.as_deref(), &remote_path)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Symlink {
            bail!(
                "{} in volume `{}` is a symbolic link; wasmhost does not follow links out of a volume",
                display(&remote_path),
                self.name
            );
        }
        let name = name
            .filter(|_| kind == FileType::RegularFile)
            .ok_or_else(|| {
                usage!(
                    "{} in volume `{}` is not a file; `-` writes one file to stdout",
                    display(&remote_path),
                    self.name
                )
            })?;
        let file = open_source(&dir, &name)
            .map_err(|e| self.side().error("read", e))?
            .ok_or_else(|| anyhow!("{} changed while being read", display(&remote_path)))?;
        sparse::copy_to(&file, out)
            .with_context(|| format!("cannot copy {} to stdout", display(&remote_path)))
    }

    /// Removes `path`; a directory needs `recursive`. Links are removed, not
    /// followed.
    pub fn rm(&self, path: &Path, recursive: bool) -> Result<()> {
        let relative = relative(path)?;
        if relative.as_os_str().is_empty() {
            return Err(usage!(
                "cannot remove the root of volume `{}`; `wasmhost volume delete {}` deletes the volume",
                self.name,
                self.name
            ));
        }
        let (dir, name) = self.locate(&relative, "remove")?;
        let name = name.expect("not the root");
        let stat = self.stat(&dir, Some(&name), &relative)?;
        if is_dir(&stat) && !recursive {
            return Err(usage!(
                "{} in volume `{}` is a directory; pass --recursive",
                display(&relative),
                self.name
            ));
        }
        volume_walk::remove(&dir, &name).map_err(|e| self.side().error("remove", e))
    }
}

/// Copies what a walk finds into the directory `target` is at, and keeps
/// `target` in step with the walk.
struct Copier<'a> {
    target: Cursor,
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
    fn new(target: Cursor, from: Side<'a>, to: Side<'a>, report: &'a mut CopyReport) -> Self {
        Self {
            target,
            from,
            to,
            report,
            within: None,
        }
    }

    fn within(mut self, progress: &'a mut dyn FnMut(&CopyReport)) -> Self {
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
    fn file(&mut self, dir: &Cursor, name: &OsStr, target_name: &OsStr) -> Result<()> {
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
    fn entry_as(
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
            .map_err(|e| self.to.error("write", e))
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
fn sync_fs(dir: &Cursor) -> Result<()> {
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
    volume_walk::walk(source, &mut copier).map_err(|e| Side::Volume(names.0).walk_error(e))?;
    sync_fs(&target)?;
    Ok(report)
}

/// The file `name` in `dir` opened to read, if it is still a regular file.
/// `O_NONBLOCK`, so a FIFO swapped in cannot hang the host.
fn open_source(dir: &Cursor, name: &OsStr) -> Result<Option<File>, WalkError> {
    let fd = dir.open_at(name, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
    let file = File::from(fd);
    let regular = file
        .metadata()
        .map_err(|e| WalkError::new(dir.child(name), e))?
        .is_file();
    Ok(regular.then_some(file))
}

/// A local path as the directory holding it, that directory opened, and
/// the path's last name.
fn local_parent(local: &Path) -> Result<(&Path, Cursor, OsString)> {
    let name = local
        .file_name()
        .ok_or_else(|| usage!("{} has no file name", escape_name(local.as_os_str())))?;
    let parent = match local.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = Cursor::open(parent)
        .with_context(|| format!("cannot open {}", escape_name(parent.as_os_str())))?;
    Ok((parent, dir, name.to_owned()))
}

/// A path inside a volume, relative to its root; `..` is refused outright.
fn relative(path: &Path) -> Result<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(usage!(
                    "volume path `{}` has a `..` component; paths are relative to the volume root",
                    escape_name(path.as_os_str())
                ));
            }
        }
    }
    Ok(relative)
}

/// A path in a volume as messages show it: from the root, escaped.
fn display(relative: &Path) -> String {
    format!("/{}", escape_name(relative.as_os_str()))
}

fn entry(relative: &Path, stat: &Stat) -> Entry {
    let raw_path = Path::new("/").join(relative);
    let (path, path_bytes) = match raw_path.to_str() {
        Some(path) => (path.to_owned(), None),
        None => (
            escape_name(raw_path.as_os_str()),
            Some(raw_path.as_os_str().as_bytes().to_owned()),
        ),
    };
    Entry {
        path,
        path_bytes,
        kind: kind_name(stat),
        size: stat.st_size as u64,
        modified: u64::try_from(stat.st_mtime).ok(),
        raw_path,
    }
}
