//! `files`: code and data shipped with the app (SPEC section 2). A
//! function's `files` and the app-wide `[files]` map guest paths to files
//! or directories relative to app.toml; validation merges the two (the
//! function's own entry wins on a guest path both name, as its `env` would)
//! and checks each source exists, so a typo is refused at its line before
//! anything is copied. What the sources hold is read at deploy or run time
//! (see `file_store`), which records the stored tree's digest here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::raw::RawFiles;
use super::validate::Validator;
use super::{ManifestError, MountSpec, normalize_guest_path};

/// One `files` entry of a function: what it sees read-only at `guest_path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// Normalized as a mount's guest path.
    pub guest_path: String,
    /// Absolute: a directory, whose contents the guest sees at
    /// `guest_path`, or a file, which it sees inside `guest_path` under its
    /// own name.
    pub source: PathBuf,
    /// The digest of the stored tree this app version runs (see
    /// `file_store`); `None` until it is stored at deploy or run.
    #[serde(default)]
    pub tree: Option<String>,
}

impl Validator<'_> {
    /// The `files` of a function: the app's `[files]`, then its own over
    /// them. A guest path a volume is mounted on is refused.
    pub(super) fn files(
        &self,
        app: &RawFiles,
        own: &RawFiles,
        mounts: &[MountSpec],
        base_dir: &std::path::Path,
    ) -> Result<Vec<FilesSpec>, ManifestError> {
        let mut files: Vec<FilesSpec> = Vec::new();
        for (guest_path, source) in app.iter().chain(own) {
            let normalized = normalize_guest_path(guest_path.get_ref()).map_err(|problem| {
                self.error(
                    Some(guest_path.span()),
                    problem,
                    "use an absolute path such as \"/app\", or a relative name such as \"app\"",
                )
            })?;
            if let Some(mount) = mounts.iter().find(|m| m.guest_path == normalized) {
                return Err(self.error(
                    Some(guest_path.span()),
                    format!(
                        "`files` on guest path `{normalized}`, where volume `{}` is mounted",
                        mount.volume
                    ),
                    "ship the files at another guest path, or mount the volume elsewhere",
                ));
            }
            let spec = FilesSpec {
                guest_path: normalized,
                source: self.files_source(source, base_dir)?,
                tree: None,
            };
            // The function's own entries come last: they replace the app's.
            files.retain(|f| f.guest_path != spec.guest_path);
            files.push(spec);
        }
        Ok(files)
    }

    fn files_source(
        &self,
        source: &toml::Spanned<String>,
        base_dir: &std::path::Path,
    ) -> Result<PathBuf, ManifestError> {
        let path = base_dir.join(source.get_ref());
        let path = std::path::absolute(&path).unwrap_or(path);
        match std::fs::symlink_metadata(&path) {
            _ if source.get_ref().is_empty() => Err(self.error(
                Some(source.span()),
                "a `files` source is empty",
                "give a file or directory relative to app.toml, e.g. \"src\"",
            )),
            Ok(meta) if meta.is_dir() || meta.is_file() => Ok(path),
            Ok(_) => Err(self.error(
                Some(source.span()),
                format!(
                    "`files` source {} is neither a file nor a directory (a symbolic link?)",
                    path.display()
                ),
                "name the file or directory itself: links are not shipped",
            )),
            Err(e) => Err(self.error(
                Some(source.span()),
                format!("cannot read `files` source {}: {e}", path.display()),
                "correct the path (it is relative to app.toml)",
            )),
        }
    }
}
