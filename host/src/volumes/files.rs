//! `volume ls|put|get|cp|rm`: the host's hands on a volume's files, and
//! their accounting: `put` and `cp` take room under the volume's quota
//! before they write anything, and `rm` asks for a recount (see
//! [`quota`](super::quota)), so a caller only names the volume and the paths.
//!
//! Guests are untrusted: they plant symbolic links (and swap files for them
//! while we work), nest directories deeper than any descriptor limit, write
//! one byte at 16 TiB and pick names with escape sequences in them. So every
//! path is resolved one component at a time beneath the volume root and a
//! link at any component is refused ([`walk`]); trees are walked with
//! a bounded number of descriptors; copies keep holes ([`sparse`]); links,
//! FIFOs, sockets and devices are never copied, in either direction, and
//! each one skipped is reported ([`copy`]); and names are escaped for the
//! terminal ([`text`]) by whoever prints them.
//!
//! [`walk`]: super::walk
//! [`sparse`]: super::sparse
//! [`copy`]: super::copy
//! [`text`]: crate::text

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rustix::fs::{FileType, Stat};
use serde::Serialize;

use super::copy::{Copier, CopyReport, Side, Skipped, display, open_source, sync_fs};
use super::usage::{self, Counts};
use super::walk::{self, Cursor, Problem, WalkError, is_dir, kind_name};
use super::{quota, sparse, store};
use crate::error::{conflict, not_found, usage};
use crate::home::Home;
use crate::registry::{Registry, VolumeRecord};
use crate::text::escape_name;

/// A volume's root, opened so nothing can be reached outside it.
pub struct VolumeFiles {
    root: Cursor,
    name: String,
    home: Home,
    volume: VolumeRecord,
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

impl VolumeFiles {
    /// The files of the named volume `name`.
    pub fn open(home: &Home, registry: &mut Registry, name: &str) -> Result<Self> {
        let volume = store::named_volume(registry, name)?;
        let dir = home.volume_dir(&volume.id);
        let root = Cursor::open(&dir)
            .with_context(|| format!("cannot open volume `{name}` at {}", dir.display()))?;
        Ok(Self {
            root,
            name: name.to_owned(),
            home: home.clone(),
            volume,
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

    /// The size of the regular file at `relative`, if one is there.
    fn file_size(&self, relative: &Path) -> Option<u64> {
        let (dir, name) = self.locate(relative, "read").ok()?;
        let stat = dir.stat(&name?).ok()?;
        (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile)
            .then_some(stat.st_size as u64)
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

    /// Copies the local file or directory `local` to `remote` in the volume,
    /// once room for all of it is taken under the volume's quota.
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
        let kind = FileType::from_raw_mode(local_stat.st_mode);
        // A file put over a file truncates it: its bytes are given back.
        let replaced = match force && kind == FileType::RegularFile {
            true => self
                .file_size(&remote_path)
                .map(|bytes| Counts { bytes, files: 1 }),
            false => None,
        };
        quota::reserve_put(
            &self.home,
            &self.volume,
            local,
            replaced.unwrap_or_default(),
        )?;
        let (dir, name) = self.make_parents(&remote_path)?;
        if !force {
            self.refuse_existing(&dir, name.as_deref(), &remote_path)?;
        }
        let mut report = CopyReport::default();
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
            walk::walk(source, &mut copier).map_err(|e| Side::Local(local).walk_error(e))?;
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
    /// inside the other is refused. Room for the copy is taken under the
    /// volume's quota before anything is removed or copied. Returns what was
    /// copied, and tells `progress` after each file.
    pub fn cp(
        &self,
        src: &Path,
        dst: &Path,
        recursive: bool,
        force: bool,
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
        let counts = if src_is_dir {
            let mut source = src_dir.try_clone()?;
            source
                .descend(src_name.as_deref().expect("not the root"))
                .map_err(|e| self.side().error("read", e))?;
            let inside = usage::count_at(source).map_err(|e| self.side().error("read", e))?;
            Counts {
                files: inside.files + 1,
                ..inside
            }
        } else {
            Counts {
                bytes: stat.st_size as u64,
                files: 1,
            }
        };
        let what = src.display().to_string();
        quota::reserve_copy(&self.home, &self.volume, counts, &what)?;
        if force {
            walk::remove(&dir, &name).map_err(|e| self.side().error("remove", e))?;
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
            walk::walk(source, &mut copier).map_err(|e| self.side().walk_error(e))?;
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
            walk::walk(dir, &mut copier).map_err(|e| self.side().walk_error(e))?;
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
        walk::remove(&dir, &name).map_err(|e| self.side().error("remove", e))?;
        quota::files_changed(&self.home, &self.volume)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Quota;
    use crate::registry::new_id;

    /// The accounting is the library's: `put` and `cp` are refused before
    /// they write when the quota has no room, and `rm` gives room back.
    #[test]
    fn put_and_cp_take_room_first_and_rm_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home")).unwrap();
        let mut registry = Registry::open(&home.registry()).unwrap();
        // Unique, for a registry that other runs share (`$WASMHOST_DB`).
        let name = new_id("quota");
        let quota = Quota {
            max_bytes: Some(100),
            max_files: None,
        };
        let volume = store::create_named_volume(&home, &mut registry, &name, quota).unwrap();
        let files = VolumeFiles::open(&home, &mut registry, &name).unwrap();
        let local = dir.path().join("local");
        std::fs::write(&local, [1; 101]).unwrap();
        let e = files.put(&local, Path::new("/big"), false).unwrap_err();
        assert!(e.to_string().contains("does not fit in volume"), "{e:#}");
        assert!(files.ls(Path::new("/")).unwrap().is_empty());
        std::fs::write(&local, [1; 60]).unwrap();
        files.put(&local, Path::new("/a"), false).unwrap();
        let e = files
            .cp(Path::new("/a"), Path::new("/b"), false, false, &mut |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("does not fit in volume"), "{e:#}");
        files.rm(Path::new("/a"), false).unwrap();
        assert_eq!(
            quota::counts_now(&home, &volume).unwrap(),
            Counts::default()
        );
    }
}
