//! Reads a (typically read-only) data volume: per-file and total line and
//! byte counts, in a stable order so outputs can be compared.
//!
//! Usage: `dataset [DIR]` (DIR defaults to `/data`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::exit;

fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64, u64)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &rel, out)?;
        } else if kind.is_file() {
            let data = fs::read(root.join(&rel))?;
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
            out.push((rel, lines, data.len() as u64));
        }
    }
    Ok(())
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/data".to_owned());
    let mut files = Vec::new();
    if let Err(e) = walk(Path::new(&dir), Path::new(""), &mut files) {
        eprintln!("dataset: cannot read {dir}: {e}");
        exit(1)
    }
    let (mut lines, mut bytes) = (0, 0);
    for (path, l, b) in &files {
        println!("{} {l} {b}", path.display());
        lines += l;
        bytes += b;
    }
    println!("total {} {lines} {bytes}", files.len());
}
