//! SHA-256 digests as hex, for cache keys and lock file names, and stamps
//! that remember a file's digest so an unchanged file is not hashed again.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Copies `reader` into `writer` (`std::io::sink()` to only read it),
/// returning the SHA-256 hex digest of what was copied and its length:
/// for files too large to hold in memory at once.
pub fn copy_hashed(
    mut reader: impl std::io::Read,
    mut writer: impl std::io::Write,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 << 10];
    let mut length = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n])?;
        length += n as u64;
    }
    writer.flush()?;
    Ok((hex(&hasher.finalize()), length))
}

/// The name of `file`'s stamp as the file is now: from its path, size,
/// inode and change time, so that a changed or replaced file has another.
pub fn stamp_name(file: &Path, meta: &Metadata) -> String {
    let key = format!(
        "{}\0{}\0{}\0{}\0{}",
        file.display(),
        meta.len(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    format!("{}.stamp", sha256_hex(key.as_bytes()))
}

/// The digest a stamp in `stamps` remembers for `file` as it is now.
pub fn stamped(stamps: &Path, file: &Path, meta: &Metadata) -> Option<String> {
    let digest = std::fs::read_to_string(stamps.join(stamp_name(file, meta))).ok()?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

/// Remembers `digest` for `file` as it is now, if `stamps` exists: a
/// stamp only saves hashing next time, so failing to write one is fine,
/// and one written in part is not a digest [`stamped`] accepts.
pub fn stamp(stamps: &Path, file: &Path, meta: &Metadata, digest: &str) {
    if stamps.is_dir() {
        let _ = std::fs::write(stamps.join(stamp_name(file, meta)), digest.as_bytes());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
