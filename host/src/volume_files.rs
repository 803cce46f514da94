//! `volume ls|put|get|rm`: the host's hands on a volume's files.
//!
//! Guests are untrusted and may plant symbolic links (even swap a file for
//! one while we work), so every path is resolved beneath the volume root by
//! cap-std (`openat2(RESOLVE_BENEATH)` where the kernel has it), which refuses
//! anything that would leave it. On top of that, links are never followed or
//! copied, in either direction: they are skipped, and each skip is reported.

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::Serialize;

use crate::error::usage;

/// A volume's root, opened so nothing can be reached outside it.
pub struct VolumeFiles {
    root: Dir,
    name: String,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    /// Unix seconds.
    pub modified: Option<u64>,
}

/// What a copy did, including the links it would not follow.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub files: usize,
    pub bytes: u64,
    pub skipped_links: Vec<String>,
}

impl VolumeFiles {
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        let root = Dir::open_ambient_dir(dir, ambient_authority())
            .with_context(|| format!("cannot open volume `{name}` at {}", dir.display()))?;
        Ok(Self {
            root,
            name: name.to_owned(),
        })
    }

    /// Entries of the directory at `path`, or the one entry `path` names.
    pub fn ls(&self, path: &str) -> Result<Vec<Entry>> {
        let relative = relative(path)?;
        let meta = self.metadata(&relative)?;
        if !meta.is_dir() {
            return Ok(vec![entry(display(&relative), &meta)]);
        }
        let dir = self.open_dir(&relative)?;
        let mut entries = Vec::new();
        for item in dir.entries()? {
            let item = item?;
            let meta = dir.symlink_metadata(item.file_name())?;
            entries.push(entry(display(&relative.join(item.file_name())), &meta));
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Copies the local file or directory `local` to `remote` in the volume.
    pub fn put(&self, local: &Path, remote: &str, force: bool) -> Result<CopyReport> {
        let local_meta = std::fs::symlink_metadata(local)
            .with_context(|| format!("cannot read {}", local.display()))?;
        let mut remote_path = relative(remote)?;
        if remote.ends_with('/')
            || self
                .root
                .symlink_metadata(&remote_path)
                .is_ok_and(|m| m.is_dir())
                && !local_meta.is_dir()
        {
            remote_path.push(local.file_name().context("LOCAL has no file name")?);
        }
        if remote_path.as_os_str().is_empty() && !local_meta.is_dir() {
            bail!(
                "cannot put a file at the root of volume `{}`; give a REMOTE path",
                self.name
            );
        }
        if !force
            && !remote_path.as_os_str().is_empty()
            && self.root.symlink_metadata(&remote_path).is_ok()
        {
            return Err(usage!(
                "{} already exists in volume `{}`; pass --force to overwrite",
                display(&remote_path),
                self.name
            ));
        }
        if let Some(parent) = remote_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.refuse_link(parent)?;
            self.root
                .create_dir_all(parent)
                .map_err(self.failed("create", parent))?;
        }
        let mut report = CopyReport::default();
        self.put_tree(local, &remote_path, &mut report)?;
        Ok(report)
    }

    fn put_tree(&self, local: &Path, remote: &Path, report: &mut CopyReport) -> Result<()> {
        let meta = std::fs::symlink_metadata(local)?;
        if meta.is_symlink() {
            report.skipped_links.push(local.display().to_string());
        } else if meta.is_dir() {
            if !remote.as_os_str().is_empty() {
                self.refuse_link(remote)?;
                match self.root.create_dir(remote) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(self.failed("create", remote)(e));
                    }
                    _ => {}
                }
            }
            let mut children: Vec<_> = std::fs::read_dir(local)?.collect::<io::Result<_>>()?;
            children.sort_by_key(|c| c.file_name());
            for child in children {
                self.put_tree(&child.path(), &remote.join(child.file_name()), report)?;
            }
        } else if meta.is_file() {
            self.refuse_link(remote)?;
            let mut source = std::fs::File::open(local)
                .with_context(|| format!("cannot read {}", local.display()))?;
            let mut target = self
                .root
                .create(remote)
                .map_err(self.failed("write", remote))?;
            report.bytes += io::copy(&mut source, &mut target).with_context(|| {
                format!(
                    "cannot copy {} into volume `{}`",
                    local.display(),
                    self.name
                )
            })?;
            target.sync_all()?;
            report.files += 1;
        }
        Ok(())
    }

    /// A link in the volume is never written through, even to overwrite it,
    /// nor is a path whose directories include one.
    fn refuse_link(&self, remote: &Path) -> Result<()> {
        let link = remote
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .find(|p| self.root.symlink_metadata(p).is_ok_and(|m| m.is_symlink()));
        if let Some(link) = link {
            bail!(
                "{} in volume `{}` is a symbolic link; wasmhost does not write through links (remove it first)",
                display(link),
                self.name
            );
        }
        Ok(())
    }

    /// The error of `verb`ing `relative`, saying so plainly when the path
    /// would have led out of the volume (through a link a guest planted).
    fn failed(&self, verb: &str, relative: &Path) -> impl FnOnce(io::Error) -> anyhow::Error {
        let what = format!(
            "cannot {verb} {} in volume `{}`",
            display(relative),
            self.name
        );
        move |e| {
            // cap-std's refusal, or the kernel's for `openat2(RESOLVE_BENEATH)`.
            let escape = e.raw_os_error() == Some(libc::EXDEV)
                || e.to_string().contains("led outside of the filesystem");
            if escape {
                anyhow::anyhow!(
                    "{what}: the path goes through a symbolic link that leads outside the volume; wasmhost never follows links out of a volume"
                )
            } else {
                anyhow::Error::from(e).context(what)
            }
        }
    }

    /// Copies `remote` (a file or directory) to `local`.
    pub fn get(&self, remote: &str, local: &Path, force: bool) -> Result<CopyReport> {
        let remote_path = relative(remote)?;
        self.metadata(&remote_path)?;
        if !force && std::fs::symlink_metadata(local).is_ok() {
            return Err(usage!(
                "{} already exists; pass --force to overwrite",
                local.display()
            ));
        }
        let mut report = CopyReport::default();
        self.get_tree(&remote_path, local, &mut report)?;
        Ok(report)
    }

    fn get_tree(&self, remote: &Path, local: &Path, report: &mut CopyReport) -> Result<()> {
        let meta = self.metadata(remote)?;
        if meta.is_symlink() {
            report.skipped_links.push(display(remote));
        } else if meta.is_dir() {
            match std::fs::create_dir(local) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("cannot create {}", local.display()));
                }
                _ => {}
            }
            let dir = self.open_dir(remote)?;
            let mut names: Vec<_> = dir
                .entries()?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for name in names {
                self.get_tree(&remote.join(&name), &local.join(&name), report)?;
            }
        } else if meta.is_file() {
            let mut source = self.open_file(remote)?;
            if std::fs::symlink_metadata(local).is_ok_and(|m| m.is_symlink()) {
                std::fs::remove_file(local)?;
            }
            let mut target = std::fs::File::create(local)
                .with_context(|| format!("cannot write {}", local.display()))?;
            report.bytes += io::copy(&mut source, &mut target)?;
            report.files += 1;
        }
        Ok(())
    }

    /// Writes the file `remote` to `out` (`volume get NAME REMOTE -`).
    pub fn cat(&self, remote: &str, out: &mut impl Write) -> Result<u64> {
        let remote_path = relative(remote)?;
        let meta = self.metadata(&remote_path)?;
        if meta.is_symlink() {
            bail!(
                "{} in volume `{}` is a symbolic link; wasmhost does not follow links out of a volume",
                display(&remote_path),
                self.name
            );
        }
        if !meta.is_file() {
            return Err(usage!(
                "{} in volume `{}` is not a file; `-` writes one file to stdout",
                display(&remote_path),
                self.name
            ));
        }
        Ok(io::copy(&mut self.open_file(&remote_path)?, out)?)
    }

    /// Removes `path`; a directory needs `recursive`. Links are removed, not
    /// followed.
    pub fn rm(&self, path: &str, recursive: bool) -> Result<()> {
        let relative = relative(path)?;
        if relative.as_os_str().is_empty() {
            return Err(usage!(
                "cannot remove the root of volume `{}`; `wasmhost volume delete {}` deletes the volume",
                self.name,
                self.name
            ));
        }
        let meta = self.metadata(&relative)?;
        let result = match (meta.is_dir(), recursive) {
            (true, false) => {
                return Err(usage!(
                    "{} in volume `{}` is a directory; pass --recursive",
                    display(&relative),
                    self.name
                ));
            }
            (true, true) => self.root.remove_dir_all(&relative),
            (false, _) => self.root.remove_file(&relative),
        };
        result.map_err(self.failed("remove", &relative))
    }

    fn metadata(&self, relative: &Path) -> Result<cap_std::fs::Metadata> {
        let meta = if relative.as_os_str().is_empty() {
            self.root.dir_metadata()
        } else {
            self.root.symlink_metadata(relative)
        };
        meta.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => usage!(
                "{} does not exist in volume `{}`",
                display(relative),
                self.name
            ),
            _ => self.failed("read", relative)(e),
        })
    }

    fn open_dir(&self, relative: &Path) -> Result<Dir> {
        if relative.as_os_str().is_empty() {
            return Ok(self.root.try_clone()?);
        }
        self.root
            .open_dir(relative)
            .map_err(self.failed("open", relative))
    }

    fn open_file(&self, relative: &Path) -> Result<cap_std::fs::File> {
        let mut options = cap_std::fs::OpenOptions::new();
        options.read(true);
        cap_std::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        self.root
            .open_with(relative, &options)
            .map_err(self.failed("read", relative))
    }
}

/// A path inside a volume, relative to its root; `..` is refused outright.
fn relative(path: &str) -> Result<PathBuf> {
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(usage!(
                    "volume path `{path}` has a `..` component; paths are relative to the volume root"
                ));
            }
        }
    }
    Ok(relative)
}

fn display(relative: &Path) -> String {
    format!("/{}", relative.display())
}

fn entry(path: String, meta: &cap_std::fs::Metadata) -> Entry {
    let kind = if meta.is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "dir"
    } else if meta.is_file() {
        "file"
    } else {
        "other"
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    Entry {
        path,
        kind,
        size: meta.len(),
        modified,
    }
}
