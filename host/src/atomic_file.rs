//! Files written whole or not at all: a reader of the path sees the old
//! file or the new one, never part of one. A crash mid-write leaves only a
//! temporary `.NAME.tmp` beside it, which its directory's owner sweeps.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::registry::new_id;

/// Writes `contents` to a temporary file beside `path`, syncs it, and
/// renames it into place.
pub fn write(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temp = path.with_file_name(format!(".{}.tmp", new_id("tmp")));
    let written = fs::File::create_new(&temp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}
