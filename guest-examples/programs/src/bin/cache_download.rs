//! The `cache` example's download variant (wasip2 only): fetches a file
//! once into a shared volume, then serves it from there.
//!
//! Usage: `cache_download URL [CACHE_DIR]` (CACHE_DIR defaults to `/cache`).
//! The file is kept under the URL's last path segment. The first call prints
//! `NAME downloaded (N bytes)`, later ones `NAME cached (N bytes)`; the host
//! lock makes racing instances download it once.

#[cfg(target_env = "p2")]
#[path = "../shared/http_get.rs"]
mod http_get;

#[cfg(target_env = "p2")]
fn main() {
    use std::fs;
    use std::process::exit;
    use std::time::Duration;

    use wasmhost_guest::Lock;

    fn fail(what: &str, e: impl std::fmt::Display) -> ! {
        eprintln!("cache_download: {what}: {e}");
        exit(1)
    }

    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, dir) = match args.as_slice() {
        [url] => (url.as_str(), "/cache"),
        [url, dir] => (url.as_str(), dir.as_str()),
        _ => {
            eprintln!("usage: cache_download URL [CACHE_DIR]");
            exit(2)
        }
    };
    let name = url.rsplit('/').next().unwrap_or_default();
    // The name becomes a file name, so nothing that could escape the dir.
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        eprintln!("cache_download: {url}: end the URL with a file name of A-Z a-z 0-9 _ - .");
        exit(2)
    }

    let lock_path = format!("{dir}/{name}.lock");
    let _guard =
        Lock::acquire(&lock_path, Duration::from_secs(60)).unwrap_or_else(|e| fail(&lock_path, e));
    let path = format!("{dir}/{name}");
    if let Ok(meta) = fs::metadata(&path) {
        println!("{name} cached ({} bytes)", meta.len());
        return;
    }
    // Into a temporary file, renamed once whole: a failed download leaves
    // nothing that a later call would take for the file.
    let tmp_path = format!("{path}.part");
    let mut file = fs::File::create(&tmp_path).unwrap_or_else(|e| fail(&tmp_path, e));
    match http_get::get(url, &mut file) {
        Ok(200) => {}
        Ok(status) => {
            let _ = fs::remove_file(&tmp_path);
            fail(url, format!("the server answered {status}"))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            fail("download", e)
        }
    }
    file.sync_all().unwrap_or_else(|e| fail(&tmp_path, e));
    fs::rename(&tmp_path, &path).unwrap_or_else(|e| fail(&path, e));
    let size = fs::metadata(&path).map_or(0, |m| m.len());
    println!("{name} downloaded ({size} bytes)");
}

#[cfg(not(target_env = "p2"))]
fn main() {
    eprintln!("cache_download is a wasip2 component only: wasip1 has no network");
    std::process::exit(2)
}
