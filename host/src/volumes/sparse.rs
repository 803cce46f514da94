//! File copies that keep holes, as `cp --sparse=auto` does.
//!
//! A guest writes one byte at offset 16 TiB in no time; copying the zeros
//! before it would fill the user's disk (or the volume's). Only the data
//! ranges (`SEEK_DATA` / `SEEK_HOLE`) are read and written; the target gets
//! the source's length, so a hole stays a hole.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

/// Bytes moved per read and write.
const CHUNK: usize = 256 * 1024;

/// Copies `src` into `dst`, which must be empty; returns the length copied.
pub fn copy(src: &File, dst: &File) -> io::Result<u64> {
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos = 0;
    while pos < len {
        let Some((start, end)) = data_range(src, pos, len) else {
            break;
        };
        copy_range(src, dst, start, end)?;
        pos = end;
    }
    Ok(len)
}

/// Writes `src` to `out`: holes kept when `out` is a new, empty regular file
/// (`> file` in a shell), else every byte streamed, zeros included. A pipe
/// or a terminal stores nothing, and what reads it asked for the bytes;
/// `| head` ends the copy early.
pub fn copy_to(src: &File, mut out: impl Write + AsFd) -> io::Result<u64> {
    if is_empty_file(&out)? {
        let dst = File::from(out.as_fd().try_clone_to_owned()?);
        let len = copy(src, &dst)?;
        (&dst).seek(SeekFrom::End(0))?;
        return Ok(len);
    }
    let copied = io::copy(&mut &*src, &mut out)?;
    out.flush()?;
    Ok(copied)
}

/// A regular file, empty, at offset 0 and not in append mode: writing at
/// any offset in it is what writing it in order would have done.
fn is_empty_file(out: &impl AsFd) -> io::Result<bool> {
    let fd = out.as_fd();
    let stat = rustix::fs::fstat(fd)?;
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    Ok(regular
        && stat.st_size == 0
        && !rustix::fs::fcntl_getfl(fd)?.contains(OFlags::APPEND)
        && rustix::fs::tell(fd)? == 0)
}

/// The next range of data at or after `pos`, or `None` if only a hole is
/// left. A file system that cannot tell says everything is data.
fn data_range(src: &File, pos: u64, len: u64) -> Option<(u64, u64)> {
    let start = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(pos)) {
        Ok(start) => start,
        Err(rustix::io::Errno::NXIO) => return None,
        Err(_) => return Some((pos, len)),
    };
    if start >= len {
        return None;
    }
    let end = rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(start)).unwrap_or(len);
    Some((start, end.min(len)))
}

/// Copies bytes `start..end` to the same offsets: in the kernel where it
/// can (`copy_file_range`), else through a buffer.
fn copy_range(src: &File, dst: &File, start: u64, end: u64) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let (mut from, mut to) = (pos, pos);
        let want = (end - pos).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
            // The file shrank under us (a guest truncating it).
            Ok(0) => return Ok(()),
            Ok(copied) => pos += copied as u64,
            // Across file systems on older kernels, or not supported.
            Err(_) => return copy_through_buffer(src, dst, pos, end),
        }
    }
    Ok(())
}

fn copy_through_buffer(src: &File, dst: &File, start: u64, end: u64) -> io::Result<()> {
    let mut buffer = vec![0; CHUNK.min((end - start) as usize)];
    let mut pos = start;
    while pos < end {
        let want = buffer.len().min((end - pos) as usize);
        let read = src.read_at(&mut buffer[..want], pos)?;
        if read == 0 {
            break;
        }
        dst.write_all_at(&buffer[..read], pos)?;
        pos += read as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_stay_holes_and_data_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let src = File::create_new(dir.path().join("src")).unwrap();
        let far = 1 << 40;
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", far).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let dst = File::create_new(dir.path().join("dst")).unwrap();
        assert_eq!(copy(&src, &dst).unwrap(), far + 4);
        let mut buf = [0; 4];
        dst.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head");
        dst.read_exact_at(&mut buf, far).unwrap();
        assert_eq!(&buf, b"tail");
        dst.read_exact_at(&mut buf, far / 2).unwrap();
        assert_eq!(buf, [0; 4]);
        use std::os::unix::fs::MetadataExt;
        assert!(dst.metadata().unwrap().blocks() < 1024);
    }

    #[test]
    fn the_buffered_fallback_copies_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..CHUNK * 2 + 7).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("src"), &data).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let dst = File::create_new(dir.path().join("dst")).unwrap();
        copy_through_buffer(&src, &dst, 3, data.len() as u64).unwrap();
        let copied = std::fs::read(dir.path().join("dst")).unwrap();
        assert_eq!(copied[..3], [0, 0, 0]);
        assert_eq!(copied[3..], data[3..]);
    }
}
