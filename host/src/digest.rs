//! SHA-256 digests as hex, for cache keys and lock file names.

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
